"""``selfinstruct decontaminate``: split a data set into clean and contaminated examples.

The input is anything ``inspect`` reads (a run directory, Alpaca JSON, Parquet,
CSV, a ``save_to_disk`` directory). The output directory is a run directory
like ``score``'s, so ``inspect`` and ``export`` read it:

    manifest.json              the check (evaluation sets, their sha256, methods,
                               settings), counts per benchmark and method, and
                               ``decontaminated_from``
    data/shard-*.parquet       the clean rows, with the input's shard columns
    contaminated.parquet       the dropped rows: the example, and its strongest
                               match (benchmark, item index, id and text, method,
                               score, n-gram coverage) plus every match

Nothing is written until every evaluation set has been read and every example
checked; the files are written atomically, the manifest last, so a crash leaves
the previous output or the new one.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import DecontaminationConfig
from ..storage.files import write_bytes_atomic
from ..storage.manifest import MANIFEST, MANIFEST_FORMAT, Manifest, write_manifest
from ..storage.shards import DATA_DIR, ShardWriter, remove_unlisted
from . import METHODS, DecontaminationError
from .check import Decontaminator, Match, load_benchmarks, strongest

CONTAMINATED_FILE = "contaminated.parquet"
"""The dropped rows' file in the output directory."""

MATCH_FIELDS = [
    pa.field("benchmark", pa.string()),
    pa.field("item_index", pa.int64()),
    pa.field("item_id", pa.string()),
    pa.field("item_text", pa.string()),
    pa.field("method", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("coverage", pa.float64()),
]
"""Columns of :data:`CONTAMINATED_FILE` after the example's: its strongest match."""

ALL_MATCHES = pa.field("matches", pa.list_(pa.struct([
    ("benchmark", pa.string()), ("item_index", pa.int64()), ("item_id", pa.string()),
    ("method", pa.string()), ("score", pa.float64()), ("coverage", pa.float64()),
    ("shared", pa.int64())])))
"""The last column of :data:`CONTAMINATED_FILE`: every match of the example."""

EXAMPLE_FIELDS = [pa.field(n, pa.string()) for n in ("id", "task_id", "instruction", "input",
                                                     "output")]


def check_output(output: Path, source: Path, specs: list[str]) -> None:
    """Refuse an output that is an input or lies in one, lies in a run, cannot be
    written, or holds anything but an earlier ``decontaminate`` output (which is
    replaced).

    Raises:
        DecontaminationError: one line naming the path.
    """
    from ..safety import OutputPathError, check_not_in_run, check_output_apart, check_writable_dir

    from .benchmarks import parse_against

    inputs: dict[str, Path] = {"the input": source}
    for k, spec in enumerate(specs):
        inputs[f"--against #{k + 1}"] = parse_against(spec).path
    try:
        check_output_apart(output, inputs, "--output",
                           writes=(MANIFEST, DATA_DIR, CONTAMINATED_FILE))
        if output.exists() and not output.is_dir():
            raise DecontaminationError(f"{output}: output path exists and is not a directory")
        check_writable_dir(output, "--output")
        check_not_in_run(output, "--output", allow_run=True)
    except OutputPathError as exc:
        raise DecontaminationError(str(exc)) from None
    if output.is_dir() and any(output.iterdir()):
        import json

        try:
            previous = json.loads((output / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict) or "decontaminated_from" not in previous:
            raise DecontaminationError(f"{output}: not empty and not an earlier decontaminate "
                                       "output; choose another --output")


def decontaminate(source: Path, output: Path, config: DecontaminationConfig
                  ) -> dict[str, Any]:
    """Check every example of ``source`` and write the clean and dropped rows to ``output``.

    Args:
        source: any input of ``inspect``.
        output: the output directory (see the module docstring).
        config: the evaluation sets (``against``), methods and thresholds.

    Returns:
        The summary recorded in the manifest (``stats.decontamination``): rows
        checked, kept and dropped, per benchmark and method the examples
        flagged, the seconds taken, and the notes.

    Raises:
        DecontaminationError: no evaluation set, an unreadable input or
            evaluation set, a field it lacks, an empty set, an output refused by
            :func:`check_output`.
    """
    from ..analysis.loading import InspectError, load_run

    if not config.against:
        raise DecontaminationError("give at least one --against FILE[:FIELD,...]")
    check_output(output, source, config.against)
    started = time.perf_counter()
    try:
        run = load_run(source)
    except InspectError as exc:
        raise DecontaminationError(str(exc)) from None
    benchmarks = load_benchmarks(config.against)
    loaded = time.perf_counter()
    check = Decontaminator.build(benchmarks, config)
    built = time.perf_counter()
    frame = run.frame
    try:
        matches = check.check(frame["instruction"].tolist(), frame["input"].tolist(),
                              frame["output"].tolist())
    finally:
        check.close()
    checked = time.perf_counter()

    rows = [_row({str(k): v for k, v in r.items()}) for r in frame.to_dict("records")]
    clean = [row for row, found in zip(rows, matches, strict=True) if not found]
    dropped = [(row, found) for row, found in zip(rows, matches, strict=True) if found]
    summary = _summary(benchmarks, matches, len(rows), check.notes)
    summary["seconds"] = {"read": round(loaded - started, 3), "index": round(built - loaded, 3),
                          "check": round(checked - built, 3)}

    output.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output / CONTAMINATED_FILE, _dropped_bytes(dropped))
    writer = ShardWriter(output, 10_000)
    writer.add(clean)
    shards = writer.close()
    summary["seconds"]["total"] = round(time.perf_counter() - started, 3)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = dict(run.manifest or {})
    write_manifest(output, Manifest.model_validate({
        "format": MANIFEST_FORMAT, "status": "complete", "created": now, "updated": now,
        "files": [{"path": s.path, "rows": s.rows, "sha256": s.sha256} for s in shards],
        "rows": len(clean), "rows_pending": 0,
        "tasks": len({row["task_id"] for row in clean}), "rounds": 0, "ledger": None,
        "model": manifest.get("model"), "seeds": manifest.get("seeds"),
        "config": {**(manifest.get("config") or {}), "decontamination": config.model_dump(
            mode="json")},
        "versions": _versions(), "stats": {"decontamination": {**check.describe(), **summary}},
        "decontaminated_from": str(source),
    }))
    remove_unlisted(output, shards)  # after the manifest: it never names a removed file
    return summary


def _row(record: dict[str, Any]) -> dict[str, Any]:
    """A shard row from an input row: the example, the input's shard columns, and its
    quality columns when it has them (as ``score`` writes its rows)."""
    from ..quality import QUALITY_COLUMNS
    from ..scoring import ScoreJob, _plain

    record = _plain(record)
    quality = ({c: record.get(c) for c in QUALITY_COLUMNS} if QUALITY_COLUMNS[0] in record
               else {})
    return ScoreJob._row(record, quality)


def _summary(benchmarks: list[Any], matches: list[list[Match]], rows: int,
             notes: list[str]) -> dict[str, Any]:
    """Rows checked, kept and dropped; per benchmark, examples flagged by each
    method and in all (an example flagged by two methods counts once in
    ``examples``)."""
    per: dict[str, dict[str, Any]] = {
        b.name: {"examples": 0, **dict.fromkeys(METHODS, 0)} for b in benchmarks}
    reasons: Counter[str] = Counter()
    for found in matches:
        for name in {m.benchmark for m in found}:
            per[name]["examples"] += 1
        for m in found:
            per[m.benchmark][m.method] += 1
        best = strongest(found)
        if best is not None:
            reasons[best.reason] += 1
    dropped = sum(1 for found in matches if found)
    return {"rows_checked": rows, "rows_kept": rows - dropped, "rows_dropped": dropped,
            "by_benchmark": per, "reasons": dict(reasons), "notes": list(notes)}


def _dropped_bytes(dropped: list[tuple[dict[str, Any], list[Match]]]) -> bytes:
    schema = pa.schema([*EXAMPLE_FIELDS, *MATCH_FIELDS, ALL_MATCHES])
    columns: dict[str, list[Any]] = {f.name: [] for f in schema}
    for row, found in dropped:
        best = strongest(found)
        assert best is not None
        for name in ("id", "task_id", "instruction", "input", "output"):
            columns[name].append(row[name])
        columns["benchmark"].append(best.benchmark)
        columns["item_index"].append(best.item)
        columns["item_id"].append(best.item_id)
        columns["item_text"].append(best.item_text)
        columns["method"].append(best.method)
        columns["score"].append(best.score)
        columns["coverage"].append(best.coverage)
        columns["matches"].append([
            {"benchmark": m.benchmark, "item_index": m.item, "item_id": m.item_id,
             "method": m.method, "score": m.score, "coverage": m.coverage, "shared": m.shared}
            for m in found])
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns, schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


def _versions() -> dict[str, str]:
    from ..run import package_versions

    return package_versions()
