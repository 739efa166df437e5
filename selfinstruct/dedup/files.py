"""The ``dedup`` command's records and files: :func:`dedup_records`, :func:`dedup_file`.

Input comes through :func:`selfinstruct.records.read_records` (JSON, JSON
Lines, Parquet, CSV, a directory of them, a ``save_to_disk`` directory); the
output is written in the format of its extension (:func:`output_format`),
kept and dropped rows together (:func:`selfinstruct.safety.atomic_files`).
pandas and pyarrow are imported only inside :func:`dedup_file`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..records import RecordsError, frame_of, input_files, read_records, value_problem
from .index import RougeIndex
from .rouge import DEFAULT_THRESHOLD, _check_tokenizer

if TYPE_CHECKING:
    import pandas as pd


class DedupInputError(ValueError):
    """Bad input for :func:`dedup_file` / :func:`dedup_records`.

    Raised for a missing or unreadable file, an unknown format, a missing
    field, or a non-string value in the field.  The message is one line and
    names the file (when there is one), the line or row, and the field.
    """


class DroppedRecord(NamedTuple):
    """A dropped record: its position, the kept record it duplicates
    (position and text), and their ROUGE-L F1 (> threshold)."""

    position: int
    nearest_position: int
    nearest_text: str
    score: float


def _field_values(records: Sequence[Any], field: str, where: str) -> list[str]:
    out = []
    for pos, rec in enumerate(records):
        try:
            value = rec[field]
        except (KeyError, TypeError, IndexError):
            raise DedupInputError(f"{where}: record {pos} has no field {field!r}") from None
        if not isinstance(value, str):
            raise DedupInputError(
                f"{where}: field {field!r} of record {pos} is {type(value).__name__}, not a string"
            )
        out.append(value)
    return out


def dedup_records(
    records: Sequence[dict[str, Any]],
    field: str,
    threshold: float = DEFAULT_THRESHOLD,
    tokenizer: str = "rouge",
) -> tuple[list[int], list[DroppedRecord]]:
    """ROUGE-L dedup of records on one text field (pure function).

    Record i is kept iff ROUGE-L F1 of ``records[i][field]`` with every
    earlier kept record is ``<= threshold`` (Self-Instruct filter,
    rouge_score F1; the first record is always kept).

    Returns:
        ``(kept_positions, dropped)``: kept positions ascending, and one
        :class:`DroppedRecord` ``(position, nearest_position, nearest_text,
        score)`` per dropped record, ascending; ``nearest_position`` is the
        position in ``records`` of the most similar earlier kept record
        (lowest position on ties).

    Raises:
        DedupInputError: a record lacks ``field`` or its value is not a str.
        ValueError: bad threshold or tokenizer.
    """
    texts = _field_values(records, field, "records")
    kept, dropped, nearest, score = _dedup_texts(texts, threshold, tokenizer)
    return kept.tolist(), [DroppedRecord(p, n, texts[n], s) for p, n, s in
                           zip(dropped.tolist(), nearest.tolist(), score.tolist(), strict=True)]


def _dedup_texts(texts: list[str], threshold: float, tokenizer: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`dedup_records` on the texts themselves, as int64/float64 arrays:
    ``(kept positions, dropped positions, nearest kept position of each
    dropped one, its ROUGE-L F1)``, positions ascending.

    Raises:
        ValueError: bad threshold or tokenizer.
    """
    index = RougeIndex(threshold=threshold, tokenizer=tokenizer)
    keep, nearest, score = index._filter(texts, exact=False)
    kept = np.flatnonzero(keep)
    dropped = np.flatnonzero(~keep)
    return kept, dropped, kept[nearest[dropped]], score[dropped]


#: Output extension -> format written by :func:`dedup_file` (the format follows the name).
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                  ".ndjson": "jsonl", ".json": "json"}


def output_format(output_path: str | os.PathLike[str]) -> str:
    """The format :func:`dedup_file` writes to ``output_path``, from its extension.

    Returns:
        ``"parquet"`` (``.parquet``, ``.pq``), ``"jsonl"`` (``.jsonl``,
        ``.ndjson``: one JSON object per line) or ``"json"`` (``.json``: a JSON
        array of objects); case-insensitive.

    Raises:
        DedupInputError: any other extension (one line naming the path).
    """
    p = Path(output_path)
    fmt = OUTPUT_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DedupInputError(
            f"{p}: unknown output format {p.suffix or '(no extension)'!r}; the format follows "
            "the extension: .parquet, .jsonl, .ndjson or .json")
    return fmt


def dropped_path(output_path: str | os.PathLike[str]) -> Path:
    """Where :func:`dedup_file` writes dropped rows: ``<stem>.dropped<ext>`` next to
    ``output_path``, with its extension (``kept.jsonl`` -> ``kept.dropped.jsonl``)."""
    p = Path(output_path)
    return p.with_name(f"{p.stem}.dropped{p.suffix}")


