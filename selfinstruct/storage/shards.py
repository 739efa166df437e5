"""Shards: the run's output as Parquet files plus a ``manifest.json``.

Layout of an output directory::

    manifest.json                 files, row counts, sha256, config, versions, stats
    data/shard-00000.parquet      at most ``shard_size`` rows each, zstd

One row per instance, with the columns of :data:`SCHEMA` (:data:`JUDGED_SCHEMA`
in a judged run). ``messages`` is the
chat form SFT trainers take (TRL's ``SFTTrainer`` reads it directly): the user
turn is the instruction, plus a blank line and the input when there is one; the
assistant turn is the output. ``datasets.load_dataset("parquet",
data_files="DIR/data/*.parquet")`` loads the shards.

Every file is written to a temporary name in its directory, fsynced and renamed,
so a reader sees it whole or not at all.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..quality import QUALITY_COLUMNS, QUALITY_FIELDS
from .files import write_bytes_if_changed

DATA_DIR = "data"

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("task_id", pa.string()),
    ("instruction", pa.string()),
    ("input", pa.string()),
    ("output", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("is_classification", pa.bool_()),
    ("model", pa.string()),
    ("round", pa.int32()),
    ("prompt_task_ids", pa.list_(pa.string())),
    ("nearest_instruction", pa.string()),
    ("nearest_rouge_l", pa.float64()),
])
"""Columns of every shard; ``nearest_*`` is the most similar pool instruction at
the time the task was kept, and its ROUGE-L F1 (null when nothing overlapped)."""

JUDGED_SCHEMA = pa.schema([*SCHEMA, *QUALITY_FIELDS])
"""Columns of a judged run's shards (``quality.judge``): :data:`SCHEMA` followed by
:data:`~selfinstruct.quality.QUALITY_FIELDS` (the judge's scores and rationales)."""


def schema_for(rows: Sequence[dict[str, Any]]) -> pa.Schema:
    """:data:`JUDGED_SCHEMA` when the rows carry quality columns, else :data:`SCHEMA`
    (so a run without the judge writes the same bytes as before judging existed)."""
    return JUDGED_SCHEMA if rows and QUALITY_COLUMNS[0] in rows[0] else SCHEMA


def user_turn(instruction: str, input_text: str) -> str:
    """The user message: the instruction, then a blank line and the input if any."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def messages_for(instruction: str, input_text: str, output: str) -> list[dict[str, str]]:
    """The ``messages`` column value: ``[{"role": "user", ...}, {"role": "assistant", ...}]``."""
    return [
        {"role": "user", "content": user_turn(instruction, input_text)},
        {"role": "assistant", "content": output},
    ]


@dataclass(frozen=True)
class ShardInfo:
    """A written shard: path relative to the output directory, rows, sha256."""

    path: str
    rows: int
    sha256: str


class ShardWriter:
    """Buffers rows and writes them as Parquet shards of at most ``shard_size`` rows.

    Args:
        output_dir: the run's output directory (shards go to ``data/`` below it).
        shard_size: rows per file at most (>= 1).
        compression: a Parquet codec pyarrow knows ("zstd" by default).

    Rows are dicts with the keys of :data:`SCHEMA`; a full shard is written as
    soon as enough rows are buffered, the rest on :meth:`close`. Shard k always
    holds rows ``k*shard_size ..`` of the run, so a resumed run rebuilds the same
    files, and a file already holding the same bytes is not rewritten.
    """

    def __init__(self, output_dir: Path, shard_size: int, compression: str = "zstd"):
        self.output_dir = Path(output_dir)
        self.shard_size = shard_size
        self.compression = compression
        self.shards: list[ShardInfo] = []
        self._buffer: list[dict[str, Any]] = []

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Buffer rows, writing every full shard."""
        self._buffer.extend(rows)
        while len(self._buffer) >= self.shard_size:
            chunk, self._buffer = self._buffer[: self.shard_size], self._buffer[self.shard_size:]
            self._write(chunk)

    def close(self) -> list[ShardInfo]:
        """Write what is buffered; return every shard written, in order."""
        if self._buffer:
            chunk, self._buffer = self._buffer, []
            self._write(chunk)
        return list(self.shards)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema_for(rows)), buffer,
                       compression=self.compression)
        relative = f"{DATA_DIR}/shard-{len(self.shards):05d}.parquet"
        digest = write_bytes_if_changed(self.output_dir / relative, buffer.getvalue())
        self.shards.append(ShardInfo(relative, len(rows), digest))


def remove_unlisted(output_dir: Path, shards: Sequence[ShardInfo]) -> list[str]:
    """Delete ``data/shard-*.parquet`` files that ``shards`` does not list.

    A run re-derived with a smaller result (a resumed run with a tighter budget,
    ``score`` run again with a stricter cut) writes fewer shards than before;
    the extra files would still match ``data/*.parquet``. Call this only after
    the manifest listing ``shards`` is written, so a crash never leaves a
    manifest naming a deleted file.

    Returns:
        The relative paths removed.
    """
    listed = {s.path for s in shards}
    removed = []
    for path in sorted((Path(output_dir) / DATA_DIR).glob("shard-*.parquet")):
        relative = f"{DATA_DIR}/{path.name}"
        if relative not in listed:
            path.unlink()
            removed.append(relative)
    return removed
