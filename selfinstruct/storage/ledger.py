"""The run directory: lock, ledger of every request and candidate, and crash points.

Layout (all files written atomically: temporary name, fsync, rename)::

    .lock                                   held (flock) by the one process running
    ledger/round-00001/requests-instructions.parquet   each stage's requests and
    ledger/round-00001/requests-classification.parquet completions, saved whole
    ledger/round-00001/requests-instances.parquet      when the stage's batch returns
    ledger/round-00001/requests-instances.part-0001.parquet  completions of a batch
                                            still running, saved in chunks as they
                                            arrive; the whole stage file replaces them
    ledger/round-00001/candidates.parquet   every candidate instruction: stage, reason,
                                            neighbour, score, prompt task ids, raw completion
    ledger/round-00001/rows.parquet         the examples the round produced (shard schema)
    ledger/round-00001/commit.json          written last: sha256 of each file above
    data/shard-00000.parquet                shards, materialised from committed rounds
    manifest.json                           the commit record of the shards

A round exists once its ``commit.json`` does; its files are verified against the
recorded hashes before use, and a mismatch is an error (:class:`LedgerError`), never
silently read. Stage files of an unfinished round are reused when readable and
discarded (to be requested again) when not.

Part files (:meth:`RunDirectory.save_part`) hold completions of a stage whose batch
has not returned yet, a chunk each, numbered in the order written
(:class:`~selfinstruct.engines.recorded.ChunkRecorder` writes them every few
completions or seconds). They belong to unfinished rounds only: :meth:`load_stage`
of an unfinished round merges them with the stage file (a damaged one is discarded
with a warning, like a damaged stage file), :meth:`save_stage` of the whole stage
removes them, :meth:`commit_round` folds any left into their stage files first, and
a committed round's parts are never read.
"""

from __future__ import annotations

import fcntl
import glob
import io
import json
import os
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from .shards import schema_for
from .files import file_digest, take_lock, write_bytes_atomic, write_json

LEDGER_DIR = "ledger"
LOCK_FILE = ".lock"
CRASH_ENV = "SELFINSTRUCT_CRASH_AT"

REQUEST_SCHEMA = pa.schema([
    ("key", pa.string()),            # slot number (instructions) or the instruction text
    ("seed", pa.int64()),
    ("prompt", pa.string()),
    ("prompt_task_ids", pa.list_(pa.string())),
    ("text", pa.string()),
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
])
"""One row per engine request of a stage: what was asked, what came back, its tokens."""

CANDIDATE_SCHEMA = pa.schema([
    ("round", pa.int32()),
    ("slot", pa.int32()),              # the instruction-generation request it came from
    ("item", pa.int32()),              # its number in the generated list (null: unparseable)
    ("instruction", pa.string()),
    ("stage", pa.string()),            # where it stopped: instructions / instances / written
    ("reason", pa.string()),           # reason code; null when written
    ("nearest_instruction", pa.string()),
    ("rouge_l", pa.float64()),
    ("is_classification", pa.bool_()),
    ("instances", pa.int32()),          # instances written
    ("instance_rejections", pa.list_(pa.string())),
    ("prompt_task_ids", pa.list_(pa.string())),
    ("completion", pa.string()),       # the raw instruction-generation completion
    ("quality", pa.list_(pa.float64())),      # judged runs: overall score of each judged
    ("quality_kept", pa.list_(pa.bool_())),   # instance (null: unparseable), passed the cuts
    # decontamination: the matches of the instruction (instance null) or of each dropped
    # instance (its index among the generated instances)
    ("contamination", pa.list_(pa.struct([
        ("instance", pa.int32()), ("benchmark", pa.string()), ("item_index", pa.int64()),
        ("item_id", pa.string()), ("method", pa.string()), ("score", pa.float64()),
        ("coverage", pa.float64())]))),
])
"""One row per candidate instruction of a round (the ledger of decisions)."""


PART_FILE = re.compile(r"requests-(?P<stage>.+)\.part-(?P<number>[0-9]+)\.parquet")
"""Name of a stage's part file: ``requests-<stage>.part-<number>.parquet``, the number
from 1, four digits at least."""


def stage_file_name(stage: str) -> str:
    """``requests-<stage>.parquet``: the ledger file of a stage's requests."""
    return f"requests-{stage}.parquet"


def part_file_name(stage: str, number: int) -> str:
    """``requests-<stage>.part-NNNN.parquet``: part ``number`` (from 1) of a stage."""
    return f"requests-{stage}.part-{number:04d}.parquet"


class LedgerError(RuntimeError):
    """A run directory that cannot be used safely; the message is one line."""


class RunLocked(LedgerError):
    """Another process holds the run directory's lock."""


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``$SELFINSTRUCT_CRASH_AT`` equals ``name``.

    Crash tests name points such as ``round-2:after-instructions``; in normal
    runs the variable is unset and this does nothing.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class RecordedRequest:
    """A request of the ledger with its completion (fields of :data:`REQUEST_SCHEMA`)."""

    key: str
    seed: int | None
    prompt: str
    prompt_task_ids: tuple[str, ...]
    text: str
    finish_reason: str
    prompt_tokens: int
    output_tokens: int