def _read_input(path: Path, field: str) -> pd.DataFrame:
    """The records at ``path`` (:func:`selfinstruct.records.read_records`) as one
    DataFrame, sources concatenated in order (columns united; a column missing
    from a source is null there), each checked: ``field`` present with a string
    in every record.

    Raises:
        DedupInputError: anything the reader refuses; a source without ``field``
            (naming its columns); a record whose ``field`` is missing, null or
            not a string (naming its line or row).
    """
    try:
        sources = read_records(path)
    except RecordsError as exc:
        raise DedupInputError(str(exc)) from None
    for source in sources:
        if field not in source.columns:
            cols = ", ".join(map(str, source.columns[:10]))
            raise DedupInputError(f"{source.path}: no field {field!r} (columns: {cols or 'none'})")
        for k, value in enumerate(source.values(field)):
            problem = value_problem(value)
            if problem is not None:
                raise DedupInputError(str(RecordsError(source.position(k), problem, field)))
    return frame_of(sources)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):  # dates and times from Parquet
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode(df: pd.DataFrame, fmt: str) -> bytes:
    """``df`` as the bytes of a ``fmt`` file (see :data:`OUTPUT_FORMATS`): Parquet with
    zstd through pyarrow; JSON from pyarrow's Python rows (nulls as null, UTF-8)."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.getvalue()
    lines = [json.dumps(row, ensure_ascii=False, allow_nan=False, default=_json_default)
             for row in table.to_pylist()]
    if fmt == "jsonl":
        text = "".join(line + "\n" for line in lines)
    else:
        text = "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    return text.encode("utf-8")


def dedup_file(
    input_path: str | os.PathLike[str],
    field: str,
    output_path: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    tokenizer: str = "rouge",
) -> dict[str, Any]:
    """ROUGE-L dedup of a dataset file (or a directory of them) on one text field.

    Reads ``input_path`` with :func:`selfinstruct.records.read_records`: a JSON
    array (``.json``), JSON Lines (``.jsonl``/``.ndjson``), Parquet
    (``.parquet``/``.pq``) or CSV file, a directory of such files (in name
    order, one after the other), or a ``save_to_disk`` directory (every split,
    in order). Applies
    :func:`dedup_records` (Self-Instruct filter: rouge_score ROUGE-L F1
    ``> threshold`` is dropped, in input order), and writes, in the format of
    ``output_path``'s extension (:func:`output_format`: Parquet with zstd,
    JSON Lines or a JSON array):

    * ``output_path``: the kept rows, all columns, in input order;
    * ``<stem>.dropped<ext>`` next to it (:func:`dropped_path`): the
      dropped rows plus ``nearest_index`` (int64, position in the input of
      the kept row it duplicates; for a directory, in the concatenation),
      ``nearest_text`` and ``rouge_l`` (float64); existing columns with these
      names are overwritten.

    Both files are written together (:func:`selfinstruct.safety.atomic_files`:
    temporary files, fsync, the dropped file renamed first, then the kept
    one), so they appear as a pair or not at all. Every output check is made
    before the input is read.

    Returns:
        ``{"input": rows read, "kept": n, "dropped": n, "output": str,
        "dropped_output": str, "read_seconds": s, "dedup_seconds": s,
        "write_seconds": s, "seconds": total wall seconds}``.

    Raises:
        DedupInputError: missing/unreadable file, unknown input or output
            format, a directory without record files, anything else
            :func:`selfinstruct.records.read_records` refuses, a missing field,
            a null or non-string value in the field (naming its line or row), or
            rows the output format cannot hold.
        OutputPathError: (:mod:`selfinstruct.safety`) the output or its
            dropped file is, lies inside or contains the input, or cannot be
            written (an existing directory, a regular file on the path, a
            read-only directory).
        ValueError: bad threshold or tokenizer.
    """
    from ..safety import (OutputPathError, atomic_files, check_not_in_run, check_output_apart,
                         check_writable_file)

    _check_tokenizer(tokenizer)
    if not (0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    t0 = time.perf_counter()
    src = Path(input_path)
    out = Path(output_path)
    drop_out = dropped_path(out)
    try:  # the input's own mistakes first (a loop, a FIFO, nothing there)
        input_files(src)
    except RecordsError as exc:
        raise DedupInputError(str(exc)) from None
    check_writable_file(out, "--output")
    check_writable_file(drop_out, "--output")
    check_not_in_run(out, "--output")
    fmt = output_format(out)
    check_output_apart(out, {"INPUT": src}, "--output")
    check_output_apart(drop_out, {"INPUT": src}, "--output",
                       name="the dropped-rows file of --output")
    df = _read_input(src, field)
    values = df[field].tolist()
    t1 = time.perf_counter()
    kept, dropped, nearest, score = _dedup_texts(values, threshold, tokenizer)
    t2 = time.perf_counter()
    kept_df = df.iloc[kept].reset_index(drop=True)
    drop_df = df.iloc[dropped].reset_index(drop=True)
    drop_df["nearest_index"] = nearest
    drop_df["nearest_text"] = [values[j] for j in nearest.tolist()]
    drop_df["rouge_l"] = score
    encoded = []
    for frame in (drop_df, kept_df):
        try:
            encoded.append(_encode(frame, fmt))
        except Exception as exc:  # pyarrow / json raise many types
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise DedupInputError(f"{src}: rows cannot be written as {fmt} "
                                  f"({type(exc).__name__}: {first})") from None
    try:
        with atomic_files(drop_out, out) as (drop_handle, kept_handle):
            drop_handle.write(encoded[0])
            kept_handle.write(encoded[1])
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot write: {exc.strerror or exc}") from None
    t3 = time.perf_counter()
    return {
        "input": len(values),
        "kept": len(kept),
        "dropped": len(dropped),
        "output": str(out),
        "dropped_output": str(drop_out),
        "read_seconds": t1 - t0,
        "dedup_seconds": t2 - t1,
        "write_seconds": t3 - t2,
        "seconds": t3 - t0,
    }
