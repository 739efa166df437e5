"""Replay as an engine: a run's ledger answers first, the live engine the rest.

Every request the pipeline makes goes through :class:`RecordedEngine`. A request
whose completion the ledger holds (same round, stage and key) is answered from it
and costs nothing; the others go to the live engine in one batch, which starts
only then (:class:`LazyEngine`), and the stage's records are saved, atomically,
before the pipeline reads any of them. So:

* a new run records everything it asks;
* resuming a run (same directory) replays its committed rounds from the ledger
  and asks the live engine only for what an unfinished round had not recorded;
* ``refilter`` reads another run's ledger (``source``) with no live engine at all,
  and records into its own directory what it used.

A committed round is history: what its ledger lacks is not asked for (the
answer is None), so replaying it gives the decisions it recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..storage.ledger import RecordedRequest, RunDirectory, crash_point
from .base import Completion, Engine, Progress, Request


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
    """

    def __init__(self, ledger: RunDirectory, live: LazyEngine,
                 source: RunDirectory | None = None, judge: LazyEngine | None = None):
        self.ledger = ledger
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
                nothing of a batch is recorded until the whole batch returns, and
                everything before it is).
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
        :meth:`answer` would answer it alone; the records of each (round, stage)
        are saved, in ask order, once the batch returns.

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
            progress = on_batch("+".join(stages), len(batch)) if on_batch else None
            completions = self._ask_mixed([request for _, request in batch], progress)
            for (k, request), completion in zip(batch, completions, strict=True):
                plans[k][0][request.key] = _record(
                    request, (asks[k].shown or {}).get(request.key, ()), completion)
        for ask, (recorded, _, live) in zip(asks, plans, strict=True):
            if live or (recorded and self.source is not self.ledger):
                self.ledger.save_stage(ask.round_number, ask.stage,
                                       [recorded[r.key] for r in ask.requests
                                        if r.key in recorded])
            if live:
                crash_point(f"round-{ask.round_number}:after-{ask.stage}")
        return [{r.key: recorded.get(r.key) for r in ask.requests}
                for ask, (recorded, _, _) in zip(asks, plans, strict=True)]

    def _ask_mixed(self, batch: list[Request], progress: Progress | None) -> list[Completion]:
        """One live batch, split in two only where the judge is another engine."""
        from ..quality import JUDGING

        if self.judge is None or all(r.stage != JUDGING for r in batch):
            return self._ask(self.live, batch, progress)
        out: dict[int, Completion] = {}
        for lazy, judged in ((self.live, False), (self.judge, True)):
            positions = [i for i, r in enumerate(batch) if (r.stage == JUDGING) == judged]
            if positions:
                answers = self._ask(lazy, [batch[i] for i in positions], progress)
                out.update(zip(positions, answers, strict=True))
        return [out[i] for i in range(len(batch))]

    def _ask(self, lazy: LazyEngine, batch: list[Request],
             progress: Progress | None) -> list[Completion]:
        engine = lazy.get()
        started = time.perf_counter()
        completions = engine.generate(batch, progress=progress)
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
