"""Loading what ``inspect`` and ``export`` read: a run directory or a plain record file.

A run directory is its ``manifest.json`` (checked) and the shards it lists; a
plain file (or a directory of them) is read as a run without a manifest. Every
problem raises :class:`InspectError`, one line naming the file and field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..inputs import InputFileError, check_regular_file, read_csv_records
from ..storage.manifest import MANIFEST
from ..storage.shards import DATA_DIR

PLAIN_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".csv")


class InspectError(ValueError):
    """A run directory or dataset file that cannot be inspected; one-line message
    naming the file (and the line/record and field where there is one)."""


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


@dataclass
class RunData:
    """The rows of a run (or of a plain dataset file) and its manifest.

    Attributes:
        path: the run directory or file as given.
        kind: ``"run"`` (a directory with ``manifest.json``) or ``"file"``.
        frame: one row per instance with at least the columns ``id``,
            ``task_id``, ``instruction``, ``input`` (``""`` when none),
            ``output``, ``is_classification`` (bool, or None when unknown) and
            ``round`` (int, or None); a run's other shard columns are kept.
        manifest: the parsed ``manifest.json``, or None for a plain file.
        notes: remarks made while loading (shown with the statistics).
    """

    path: Path
    kind: str
    frame: pd.DataFrame
    manifest: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, Any]:
        """``manifest["stats"]``, or ``{}``."""
        return (self.manifest or {}).get("stats") or {}

    @property
    def config(self) -> dict[str, Any]:
        """``manifest["config"]``, or ``{}``."""
        return (self.manifest or {}).get("config") or {}


def load_run(path: Path | str) -> RunData:
    """Load a run directory or a plain Alpaca-style dataset file.

    Args:
        path: a directory holding ``manifest.json`` and the Parquet shards it
            lists, or a ``.json`` (array or JSON Lines), ``.jsonl``,
            ``.parquet`` or ``.csv`` file of records with ``instruction`` and
            ``output`` (``input`` optional), or Self-Instruct JSONL records
            with ``instances``.

    Returns:
        A :class:`RunData`; rows in shard (or file) order.

    Raises:
        InspectError: missing path, a directory without ``manifest.json``, an
            unreadable manifest or shard, a shard listed but missing, a file
            that is not a regular file, an unknown file format, a missing
            column, or a null or non-string text value.
    """
    path = Path(path)
    if path.is_dir():
        return _load_run_dir(path)
    return _load_plain_file(path)


def _load_run_dir(path: Path) -> RunData:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..storage.manifest import ManifestError, read_manifest, shard_path
    from ..storage.shards import SCHEMA
    from ..storage.files import file_digest

    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InspectError(
            f"{path}: no {MANIFEST} (not a finished selfinstruct run); pass a JSON, JSONL or "
            "Parquet file of instruction/input/output records instead")
    try:
        manifest, checked = read_manifest(manifest_path)
        notes: list[str] = []
        tables = []
        for k, entry in enumerate(checked.files):
            shard = shard_path(path, entry, manifest_path, k)
            if entry.sha256 is None:
                raise InspectError(f"{manifest_path}: field 'files[{k}].sha256': missing")
            if file_digest(shard) != entry.sha256:
                raise InspectError(f"{shard}: does not match the sha256 in {MANIFEST} "
                                   "(changed or damaged since the run); refusing to read it")
            try:
                table = pq.read_table(shard)
            except Exception as exc:  # pyarrow raises several types for damaged files
                raise InspectError(f"{shard}: cannot read Parquet: {exc}".splitlines()[0]
                                   ) from None
            if entry.rows is not None and table.num_rows != entry.rows:
                notes.append(f"{entry.path}: {table.num_rows} rows, manifest says {entry.rows}")
            tables.append(table)
    except ManifestError as exc:
        raise InspectError(str(exc)) from None
    if tables:
        try:
            table = pa.concat_tables(tables, promote_options="default")
        except pa.ArrowInvalid as exc:
            raise InspectError(f"{path / DATA_DIR}: shards have different schemas: {exc}") from None
    else:
        table = SCHEMA.empty_table()
    frame = table.to_pandas()
    for column in ("instruction", "output"):
        if column not in frame.columns:
            raise InspectError(f"{path / DATA_DIR}: field '{column}': missing column")
    return RunData(path, "run", _normalize(frame, path.name), manifest, notes)


def _read_records(path: Path) -> tuple[pd.DataFrame, list[str] | None]:
    """A plain file as a DataFrame (no validation beyond the format).

    Only a regular file is read (:func:`selfinstruct.inputs.check_regular_file`:
    a FIFO or device is refused before it is opened). CSV is read by
    :func:`selfinstruct.inputs.read_csv_records` (a row with more fields than the
    header is an error naming its line; missing fields are NaN).

    Returns:
        ``(frame, where)``: ``where[k]`` names the place row ``k`` came from in
        error messages (``"<path>:<line>"`` for JSON Lines and CSV, ``"<path>
        (record k)"`` for a JSON array), or None for Parquet.

    Raises:
        InspectError: not a regular file, unsupported suffix, not UTF-8,
            invalid or too deeply nested JSON (with its line for JSON Lines), a
            CSV row with too many fields, a record that is not an object, or
            no records.
    """
    try:
        check_regular_file(path)
    except InputFileError as exc:
        raise InspectError(str(exc)) from None
    suffix = path.suffix.lower()
    if suffix not in PLAIN_SUFFIXES:
        raise InspectError(f"{path}: unsupported format '{suffix}' "
                           f"(use a run directory or {', '.join(PLAIN_SUFFIXES)})")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path), None
        if suffix == ".csv":
            columns, rows = read_csv_records(path)
            return (pd.DataFrame.from_records(rows, columns=columns),
                    [f"{path}:{k + 2}" for k in range(len(rows))])
        text = path.read_bytes().decode("utf-8-sig")
    except InputFileError as exc:
        raise InspectError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise InspectError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable tables
        raise InspectError(f"{path}: cannot read: {exc}".splitlines()[0]) from None
    if not text.strip():
        raise InspectError(f"{path}: file is empty")
    records: list[Any]
    where: list[str] = []
    if suffix == ".json" and text.lstrip().startswith(("[", "{")) and not _looks_like_jsonl(text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InspectError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise InspectError(f"{path}: invalid JSON: nested too deeply") from None
        records = data if isinstance(data, list) else [data]
        where = [f"{path} (record {k})" for k in range(1, len(records) + 1)]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InspectError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
                except RecursionError:
                    raise InspectError(f"{path}:{number}: invalid JSON: nested too deeply"
                                       ) from None
                where.append(f"{path}:{number}")
    for k, record in enumerate(records):
        if not isinstance(record, dict):
            raise InspectError(f"{where[k]}: expected an object, got {type(record).__name__}")
    if not records:
        raise InspectError(f"{path}: no records")
    return pd.DataFrame.from_records(records), where


def _looks_like_jsonl(text: str) -> bool:
    """A ``.json`` file that is really JSON Lines: its first line parses alone
    (or nests too deeply to tell; reading it line by line then names the line)."""
    first = text.lstrip().split("\n", 1)[0].strip()
    if not first.startswith("{") or "\n" not in text.strip():
        return False
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    except RecursionError:
        return True
    return True


def _explode_instances(frame: pd.DataFrame, path: Path, where: list[str] | None
                       ) -> tuple[pd.DataFrame, list[str] | None]:
    """Self-Instruct records (``instances: [{input, output}]``) to one row per instance;
    ``where`` (see :func:`_read_records`) is expanded to match."""
    rows, row_where = [], []
    for k, record in enumerate(frame.to_dict("records"), start=1):
        place = where[k - 1] if where else f"{path} (record {k})"
        instances = record.pop("instances")
        if hasattr(instances, "tolist"):
            instances = instances.tolist()
        if not isinstance(instances, list):
            raise InspectError(f"{place}: field 'instances': expected a list")
        for instance in instances:
            if not isinstance(instance, dict):
                raise InspectError(f"{place}: field 'instances': expected objects")
            rows.append({**record, "task_id": record.get("id"),
                         "input": instance.get("input"), "output": instance.get("output")})
            row_where.append(place)
    return pd.DataFrame.from_records(rows), row_where


def _is_null(value: Any) -> bool:
    """JSON null, or the NaN pandas puts in a missing CSV field or Parquet/JSON cell."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _load_plain_file(path: Path) -> RunData:
    """A plain dataset file as a :class:`RunData` (see :func:`load_run`).

    Raises:
        InspectError: see :func:`_read_records`; also a missing ``instruction`` /
            ``output`` column, a null (missing) ``instruction`` or ``output``, or a
            text value that is not a string, naming file, line (or record) and field.
    """
    frame, where = _read_records(path)
    if "instances" in frame.columns and "output" not in frame.columns:
        frame, where = _explode_instances(frame, path, where)
    for column in ("instruction", "output"):
        if column not in frame.columns:
            raise InspectError(f"{path}: field '{column}': missing column")
    if "input" not in frame.columns:
        frame["input"] = ""
    for column, required in (("instruction", True), ("input", False), ("output", True)):
        values = frame[column].tolist()
        for k, value in enumerate(values):
            if isinstance(value, str):
                continue
            if _is_null(value) and not required:
                values[k] = ""
                continue
            place = where[k] if where else f"{path} (record {k + 1})"
            problem = ("missing (null)" if _is_null(value)
                       else f"expected a string, got {type(value).__name__}")
            raise InspectError(f"{place}: field '{column}': {problem}")
        frame[column] = values
    return RunData(path, "file", _normalize(frame, path.stem), None, [])


def _normalize(frame: pd.DataFrame, stem: str) -> pd.DataFrame:
    """Give a frame the columns every statistic relies on (see :class:`RunData`)."""
    frame = frame.reset_index(drop=True).copy()
    n = len(frame)
    if "input" not in frame.columns:
        frame["input"] = ""
    frame["input"] = [v if isinstance(v, str) else "" for v in frame["input"].tolist()]
    ids = frame["id"].astype(str).tolist() if "id" in frame.columns else []
    if len(set(ids)) != n:
        frame["id"] = [f"{stem}-{k}" for k in range(n)]
    else:
        frame["id"] = ids
    if "task_id" not in frame.columns or frame["task_id"].isna().any():
        # Rows sharing an instruction are one task (as seeds.py groups Alpaca rows).
        codes, _ = pd.factorize(frame["instruction"], sort=False)
        frame["task_id"] = [f"{stem}-t{code}" for code in codes]
    frame["task_id"] = frame["task_id"].astype(str)
    if "is_classification" not in frame.columns:
        frame["is_classification"] = None
    if "round" not in frame.columns:
        frame["round"] = None
    return frame
