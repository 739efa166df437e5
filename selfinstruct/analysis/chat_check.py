"""Checking examples against a model's chat template (``export --check-template``).

:func:`check_template` renders every example with the model's chat template, as
an SFT trainer would, and reports examples longer than a context length, examples
the template refuses, and special tokens of the model (or markup of its template)
found inside the data, where a trainer would read them as structure.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from .constants import DEFAULT_MAX_LENGTH
from .export import ExportError, messages_column
from .stats import distribution

_MARKUP = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?[A-Za-z_][A-Za-z0-9_]{0,30}>|\[/?[A-Z_]{2,20}\]"
                     r"|<</?SYS>>")


def template_markers(tokenizer: Any) -> list[str]:
    """Strings that must not occur inside example text for ``tokenizer``'s model.

    Every special and added token of the tokenizer, plus the tag-like markup
    (``<|...|>``, ``<tag>``, ``[INST]``, ``<<SYS>>``) its chat template emits
    around a probe conversation. Whitespace-only tokens are left out.
    """
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        found.add(getattr(token, "content", str(token)))
    try:
        probe = tokenizer.apply_chat_template(
            [{"role": "user", "content": "\x00"}, {"role": "assistant", "content": "\x00"}],
            tokenize=False)
        found.update(_MARKUP.findall(str(probe)))
    except Exception:  # a template that rejects the probe: tokens alone
        pass
    return sorted(t for t in found if t and t.strip())


def default_max_length(tokenizer: Any) -> int:
    """The tokenizer's ``model_max_length`` when stated and at most
    :data:`DEFAULT_MAX_LENGTH`, else :data:`DEFAULT_MAX_LENGTH`."""
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated <= DEFAULT_MAX_LENGTH:
        return stated
    return DEFAULT_MAX_LENGTH


def check_template(frame: pd.DataFrame, tokenizer: Any, *, model: str,
                   max_length: int | None = None, system_prompt: str | None = None,
                   examples: int = 5) -> dict[str, Any]:
    """Render every row with the model's chat template; find what a trainer would choke on.

    Each row's conversation (optional system turn, user, assistant) goes
    through ``tokenizer.apply_chat_template(..., tokenize=False)``; the text is
    then tokenized without adding special tokens (the template has them), as
    TRL's ``SFTTrainer`` does.

    Args:
        frame: rows with ``id``, ``instruction``, ``input``, ``output``.
        tokenizer: a transformers tokenizer with a chat template.
        model: its name, for the report.
        max_length: context length in tokens (default: :func:`default_max_length`).
        system_prompt: as the export would add it.
        examples: row ids to list per problem.

    Returns:
        ``{"model", "max_length", "examples", "lengths" (distribution of tokens
        per rendered example), "too_long": {"rows", "ids"}, "render_errors":
        {"rows", "ids", "first"}, "leaks": {marker: {"rows", "ids"}},
        "leak_rows", "markers", "ok"}``.

    Raises:
        ExportError: the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ExportError(f"{model}: the tokenizer has no chat template")
    limit = max_length or default_max_length(tokenizer)
    ids = frame["id"].tolist()
    texts: list[str] = []
    rendered_ids: list[str] = []
    errors: list[str] = []
    first_error = None
    for rid, conversation in zip(ids, messages_column(frame, system_prompt), strict=True):
        try:
            texts.append(str(tokenizer.apply_chat_template(conversation, tokenize=False)))
            rendered_ids.append(rid)
        except Exception as exc:  # jinja2 TemplateError, raise_exception() in templates
            errors.append(rid)
            first_error = first_error or (str(exc).splitlines() or [type(exc).__name__])[0]
    lengths: list[int] = []
    for start in range(0, len(texts), 1024):
        encoded = tokenizer(texts[start:start + 1024], add_special_tokens=False,
                            return_attention_mask=False)
        lengths.extend(len(x) for x in encoded["input_ids"])
    too_long = [rid for rid, n in zip(rendered_ids, lengths, strict=True) if n > limit]

    markers = template_markers(tokenizer)
    leaks: dict[str, dict[str, Any]] = {}
    leak_rows = 0
    if markers:
        pattern = re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)))
        columns = [frame[c].tolist() for c in ("instruction", "input", "output")]
        for k, rid in enumerate(ids):
            hits = set()
            for column in columns:
                hits.update(pattern.findall(column[k]))
            leak_rows += bool(hits)
            for hit in hits:
                entry = leaks.setdefault(hit, {"rows": 0, "ids": []})
                entry["rows"] += 1
                if len(entry["ids"]) < examples:
                    entry["ids"].append(rid)
        if system_prompt:
            for hit in set(pattern.findall(system_prompt)):
                leaks.setdefault(hit, {"rows": 0, "ids": []})["ids"].insert(0, "--system-prompt")
    summary = distribution(lengths)
    summary.pop("histogram")
    return {
        "model": model, "max_length": limit, "examples": len(ids), "lengths": summary,
        "too_long": {"rows": len(too_long), "ids": too_long[:examples]},
        "render_errors": {"rows": len(errors), "ids": errors[:examples], "first": first_error},
        "leaks": dict(sorted(leaks.items())), "leak_rows": leak_rows, "markers": markers,
        "ok": not too_long and not errors and not leaks,
    }


def resolve_template_model(model: str | None) -> tuple[Any, str]:
    """Load the tokenizer of ``--check-template MODEL`` (offline).

    Args:
        model: a local model directory, a ``.gguf`` file, a Hugging Face id
            already in the local cache, or None / ``"embedded"`` for the
            embedded default model.

    Returns:
        ``(tokenizer, name)``.

    Raises:
        ExportError: the model cannot be resolved or its tokenizer loaded offline.
    """
    from .loading import InspectError
    from .sources import load_tokenizer
    from ..models import ModelError, resolve_model

    try:
        resolved = resolve_model(None if model in (None, "embedded") else model)
    except ModelError as exc:
        raise ExportError(str(exc)) from None
    try:
        return load_tokenizer(resolved.path), resolved.name
    except InspectError as exc:
        raise ExportError(str(exc)) from None


def describe_check(result: dict[str, Any]) -> list[str]:
    """The check's findings as short lines for the terminal.

    Each line is passed through :func:`~selfinstruct.terminal.terminal_safe`
    (line breaks escaped too): row ids, the model name and the template's error
    message come from data and may hold control characters.
    """
    from ..terminal import terminal_safe

    lines = [(f"{result['examples']} examples rendered with {result['model']}'s chat template; "
              f"tokens per example: median {result['lengths']['p50']}, p99 "
              f"{result['lengths']['p99']}, max {result['lengths']['max']}")]
    too_long = result["too_long"]
    lines.append(f"longer than {result['max_length']} tokens: {too_long['rows']}"
                 + (f" (e.g. {', '.join(too_long['ids'])})" if too_long["ids"] else ""))
    errors = result["render_errors"]
    if errors["rows"]:
        lines.append(f"template refused {errors['rows']} examples (e.g. "
                     f"{', '.join(errors['ids'])}): {errors['first']}")
    if result["leaks"]:
        lines.append(f"special tokens / template markup inside the text: {result['leak_rows']} "
                     "rows")
        for marker, entry in result["leaks"].items():
            lines.append(f"  {marker!r}: {entry['rows']} rows (e.g. {', '.join(entry['ids'])})")
    else:
        lines.append(f"special tokens / template markup inside the text: none "
                     f"({len(result['markers'])} markers searched)")
    lines.append("OK" if result["ok"] else "PROBLEMS FOUND")
    return [terminal_safe(line, newlines=False) for line in lines]
