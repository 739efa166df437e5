"""The evaluation sets examples are checked against (``--against``).

An evaluation set is a local record input, read by
:func:`selfinstruct.records.read_records` (JSON, JSON Lines, Parquet, CSV, their
gzip-compressed forms, or a ``datasets`` ``save_to_disk`` directory with every
split); nothing is fetched from a hub. The option names the file, the fields
that hold the text of an item, and the benchmark's name (see
:func:`parse_against`). :func:`load_benchmark` turns it into a
:class:`Benchmark`: one text per evaluation item, each with an id and the
record it came from, and a digest of the texts by which the check's index is
cached.

This module imports only the standard library and :mod:`selfinstruct.records`
(``selfinstruct --help`` stays cheap).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import MISSING, Position, Records, RecordsError, read_records, record_suffix
from . import DecontaminationError

__all__ = ["DEFAULT_FIELDS", "ID_FIELDS", "NAME_PATTERN", "AgainstSpec", "Benchmark",
           "check_names", "load_against", "load_benchmark", "parse_against", "texts_digest"]

OPTION = "--against"

DEFAULT_FIELDS = ("prompt", "question", "instruction", "input", "text", "problem", "query",
                  "sentence", "content")
"""The field used when ``--against`` names none: the first of these the file has
(HumanEval's ``prompt``, GSM8K's and MMLU's ``question``, Alpaca-style
``instruction``, MATH's ``problem``). Only one is used; name several with
``PATH:FIELD,FIELD`` to join them."""

ID_FIELDS = ("task_id", "id")
"""The field an item's id is taken from, the first the file has (HumanEval's
``task_id``); without one, or where an item's value is null, the id is the
record's 0-based index in the set."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A benchmark name: it becomes the reason code ``contaminated:<name>``, so 1 to
64 letters, digits, ``.``, ``_`` or ``-``."""

_NAME_RULE = "1-64 letters, digits, '.', '_' or '-'"


@dataclass(frozen=True, slots=True)
class AgainstSpec:
    """One ``--against`` option, parsed (:func:`parse_against`).

    Attributes:
        name: the benchmark's name (valid by :data:`NAME_PATTERN`).
        path: the evaluation file or directory, as given (not resolved).
        fields: the fields named, in order; empty when none was (the first of
            :data:`DEFAULT_FIELDS` present is used).
        option: the option's value as the user wrote it, for messages.
    """

    name: str
    path: Path
    fields: tuple[str, ...] = ()
    option: str = ""

    def __str__(self) -> str:
        return self.option or str(self.path)


@dataclass(frozen=True)
class Benchmark:
    """An evaluation set, read (:func:`load_benchmark`).

    Attributes:
        name: the benchmark's name (the reason code is ``contaminated:<name>``).
        path: the file or directory read.
        fields: the fields whose values make an item's text, in joining order.
        texts: one text per kept item, in reading order (never empty).
        ids: per item: its :data:`ID_FIELDS` value as ``str``, else the
            record's 0-based index among all the records read.
        positions: per item: the :class:`selfinstruct.records.Position` of its
            record, for messages.
        records: how many records were read (kept and skipped).
        skipped: records whose text was empty (every field missing, null or blank).
        digest: :func:`texts_digest` of ``texts``: the same items in another
            format, file or under another name hash the same.
        notes: what the user should be told (the default field chosen, items
            skipped), one line each.

    ``len()`` is the number of items; iterating yields ``(id, text, position)``.
    """

    name: str
    path: Path
    fields: tuple[str, ...]
    texts: list[str]
    ids: list[str]
    positions: list[Position]
    records: int
    skipped: int
    digest: str
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[tuple[str, str, Position]]:
        return iter(zip(self.ids, self.texts, self.positions, strict=True))


def texts_digest(texts: Sequence[str]) -> str:
    """The sha256 (hex) of ``texts`` in order: each text's UTF-8 bytes preceded by
    their length and a newline, so no two lists of texts share an input.

    It depends on the texts only, not on the name, path, format or fields that
    gave them: the same items read from JSON Lines or Parquet hash the same."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(b"%d\n" % len(data))
        digest.update(data)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# The option
# ---------------------------------------------------------------------------


def _fail(option: str, reason: str) -> DecontaminationError:
    return DecontaminationError(f"{OPTION} '{option}': {reason}")


def _readings(spec: str) -> list[tuple[str | None, str, str | None]]:
    """Every ``(name, path, fields)`` reading of ``spec``, the syntactic one first:
    with a name when the text before the first ``=`` holds no ``/`` or ``:``,
    with fields when the text after the last ``:`` holds no ``/``."""
    heads: list[tuple[str | None, str]] = []
    if "=" in spec:
        head, rest = spec.split("=", 1)
        if head and "/" not in head and ":" not in head:
            heads.append((head, rest))
    heads.append((None, spec))
    readings: list[tuple[str | None, str, str | None]] = []
    for name, rest in heads:
        if ":" in rest:
            path, fields = rest.rsplit(":", 1)
            if path and "/" not in fields:
                readings.append((name, path, fields))
        readings.append((name, rest, None))
    return readings


