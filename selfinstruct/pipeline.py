"""The Self-Instruct loop (Wang et al. 2023, §2.2), read top-down, and Stanford
Alpaca's variant of it (``recipe = "alpaca"``).

Each round follows the steps of §2.2 (the Alpaca recipe's differences follow):

1. **Instruction generation** (:mod:`.stages.instructions`): ``prompts_per_round``
   prompts, each showing 8 pool tasks (6 human seeds + 2 machine-made; all human
   until 2 exist), sent as one batch; each completion continues the numbered list.
2. **Filtering** of the instructions: drop unparseable and truncated items and
   those failing the word/blacklist/prefix/character filters; with
   ``[decontamination]`` evaluation sets, those matching one
   (``contaminated:<benchmark>``, :mod:`.decontamination`); drop any instruction
   whose ROUGE-L F1 to the pool, or to an instruction kept earlier in the same
   round, exceeds 0.7.
3. **Classification task identification** (:mod:`.stages.classification`): one
   few-shot yes/no prompt per kept instruction.
4. **Instance generation** (:mod:`.stages.instances`): output-first for
   classification tasks, input-first otherwise; then the instance filters and
   near-duplicate detection of each example against other tasks' examples; with
   evaluation sets, each finished example (instruction, input and output) is
   checked against them and dropped on a match.
   With ``quality.judge`` (off by default), a judge model then scores every
   example on §3.3's three questions (:mod:`.stages.judging`), and examples below
   a cut (``quality.min_*``) are dropped. ``refilter --drop-reviewed-invalid``
   then drops the examples human reviewers marked invalid (``reviewed_invalid``).
5. **Commit**: the round's candidates (kept or not, with reasons) and examples go
   to the ledger; tasks with at least one instance join the pool as machine tasks
   and become rows of the shards.

The Alpaca recipe (Taori et al. 2023, :mod:`.stages.examples`) makes step 1 write
whole tasks: each prompt shows 3 human seeds (never machine tasks) with their
first instance, and the model continues the list with up to 16 tasks of one
instance each. Steps 3 and 4's model calls do not exist; step 2's filters (with
Alpaca's longer blacklist) and ROUGE-L check, and steps 4a-5, are the same.

After the last round, a budget (``quality.keep_best``) selects the best examples
of the whole run in score order, skipping near-duplicate instructions
(:func:`~selfinstruct.selection.select_best`); only those become shards.

Rounds repeat until ``num_instructions`` new tasks are written, ``max_rounds``
pass, or the engine can answer no further round (``refilter`` ends where its
source run ended). With ``generation.pipeline_depth`` D > 1, up to D rounds
overlap: each engine call carries the next stage of every round in flight, so
the engine sees one full batch instead of three small ones in series; the steps
above still run in round order after each call, and a round's prompts show the
machine tasks of the rounds committed when it started (:meth:`SelfInstruct.run`).
Randomness comes from the run seed: the in-context tasks of
round r from ``Random(f"{seed}:{r}")``, each request's sampling seed from the
seed, round, stage and request key, so a request's completion never depends on
batch order.

Every request goes through a :class:`~selfinstruct.engines.recorded.RecordedEngine`:
the run's ledger answers what it recorded (a resumed run's committed rounds,
another run's rounds in ``refilter``) and the live engine the rest, so the loop
below is the same whether it generates, resumes or refilters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import Config
from .decontamination.check import Decontaminator, Match, strongest
from .dedup import RougeIndex
from .engines.recorded import Ask, RecordedEngine
from .filters import instruction_rejection
from .prompts import PromptBuilder
from .stages.base import CandidateStage, Records, request_seed
from .stages.classification import ClassificationIdentification
from .stages.examples import ExampleGeneration
from .stages.instances import InstanceGeneration
from .stages.instructions import InstructionGeneration
from .stages.judging import QualityJudging, surviving
from .stats import RunStats
from .storage.ledger import crash_point
from .storage.shards import ShardWriter, messages_for
from .quality import REVIEWED_INVALID, Judgement, example_key, quality_values
from .tasks import Candidate, Instance, Task

__all__ = ["Reporter", "SelfInstruct", "SilentReporter", "request_seed"]


class Reporter(Protocol):
    """Receives progress from the pipeline (the CLI draws it; tests may record it)."""

    def stage(self, name: str, total: int) -> None:
        """An engine call of ``total`` requests starts; ``name`` is its stage, or its
        stages joined by "+" (overlapped rounds, ``generation.pipeline_depth`` > 1)."""

    def advance(self, n: int) -> None:
        """``n`` requests of the current stage finished."""

    def round_done(self, stats: RunStats) -> None:
        """A round was committed; ``stats`` holds the running totals."""


class SilentReporter:
    """A :class:`Reporter` that shows nothing."""

    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def round_done(self, stats: RunStats) -> None:
        pass


class SelfInstruct:
    """A Self-Instruct run over a task pool, durable in its run directory.

    Args:
        config: the run configuration.
        engine: answers every request: the ledger first, then the live engine.
        prompts: the prompt templates.
        seed_tasks: the human seed tasks (at least one).
        writer: where rows become shards.
        model_name: recorded in every row.
        reporter: progress sink.
        on_commit: called after each round newly committed to the ledger (the
            caller writes the manifest); not for a round the ledger already held.
        judge_name: the judge model's name, recorded in judged rows
            (default: ``model_name``).
        drop_keys: ``example_key`` of examples to drop after the instances (and
            the judge) kept them, with reason ``reviewed_invalid`` (``refilter
            --drop-reviewed-invalid``: those reviewers marked invalid); none
            by default.
        decontaminator: the check against evaluation sets (``[decontamination]``),
            or None for none.
    """

    def __init__(self, config: Config, engine: RecordedEngine, prompts: PromptBuilder,
                 seed_tasks: Sequence[Task], writer: ShardWriter, model_name: str,
                 reporter: Reporter | None = None,
                 on_commit: Callable[[SelfInstruct], None] | None = None,
                 judge_name: str | None = None, drop_keys: frozenset[str] = frozenset(),
                 decontaminator: Decontaminator | None = None):
        self.config = config
        self.engine = engine
        self.run_dir = engine.ledger
        self.writer = writer
        self.model_name = model_name
        self.reporter = reporter or SilentReporter()
        self.on_commit = on_commit
        self.stats = RunStats(live=engine.stats)
        self.human = list(seed_tasks)
        self.machine: list[Task] = []
        self.pool = RougeIndex(threshold=config.filters.rouge_threshold,
                               tokenizer=config.filters.rouge_tokenizer)
        self.pool.extend(t.instruction for t in self.human)
        self.generation: InstructionGeneration | ExampleGeneration
        self.completing: tuple[CandidateStage, ...]  # what a kept instruction still needs
        if config.recipe == "alpaca":  # whole tasks in one call, no classification
            self.generation = ExampleGeneration(config, prompts, self.stats, self.human)
            self.completing = ()
        else:
            self.generation = InstructionGeneration(config, prompts, self.stats, self.human,
                                                    self.machine)
            self.completing = (ClassificationIdentification(config, prompts, self.stats),
                               InstanceGeneration(config, prompts, self.stats, self.human))
        self.judging = (QualityJudging(config, prompts, self.stats) if config.quality.judge
                        else None)
        self.judge_name = judge_name or model_name
        self.drop_keys = drop_keys
        self.decontaminator = decontaminator
        self.pending: list[dict[str, Any]] = []  # rows awaiting the keep_best selection
        self.in_flight: dict[int, list[Candidate]] = {}  # round -> its kept candidates

    # -- the algorithm -------------------------------------------------------

    def run(self) -> RunStats:
        """Run rounds until the target is met; return the stats.

        With ``generation.pipeline_depth`` D, up to D rounds are in flight: each
        engine call carries the next stage of every round in flight (e.g. round r's
        instruction prompts with round r-1's classification and round r-2's
        instance requests), and one new round joins per call. Each round's steps
        run in round order after each call, so the filters, ROUGE-L decisions and
        commits are those of the strict order; only the in-context machine tasks of
        a round's prompts are older: those of the rounds committed when the round
        started (D - 1 rounds fewer than at depth 1). At D = 1 this is the paper's
        strict order. A new round starts only while the tasks written plus the
        surviving candidates of the rounds in flight (an upper bound of what those
        will write) fall short of the target, so few rounds are started in vain.
        All of this depends on the answers only, never on timing.

        Raises:
            LedgerError: a recorded round's files are damaged, or a round the
                ledger committed gives other examples than it recorded.
            EngineError: the live engine failed (the ledger keeps what it finished).
        """
        started = time.perf_counter()
        depth = self.config.generation.pipeline_depth
        flight: list[_Flight] = []
        next_round = self.stats.rounds + 1
        while True:
            if len(flight) < depth and self.may_start(next_round, len(flight)):
                flight.append(_Flight(next_round, self.round(next_round)))
                next_round += 1
            if not flight:
                break
            asks = [f.ask for f in flight]
            answers = self.engine.answer_many(asks, self._on_batch)
            for f, records in zip(list(flight), answers, strict=True):
                self.stats.engine.count(f.ask.stage,
                                        [r for r in records.values() if r is not None])
                if not f.advance(records):  # the round committed
                    flight.remove(f)
                    self.stats.seconds = time.perf_counter() - started
                    self.reporter.round_done(self.stats)
        self.select()                                               # the budget
        self.stats.seconds = time.perf_counter() - started
        return self.stats

    def round(self, round_number: int) -> Generator[Ask, Records, None]:
        """One round of §2.2, as a generator: it yields each stage's requests (an
        :class:`~selfinstruct.engines.recorded.Ask`, possibly empty) and is sent
        their answers; it returns after the round is committed."""
        requests, shown = self.generation.requests(round_number)             # step 1
        records = yield Ask(round_number, self.generation.name, requests, shown)
        candidates = self.generation.candidates(records)
        kept = self.filter_instructions(candidates)                          # step 2
        self.in_flight[round_number] = kept
        for stage in self.completing:                                        # steps 3, 4
            stage.apply(kept, (yield self.ask(stage, round_number, kept)))
        self.decontaminate(kept)                                             # step 4a
        if self.judging is not None:                                         # step 4b
            judged = self.to_judge(kept)
            self.judging.apply(judged, (yield self.ask(self.judging, round_number, judged)))
        self.drop_reviewed(kept)                                             # step 4c
        rows = self.write(round_number, kept)                                # step 5
        del self.in_flight[round_number]
        self.commit(round_number, candidates, rows)

    def may_start(self, round_number: int, in_flight: int) -> bool:
        """Whether round ``round_number`` starts now: within ``max_rounds``, the engine
        can answer it, and the target is not met even if every surviving candidate of
        the ``in_flight`` rounds in flight were written."""
        if round_number > self.config.generation.max_rounds:
            return False
        if not self.engine.can_answer(round_number):
            return False
        if len(self.in_flight) < in_flight:  # a round in flight is not filtered yet
            return False
        pending = sum(len(surviving(kept)) for kept in self.in_flight.values())
        return self.stats.tasks_written + pending < self.config.num_instructions

    def filter_instructions(self, candidates: list[Candidate]) -> list[Candidate]:
        """Step 2: the instruction filters, then ROUGE-L against pool and round (§2.2,
        filtering and postprocessing); survivors join the pool's ROUGE-L index."""
        survivors = []
        for candidate in candidates:
            self.stats.candidates += 1
            if candidate.reason is None:
                reason = instruction_rejection(candidate.instruction, self.config.filters)
                if reason:
                    candidate.reject("instructions", reason)
            if candidate.reason is None:
                survivors.append(candidate)
        if self.decontaminator is not None and survivors:
            found = self.decontaminator.check_instructions([c.instruction for c in survivors])
            for candidate, matches in zip(survivors, found, strict=True):
                best = strongest(matches)
                if best is not None:
                    candidate.contamination = [_ledger_match(m, None) for m in matches]
                    candidate.reject("instructions", best.reason)
            survivors = [c for c in survivors if c.reason is None]
        decisions = self.pool.dedup_batch([c.instruction for c in survivors], add=True)
        kept = []
        for candidate, decision in zip(survivors, decisions, strict=True):
            if decision.nearest_text is not None:
                candidate.nearest_instruction = decision.nearest_text
                candidate.rouge_l = decision.score
            if not decision.keep:
                candidate.reject("instructions", "rouge_l")
                continue
            self.stats.kept_instructions += 1
            kept.append(candidate)
        for candidate in candidates:
            if candidate.reason:
                self.stats.rejections[candidate.reason] += 1
        return kept

    def ask(self, stage: CandidateStage, round_number: int, kept: list[Candidate]) -> Ask:
        """Steps 3 and 4 (and any later stage): one request per kept candidate; the
        stage parses and filters the answers into the candidates."""
        return Ask(round_number, stage.name, stage.requests(round_number, kept))

    def to_judge(self, kept: list[Candidate]) -> list[Candidate]:
        """The candidates worth judging: with no cut, only as many surviving ones as the
        target still takes (the rest would be cut at the target unjudged: judging cannot
        reject without a cut); with a cut, every survivor."""
        survivors = surviving(kept)
        if self.config.quality.cuts():
            return survivors
        return survivors[:max(self.config.num_instructions - self.stats.tasks_written, 0)]

    def decontaminate(self, kept: list[Candidate]) -> None:
        """Step 4a: check every surviving example (instruction, input and output)
        against the evaluation sets; a match drops the example (reason
        ``contaminated:<benchmark>``, the match in the ledger), and a task left
        with none is rejected at stage "decontamination" with that reason."""
        if self.decontaminator is None:
            return
        candidates = [c for c in surviving(kept) if c.instances]
        pairs = [(c, k) for c in candidates for k in range(len(c.instances))]
        if not pairs:
            return
        found = self.decontaminator.check(
            [c.instruction for c, _ in pairs], [c.instances[k].input for c, k in pairs],
            [c.instances[k].output for c, k in pairs])
        flagged: dict[int, list[tuple[int, list[Match]]]] = {}
        for (candidate, k), matches in zip(pairs, found, strict=True):
            if matches:
                flagged.setdefault(id(candidate), []).append((k, matches))
        for candidate in candidates:
            hits = flagged.get(id(candidate))
            if not hits:
                continue
            drop = {k for k, _ in hits}
            reasons = [m.reason for _, matches in hits for m in [strongest(matches)] if m]
            candidate.instance_rejections.extend(reasons)
            candidate.contamination.extend(_ledger_match(m, k) for k, matches in hits
                                           for m in matches)
            candidate.instances = tuple(x for k, x in enumerate(candidate.instances)
                                        if k not in drop)
            if not candidate.instances:
                candidate.reject("decontamination", reasons[0])

    def drop_reviewed(self, kept: list[Candidate]) -> None:
        """Step 4c: drop the surviving examples whose ``example_key`` is in
        ``drop_keys`` (reason ``reviewed_invalid``, one per example); a task left
        with none is rejected at stage "review" with that reason, as a cut does."""
        if not self.drop_keys:
            return
        for candidate in surviving(kept):
            keep = [k for k, instance in enumerate(candidate.instances)
                    if example_key(candidate.instruction, instance.input, instance.output)
                    not in self.drop_keys]
            dropped = len(candidate.instances) - len(keep)
            if not dropped:
                continue
            candidate.instance_rejections.extend([REVIEWED_INVALID] * dropped)
            candidate.instances = tuple(candidate.instances[k] for k in keep)
            if candidate.judgements:
                candidate.judgements = tuple(candidate.judgements[k] for k in keep)
            if not keep:
                candidate.reject("review", REVIEWED_INVALID)

    def write(self, round_number: int, kept: list[Candidate]) -> list[dict[str, Any]]:
        """Step 5a: tasks with instances join the pool and become rows, up to the target.

        Tasks beyond ``num_instructions`` are stopped with reason ``over_target``
        (kept in the ledger; a later run with a larger target does not revive them,
        so ``refilter`` never produces a task the run did not).
        """
        cut = self.engine.recorded_reasons(round_number, "over_target")
        rows = []
        for candidate in kept:
            self.stats.instance_rejections.update(candidate.instance_rejections)
            if candidate.reason is not None:
                self.stats.rejections[candidate.reason] += 1
                continue
            # a recorded round keeps its history; a new one cuts at the target
            if (candidate.instruction in cut if cut is not None
                    else self.stats.tasks_written >= self.config.num_instructions):
                candidate.reject("instances", "over_target")
                self.stats.rejections["over_target"] += 1
                continue
            candidate.stage = "written"
            candidate.task_id = f"r{round_number:04d}-{self.stats.tasks_written:05d}"
            task = Task(candidate.task_id, "", candidate.instruction, candidate.instances,
                        candidate.is_classification)
            self.machine.append(task)
            self.stats.tasks_written += 1
            self.stats.classification_tasks += bool(candidate.is_classification)
            verdicts = candidate.judgements or ((None, None),) * len(candidate.instances)
            for k, (instance, verdict) in enumerate(zip(candidate.instances, verdicts,
                                                        strict=True)):
                rows.append(self._row(candidate, round_number, k, instance, verdict))
        self.stats.rows_written += len(rows)
        return rows

    def commit(self, round_number: int, candidates: list[Candidate],
               rows: list[dict[str, Any]]) -> None:
        """Step 5b: record the round in the ledger and extend the shards.

        A round the ledger already committed is checked instead: it must give the
        examples it recorded (:meth:`RunDirectory.commit_round`).
        """
        new = self.run_dir.commit_round(round_number, [c.ledger_row(round_number)
                                                       for c in candidates], rows)
        if self.engine.committed(round_number) is not None:
            self.stats.replayed_rounds += 1
        if self.config.quality.keep_best is None:
            self.writer.add(rows)
        else:
            self.pending.extend(rows)
        self.stats.rounds = round_number
        crash_point(f"round-{round_number}:before-manifest")
        if new and self.on_commit is not None:
            self.on_commit(self)

    def select(self) -> None:
        """With a ``quality.keep_best`` budget: the best of the run's rows become the
        shards, in run order (:func:`~selfinstruct.selection.select_best`)."""
        quality = self.config.quality
        if quality.keep_best is None:
            return
        from .selection import select_best

        selection = select_best(self.pending, quality.keep_best, quality.diversity_threshold,
                                self.config.filters.rouge_tokenizer)
        self.stats.selection = selection.to_json_dict()
        self.writer.add(dict(row) for row in selection.rows)

    # -- helpers -------------------------------------------------------------

    def _on_batch(self, stage: str, total: int) -> Callable[[int], None]:
        self.reporter.stage(stage, total)
        return self.reporter.advance

    def _row(self, candidate: Candidate, round_number: int, k: int, instance: Instance,
             verdict: tuple[Judgement | None, str | None]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": f"{candidate.task_id}-{k}",
            "task_id": candidate.task_id,
            "instruction": candidate.instruction,
            "input": instance.input,
            "output": instance.output,
            "messages": messages_for(candidate.instruction, instance.input, instance.output),
            # the Alpaca recipe has no classification step: unknown, not False
            "is_classification": (None if self.config.recipe == "alpaca"
                                  else bool(candidate.is_classification)),
            "model": self.model_name,
            "round": round_number,
            "prompt_task_ids": list(candidate.prompt_task_ids),
            "nearest_instruction": candidate.nearest_instruction,
            "nearest_rouge_l": candidate.rouge_l,
        }
        if self.judging is not None:
            row.update(quality_values(*verdict, judge=self.judge_name))
        return row


@dataclass
class _Flight:
    """A round in flight: its generator and the stage it waits on."""

    round_number: int
    steps: Generator[Ask, Records, None]
    ask: Ask = field(init=False)

    def __post_init__(self) -> None:
        self.ask = next(self.steps)

    def advance(self, records: Records) -> bool:
        """Hand the answers of :attr:`ask` to the round; False once it is committed."""
        try:
            self.ask = self.steps.send(records)
        except StopIteration:
            return False
        return True


def _ledger_match(match: Match, instance: int | None) -> dict[str, Any]:
    """A match as an entry of the ledger's ``contamination`` column
    (:data:`~selfinstruct.storage.ledger.CANDIDATE_SCHEMA`)."""
    return {"instance": instance, "benchmark": match.benchmark, "item_index": match.item,
            "item_id": match.item_id, "method": match.method, "score": match.score,
            "coverage": match.coverage}
