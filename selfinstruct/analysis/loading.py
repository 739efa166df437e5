"""Loading what ``inspect`` and ``export`` read: a run directory or a plain record file.

A run directory is its ``manifest.json`` (checked) and the shards it lists; a
plain record file, a directory of them without ``manifest.json``, or a
``datasets`` ``save_to_disk`` directory is read with
:func:`selfinstruct.records.read_records` as a run without a manifest. Every
problem raises :class:`InspectError`, one line naming the file and field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..records import RecordsError, dataset_dir_kind, frame_of, read_records, record_suffix
from ..storage.manifest import MANIFEST
from ..storage.shards import DATA_DIR


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
    """Load a run directory or a plain Alpaca-style dataset.

    Args:
        path: a directory holding ``manifest.json`` and the Parquet shards it
            lists; or records with ``instruction`` and ``output`` (``input``
            optional), or Self-Instruct records with ``instances``, in any input
            of :func:`selfinstruct.records.read_records`: a ``.json`` (array or
            JSON Lines), ``.jsonl``/``.ndjson``, ``.parquet`` or ``.csv`` file, a
            ``save_to_disk`` directory (every split), or a directory without
            ``manifest.json`` that holds such files.

    Returns:
        A :class:`RunData`; rows in shard (or file) order.

    Raises:
        InspectError: missing path, a directory that is neither a run nor holds
            records, an unreadable manifest or shard, a shard listed but missing,
            a file that is not a regular file, an unknown file format, a missing
            column, or a null or non-string text value.
    """
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST).is_file() and _holds_records(path):
        return _load_plain_file(path)
    if path.is_dir():
        return _load_run_dir(path)
    return _load_plain_file(path)


def _holds_records(path: Path) -> bool:
    """A directory that is a ``save_to_disk`` dataset or holds record files."""
    if dataset_dir_kind(path) is not None:
        return True
    try:
        return any(record_suffix(p) is not None and not p.name.startswith(".")
                   for p in path.iterdir())
    except OSError:
        return False


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


def _read_records(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Plain records as a DataFrame (:func:`selfinstruct.records.read_records`).

    Returns:
        ``(frame, where)``: ``where[k]`` names the place row ``k`` came from in
        error messages (:class:`selfinstruct.records.Position`: file and line,
        or row, or record number).

    Raises:
        InspectError: any :class:`selfinstruct.records.RecordsError` (not a
            regular file, unsupported suffix, not UTF-8, invalid or too deeply
            nested JSON, a CSV row with too many fields, a record that is not an
            object), or no records (and no header or schema naming columns).
    """
    try:
        sources = read_records(path)
    except RecordsError as exc:
        raise InspectError(str(exc)) from None
    where = [str(source.position(k)) for source in sources for k in range(len(source))]
    if not where and not any(source.columns for source in sources):
        raise InspectError(f"{path}: no records")
    return frame_of(sources), where


def _explode_instances(frame: pd.DataFrame, where: list[str]
                       ) -> tuple[pd.DataFrame, list[str]]:
    """Self-Instruct records (``instances: [{input, output}]``) to one row per instance;
    ``where`` (see :func:`_read_records`) is expanded to match."""
    rows, row_where = [], []
    for k, record in enumerate(frame.to_dict("records"), start=1):
        place = where[k - 1]
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
    """Plain records (a file or directory) as a :class:`RunData` (see :func:`load_run`).

    Raises:
        InspectError: see :func:`_read_records`; also a missing ``instruction`` /
            ``output`` column, a null (missing) ``instruction`` or ``output``, or a
            text value that is not a string, naming file, line (or record) and field.
    """
    frame, where = _read_records(path)
    if "instances" in frame.columns and "output" not in frame.columns:
        frame, where = _explode_instances(frame, where)
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
            place = where[k]
            problem = ("missing (null)" if _is_null(value)
                       else f"expected a string, got {type(value).__name__}")
            raise InspectError(f"{place}: field '{column}': {problem}")
        frame[column] = values
    stem = path.name if path.is_dir() else path.stem
    return RunData(path, "file", _normalize(frame, stem), None, [])


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
