"""The Self-Instruct loop (Wang et al. 2023, §2.2), read top-down.

Each round follows the four steps of §2.2:

1. **Instruction generation**: ``prompts_per_round`` prompts, each showing
   8 pool tasks (6 human seeds + 2 machine-made; all human until 2 exist), sent
   to the engine as one batch; each completion continues the numbered list.
2. **Instruction filtering**: parse the lists; drop unparseable and
   truncated items and those failing the word/blacklist/prefix/character
   filters; drop any instruction whose ROUGE-L F1 to the pool, or to an
   instruction kept earlier in the same round, exceeds 0.7. Survivors join the pool.
3. **Classification task identification**: one few-shot yes/no prompt each.
4. **Instance generation**: output-first for classification tasks,
   input-first otherwise; then the instance filters, and near-duplicate
   detection of each example (instruction + input) against other tasks' examples.
5. **Commit**: the round's candidates (kept or not, with reasons) and examples go
   to the ledger; tasks with at least one instance become machine tasks of the
   pool and rows of the shards.

Rounds repeat until ``num_instructions`` new tasks are written or ``max_rounds``
pass. Randomness comes from the run seed: the in-context tasks of round r from
``Random(f"{seed}:{r}")``, each request's sampling seed from the seed, round,
stage and request key, so a request's completion never depends on batch order.

Durability: every stage's completions are recorded in the ledger the moment the
engine returns them, and a round is replayed from its records instead of asking
the engine again. Resuming a run is replaying its committed rounds (checked
against the examples they recorded) and continuing; ``refilter`` is replaying
them under other filter settings, with no engine at all.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import Config
from .dedup import NearDuplicateIndex, RougeIndex
from .engines.base import PROMPT_TOO_LONG, Completion, Engine, EngineStats, Request, Sampling
from .filters import filter_instances, instruction_rejection
from .storage.ledger import LedgerError, RecordedRequest, RunDirectory, crash_point
from .parsing import (parse_input_first, parse_instruction_list, parse_output_first,
                      parse_yes_no)
from .prompts import PromptBuilder, instance_stop, instruction_stop, sample_prompt_tasks
from .tasks import Instance, Task
from .storage.shards import ShardWriter, messages_for


class Reporter(Protocol):
    """Receives progress from the pipeline (the CLI draws it; tests may record it)."""

    def stage(self, name: str, total: int) -> None:
        """A stage of the current round sends ``total`` requests to the engine."""

    def advance(self, n: int) -> None:
        """``n`` requests of the current stage finished."""

    def round_done(self, stats: "RunStats") -> None:
        """A round was committed; ``stats`` holds the running totals."""


class SilentReporter:
    """A :class:`Reporter` that shows nothing."""

    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def round_done(self, stats: "RunStats") -> None:
        pass


@dataclass
class RunStats:
    """Counts of a run so far (replayed rounds included).

    Attributes:
        rounds: rounds committed.
        replayed_rounds: of which replayed from the ledger in this process.
        candidates: instructions parsed (or unparseable completions) in total.
        kept_instructions: instructions that passed every instruction filter.
        tasks_written: new tasks written (with >= 1 instance).
        rows_written: instances written (one row each).
        classification_tasks: of the written tasks, classification ones.
        rejections: reason code -> count, over candidates.
        instance_rejections: reason code -> count of dropped instances.
        engine: token totals of every request the run used (recorded or live),
            by stage; its ``seconds`` are those of live engine calls only.
        live_requests: requests actually sent to the engine by this process.
        live_output_tokens: their output tokens.
        seconds: wall time of the loop in this process.
    """

    rounds: int = 0
    replayed_rounds: int = 0
    candidates: int = 0
    kept_instructions: int = 0
    tasks_written: int = 0
    rows_written: int = 0
    classification_tasks: int = 0
    rejections: Counter = field(default_factory=Counter)
    instance_rejections: Counter = field(default_factory=Counter)
    engine: EngineStats = field(default_factory=EngineStats)
    live_requests: int = 0
    live_output_tokens: int = 0
    seconds: float = 0.0

    @property
    def live_tokens_per_second(self) -> float:
        """Output tokens per second of engine time in this process."""
        return self.live_output_tokens / self.engine.seconds if self.engine.seconds else 0.0

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready counts (for the manifest)."""
        return {
            "rounds": self.rounds,
            "candidates": self.candidates,
            "kept_instructions": self.kept_instructions,
            "tasks_written": self.tasks_written,
            "rows_written": self.rows_written,
            "classification_tasks": self.classification_tasks,
            "rejections": dict(sorted(self.rejections.items())),
            "instance_rejections": dict(sorted(self.instance_rejections.items())),
            "engine": {
                "requests": self.engine.requests,
                "prompt_tokens": self.engine.prompt_tokens,
                "output_tokens": self.engine.output_tokens,
                "live_requests": self.live_requests,
                "live_output_tokens": self.live_output_tokens,
                "live_seconds": round(self.engine.seconds, 3),
                "live_output_tokens_per_second": round(self.live_tokens_per_second, 2),
                "by_stage": self.engine.by_stage,
            },
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Candidate:
    """One candidate instruction followed through a round; becomes a ledger row.

    ``reason`` is None while it survives; ``stage`` says where it stopped
    ("instructions", "instances") or "written".
    """

    slot: int
    item: int | None
    instruction: str
    prompt_task_ids: tuple[str, ...]
    completion: str
    stage: str = "instructions"
    reason: str | None = None
    nearest_instruction: str | None = None
    rouge_l: float | None = None
    is_classification: bool | None = None
    instances: tuple[Instance, ...] = ()
    instance_rejections: list[str] = field(default_factory=list)
    task_id: str = ""

    def reject(self, stage: str, reason: str) -> None:
        """Stop the candidate at ``stage`` with reason code ``reason``."""
        self.stage, self.reason = stage, reason

    def ledger_row(self, round_number: int) -> dict[str, Any]:
        """The candidate as a row of the ledger's ``candidates.parquet``."""
        return {
            "round": round_number, "slot": self.slot, "item": self.item,
            "instruction": self.instruction, "stage": self.stage, "reason": self.reason,
            "nearest_instruction": self.nearest_instruction, "rouge_l": self.rouge_l,
            "is_classification": self.is_classification,
            "instances": len(self.instances) if self.stage == "written" else 0,
            "instance_rejections": self.instance_rejections,
            "prompt_task_ids": list(self.prompt_task_ids), "completion": self.completion,
        }


def request_seed(run_seed: int, round_number: int, stage: str, key: str | int) -> int:
    """A 31-bit sampling seed for one request, a pure function of its coordinates."""
    digest = hashlib.sha256(f"{run_seed}:{round_number}:{stage}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class LazyEngine:
    """An engine started on first use, so replays and refilters never start one.

    Args:
        start: builds the engine; None means no engine may be used (refilter):
            requests without a record then get no completion.
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
        """The engine, started now if needed."""
        if self.engine is None:
            if self._start is None:
                raise RuntimeError("no engine in this mode")
            if self._on_start:
                self._on_start()
            self.engine = self._start()
        return self.engine

    def close(self) -> None:
        """Shut the engine down if it was started."""
        if self.engine is not None:
            self.engine.close()


class SelfInstruct:
    """A Self-Instruct run over a task pool, durable in its run directory.

    Args:
        config: the run configuration.
        engine: the (lazily started) engine.
        prompts: the prompt templates.
        seed_tasks: the human seed tasks (at least one).
        run_dir: the run directory holding the ledger (locked by the caller).
        writer: where rows become shards.
        model_name: recorded in every row.
        reporter: progress sink.
        on_commit: called after each newly committed round (the caller writes the
            manifest); not for replayed rounds.
        verify_replay: check that replayed rounds give the examples they recorded
            (resume); off for ``refilter``, whose settings differ on purpose.
        replay_only: stop after the rounds the ledger has committed (``refilter``).
    """

    def __init__(self, config: Config, engine: LazyEngine, prompts: PromptBuilder,
                 seed_tasks: Sequence[Task], run_dir: RunDirectory, writer: ShardWriter,
                 model_name: str, reporter: Reporter | None = None,
                 on_commit: Callable[["SelfInstruct"], None] | None = None,
                 verify_replay: bool = True, replay_only: bool = False,
                 source: RunDirectory | None = None):
        self.config = config
        self.engine = engine
        self.prompts = prompts
        self.human = list(seed_tasks)
        self.machine: list[Task] = []
        self.run_dir = run_dir
        self.source = source or run_dir
        self.writer = writer
        self.model_name = model_name
        self.reporter = reporter or SilentReporter()
        self.on_commit = on_commit
        self.verify_replay = verify_replay
        self.replay_only = replay_only
        self.stats = RunStats()
        self.pool = RougeIndex(threshold=config.filters.rouge_threshold,
                               tokenizer=config.filters.rouge_tokenizer)
        self.pool.extend(t.instruction for t in self.human)
        threshold = config.instances.near_duplicate_threshold
        self.examples = NearDuplicateIndex(threshold) if threshold is not None else None
        for seed in self.human:
            self._remember_examples(seed)
        self._commit: dict[str, Any] | None = None
        self._over_target_round, self._over_target_set = 0, set()

    # -- the algorithm -------------------------------------------------------

    def run(self) -> RunStats:
        """Run (or replay) rounds until the target is met; return the stats.

        Raises:
            LedgerError: a committed round's records are damaged, or replay to
                different examples than recorded.
        """
        started = time.perf_counter()
        committed = self.source.committed_rounds()
        while not self.finished(committed):
            round_number = self.stats.rounds + 1
            self._commit = self.source.read_commit(round_number)
            candidates = self.generate_instructions(round_number)
            kept = self.filter_instructions(candidates)
            self.identify_classification(round_number, kept)
            self.generate_instances(round_number, kept)
            rows = self.write(round_number, kept)
            self.commit(round_number, candidates, rows)
            self.stats.seconds = time.perf_counter() - started
            self.reporter.round_done(self.stats)
        self.stats.seconds = time.perf_counter() - started
        return self.stats

    def finished(self, committed: int) -> bool:
        """Target met, round limit reached, or (replay only) the ledger exhausted."""
        if self.replay_only:
            return self.stats.rounds >= committed
        return (self.stats.tasks_written >= self.config.num_instructions
                or self.stats.rounds >= self.config.generation.max_rounds)

    def generate_instructions(self, round_number: int) -> list[Candidate]:
        """Steps 1-2a: prompt with pool tasks, parse the lists into candidates (§2.2)."""
        gen = self.config.generation
        rng = random.Random(f"{self.config.seed}:{round_number}")
        shown = [sample_prompt_tasks(rng, self.human, self.machine, gen.prompt_tasks,
                                     gen.prompt_human_tasks)
                 for _ in range(gen.prompts_per_round)]
        sampling = Sampling(gen.temperature, gen.top_p, gen.max_tokens,
                            instruction_stop(gen.max_list_items) + tuple(gen.stop),
                            gen.presence_penalty, gen.frequency_penalty)
        requests = {
            str(slot): (Request(self.prompts.instruction_generation(tasks), sampling,
                                request_seed(self.config.seed, round_number, "instructions", slot),
                                self.config.engine.chat_template),
                        tuple(t.id for t in tasks))
            for slot, tasks in enumerate(shown)}
        records = self.completions(round_number, "instructions", requests)
        candidates: list[Candidate] = []
        for key in sorted(records, key=int):
            record = records[key]
            if record is None:  # refilter of a round whose prompts were never answered
                continue
            first = len(record.prompt_task_ids) + 1
            items = parse_instruction_list(record.text, first, record.finish_reason == "length")
            if record.finish_reason == PROMPT_TOO_LONG:
                candidate = Candidate(int(key), None, "", record.prompt_task_ids, record.text)
                candidate.reject("instructions", PROMPT_TOO_LONG)
                candidates.append(candidate)
            elif not items:
                candidate = Candidate(int(key), None, "", record.prompt_task_ids, record.text)
                candidate.reject("instructions", "unparseable")
                candidates.append(candidate)
            for item in items:
                candidate = Candidate(int(key), item.number, item.text,
                                      record.prompt_task_ids, record.text)
                if item.truncated:
                    candidate.reject("instructions", "truncated")
                candidates.append(candidate)
        return candidates

    def filter_instructions(self, candidates: list[Candidate]) -> list[Candidate]:
        """Step 2b: the instruction filters, then ROUGE-L against pool and round (§2.2)."""
        survivors = []
        for candidate in candidates:
            self.stats.candidates += 1
            if candidate.reason is None:
                reason = instruction_rejection(candidate.instruction, self.config.filters)
                if reason:
                    candidate.reject("instructions", reason)
            if candidate.reason is None:
                survivors.append(candidate)
        decisions = self.pool.dedup_batch([c.instruction for c in survivors], add=True)
        kept = []
        for candidate, decision in zip(survivors, decisions):
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

    def identify_classification(self, round_number: int, kept: list[Candidate]) -> None:
        """Step 3: ask whether each kept instruction is a classification task (§2.2, classification task identification).

        An answer that is neither yes nor no counts as no (input-first instances)
        and is tallied as ``classification_unparseable``.
        """
        cls = self.config.classification
        sampling = Sampling(cls.temperature, 1.0, cls.max_tokens, ("\n",))
        requests = {
            c.instruction: (Request(self.prompts.classification(c.instruction), sampling,
                                    request_seed(self.config.seed, round_number,
                                                 "classification", c.instruction),
                                    self.config.engine.chat_template), ())
            for c in kept}
        records = self.completions(round_number, "classification", requests)
        for candidate in kept:
            record = records.get(candidate.instruction)
            flag = parse_yes_no(record.text) if record is not None else None
            if record is not None and flag is None:
                self.stats.instance_rejections["classification_unparseable"] += 1
            candidate.is_classification = bool(flag)

    def generate_instances(self, round_number: int, kept: list[Candidate]) -> None:
        """Step 4: generate instances and filter them (§2.2, instance generation, §2.2, filtering)."""
        inst = self.config.instances
        stop = instance_stop(inst.max_instances)
        sampling = {kind: Sampling(inst.temperature, inst.top_p, limit, stop,
                                   inst.presence_penalty, inst.frequency_penalty)
                    for kind, limit in ((True, inst.output_first_max_tokens),
                                        (False, inst.max_tokens))}
        requests = {
            c.instruction: (Request(self.prompts.instances(c.instruction,
                                                           bool(c.is_classification)),
                                    sampling[bool(c.is_classification)],
                                    request_seed(self.config.seed, round_number, "instances",
                                                 c.instruction),
                                    self.config.engine.chat_template), ())
            for c in kept}
        records = self.completions(round_number, "instances", requests)
        for candidate in kept:
            record = records.get(candidate.instruction)
            if record is None:
                candidate.reject("instances", "not_generated")
                continue
            if record.finish_reason == PROMPT_TOO_LONG:
                candidate.reject("instances", PROMPT_TOO_LONG)
                continue
            parse = parse_output_first if candidate.is_classification else parse_input_first
            instances = parse(record.text)
            if not instances:
                candidate.reject("instances", "unparseable_instances")
                continue
            verdict = filter_instances(instances, inst.max_instances)
            candidate.instance_rejections = [reason for _, reason in verdict.rejected]
            if verdict.task_reason:
                candidate.reject("instances", verdict.task_reason)
                continue
            candidate.instances = self._drop_near_duplicates(candidate, verdict.kept)
            if not candidate.instances:
                candidate.reject("instances", "near_duplicate")
                continue
            self._remember_examples(Task("", "", candidate.instruction, candidate.instances))

    def write(self, round_number: int, kept: list[Candidate]) -> list[dict[str, Any]]:
        """Step 5a: tasks with instances join the pool and become rows, up to the target.

        Tasks beyond ``num_instructions`` are stopped with reason ``over_target``
        (kept in the ledger; a later run with a larger target does not revive them,
        so ``refilter`` never produces a task the run did not).
        """
        rows = []
        for candidate in kept:
            self.stats.instance_rejections.update(candidate.instance_rejections)
            if candidate.reason is not None:
                self.stats.rejections[candidate.reason] += 1
                continue
            if self._over_target(round_number, candidate):
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
            for k, instance in enumerate(candidate.instances):
                rows.append(self._row(candidate, round_number, k, instance))
        self.stats.rows_written += len(rows)
        return rows

    def commit(self, round_number: int, candidates: list[Candidate],
               rows: list[dict[str, Any]]) -> None:
        """Step 5b: record the round (or check a replayed one) and extend the shards."""
        if self._commit is not None:
            self.stats.replayed_rounds += 1
            if self.verify_replay and self.source is self.run_dir:
                recorded = self.run_dir.committed_rows(round_number, self._commit)
                if recorded != rows:
                    raise LedgerError(
                        f"{self.run_dir.round_dir(round_number)}: replaying round "
                        f"{round_number} does not give the examples it recorded (was the "
                        "run made with other settings or another selfinstruct version?)")
        if self._commit is None or self.source is not self.run_dir:
            self.run_dir.commit_round(round_number, [c.ledger_row(round_number)
                                                     for c in candidates], rows)
        self.writer.add(rows)
        self.stats.rounds = round_number
        crash_point(f"round-{round_number}:before-manifest")
        if self.on_commit is not None and self._commit is None:
            self.on_commit(self)

    # -- completions: the ledger first, then the engine -----------------------

    def completions(self, round_number: int, stage: str,
                    requests: dict[str, tuple[Request, tuple[str, ...]]]
                    ) -> dict[str, RecordedRequest | None]:
        """Completions for ``requests`` (key -> (request, shown task ids)).

        Recorded completions of this round and stage are used as they are; the
        rest go to the engine in one batch (none in ``refilter``: they map to
        None), and the stage's full record is saved before anything uses it.
        """
        committed = self._commit["files"] if self._commit is not None else None
        recorded = {r.key: r for r in (self.source.load_stage(round_number, stage, committed)
                                       or [])}
        if stage == "instructions" and recorded:
            # the prompts of a recorded round are history: use them as they were
            requests = {key: requests.get(key, (None, r.prompt_task_ids))
                        for key, r in recorded.items()}
        missing = [key for key in requests if key not in recorded]
        if missing and self._commit is None and self.engine.available:
            batch = [requests[key][0] for key in missing]
            self.reporter.stage(stage, len(batch))
            engine = self.engine.get()
            started = time.perf_counter()
            completions = engine.generate(batch, progress=self.reporter.advance)
            self.stats.engine.seconds += time.perf_counter() - started
            self.stats.live_requests += len(completions)
            self.stats.live_output_tokens += sum(c.output_tokens for c in completions)
            for key, completion in zip(missing, completions):
                request, shown = requests[key]
                recorded[key] = _record(key, request, shown, completion)
            records = [recorded[key] for key in requests if key in recorded]
            self.run_dir.save_stage(round_number, stage, records)
            crash_point(f"round-{round_number}:after-{stage}")
        elif recorded and self.source is not self.run_dir:
            # refilter: the new run directory's ledger records what it used
            self.run_dir.save_stage(round_number, stage,
                                    [recorded[k] for k in requests if k in recorded])
        out = {key: recorded.get(key) for key in requests}
        self._count_tokens(stage, [r for r in out.values() if r is not None])
        return out

    # -- helpers -------------------------------------------------------------

    def _count_tokens(self, stage: str, records: list[RecordedRequest]) -> None:
        self.stats.engine.count(stage, [
            Completion(r.text, r.prompt_tokens, r.output_tokens, r.finish_reason)
            for r in records])

    def _over_target(self, round_number: int, candidate: Candidate) -> bool:
        """Whether a finished task falls beyond the target: by the record when the
        round is replayed (history is kept), by the count when it is live."""
        if self._commit is None:
            return self.stats.tasks_written >= self.config.num_instructions
        if self._over_target_round != round_number:
            self._over_target_round = round_number
            self._over_target_set = self.source.recorded_reasons(
                round_number, self._commit, "over_target")
        return candidate.instruction in self._over_target_set

    @staticmethod
    def _example_text(instruction: str, instance: Instance) -> str:
        return f"{instruction}\n{instance.input}"

    def _drop_near_duplicates(self, candidate: Candidate, instances: Sequence[Instance]
                              ) -> tuple[Instance, ...]:
        """Instances whose instruction + input is not a near-duplicate of another
        task's example (rapidfuzz ratio >= ``near_duplicate_threshold``)."""
        if self.examples is None:
            return tuple(instances)
        kept = []
        for instance in instances:
            hit, _ = self.examples.match(self._example_text(candidate.instruction, instance))
            if hit is None:
                kept.append(instance)
            else:
                candidate.instance_rejections.append("near_duplicate")
        return tuple(kept)

    def _remember_examples(self, task: Task) -> None:
        """Index a task's examples once the whole task is decided, so its own
        instances (one instruction, several outputs) never match each other."""
        if self.examples is not None:
            for instance in task.instances:
                self.examples.add(self._example_text(task.instruction, instance))

    def _row(self, candidate: Candidate, round_number: int, k: int,
             instance: Instance) -> dict[str, Any]:
        return {
            "id": f"{candidate.task_id}-{k}",
            "task_id": candidate.task_id,
            "instruction": candidate.instruction,
            "input": instance.input,
            "output": instance.output,
            "messages": messages_for(candidate.instruction, instance.input, instance.output),
            "is_classification": bool(candidate.is_classification),
            "model": self.model_name,
            "round": round_number,
            "prompt_task_ids": list(candidate.prompt_task_ids),
            "nearest_instruction": candidate.nearest_instruction,
            "nearest_rouge_l": candidate.rouge_l,
        }


def _record(key: str, request: Request, shown: tuple[str, ...],
            completion: Completion) -> RecordedRequest:
    return RecordedRequest(key=key, seed=request.seed, prompt=request.prompt,
                           prompt_task_ids=shown, text=completion.text,
                           finish_reason=completion.finish_reason,
                           prompt_tokens=completion.prompt_tokens,
                           output_tokens=completion.output_tokens)
