"""One reader for every file of records a user hands selfinstruct.

Seed tasks (``generate --seeds``), the plain files ``inspect`` and ``export``
read, and the input of ``dedup`` all come through :func:`read_records`. It
accepts:

* a JSON array of objects (``.json``; a single top-level object is one record,
  and a ``.json`` file holding JSON Lines is read as JSON Lines);
* JSON Lines (``.jsonl``, ``.ndjson``): one object per line, blank lines skipped;
* Parquet (``.parquet``, ``.pq``), read with pyarrow;
* CSV (``.csv``) with a header line, read with pandas
  (:func:`selfinstruct.inputs.read_csv_records`: every value a string, a row
  with more fields than the header is an error naming its line, a missing
  field is None);
* any of the text formats compressed with gzip (``.json.gz``, ``.jsonl.gz``,
  ``.ndjson.gz``, ``.csv.gz``; HumanEval ships as ``HumanEval.jsonl.gz``):
  decompressed with the gzip module and then read as the plain file, with the
  same errors and the same line numbers (lines of the decompressed text); a
  file gzip cannot decompress is refused with one line naming it. Parquet
  compresses its own pages, so ``.parquet.gz`` is not accepted;
* a ``datasets`` ``save_to_disk`` directory, recognised by its
  ``dataset_dict.json`` (a DatasetDict) or its ``dataset_info.json`` and
  ``state.json`` (a Dataset), read with ``datasets.load_from_disk``. Every
  split of a DatasetDict is read, in the order its ``dataset_dict.json``
  lists them (an export's ``train`` then ``test``), one :class:`Records` each;
* any other directory: its files with one of :data:`SUFFIXES`, in name order,
  one :class:`Records` each. Hidden entries (a name starting with ``.``) and
  subdirectories are skipped; any other entry must be a regular file.

Parsing is left to the json module, pyarrow, pandas and datasets. Only regular
files are opened (:func:`selfinstruct.inputs.check_regular_file`): a FIFO, a
device or a symlink loop is refused with one line before anything is read.
Text files must be UTF-8 (a BOM is allowed).

Every record is a ``dict`` with a :class:`Position`: the file and its 1-based
line (JSON Lines, CSV, and a JSON document spread over lines with each record
starting on a line of its own, as ``json.dump(..., indent=...)`` writes it), the
1-based record number in a JSON document where records share a line (a one-line
``json.dump``), or the 1-based row (Parquet, Arrow).
Callers name records by it in their own errors. Every problem found here raises
:class:`RecordsError`, whose message is one line naming the file, the line or
row, and the field where there is one.

This module imports only the standard library; pyarrow, pandas and datasets are
imported when a file that needs them is read (``selfinstruct --help`` stays
cheap).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .inputs import InputFileError, check_regular_file

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["MISSING", "SUFFIXES", "TABULAR", "Position", "Record", "Records", "RecordsError",
           "dataset_dir_kind", "frame_of", "input_files", "read_records", "record_suffix",
           "value_problem"]

_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
            ".pq": "parquet", ".csv": "csv"}

GZIP = ".gz"
"""The suffix of a gzip-compressed record file (after the format's own suffix)."""

_GZIP_FORMATS = ("json", "jsonl", "csv")  # text formats; Parquet compresses itself

#: File suffixes read as records (case-insensitive), and in a directory: the
#: plain formats, then the text formats compressed with gzip.
SUFFIXES = tuple(_FORMATS) + tuple(s + GZIP for s, f in _FORMATS.items() if f in _GZIP_FORMATS)


def record_suffix(path: Path | str) -> str | None:
    """The entry of :data:`SUFFIXES` that ``path``'s name ends with, lowercased
    (``"HumanEval.jsonl.gz"`` -> ``".jsonl.gz"``), or None when it has none.

    A bare ``".gz"`` name is no record file; the compressed suffix is tried
    before the plain one, so ``a.json.gz`` is ``.json.gz``, never ``.gz``.
    """
    name = Path(path).name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None

#: Formats whose columns exist without any record (a header, a schema).
TABULAR = ("csv", "parquet", "dataset")

NESTED_TOO_DEEPLY = "invalid JSON: nested too deeply"
"""The reason given for a document whose nesting exhausts the json module's recursion."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record is.

    Attributes:
        path: the file (for a ``save_to_disk`` directory: the directory of the
            Dataset, or of the DatasetDict's split).
        number: 1-based line, row or record number.
        unit: ``"line"`` (a text file's line), ``"row"`` (Parquet or Arrow row)
            or ``"record"`` (the n-th record of a JSON document whose records
            share lines).

    ``str()`` gives ``"<path>:<line>"``, ``"<path> (row <n>)"`` or
    ``"<path> (record <n>)"``.
    """

    path: Path
    number: int
    unit: str = "line"

    def __str__(self) -> str:
        if self.unit == "line":
            return f"{self.path}:{self.number}"
        return f"{self.path} ({self.unit} {self.number})"

    @property
    def line(self) -> int | None:
        """The 1-based line, or None when the position is a row or record number."""
        return self.number if self.unit == "line" else None


class RecordsError(ValueError):
    """A record input that cannot be read.

    Args:
        where: a :class:`Position`, or the path of the file or directory.
        reason: what is wrong, one line, without the place.
        field: the field concerned, or None.

    Attributes:
        path: the file or directory.
        position: the :class:`Position`, or None when the problem is the whole file.
        field, reason: as given.

    ``str(error)`` is ``"<where>: [field '<field>': ]<reason>"``.
    """

    def __init__(self, where: Position | Path | str, reason: str,
                 field: str | None = None) -> None:
        self.position = where if isinstance(where, Position) else None
        self.path = where.path if isinstance(where, Position) else Path(where)
        self.field, self.reason = field, reason
        prefix = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {prefix}{reason}")

    @property
    def where(self) -> Position | Path:
        """The position when there is one, else the path."""
        return self.position if self.position is not None else self.path


class Record(NamedTuple):
    """One record: its fields and where it is."""

    data: dict[str, Any]
    position: Position


class Records:
    """The records of one source (a file, a Dataset, or one split of a DatasetDict).

    Attributes:
        path: the file or directory the records come from (the split's directory
            for a DatasetDict).
        format: ``"json"``, ``"jsonl"``, ``"csv"``, ``"parquet"`` or ``"dataset"``.
        columns: field names in order of first appearance (a JSON file), or the
            header (CSV) or schema (Parquet, Arrow) names, even with no rows.

    ``len()`` is the number of records; iterating yields :class:`Record` in file
    order. :attr:`rows` is the list of dicts (Parquet and Arrow rows are
    converted with ``pyarrow.Table.to_pylist`` on first use: nulls are None,
    lists are lists); :meth:`frame` is a pandas DataFrame of the same records.
    """

    def __init__(self, path: Path, fmt: str, columns: list[str], *,
                 rows: list[dict[str, Any]] | None = None, table: pa.Table | None = None,
                 numbers: list[int] | None = None, unit: str = "line", first: int = 1) -> None:
        self.path, self.format, self.columns = path, fmt, columns
        self._rows, self._table = rows, table
        self._numbers, self._unit, self._first = numbers, unit, first

    def __len__(self) -> int:
        if self._rows is not None:
            return len(self._rows)
        assert self._table is not None, "a Records holds rows or a table"
        return int(self._table.num_rows)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The records as dicts, in order."""
        if self._rows is None:
            assert self._table is not None, "a Records holds rows or a table"
            self._rows = self._table.to_pylist()
        return self._rows

    def position(self, k: int) -> Position:
        """The :class:`Position` of record ``k`` (0-based)."""
        number = self._numbers[k] if self._numbers is not None else k + self._first
        return Position(self.path, number, self._unit)

    def __iter__(self) -> Iterator[Record]:
        for k, row in enumerate(self.rows):
            yield Record(row, self.position(k))

    def values(self, field: str) -> list[Any]:
        """The field's value in every record, in order; :data:`MISSING` where a
        record (of a JSON file) has no such field."""
        if self._rows is None and field in self.columns:
            assert self._table is not None, "a Records holds rows or a table"
            values: list[Any] = self._table.column(field).to_pylist()
            return values
        return [row.get(field, MISSING) for row in self.rows]

    def frame(self) -> pd.DataFrame:
        """The records as a pandas DataFrame (Parquet and Arrow: ``Table.to_pandas``,
        keeping the column types; otherwise ``DataFrame.from_records``)."""
        import pandas as pd

        if self._table is not None:
            frame: pd.DataFrame = self._table.to_pandas()
            return frame
        return pd.DataFrame.from_records(self.rows, columns=self.columns)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""What :meth:`Records.values` gives for a record without the field."""


def value_problem(value: Any) -> str | None:
    """Why ``value`` is not a text field's value, or None when it is a string.

    Returns ``"missing"`` (no such field), ``"missing (null)"`` (JSON null, an
    empty CSV field of a short row, a Parquet null, or NaN) or ``"expected a
    string, got <type>"``.
    """
    if isinstance(value, str):
        return None
    if value is MISSING:
        return "missing"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing (null)"
    return f"expected a string, got {type(value).__name__}"


def frame_of(parts: list[Records]) -> pd.DataFrame:
    """One DataFrame of several sources, in order (columns united; a column a
    source lacks is null there)."""
    import pandas as pd

    frames = [part.frame() for part in parts]
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------
# What a path holds
# ---------------------------------------------------------------------------


def dataset_dir_kind(path: Path | str) -> str | None:
    """``"dict"`` for a ``DatasetDict.save_to_disk`` directory (it holds
    ``dataset_dict.json``), ``"dataset"`` for a ``Dataset.save_to_disk`` one
    (``dataset_info.json`` and ``state.json``), else None."""
    path = Path(path)
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        return "dataset"
    return None


def _check_entry(entry: Path, missing: str) -> None:
    try:
        check_regular_file(entry, missing=f"{missing} (a dangling symlink?)")
    except InputFileError as exc:
        raise RecordsError(entry, exc.reason) from None


def _dataset_files(path: Path, missing: str) -> list[Path]:
    """Every file of a ``save_to_disk`` directory (recursively, sorted), each
    checked to be a regular file."""
    try:
        found = sorted(p for p in path.rglob("*") if not p.is_dir())
    except OSError as exc:
        raise RecordsError(path, f"cannot list directory: {exc.strerror}") from None
    for entry in found:
        _check_entry(entry, missing)
    return found


def _directory_entries(path: Path, missing: str) -> list[Path]:
    try:
        entries = sorted(p for p in path.iterdir()
                         if record_suffix(p) is not None and not p.name.startswith(".")
                         and not p.is_dir())
    except OSError as exc:
        raise RecordsError(path, f"cannot list directory: {exc.strerror}") from None
    for entry in entries:
        _check_entry(entry, missing)
    if not entries:
        raise RecordsError(path, f"directory holds no record files ({', '.join(SUFFIXES)})")
    return entries


def input_files(path: Path | str, *, missing: str = "no such file or directory") -> list[Path]:
    """The files :func:`read_records` reads for ``path``, in order (e.g. to hash them).

    A file gives itself; a ``save_to_disk`` directory every file under it,
    sorted; another directory its record files (:data:`SUFFIXES`, not hidden)
    in name order. Every one is checked to be a regular file.

    Args:
        path: a file or directory.
        missing: the reason when nothing is at ``path`` (callers keep their own
            wording, e.g. "seed file not found").

    Raises:
        RecordsError: nothing there, a symlink loop, not a regular file or
            directory, a directory entry that is not a regular file, or a
            directory with no record files.
    """
    path = Path(path)
    if path.is_dir():
        if dataset_dir_kind(path) is not None:
            return _dataset_files(path, missing)
        return _directory_entries(path, missing)
    try:
        check_regular_file(path, missing=missing)
    except InputFileError as exc:
        raise RecordsError(path, exc.reason) from None
    return [path]


def read_records(path: Path | str, *, missing: str = "no such file or directory"
                 ) -> list[Records]:
    """Read every record at ``path`` (see the module docstring for what is accepted).

    Args:
        path: a record file, a directory of record files, or a ``save_to_disk``
            directory.
        missing: the reason when nothing is at ``path``.

    Returns:
        One :class:`Records` per source, in reading order: the file; each file
        of a directory in name order; the Dataset, or each split of a
        DatasetDict in its own order. A source may hold no records.

    Raises:
        RecordsError: see :func:`input_files`; also an unsupported suffix, a
            file that is empty or not valid UTF-8 (naming the line), invalid or
            too deeply nested JSON (naming the line where the json module gives
            one), a top-level JSON value that is neither an array nor an object,
            a record that is not an object (naming its line), a CSV row with more
            fields than the header or a duplicate header column, a Parquet file
            or ``save_to_disk`` directory that pyarrow or datasets cannot read,
            a ``.gz`` file that gzip cannot decompress (not gzip, truncated, a
            failed CRC).
    """
    path = Path(path)
    files = input_files(path, missing=missing)
    if path.is_dir() and dataset_dir_kind(path) is not None:
        return _read_dataset_dir(path)
    return [_read_file(file) for file in files]


# ---------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------


def _unsupported(path: Path) -> str:
    suffixes = path.suffixes
    # "data.txt.gz" names '.txt.gz'; "data.txt" names '.txt'
    shown = "".join(suffixes[-2:]) if len(suffixes) > 1 and path.suffix.lower() == GZIP \
        else path.suffix
    return f"unsupported format '{shown}' (use {', '.join(SUFFIXES)} or a directory)"


def _read_file(path: Path) -> Records:
    suffix = record_suffix(path)
    if suffix is None:
        raise RecordsError(path, _unsupported(path))
    compressed = suffix.endswith(GZIP)
    fmt = _FORMATS[suffix.removesuffix(GZIP) if compressed else suffix]
    if fmt == "parquet":
        return _read_parquet(path)
    text = _decode(path, compressed=compressed)
    if fmt == "csv":
        return _read_csv(path)  # pandas decompresses a .gz itself (compression="infer")
    if fmt == "jsonl":
        return _read_jsonl(path, text)
    return _read_json(path, text)


def _gunzip(path: Path, raw: bytes) -> bytes:
    """The decompressed bytes of a gzip file (every member, as ``gzip`` reads them)."""
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise RecordsError(path, f"not a valid gzip file ({_first_line(exc)})") from None


def _decode(path: Path, *, compressed: bool = False) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecordsError(path, f"cannot read: {exc.strerror}") from None
    if compressed:
        raw = _gunzip(path, raw)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecordsError(Position(path, line), f"not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise RecordsError(path, "file is empty")
    return text


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    kinds: dict[type[object], str] = {str: "a string", list: "an array", dict: "an object"}
    return kinds.get(type(value), "null")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _object(value: Any, where: Position) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordsError(where, f"record is {_json_kind(value)}, expected an object")
    return value


def _read_jsonl(path: Path, text: str) -> Records:
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = Position(path, number)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordsError(where, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        except RecursionError:
            raise RecordsError(where, NESTED_TOO_DEEPLY) from None
        rows.append(_object(value, where))
        numbers.append(number)
    return Records(path, "jsonl", _columns(rows), rows=rows, numbers=numbers)


def _first_line_parses(text: str) -> bool:
    """Whether the first non-blank line of ``text`` is a JSON value on its own."""
    first = text.lstrip().split("\n", 1)[0]
    try:
        json.loads(first)
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


def _read_json(path: Path, text: str) -> Records:
    """A JSON array of objects (or one object); a file of JSON Lines when the
    document ends after its first line and the first line parses alone."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and _first_line_parses(text):
            records = _read_jsonl(path, text)
            records.format = "json"
            return records
        raise RecordsError(Position(path, exc.lineno),
                           f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise RecordsError(path, NESTED_TOO_DEEPLY) from None
    start = len(text) - len(text.lstrip())
    first_line = text.count("\n", 0, start) + 1
    if isinstance(data, dict):
        data, lines = [data], [first_line]
    elif isinstance(data, list):
        lines = _element_lines(path, text, start, len(data))
    else:
        raise RecordsError(Position(path, first_line),
                           f"expected a JSON array of records, got {_json_kind(data)}")
    if "\n" in text.strip() and len(set(lines)) == len(lines):
        # Spread over lines, each record starting on its own: name records by line.
        rows = [_object(value, Position(path, line))
                for value, line in zip(data, lines, strict=True)]
        return Records(path, "json", _columns(rows), rows=rows, numbers=lines)
    rows = [_object(value, Position(path, k, "record")) for k, value in enumerate(data, 1)]
    return Records(path, "json", _columns(rows), rows=rows, unit="record")


def _element_lines(path: Path, text: str, start: int, count: int) -> list[int]:
    """The line each element of a (valid) top-level array starts on.

    ``json.loads`` has already accepted the document, so this walk only skips
    the separators json allows between elements (whitespace, commas) and lets
    ``JSONDecoder.raw_decode`` find where each element ends."""
    decoder = json.JSONDecoder()
    pos, line, lines = start + 1, text.count("\n", 0, start) + 1, []
    for _ in range(count):
        while text[pos] in " \t\r\n,":
            line += text[pos] == "\n"
            pos += 1
        try:
            _, end = decoder.raw_decode(text, pos)
        except RecursionError:
            raise RecordsError(Position(path, line), NESTED_TOO_DEEPLY) from None
        lines.append(line)
        line += text.count("\n", pos, end)
        pos = end
    return lines


def _read_csv(path: Path) -> Records:
    """A CSV table (already checked to be UTF-8 and not empty); the header is
    line 1, so record ``k`` (0-based) is line ``k + 2`` as pandas counts lines."""
    from .inputs import read_csv_records

    try:
        columns, rows = read_csv_records(path)
    except InputFileError as exc:
        where = Position(path, exc.line) if exc.line is not None else path
        raise RecordsError(where, exc.reason) from None
    for row in rows:  # a short row's missing fields: NaN from pandas, None here
        for key, value in row.items():
            if isinstance(value, float):
                row[key] = None
    return Records(path, "csv", [str(c) for c in columns], rows=rows, first=2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_parquet(path: Path) -> Records:
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise RecordsError(path, "file is empty")
    try:
        table = pq.ParquetFile(path).read()
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise RecordsError(path, f"cannot read Parquet: {_first_line(exc)}") from None
    return _table_records(path, "parquet", table)


def _table_records(path: Path, fmt: str, table: pa.Table) -> Records:
    columns = list(table.column_names)
    for name in columns:
        if columns.count(name) > 1:
            raise RecordsError(path, f"duplicate column '{name}'")
    return Records(path, fmt, columns, table=table, unit="row")


def _read_dataset_dir(path: Path) -> list[Records]:
    """A ``save_to_disk`` directory: the Dataset, or every split of a DatasetDict
    in its ``dataset_dict.json`` order."""
    try:
        import datasets
    except ImportError:
        raise RecordsError(path, "a save_to_disk directory needs datasets "
                                 "(pip install datasets)") from None
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_from_disk(str(path))
        splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
        parts = []
        for name, dataset in splits:
            source = path if name is None else path / name
            parts.append(_table_records(source, "dataset", dataset.with_format("arrow")[:]))
    except RecordsError:
        raise
    except Exception as exc:  # datasets and pyarrow raise many types
        raise RecordsError(path, f"cannot read save_to_disk directory: {_first_line(exc)}"
                           ) from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    return parts
