"""The Jinja2 templates of the analysis package (``selfinstruct/analysis/templates/``).

One environment for both kinds of output: templates named ``*.html.jinja`` are
autoescaped (the inspect page shows model-generated text, which must never become
markup or script), ``*.md.jinja`` ones are not (Markdown; cells are escaped with
the ``md`` filter instead). Undefined names are errors, not empty strings.

Filters:
    ``md``: text safe in a Markdown table cell (backslash and ``|`` escaped, line
        breaks as spaces).
    ``json``: a JSON string or value, non-ASCII kept (``json.dumps``,
        ``ensure_ascii=False``).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


def markdown_cell(text: Any) -> str:
    """``text`` as one Markdown table cell: ``\\`` and ``|`` backslash-escaped,
    ``\\n`` replaced by a space (GitHub-flavoured Markdown tables)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


@functools.cache
def environment() -> jinja2.Environment:
    """The shared :class:`jinja2.Environment`, loading from this package's ``templates``.

    Raises:
        ImportError: jinja2 is not installed (it is a dependency of selfinstruct).
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("selfinstruct.analysis", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.jinja",),
                                            default_for_string=True, default=False),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)
    env.filters["md"] = markdown_cell
    env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env


def render(template: str, **context: Any) -> str:
    """Render ``template`` (a file name, e.g. ``"report.html.jinja"``) with ``context``.

    Raises:
        jinja2.TemplateNotFound: no such template in the package (a broken install).
        jinja2.UndefinedError: the template uses a name ``context`` lacks.
    """
    return environment().get_template(template).render(**context)