def _fields(option: str, text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(","))
    if not any(names):
        raise _fail(option, "no field after ':' (write PATH:FIELD[,FIELD...], or PATH alone "
                            "for the default field)")
    if not all(names):
        raise _fail(option, f"empty field name in '{text}'")
    for name in names:
        if names.count(name) > 1:
            raise _fail(option, f"field '{name}' named twice")
    return names


def default_name(path: Path | str) -> str:
    """The benchmark name a path gives: the file name without its record suffix
    (``HumanEval.jsonl.gz`` -> ``HumanEval``, ``mmlu_test.parquet`` ->
    ``mmlu_test``), or a directory's name (a ``save_to_disk`` directory)."""
    name = Path(os.path.abspath(path)).name
    suffix = record_suffix(name)
    return name[: -len(suffix)] if suffix else name


def parse_against(spec: str) -> AgainstSpec:
    """Parse one ``--against`` value: ``[NAME=]PATH[:FIELD[,FIELD...]]``.

    Examples: ``HumanEval.jsonl.gz:prompt``, ``mmlu=mmlu_test.parquet:question,choices,answer``,
    ``gsm8k_test.jsonl``.

    A path may itself hold ``:`` or ``=``, so the value may be read several ways.
    The readings are tried in this order and the first whose path exists is
    taken; when none exists, the first applicable one (then reading the file
    reports it missing):

    1. ``NAME=`` split at the first ``=`` and ``:FIELDS`` at the last ``:``;
    2. ``NAME=`` only;
    3. ``:FIELDS`` only;
    4. the whole value as the path.

    A ``NAME=`` reading applies only when the text before the first ``=`` holds
    no ``/`` or ``:``; a ``:FIELDS`` reading only when the text after the last
    ``:`` holds no ``/`` (``runs:v2/test.jsonl`` is one path). Fields are
    separated by ``,`` and stripped of surrounding spaces. Without ``NAME=`` the
    name is :func:`default_name` of the path.

    Raises:
        DecontaminationError: one line ``--against '<value>': <reason>``: an
            empty value or path, an empty field list or field name, a field
            named twice, or a name (given or from the file name) that is not
            :data:`NAME_PATTERN`.
    """
    if not spec.strip():
        raise _fail(spec, "empty (write [NAME=]PATH[:FIELD[,FIELD...]])")
    readings = _readings(spec)
    name, path, fields = next((r for r in readings if r[1] and os.path.lexists(r[1])),
                              readings[0])
    if not path:
        raise _fail(spec, "no path (write [NAME=]PATH[:FIELD[,FIELD...]])")
    chosen = _fields(spec, fields) if fields is not None else ()
    if name is None:
        name = default_name(path)
        if not NAME_PATTERN.fullmatch(name):
            raise _fail(spec, f"the file name gives the benchmark name '{name}', which is not "
                              f"{_NAME_RULE}; give one as NAME=PATH")
    elif not NAME_PATTERN.fullmatch(name):
        raise _fail(spec, f"benchmark name '{name}' is not {_NAME_RULE}")
    return AgainstSpec(name=name, path=Path(path), fields=chosen, option=spec)


def check_names(specs: Sequence[AgainstSpec]) -> None:
    """Refuse two evaluation sets with one name: each name is a reason code
    (``contaminated:<name>``) and a line of the summary.

    Names are compared ignoring case (``HumanEval`` and ``humaneval`` would
    read as one benchmark in a report).

    Raises:
        DecontaminationError: ``--against '<b>': benchmark name '<n>' is also
            that of '<a>'; give one a NAME= prefix``.
    """
    seen: dict[str, AgainstSpec] = {}
    for spec in specs:
        first = seen.setdefault(spec.name.casefold(), spec)
        if first is not spec:
            raise _fail(str(spec), f"benchmark name '{spec.name}' is also that of "
                                   f"'{first}'; give one a NAME= prefix (NAME=PATH)")


# ---------------------------------------------------------------------------
# Reading an evaluation set
# ---------------------------------------------------------------------------


def _columns(parts: list[Records]) -> list[str]:
    seen: dict[str, None] = {}
    for part in parts:
        for name in part.columns:
            seen.setdefault(name, None)
    return list(seen)


def _listing(columns: list[str]) -> str:
    return f"the file has fields: {', '.join(columns)}" if columns else "the file has no fields"


def _choose_fields(spec: AgainstSpec, columns: list[str]) -> tuple[tuple[str, ...], str | None]:
    if spec.fields:
        for name in spec.fields:
            if name not in columns:
                raise DecontaminationError(f"{spec.path}: field '{name}' not found "
                                           f"({_listing(columns)})")
        return spec.fields, None
    chosen = next((name for name in DEFAULT_FIELDS if name in columns), None)
    if chosen is None:
        raise DecontaminationError(
            f"{spec.path}: no field named and none of the usual text fields "
            f"({', '.join(DEFAULT_FIELDS)}) found ({_listing(columns)}); "
            f"name them as PATH:FIELD[,FIELD...]")
    return (chosen,), (f"{spec.name}: no field named; using '{chosen}', the first it has of "
                       f"{', '.join(DEFAULT_FIELDS)}")


