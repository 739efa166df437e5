"""Replay as an engine: a run's ledger answers first, the live engine the rest.

Every request the pipeline makes goes through :class:`RecordedEngine`. A request
whose completion the ledger holds (same round, stage and key) is answered from it
and costs nothing; the others go to the live engine in one batch, which starts
only then (:class:`LazyEngine`), and the stage's records are saved, atomically,
before the pipeline reads any of them. While the batch runs, its completions are
recorded as they arrive (:class:`ChunkRecorder`: part files of the stage, one per
:data:`CHUNK_COMPLETIONS` completions or :data:`CHUNK_SECONDS` seconds, whichever
comes first), so a crash mid-batch loses at most the last chunk: fewer than 32
completions, and, while completions keep arriving, no more than about the last 5
seconds of them. So:

* a new run records everything it asks;
* resuming a run (same directory) replays its committed rounds from the ledger
  and asks the live engine only for what an unfinished round had not recorded,
  down to the requests of a stage that was cut short;
* ``refilter`` reads another run's ledger (``source``) with no live engine at all,
  and records into its own directory what it used.

A committed round is history: what its ledger lacks is not asked for (the
answer is None), so replaying it gives the decisions it recorded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..storage.ledger import PART_FILE, RecordedRequest, RunDirectory, crash_point
from .base import Completion, Done, Engine, Progress, Request

CHUNK_COMPLETIONS = 32
"""Completions of a live batch kept in memory at most: the 32nd unwritten one writes
them all to the ledger (:class:`ChunkRecorder`). A crash (``kill -9``, a lost machine)
mid-batch loses at most 31 completions; at 100 a second, the recorder writes about
3 small part files a second."""

CHUNK_SECONDS = 5.0
"""Seconds the oldest unwritten completion of a live batch waits at most, as long
as completions keep arriving: the first to arrive after that writes the chunk out
(there is no timer: with nothing arriving, nothing new is at risk beyond the at
most :data:`CHUNK_COMPLETIONS` - 1 already held)."""


class ChunkRecorder:
    """Records a live batch's completions in the ledger as they arrive, in small chunks.

    A batch may mix requests of several rounds and stages: completions are grouped
    by (round, stage), and each write (:meth:`flush`) saves one part file per group
    with unwritten completions (:meth:`RunDirectory.save_part`, atomic), then
    passes the crash point ``round-<n>:after-<stage>-part-<number>``. A write
    happens once ``size`` completions are unwritten (all groups together) or the
    oldest has waited ``seconds`` when the next one arrives; whoever owns the batch
    calls :meth:`flush` once more if the batch fails, and, if it returns, saves
    each stage whole with :meth:`RunDirectory.save_stage` instead (which
    supersedes the parts; what is still unwritten here is then dropped).

    Args:
        ledger: the run directory recorded into (locked by the caller).
        size: completions unwritten at most (default :data:`CHUNK_COMPLETIONS`), >= 1.
        seconds: age of the oldest unwritten completion that makes the next one
            write the chunk (default :data:`CHUNK_SECONDS`).
        clock: monotonic time in seconds (tests pass a fake one).

    Attributes:
        parts: the part files written, in order.
    """

    def __init__(self, ledger: RunDirectory, size: int | None = None,
                 seconds: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.ledger = ledger
        self.size = CHUNK_COMPLETIONS if size is None else size
        self.seconds = CHUNK_SECONDS if seconds is None else seconds
        if self.size < 1:
            raise ValueError(f"ChunkRecorder size must be at least 1, not {self.size}")
        self._clock = clock
        self._pending: dict[tuple[int, str], list[RecordedRequest]] = {}
        self._count = 0
        self._oldest = 0.0
        self.parts: list[Path] = []

    def add(self, round_number: int, request: Request, completion: Completion,
            shown: tuple[str, ...] = ()) -> RecordedRequest:
        """Take one completion (of ``request``, asked by round ``round_number``, whose
        prompt shows the tasks ``shown``); write the chunk if it is due.

        Returns:
            The ledger record of the completion.
        """
        record = _record(request, shown, completion)
        now = self._clock()
        if self._count == 0:
            self._oldest = now
        self._pending.setdefault((round_number, request.stage), []).append(record)
        self._count += 1
        if self._count >= self.size or now - self._oldest >= self.seconds:
            self.flush()
        return record

    @property
    def pending(self) -> int:
        """Completions taken and not yet written."""
        return self._count

    def flush(self) -> None:
        """Write every unwritten completion: one part file per (round, stage)."""
        groups, self._pending, self._count = self._pending, {}, 0
        for (round_number, stage), records in groups.items():
            path = self.ledger.save_part(round_number, stage, records)
            self.parts.append(path)
            match = PART_FILE.fullmatch(path.name)
            number = int(match["number"]) if match else len(self.parts)
            crash_point(f"round-{round_number}:after-{stage}-part-{number}")


@dataclass
class Ask:
    """One stage's requests of one round, as the pipeline hands them over.

    Attributes:
        round_number: the round asking.
        stage: the stage (every request's ``stage``).
        requests: distinct keys; may be empty (the stage has nothing to ask).
        shown: key -> ids of the tasks the prompt shows (recorded as provenance).
    """

    round_number: int
    stage: str
    requests: list[Request]
    shown: Mapping[str, tuple[str, ...]] | None = None


class LazyEngine:
    """An engine started on first use, so replaying and refiltering never start one.

    Args:
        start: builds the engine; None means no live engine exists (``refilter``).
        on_start: called just before ``start`` (e.g. to print "loading model").
    """

    def __init__(self, start: Callable[[], Engine] | None,
                 on_start: Callable[[], None] | None = None):
        self._start, self._on_start = start, on_start
        self.engine: Engine | None = None

    @property
    def available(self) -> bool:
        """Whether live requests can be made."""
        return self._start is not None

    def get(self) -> Engine:
        """The engine, started now if needed.

        Raises:
            RuntimeError: there is no live engine (``start`` is None).
        """
        if self.engine is None:
            if self._start is None:
                raise RuntimeError("no live engine")
            if self._on_start:
                self._on_start()
            self.engine = self._start()
        return self.engine

    def close(self) -> None:
        """Shut the engine down if it was started."""
        if self.engine is not None:
            self.engine.close()


@dataclass
class LiveStats:
    """What the live engine was asked in this process.

    Attributes:
        requests: requests sent.
        output_tokens: their output tokens.
        seconds: wall time inside ``Engine.generate`` (model, network, queueing).
    """

    requests: int = 0
    output_tokens: int = 0
    seconds: float = 0.0


class RecordedEngine:
    """Answers a stage's requests from the ledger, and from the live engine otherwise.

    Args:
        ledger: the run directory this run records into (locked by the caller).
        live: the live engine (started lazily); ``LazyEngine(None)`` for none.
        source: the run directory whose records are read; the ledger itself
            unless refiltering another run (then ``ledger`` gets a copy of every
            record used, so the new run's ledger is complete on its own).
        judge: the live engine of the judging stage when the judge is not the
            generating model (``quality.judge_model``); None = ``live`` judges.
            Its requests and tokens count in :attr:`stats` like any others.
        chunk_completions, chunk_seconds: when a live batch's completions are
            written as part files (:class:`ChunkRecorder`).
    """

    def __init__(self, ledger: RunDirectory, live: LazyEngine,
                 source: RunDirectory | None = None, judge: LazyEngine | None = None,
                 chunk_completions: int = CHUNK_COMPLETIONS,
                 chunk_seconds: float = CHUNK_SECONDS):
        self.ledger = ledger
        self.chunk_completions, self.chunk_seconds = chunk_completions, chunk_seconds
        self.source = source or ledger
        self.live = live
        self.judge = judge
        self.stats = LiveStats()
        self._commits: dict[int, dict[str, Any] | None] = {}
        self._reasons: dict[tuple[int, str], set[str]] = {}

    @property
    def warnings(self) -> list[str]:
        """Remarks of the ledgers read (damaged records of unfinished rounds discarded)."""
        extra = self.source.warnings if self.source is not self.ledger else []
        return self.ledger.warnings + extra

    def committed(self, round_number: int) -> dict[str, Any] | None:
        """The source's ``commit.json`` of a round, or None when it is not committed.

        Raises:
            LedgerError: a damaged ``commit.json``.
        """
        if round_number not in self._commits:
            self._commits[round_number] = self.source.read_commit(round_number)
        return self._commits[round_number]

    def can_answer(self, round_number: int) -> bool:
        """Whether requests of this round can be answered: there is a live engine,
        or the source committed the round (``refilter`` ends where its source does)."""
        return self.live.available or self.committed(round_number) is not None

    def recorded_reasons(self, round_number: int, reason: str) -> set[str] | None:
        """Instructions the source's committed round stopped with ``reason``, or None
        when the round is not committed (its decisions are being made now)."""
        commit = self.committed(round_number)
        if commit is None:
            return None
        if (round_number, reason) not in self._reasons:
            self._reasons[round_number, reason] = self.source.recorded_reasons(
                round_number, commit, reason)
        return self._reasons[round_number, reason]

    def answer(self, round_number: int, requests: Sequence[Request],
               shown: Mapping[str, tuple[str, ...]] | None = None,
               on_batch: Callable[[str, int], Progress | None] | None = None
               ) -> dict[str, RecordedRequest | None]:
        """Completions of one stage's requests, by key.

        Args:
            round_number: the round asking.
            requests: the stage's requests (one ``stage``, distinct ``key``\\ s).
            shown: key -> ids of the tasks the prompt shows (provenance, recorded).
            on_batch: told ``(stage, n)`` before ``n`` live requests are sent; what
                it returns is the live engine's progress callback.

        Returns:
            ``{request.key: record}`` in request order; a record is None when the
            ledger lacks it and nothing may be asked (a committed round, or no
            live engine).

        Raises:
            LedgerError: a committed round's records are missing or damaged.
            EngineError: the live engine failed (what it finished is not lost:
                completions are recorded as they arrive, in chunks, and the
                last chunk is written before the error propagates).
        """
        if not requests:
            return {}
        ask = Ask(round_number, requests[0].stage, list(requests), shown)
        return self.answer_many([ask], on_batch)[0]

    def answer_many(self, asks: Sequence[Ask],
                    on_batch: Callable[[str, int], Progress | None] | None = None
                    ) -> list[dict[str, RecordedRequest | None]]:
        """The answers to several stages' requests (of one or several rounds), with
        every request the ledger lacks sent to the live engine as ONE batch.

        This is how overlapped rounds (``generation.pipeline_depth`` > 1) keep the
        engine full: one call carries round r's instruction prompts with round r-1's
        classification and round r-2's instance requests. Each ask is answered as
        :meth:`answer` would answer it alone: completions are recorded in part
        files as they arrive (:class:`ChunkRecorder`), and once the batch returns
        each (round, stage) is saved whole, in ask order.

        Args:
            asks: at most one per (round, stage); an ask may have no requests.
            on_batch: told ``(label, n)`` before ``n`` live requests are sent, the
                label being the stage name, or the names of the stages in the
                batch joined by "+"; what it returns is the progress callback.

        Returns:
            One ``{request.key: record}`` per ask, in ask order (see :meth:`answer`).

        Raises:
            LedgerError, EngineError: as :meth:`answer`.
        """
        plans: list[tuple[dict[str, RecordedRequest], list[Request], bool]] = []
        for ask in asks:
            if not ask.requests:
                plans.append(({}, [], False))
                continue
            commit = self.committed(ask.round_number)
            loaded = self.source.load_stage(ask.round_number, ask.stage,
                                            commit["files"] if commit is not None else None)
            recorded = {r.key: r for r in loaded or ()}
            missing = [r for r in ask.requests if r.key not in recorded]
            live = bool(missing) and commit is None and self.live.available
            plans.append((recorded, missing if live else [], live))
        batch = [(k, request) for k, (_, missing, _) in enumerate(plans) for request in missing]
        if batch:
            stages = list(dict.fromkeys(request.stage for _, request in batch))
            shown = [(asks[k].shown or {}).get(request.key, ()) for k, request in batch]
            completions = self._ask_recorded(
                [asks[k].round_number for k, _ in batch], [request for _, request in batch],
                shown, on_batch("+".join(stages), len(batch)) if on_batch else None)
            for (k, request), seen, completion in zip(batch, shown, completions, strict=True):
                plans[k][0][request.key] = _record(request, seen, completion)
        for ask, (recorded, _, live) in zip(asks, plans, strict=True):
            if live or (recorded and (self.source is not self.ledger or (
                    self.committed(ask.round_number) is None
                    and self.ledger.part_paths(ask.round_number, ask.stage)))):
                # asked now; a copy for refilter; or parts of a batch cut short after
                # its last completion: the stage file is what a commit covers
                self.ledger.save_stage(ask.round_number, ask.stage,
                                       [recorded[r.key] for r in ask.requests
                                        if r.key in recorded])
            if live:
                crash_point(f"round-{ask.round_number}:after-{ask.stage}")
        return [{r.key: recorded.get(r.key) for r in ask.requests}
                for ask, (recorded, _, _) in zip(asks, plans, strict=True)]

    def _ask_recorded(self, round_numbers: Sequence[int], batch: Sequence[Request],
                      shown: Sequence[tuple[str, ...]], progress: Progress | None
                      ) -> list[Completion]:
        """Send one live batch, recording its completions in chunks as they arrive.

        Args:
            round_numbers: the round of each request of ``batch`` (a batch may mix
                rounds and stages: each (round, stage) gets its own part files).
            batch: the requests.
            shown: the task ids each request's prompt shows (provenance).
            progress: the live engine's progress callback.

        Returns:
            The completions, in batch order. The caller saves each stage whole
            (:meth:`RunDirectory.save_stage`), superseding the part files.

        Raises:
            whatever the engine raised, once the completions it reported are written.
        """
        recorder = ChunkRecorder(self.ledger, self.chunk_completions, self.chunk_seconds)

        def done(index: int, completion: Completion) -> None:
            recorder.add(round_numbers[index], batch[index], completion, shown[index])

        try:
            return self._ask_mixed(list(batch), progress, done)
        except BaseException:
            if recorder.pending:  # keep what was paid for; the original error goes on
                with contextlib.suppress(Exception):
                    recorder.flush()
            raise

    def _ask_mixed(self, batch: list[Request], progress: Progress | None,
                   on_done: Done) -> list[Completion]:
        """One live batch, split in two only where the judge is another engine."""
        from ..quality import JUDGING

        judge = self.judge
        if judge is None or all(r.stage != JUDGING for r in batch):
            return self._ask(self.live, batch, progress, on_done)
        out: dict[int, Completion] = {}
        for lazy, judged in ((self.live, False), (judge, True)):
            positions = [i for i, r in enumerate(batch) if (r.stage == JUDGING) == judged]
            if not positions:
                continue

            def done(index: int, completion: Completion, at: list[int] = positions) -> None:
                on_done(at[index], completion)

            answers = self._ask(lazy, [batch[i] for i in positions], progress, done)
            out.update(zip(positions, answers, strict=True))
        return [out[i] for i in range(len(batch))]

    def _ask(self, lazy: LazyEngine, batch: list[Request], progress: Progress | None,
             on_done: Done | None = None) -> list[Completion]:
        engine = lazy.get()
        started = time.perf_counter()
        completions = engine.generate(batch, progress=progress, on_done=on_done)
        self.stats.seconds += time.perf_counter() - started
        self.stats.requests += len(completions)
        self.stats.output_tokens += sum(c.output_tokens for c in completions)
        return completions

    def close(self) -> None:
        """Shut the live engines down if they were started."""
        self.live.close()
        if self.judge is not None:
            self.judge.close()


def _record(request: Request, shown: tuple[str, ...], completion: Completion) -> RecordedRequest:
    return RecordedRequest(key=request.key, seed=request.seed, prompt=request.prompt,
                           prompt_task_ids=shown, text=completion.text,
                           finish_reason=completion.finish_reason,
                           prompt_tokens=completion.prompt_tokens,
                           output_tokens=completion.output_tokens)
