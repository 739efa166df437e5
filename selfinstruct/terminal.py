"""Text from data made safe to print on a terminal.

Instructions, file names, server answers and model outputs can hold bytes a
terminal obeys: ESC starts sequences that clear the screen, move the cursor,
set the window title (``ESC ] 0 ; title BEL``) or, on some terminals, write to
the clipboard; C1 controls (U+0080-U+009F, e.g. U+009B, a one-character CSI)
do the same on terminals that honour them; bidirectional overrides and
isolates reorder what is shown ("Trojan Source", CVE-2021-42574). Everything
this package prints that may hold such text goes through :func:`terminal_safe`;
text printed through rich also through :func:`rich_safe`, because rich reads
``[...]`` as markup (a ``[/]`` with nothing to close raises ``MarkupError``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f"  # C0 controls but TAB and LF (LF: see ``newlines``); ESC is \x1b
    "\x7f-\x9f"  # DEL and the C1 controls
    "\u202a-\u202e\u2066-\u2069"  # bidi embeddings/overrides (LRE..RLO, PDF), isolates (LRI..PDI)
    "\ud800-\udfff]"  # lone surrogates: not encodable, printing them raises
)
_UNSAFE_OR_NEWLINE = re.compile(_UNSAFE.pattern[:-1] + "\n]")

_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\u{ord(char):04x}"


def terminal_safe(text: Any, newlines: bool = True) -> str:
    """``text`` (any object, as ``str()``) with every character a terminal would act on escaped.

    Escaped: the C0 controls U+0000-U+001F except TAB (and LF while ``newlines``),
    DEL U+007F, the C1 controls U+0080-U+009F, the bidi embeddings, overrides
    and isolates U+202A-U+202E and U+2066-U+2069, and lone surrogates
    U+D800-U+DFFF. Each becomes a visible escape: ``\\n`` and ``\\r`` for LF and
    CR, ``\\uXXXX`` (four lower-case hex digits) for the rest, e.g. ESC
    ``\\u001b``. These are also JSON's escapes, so the function can be applied
    to text produced by ``json.dumps`` (which escapes C0 already and leaves the
    rest raw under ``ensure_ascii=False``): it stays valid JSON that parses to
    the same value. Backslashes already in the text are left alone, so a
    literal ``\\u001b`` in the data prints the same as an escaped ESC: the
    terminal is safe, the text is not meant to round-trip.

    Args:
        text: what to print; None prints as ``None``.
        newlines: keep LF as a line break (tables, multi-line output); False
            escapes it too, for messages that must stay on one line.

    Returns:
        The text with no character a terminal interprets, other than TAB and
        (with ``newlines``) LF.
    """
    text = text if isinstance(text, str) else str(text)
    return (_UNSAFE if newlines else _UNSAFE_OR_NEWLINE).sub(_escape, text)


def rich_safe(text: Any, newlines: bool = True) -> str:
    """:func:`terminal_safe`, then rich markup escaped: for data inside a rich ``print``.

    ``[bold red]`` in the data is then shown as written, neither styling the
    text nor raising ``rich.errors.MarkupError`` (``[/]`` alone does).
    """
    from rich.markup import escape

    return escape(terminal_safe(text, newlines))


def safe_console(**kwargs: Any) -> Console:
    """A ``rich.console.Console`` (same arguments) that runs every string it renders
    through :func:`terminal_safe` before reading its markup.

    A second line of defence for strings printed without :func:`rich_safe`:
    control characters never reach the terminal, though markup in such a
    string is still read as markup.
    """
    from rich.console import Console

    class _SafeConsole(Console):
        def render_str(self, text: str, **options: Any) -> Text:
            return super().render_str(terminal_safe(text), **options)

    return _SafeConsole(**kwargs)


__all__ = ["rich_safe", "safe_console", "terminal_safe"]