def _is_missing(value: Any) -> bool:
    return value is MISSING or value is None or (isinstance(value, float) and math.isnan(value))


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object (a nested record)"
    return f"a value of type {type(value).__name__}"


def _parts(value: Any, where: Position, name: str) -> Iterator[str]:
    """The texts of one field's value: a string itself, a number or boolean as
    ``str``, a list each element in turn; missing, null and NaN give nothing."""
    if _is_missing(value):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, (bool, numbers.Number)):
        yield str(value)
    elif isinstance(value, (list, tuple)):
        for element in value:
            yield from _parts(element, where, name)
    else:
        raise DecontaminationError(str(RecordsError(
            where, f"holds {_kind(value)}, not text: name fields that hold text, "
                   "numbers or lists of them", field=name)))


def _item_id(value: Any, index: int) -> str:
    if _is_missing(value) or not isinstance(value, (str, bool, numbers.Number)):
        return str(index)
    return str(value)


def load_benchmark(spec: AgainstSpec | str) -> Benchmark:
    """Read one evaluation set.

    Every record's text is its fields' values (:attr:`AgainstSpec.fields`, or
    the first of :data:`DEFAULT_FIELDS` the file has) joined with ``"\\n"`` in
    that order: a string as it is, a number or boolean as ``str()``, a list
    (MMLU's ``choices``) each element in turn; a missing, null or NaN value, and
    a part that is empty or only whitespace, adds nothing. A record whose text
    is then empty is skipped and counted in :attr:`Benchmark.skipped`. Records
    are taken in :func:`selfinstruct.records.read_records` order (a directory's
    files in name order, a DatasetDict's splits in its order).

    Args:
        spec: a parsed option, or an option value (:func:`parse_against`).

    Returns:
        The :class:`Benchmark`, with a note when the field was chosen by default
        and when records were skipped.

    Raises:
        DecontaminationError: one line naming the file (and the record's line
            or row, and the field, where there is one): anything
            ``read_records`` refuses (missing, unreadable, bad content);
            a named field no record has (listing the fields the file has); no
            field named and none of :data:`DEFAULT_FIELDS` present; a value
            that is an object (a nested record) or another non-text type; no
            records; no record with a non-empty text.
    """
    if isinstance(spec, str):
        spec = parse_against(spec)
    missing = "evaluation set not found"
    if spec.option and spec.option != str(spec.path):
        missing += f" (the path of {OPTION} '{spec.option}')"
    try:
        parts = read_records(spec.path, missing=missing)
    except RecordsError as exc:
        raise DecontaminationError(str(exc)) from None
    total = sum(len(part) for part in parts)
    if total == 0:
        raise DecontaminationError(f"{spec.path}: evaluation set is empty (no records)")
    columns = _columns(parts)
    fields, note = _choose_fields(spec, columns)
    id_field = next((name for name in ID_FIELDS if name in columns), None)
    texts: list[str] = []
    ids: list[str] = []
    positions: list[Position] = []
    index = 0
    for part in parts:
        values = [part.values(name) for name in fields]
        keys = part.values(id_field) if id_field is not None else None
        for k in range(len(part)):
            where = part.position(k)
            pieces = [piece for name, column in zip(fields, values, strict=True)
                      for piece in _parts(column[k], where, name) if piece.strip()]
            if pieces:
                texts.append("\n".join(pieces))
                ids.append(_item_id(keys[k], index) if keys is not None else str(index))
                positions.append(where)
            index += 1
    skipped = total - len(texts)
    shown = ", ".join(f"'{name}'" for name in fields)
    if not texts:
        raise DecontaminationError(f"{spec.path}: evaluation set has no text: field(s) {shown} "
                                   f"empty or missing in all {total} records")
    notes = [note] if note else []
    if skipped:
        notes.append(f"{spec.name}: {skipped} of {total} records skipped: "
                     f"no text in {shown}")
    return Benchmark(name=spec.name, path=spec.path, fields=fields, texts=texts, ids=ids,
                     positions=positions, records=total, skipped=skipped,
                     digest=texts_digest(texts), notes=tuple(notes))


def load_against(options: Sequence[str]) -> list[Benchmark]:
    """Parse every ``--against`` value, check their names, then read each set.

    Args:
        options: the option values, in the order given.

    Returns:
        One :class:`Benchmark` per option, in that order.

    Raises:
        DecontaminationError: see :func:`parse_against`, :func:`check_names`
            and :func:`load_benchmark` (the first problem found; names are
            checked before any file is read).
    """
    specs = [parse_against(option) for option in options]
    check_names(specs)
    return [load_benchmark(spec) for spec in specs]