def _parquet_bytes(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


def _records_bytes(records: Sequence[RecordedRequest]) -> bytes:
    rows = [{**record.__dict__, "prompt_task_ids": list(record.prompt_task_ids)}
            for record in records]
    return _parquet_bytes(rows, REQUEST_SCHEMA)


def _read_records(path: Path) -> list[RecordedRequest]:
    return [RecordedRequest(key=r["key"], seed=r["seed"], prompt=r["prompt"],
                            prompt_task_ids=tuple(r["prompt_task_ids"] or ()),
                            text=r["text"], finish_reason=r["finish_reason"],
                            prompt_tokens=r["prompt_tokens"],
                            output_tokens=r["output_tokens"]) for r in _read_parquet(path)]


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


class RunDirectory:
    """A run's output directory: the lock, the ledger and the manifest.

    Args:
        path: the output directory (created by :meth:`lock`).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_handle: IO[str] | None = None
        self.warnings: list[str] = []

    # -- lock ----------------------------------------------------------------

    def lock(self) -> None:
        """Create the directory and take its lock.

        Raises:
            RunLocked: another live process holds it (the message names its pid).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_handle = take_lock(self.path / LOCK_FILE, lambda holder: RunLocked(
            f"{self.path}: another selfinstruct run (pid {holder}) is using this output "
            "directory"))

    def lock_holder(self) -> str | None:
        """The pid recorded by a live process holding the lock, or None if none holds it.

        Only reads: the lock file is opened read-only and tested with a
        non-blocking shared lock, released at once (works on a read-only copy).
        """
        try:
            handle = open(self.path / LOCK_FILE, encoding="utf-8")  # noqa: SIM115 (`with` below)
        except OSError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "unknown"
            except OSError:
                return None
            fcntl.flock(handle, fcntl.LOCK_UN)
        return None

    def unlock(self) -> None:
        """Release the lock (also released by the OS when the process dies)."""
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    # -- ledger --------------------------------------------------------------

    def round_dir(self, round_number: int) -> Path:
        """``ledger/round-NNNNN`` of a round."""
        return self.path / LEDGER_DIR / f"round-{round_number:05d}"

    def has_ledger(self) -> bool:
        """Whether any round has left records here."""
        return (self.path / LEDGER_DIR).is_dir() and any((self.path / LEDGER_DIR).iterdir())

    def committed_rounds(self) -> int:
        """How many consecutive rounds, from round 1, have a ``commit.json``."""
        count = 0
        while (self.round_dir(count + 1) / "commit.json").is_file():
            count += 1
        return count

    def save_stage(self, round_number: int, stage: str,
                   records: Sequence[RecordedRequest]) -> None:
        """Record a stage's requests and completions (atomically, before anything uses them).

        The file supersedes the stage's part files (:meth:`save_part`), which are
        removed once it is in place: ``records`` must hold every record they do.
        """
        write_bytes_atomic(self.round_dir(round_number) / stage_file_name(stage),
                           _records_bytes(records))
        for _, path in self.part_paths(round_number, stage):
            path.unlink(missing_ok=True)

    def save_part(self, round_number: int, stage: str,
                  records: Sequence[RecordedRequest]) -> Path:
        """Record some completions of a stage whose batch is still running, atomically,
        as the stage's next part file (numbered after those already there).

        Returns:
            The part file written, ``round-NNNNN/requests-<stage>.part-NNNN.parquet``.
        """
        parts = self.part_paths(round_number, stage)
        number = parts[-1][0] + 1 if parts else 1
        path = self.round_dir(round_number) / part_file_name(stage, number)
        write_bytes_atomic(path, _records_bytes(records))
        return path

    def part_paths(self, round_number: int, stage: str) -> list[tuple[int, Path]]:
        """The stage's part files as ``(number, path)``, in the order they were written."""
        directory = self.round_dir(round_number)
        found = []
        for path in directory.glob(f"requests-{glob.escape(stage)}.part-*.parquet"):
            match = PART_FILE.fullmatch(path.name)
            if match and match["stage"] == stage:
                found.append((int(match["number"]), path))
        return sorted(found)

    def load_stage(self, round_number: int, stage: str,
                   committed: dict[str, str] | None) -> list[RecordedRequest] | None:
        """A stage's recorded requests, or None if it has none.

        Args:
            committed: the round's ``commit.json`` file hashes when the round is
                committed (the file must match; part files are not read), or None
                for an unfinished round: the stage file's records, then those of
                its part files (in the order written) whose key is not already
                there; an unreadable file is discarded, with a warning, and its
                requests are sent again.

        Raises:
            LedgerError: a committed round's file is missing or does not match its hash.
        """
        name = stage_file_name(stage)
        path = self.round_dir(round_number) / name
        if committed is not None:
            if name not in committed:  # the stage had no requests in that round
                return None
            self._verify(path, committed[name])
            try:
                return _read_records(path)
            except Exception as exc:  # pyarrow raises several types for damaged files
                raise LedgerError(f"{path}: unreadable ledger file: {exc}") from None
        paths = ([path] if path.is_file() else []) + [p for _, p in
                                                      self.part_paths(round_number, stage)]
        if not paths:
            return None
        merged: dict[str, RecordedRequest] = {}
        for file in paths:
            try:
                records = _read_records(file)
            except Exception:  # pyarrow raises several types for damaged files
                self.warnings.append(f"{file}: damaged record of an unfinished round "
                                     f"discarded; its requests are sent again")
                file.unlink()
                continue
            for record in records:
                merged.setdefault(record.key, record)
        return list(merged.values()) if merged or path.is_file() else None

    def read_commit(self, round_number: int) -> dict[str, Any] | None:
        """A round's ``commit.json``, or None if the round is not committed.

        Raises:
            LedgerError: the file exists but is not valid JSON, or not of the
                shape :meth:`commit_round` writes.
        """
        path = self.round_dir(round_number) / "commit.json"
        if not path.is_file():
            return None
        try:
            commit = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise LedgerError(f"{path}: damaged commit record: {exc}") from None
        if not (isinstance(commit, dict) and isinstance(commit.get("files"), dict)
                and all(isinstance(v, str) for v in commit["files"].values())):
            raise LedgerError(f"{path}: damaged commit record: field 'files' is missing or "
                              "not an object of sha256 strings")
        return commit

    def commit_round(self, round_number: int, candidates: Sequence[dict[str, Any]],
                     rows: Sequence[dict[str, Any]]) -> bool:
        """Commit a round: its candidates and rows, then ``commit.json`` (the commit point).

        ``commit.json`` holds the sha256 of those files and of every stage's
        ``requests-<stage>.parquet`` (part files still there are folded into
        their stage's file first, so the commit covers every record). A round
        already committed here is not written again: the rows must equal the ones
        it recorded (a replayed round gives the examples it gave).

        Returns:
            True when the round was committed now, False when it already was.

        Raises:
            LedgerError: a committed round whose rows differ from ``rows`` (the
                run was made with other settings or another selfinstruct version),
                or whose files are damaged.
        """
        commit = self.read_commit(round_number)
        if commit is not None:
            if self.committed_rows(round_number, commit) != list(rows):
                raise LedgerError(
                    f"{self.round_dir(round_number)}: replaying round {round_number} does not "
                    "give the examples it recorded (was the run made with other settings or "
                    "another selfinstruct version?)")
            return False
        directory = self.round_dir(round_number)
        files = {}
        for name, data in (("candidates.parquet", _parquet_bytes(candidates, CANDIDATE_SCHEMA)),
                           ("rows.parquet", _parquet_bytes(rows, schema_for(rows)))):
            files[name] = write_bytes_atomic(directory / name, data)
        crash_point(f"round-{round_number}:before-commit")
        for stage in sorted({m["stage"] for p in directory.glob("requests-*.part-*.parquet")
                             if (m := PART_FILE.fullmatch(p.name))}):
            records = self.load_stage(round_number, stage, None)  # drops damaged parts
            if records:
                self.save_stage(round_number, stage, records)
        for path in sorted(directory.glob("requests-*.parquet")):
            if not PART_FILE.fullmatch(path.name):
                files[path.name] = file_digest(path)
        write_json(directory / "commit.json",
                   {"round": round_number, "files": files, "rows": len(rows)})
        return True

    def committed_rows(self, round_number: int, commit: dict[str, Any]) -> list[dict[str, Any]]:
        """The examples a committed round recorded, verified against its hash."""
        path = self.round_dir(round_number) / "rows.parquet"
        self._verify(path, commit["files"].get("rows.parquet"))
        return _read_parquet(path)

    def recorded_reasons(self, round_number: int, commit: dict[str, Any],
                         reason: str) -> set[str]:
        """Instructions of a committed round whose ledger reason is ``reason``."""
        import pyarrow.parquet as pq

        path = self.round_dir(round_number) / "candidates.parquet"
        self._verify(path, commit["files"].get("candidates.parquet"))
        rows = pq.read_table(path, columns=["instruction", "reason"]).to_pylist()
        return {r["instruction"] for r in rows if r["reason"] == reason}

    def _verify(self, path: Path, expected: str | None) -> None:
        if expected is None or not path.is_file():
            raise LedgerError(f"{path}: ledger file of a committed round is missing")
        if file_digest(path) != expected:
            raise LedgerError(f"{path}: ledger file does not match its recorded sha256 "
                              "(damaged); refusing to read it")


__all__ = [
    "CANDIDATE_SCHEMA", "CRASH_ENV", "PART_FILE", "REQUEST_SCHEMA", "LedgerError",
    "RecordedRequest", "RunDirectory", "RunLocked", "crash_point", "part_file_name",
    "stage_file_name",
]
