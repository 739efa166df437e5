"""Exporting a run to the formats SFT trainers read, with a dataset card.

Formats (``selfinstruct export RUN --format F --output DIR``):

===========  ==============================================  ==========================
format       files in DIR                                    read back with
===========  ==============================================  ==========================
alpaca       ``train.json``: JSON array of ``{instruction,    ``load_dataset("json")``
             input, output}`` (+ ``system``)
sharegpt     ``train.json``: JSON array of ``{id,             ShareGPT readers (FastChat,
             conversations: [{from, value}]}``,               axolotl, LLaMA-Factory)
             ``from`` in system / human / gpt
messages     ``train.jsonl``: ``{"messages": [{role,          ``load_dataset("json")``,
             content}]}`` per line (OpenAI fine-tuning         TRL ``SFTTrainer``
             format)
parquet      ``data/train-00000-of-00001.parquet``: every     ``load_dataset("parquet")``
             shard column, ``messages`` and a judged
             run's ``quality_*`` columns included
datasets     ``save_to_disk`` of a ``DatasetDict``            ``load_from_disk``
===========  ==============================================  ==========================

With ``--train-split F`` a ``test`` split (``test.json`` ...) holds the other
tasks. The split is a pure function of each task's instruction text (its
SHA-256 mapped to [0, 1) compared with F), so it never changes between exports,
and every instance of a task, or every row repeating an instruction, lands in
the same split. Every export writes a ``README.md`` dataset card whose YAML
front matter follows the Hugging Face dataset-card conventions (``configs`` /
``data_files`` point at the files, so ``load_dataset(DIR)`` works).

The export is built in a temporary sibling directory and renamed into place, so
``DIR`` is either absent or complete. With ``--drop-reviewed-invalid`` the rows
human reviewers marked invalid are left out first (:func:`drop_reviewed_invalid`),
and the card says how many and why. The card is made by
:mod:`selfinstruct.analysis.card`; ``--check-template`` is
:mod:`selfinstruct.analysis.chat_check`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import __version__
from ..safety import OutputPathError, check_writable_dir, enclosing_run
from ..storage.files import atomic_file, current_umask, file_digest, write_json
from ..quality import QUALITY_COLUMNS, SCORES, column
from ..storage.shards import JUDGED_SCHEMA, SCHEMA, messages_for, user_turn
from .card import dataset_card
from .constants import FORMATS
from .loading import RunData

if TYPE_CHECKING:
    import pyarrow as pa


class ExportError(ValueError):
    """An export that cannot be made (occupied output, bad option, unusable model);
    one-line message naming the path or option."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote.

    Attributes:
        output: the export directory.
        format: one of :data:`FORMATS`.
        rows: split name -> rows (``train``, and ``test`` with a split).
        tasks: split name -> distinct tasks.
        files: split name -> path (or glob) relative to ``output``.
        card: the dataset card's path.
        reviewed: with ``--drop-reviewed-invalid``, what was left out
            (:meth:`~selfinstruct.review.drop.ReviewedInvalid.record`), else None.
    """

    output: Path
    format: str
    rows: dict[str, int]
    tasks: dict[str, int]
    files: dict[str, str]
    card: Path
    reviewed: dict[str, Any] | None = None


def drop_reviewed_invalid(run: RunData) -> tuple[RunData, dict[str, Any]]:
    """``run`` without the rows human reviewers marked invalid (``export
    --drop-reviewed-invalid``).

    A row is left out when some reviewer answered "no" to any of Self-Instruct
    §3.3's three questions about it (``RUN/review/labels-*.parquet``), matched by
    :func:`~selfinstruct.quality.example_key` of its instruction, input and output.

    Returns:
        ``(run with the remaining rows, record)``: the record is
        :meth:`~selfinstruct.review.drop.ReviewedInvalid.record` (labels files
        with sha256, reviewers, rows left out and tasks left with no row).

    Raises:
        ExportError: ``run`` is a file, not a run directory; it has no review
            labels; a labels file is damaged (one line naming it); every row
            was marked invalid.
    """
    from ..quality import example_key
    from ..review import ReviewError
    from ..review.drop import reviewed_invalid

    if run.kind != "run":
        raise ExportError(f"{run.path}: --drop-reviewed-invalid needs a run directory (a "
                          "file has no review labels)")
    try:
        found = reviewed_invalid(run.path)
    except ReviewError as exc:
        raise ExportError(str(exc)) from None
    frame = run.frame
    invalid = [example_key(i, x, o) in found.keys for i, x, o in
               zip(frame["instruction"].tolist(), frame["input"].tolist(),
                   frame["output"].tolist(), strict=True)]
    kept = frame[[not bad for bad in invalid]].reset_index(drop=True)
    if kept.empty and not frame.empty:
        raise ExportError(f"{run.path}: no rows to export: reviewers marked all "
                          f"{len(frame)} invalid")
    tasks = int(frame["task_id"].nunique()) - int(kept["task_id"].nunique())
    return replace(run, frame=kept), found.record(sum(invalid), tasks)


# ---------------------------------------------------------------------------
# Splits and records
# ---------------------------------------------------------------------------


def split_key(instruction: str) -> float:
    """A task's position in [0, 1): the first 8 bytes of SHA-256 of its instruction."""
    digest = hashlib.sha256(b"selfinstruct-split\0" + instruction.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign_splits(instructions: Sequence[str], train_fraction: float | None) -> list[str]:
    """``"train"`` or ``"test"`` per row, deterministically and by task.

    A task goes to train iff ``split_key(instruction) < train_fraction``. With
    two or more distinct instructions neither split is left empty: when the
    hash puts every task on one side, the task with the highest (or lowest)
    key moves to the other.

    Args:
        instructions: one per row; rows sharing an instruction share a split.
        train_fraction: in (0, 1], or None (everything in train).

    Raises:
        ExportError: ``train_fraction`` outside (0, 1].
    """
    if train_fraction is None or train_fraction == 1.0:
        return ["train"] * len(instructions)
    if not 0.0 < train_fraction < 1.0:
        raise ExportError(f"--train-split: expected a fraction in (0, 1], got {train_fraction}")
    keys = {text: split_key(text) for text in dict.fromkeys(instructions)}
    test = {text for text, key in keys.items() if key >= train_fraction}
    if len(keys) >= 2:
        ordered = sorted(keys, key=lambda text: (keys[text], text))
        if not test:
            test = {ordered[-1]}
        elif len(test) == len(keys):
            test.discard(ordered[0])
    return ["test" if text in test else "train" for text in instructions]


def messages_column(frame: pd.DataFrame, system_prompt: str | None = None
                    ) -> list[list[dict[str, str]]]:
    """Every row's chat form (:func:`selfinstruct.storage.shards.messages_for`), with a
    leading system turn when ``system_prompt`` is set."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [system + messages_for(i, x, o) for i, x, o in
            zip(frame["instruction"].tolist(), frame["input"].tolist(), frame["output"].tolist(),
                strict=True)]


def alpaca_records(frame: pd.DataFrame, system_prompt: str | None = None) -> list[dict[str, str]]:
    """``{instruction, input, output}`` per row (+ ``system``, LLaMA-Factory's key)."""
    extra = {"system": system_prompt} if system_prompt else {}
    return [{"instruction": i, "input": x, "output": o, **extra} for i, x, o in
            zip(frame["instruction"].tolist(), frame["input"].tolist(), frame["output"].tolist(),
                strict=True)]


def sharegpt_records(frame: pd.DataFrame, system_prompt: str | None = None
                     ) -> list[dict[str, Any]]:
    """``{id, conversations: [{from, value}]}`` per row: an optional ``system``
    turn, then ``human`` (instruction + blank line + input) and ``gpt`` (output)."""
    system = [{"from": "system", "value": system_prompt}] if system_prompt else []
    return [{"id": rid, "conversations": [*system, {"from": "human", "value": user_turn(i, x)},
                                          {"from": "gpt", "value": o}]}
            for rid, i, x, o in zip(frame["id"].tolist(), frame["instruction"].tolist(),
                                    frame["input"].tolist(), frame["output"].tolist(),
                                    strict=True)]


def messages_records(frame: pd.DataFrame, system_prompt: str | None = None
                     ) -> list[dict[str, Any]]:
    """``{"messages": [...]}`` per row: the OpenAI chat fine-tuning line (no other keys)."""
    return [{"messages": m} for m in messages_column(frame, system_prompt)]


def arrow_table(frame: pd.DataFrame, system_prompt: str | None = None) -> pa.Table:
    """The rows as a pyarrow Table with the shard schema's types.

    Columns: ``id, task_id, instruction, input, output, messages`` and, where
    the source has values for them, the shard's provenance columns
    (``is_classification``, ``model``, ``round``, ``prompt_task_ids``,
    ``nearest_instruction``, ``nearest_rouge_l``); then, for judged rows (any
    score column present), every quality column of
    :data:`~selfinstruct.quality.QUALITY_FIELDS` the source has, nulls included
    (an unparseable verdict's scores are null), so a judged export keeps one
    schema. ``messages`` carries the system turn when one is given.
    """
    import pyarrow as pa

    core = ["id", "task_id", "instruction", "input", "output"]
    extra = [f.name for f in SCHEMA if f.name not in core and f.name != "messages"
             and f.name in frame.columns and frame[f.name].notna().any()]
    if any(column(name) in frame.columns for name in SCORES):
        extra += [name for name in QUALITY_COLUMNS if name in frame.columns]
    data = frame[core + extra].copy()
    # pandas takes any list-like of the frame's length; pandas-stubs types a column
    # value as scalars or sequences of scalars, not a list of lists of dicts.
    data["messages"] = messages_column(frame, system_prompt)  # type: ignore[assignment]
    names = [*core, "messages", *extra]
    schema = pa.schema([JUDGED_SCHEMA.field(n) for n in names])
    try:
        return pa.Table.from_pandas(data[names], schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ExportError(f"cannot convert rows to the shard schema: {exc}".splitlines()[0]) \
            from None


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _write_json(path: Path, data: Any, lines: bool) -> None:
    with atomic_file(path) as handle:
        if lines:
            for record in data:
                handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        else:
            handle.write((json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


EXPORT_MARKER = ".selfinstruct-export.json"
"""Written last into every export: the files it wrote and their sha256. ``--overwrite``
replaces a directory only when this record accounts for everything in it."""

EXPORT_FORMAT = "selfinstruct-export/1"


def _tree_digests(directory: Path) -> dict[str, str | None]:
    """Every entry below ``directory`` (relative POSIX path -> sha256; None for
    anything that is not a regular file: a link, a device, an empty folder)."""
    found: dict[str, str | None] = {}
    for entry in sorted(directory.rglob("*")):
        name = entry.relative_to(directory).as_posix()
        if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
            found[name] = None
        elif entry.is_file():
            found[name] = file_digest(entry)
        elif not any(entry.iterdir()):
            found[name] = None
    return found


def _previous_export_problem(output: Path) -> str | None:
    """Why ``output`` is not an unchanged export of ours (None when it is one)."""
    marker = output / EXPORT_MARKER
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "holds files that are not a selfinstruct export"
    except (OSError, ValueError, RecursionError):
        return f"its {EXPORT_MARKER} is damaged"
    if not (isinstance(record, dict) and record.get("format") == EXPORT_FORMAT
            and isinstance(record.get("files"), dict)):
        return f"its {EXPORT_MARKER} is damaged"
    on_disk = _tree_digests(output)
    on_disk.pop(EXPORT_MARKER, None)
    for name, digest in on_disk.items():
        if name not in record["files"] and digest is not None:
            return f"holds {name}, which the export did not write"
        if digest is None and not any(f.startswith(name + "/") for f in record["files"]):
            return f"holds {name}, which the export did not write"
        if digest is not None and record["files"][name] != digest:
            return f"{name} was changed after the export wrote it"
    return None


def _check_output(output: Path, overwrite: bool, source: Path) -> None:
    """Refuse an output that is, or is inside, a run; contains the input; or holds
    anything but an unchanged previous export (with ``overwrite``) or nothing."""
    resolved, src = output.resolve(), source.resolve()
    run = enclosing_run(resolved)
    if run is not None:
        where = "holds" if run == resolved else f"is inside {run}, which holds"
        raise ExportError(f"{output}: {where} a selfinstruct run; choose another --output")
    if resolved == src or resolved in src.parents:
        raise ExportError(f"{output}: would contain the input {source}; choose another --output")
    if output.is_symlink():
        raise ExportError(f"{output}: is a symbolic link; give the directory itself")
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output}: exists and is not a directory")
    try:
        check_writable_dir(output, "--output")
    except OutputPathError as exc:
        raise ExportError(str(exc)) from None
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise ExportError(f"{output}: not empty (pass --overwrite to replace an "
                              "earlier export)")
        problem = _previous_export_problem(output)
        if problem is not None:
            raise ExportError(f"{output}: --overwrite only replaces an unchanged earlier "
                              f"export, and this directory {problem}; remove it yourself or "
                              "choose another --output")


def _write_marker(staging: Path) -> None:
    files = {name: digest for name, digest in _tree_digests(staging).items()
             if digest is not None}
    write_json(staging / EXPORT_MARKER, {"format": EXPORT_FORMAT, "selfinstruct": __version__,
                                         "files": files})


def _replace_dir(staging: Path, output: Path) -> None:
    """Move the finished ``staging`` directory to ``output``, replacing it whole.

    The old export is renamed aside first and removed only once the new one is
    in place, so ``output`` is always a whole export (or briefly absent).
    """
    os.chmod(staging, 0o777 & ~current_umask())
    if output.exists():
        old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(output, old)
        try:
            os.rename(staging, output)
        except OSError:
            os.rename(old, output)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, output)


def export_run(run: RunData, fmt: str, output: Path | str, *, stats: dict[str, Any] | None = None,
               system_prompt: str | None = None, train_split: float | None = None,
               overwrite: bool = False, reviewed: dict[str, Any] | None = None
               ) -> ExportResult:
    """Write ``run`` to ``output`` in format ``fmt`` with a dataset card.

    Args:
        run: from :func:`selfinstruct.analysis.loading.load_run`.
        fmt: one of :data:`FORMATS`.
        output: the export directory (created; must be absent or empty, or with
            ``overwrite`` an unchanged earlier export, recognised by its
            :data:`EXPORT_MARKER`; never a run directory, a directory inside
            one, or one containing the input).
        stats: :func:`selfinstruct.analysis.stats.collect_statistics` output for
            the card (None: the card carries counts only).
        system_prompt: a system turn added to every example.
        train_split: fraction of tasks in ``train`` (see :func:`assign_splits`).
        overwrite: replace an earlier export at ``output``.
        reviewed: the record of :func:`drop_reviewed_invalid` when ``run`` has
            had its reviewed-invalid rows left out; the card says so.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: unknown format, occupied output, bad split fraction, an
            empty run, or rows that do not fit the shard schema.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format: unknown format '{fmt}' (use {', '.join(FORMATS)})")
    output = Path(output)
    _check_output(output, overwrite, run.path)
    frame = run.frame
    if frame.empty:
        raise ExportError(f"{run.path}: no rows to export")
    splits = assign_splits(frame["instruction"].tolist(), train_split)
    parts: dict[str, pd.DataFrame] = {name: frame[[s == name for s in splits]]
                                      for name in ("train", "test") if name in splits}
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        files = _write_format(fmt, staging, parts, system_prompt)
        result = ExportResult(
            output, fmt, {k: len(v) for k, v in parts.items()},
            {k: int(v["task_id"].nunique()) for k, v in parts.items()}, files,
            output / "README.md", reviewed)
        card = dataset_card(run, result, stats, system_prompt=system_prompt,
                            train_split=train_split)
        with atomic_file(staging / "README.md") as handle:
            handle.write(card.encode("utf-8"))
        _write_marker(staging)
        _check_output(output, overwrite, run.path)  # again: it may have changed meanwhile
        _replace_dir(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return result


def _write_format(fmt: str, directory: Path, parts: dict[str, pd.DataFrame],
                  system_prompt: str | None) -> dict[str, str]:
    files: dict[str, str] = {}
    if fmt in ("alpaca", "sharegpt", "messages"):
        build = {"alpaca": alpaca_records, "sharegpt": sharegpt_records,
                 "messages": messages_records}[fmt]
        suffix = "jsonl" if fmt == "messages" else "json"
        for name, part in parts.items():
            files[name] = f"{name}.{suffix}"
            _write_json(directory / files[name], build(part, system_prompt),
                        lines=fmt == "messages")
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for name, part in parts.items():
            files[name] = f"data/{name}-00000-of-00001.parquet"
            table = arrow_table(part, system_prompt)
            with atomic_file(directory / files[name]) as handle:
                pq.write_table(table, handle, compression="zstd")
    else:  # datasets
        import datasets

        tables = {name: arrow_table(part, system_prompt) for name, part in parts.items()}
        dataset = datasets.DatasetDict({name: datasets.Dataset(t) for name, t in tables.items()})
        target = directory / "dataset"
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            dataset.save_to_disk(str(target))
        finally:
            if bars:
                datasets.enable_progress_bars()
        for entry in target.iterdir():  # the DatasetDict at the top of the export
            os.rename(entry, directory / entry.name)
        target.rmdir()
        files = {name: f"{name}/*.arrow" for name in parts}
    return files


# ---------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------


def push_to_hub(directory: Path, repo: str, *, private: bool = False,
                token: str | None = None) -> str:
    """Upload an export directory to a Hugging Face dataset repository.

    Creates the repository if needed (``exist_ok``) and uploads every file; the
    card's ``configs`` tell the Hub viewer where the splits are.

    Returns:
        The repository URL.

    Raises:
        ExportError: huggingface_hub missing, or any Hub error (one line).
    """
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ExportError("--push-to-hub needs huggingface_hub (pip install huggingface_hub)") \
            from None
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(directory), repo_type="dataset",
                          commit_message=f"Upload with selfinstruct {__version__}",
                          ignore_patterns=[EXPORT_MARKER])
    except Exception as exc:  # huggingface_hub raises HTTP, auth and validation errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"--push-to-hub {repo}: {first}") from None
    return str(url)


__all__ = ["EXPORT_MARKER", "FORMATS", "ExportError", "ExportResult", "alpaca_records",
           "arrow_table", "assign_splits", "drop_reviewed_invalid", "export_run",
           "messages_column", "messages_records", "push_to_hub", "sharegpt_records",
           "split_key"]
