"""The Self-Instruct loop (Wang et al. 2023, §2), read top-down.

Each round:

1. **Instruction generation** (§2.1): ``prompts_per_round`` prompts, each showing
   8 pool tasks (6 human seeds + 2 machine-made; all human until 2 exist), sent
   to the engine as one batch; each completion continues the numbered list.
2. **Instruction filtering** (§2.4): parse the lists; drop unparseable and
   truncated items and those failing the word/blacklist/prefix/character
   filters; drop any instruction whose ROUGE-L F1 to the pool, or to an
   instruction kept earlier in the same round, exceeds 0.7. Survivors join the pool.
3. **Classification identification** (§2.2): one few-shot yes/no prompt each.
4. **Instance generation** (§2.3): output-first for classification tasks,
   input-first otherwise; then the instance filters (§2.4), and near-duplicate
   detection of each example (instruction + input) against other tasks' examples.
5. **Shards**: tasks with at least one instance are written, one row per instance.

Rounds repeat until ``num_instructions`` new tasks are written or ``max_rounds``
pass. Randomness comes from the run seed: the in-context tasks of round r from
``Random(f"{seed}:{r}")``, each request's sampling seed from the seed, round,
stage and slot, so a request's completion never depends on batch order.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import Config
from .dedup import NearDuplicateIndex, RougeIndex
from .engine import Completion, Engine, EngineStats, Request, Sampling
from .filters import filter_instances, instruction_rejection
from .parsing import (parse_input_first, parse_instruction_list, parse_output_first,
                      parse_yes_no)
from .prompts import INSTANCE_STOP, PromptBuilder, instruction_stop, sample_prompt_tasks
from .seeds import Instance, Task
from .shards import ShardWriter, messages_for


class Reporter(Protocol):
    """Receives progress from the pipeline (the CLI draws it; tests may record it)."""

    def stage(self, name: str, total: int) -> None:
        """A stage of the current round starts with ``total`` engine requests."""

    def advance(self, n: int) -> None:
        """``n`` requests of the current stage finished."""

    def round_done(self, stats: "RunStats") -> None:
        """A round finished; ``stats`` holds the running totals."""


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
    """Counts of a run so far.

    Attributes:
        rounds: rounds completed.
        candidates: instructions parsed (or unparseable completions) in total.
        kept_instructions: instructions that passed every instruction filter.
        tasks_written: new tasks written to shards (with >= 1 instance).
        rows_written: instances written (one row each).
        classification_tasks: of the written tasks, classification ones.
        rejections: reason code -> count, instruction and task stages.
        instance_rejections: reason code -> count of dropped instances.
        engine: token and time totals of the engine.
        seconds: wall time of the loop.
    """

    rounds: int = 0
    candidates: int = 0
    kept_instructions: int = 0
    tasks_written: int = 0
    rows_written: int = 0
    classification_tasks: int = 0
    rejections: Counter = field(default_factory=Counter)
    instance_rejections: Counter = field(default_factory=Counter)
    engine: EngineStats = field(default_factory=EngineStats)
    seconds: float = 0.0

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
                "seconds": round(self.engine.seconds, 3),
                "output_tokens_per_second": round(
                    self.engine.output_tokens / self.engine.seconds, 2)
                if self.engine.seconds else 0.0,
                "by_stage": self.engine.by_stage,
            },
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class NewTask:
    """An instruction that survived the instruction filters in some round.

    Attributes:
        task: the task (its instances are filled in after instance generation).
        round: the round that produced it (1-based).
        prompt_task_ids: ids of the tasks shown in the prompt that produced it.
        nearest_instruction: the most similar pool instruction when it was kept.
        nearest_rouge_l: that instruction's ROUGE-L F1, or None.
    """

    task: Task
    round: int
    prompt_task_ids: tuple[str, ...]
    nearest_instruction: str | None
    nearest_rouge_l: float | None


def request_seed(run_seed: int, round_number: int, stage: str, slot: int) -> int:
    """A 31-bit sampling seed for one request, a pure function of its coordinates."""
    key = f"{run_seed}:{round_number}:{stage}:{slot}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF


class SelfInstruct:
    """One Self-Instruct run over a task pool.

    Args:
        config: the run configuration.
        engine: any :class:`~selfinstruct.engine.Engine`.
        prompts: the prompt templates.
        seed_tasks: the human seed tasks (at least one).
        writer: where kept tasks go.
        reporter: progress sink.
    """

    def __init__(self, config: Config, engine: Engine, prompts: PromptBuilder,
                 seed_tasks: Sequence[Task], writer: ShardWriter,
                 reporter: Reporter | None = None):
        self.config = config
        self.engine = engine
        self.prompts = prompts
        self.human = list(seed_tasks)
        self.machine: list[Task] = []
        self.writer = writer
        self.reporter = reporter or SilentReporter()
        self.stats = RunStats()
        self.pool = RougeIndex(threshold=config.filters.rouge_threshold,
                               tokenizer=config.filters.rouge_tokenizer)
        self.pool.extend(t.instruction for t in self.human)
        threshold = config.instances.near_duplicate_threshold
        self.examples = NearDuplicateIndex(threshold) if threshold is not None else None
        for seed in self.human:
            self._remember_examples(seed)

    # -- the algorithm -------------------------------------------------------

    def run(self) -> RunStats:
        """Run rounds until the target number of new tasks is written; return the stats."""
        started = time.perf_counter()
        target = self.config.num_instructions
        while self.stats.tasks_written < target and self.stats.rounds < \
                self.config.generation.max_rounds:
            round_number = self.stats.rounds + 1
            new = self.generate_instructions(round_number)
            new = self.identify_classification(round_number, new)
            tasks = self.generate_instances(round_number, new)
            self.write(tasks[: target - self.stats.tasks_written])
            self.stats.rounds = round_number
            self.stats.seconds = time.perf_counter() - started
            self.reporter.round_done(self.stats)
        self.writer.close()
        self.stats.seconds = time.perf_counter() - started
        return self.stats

    def generate_instructions(self, round_number: int) -> list[NewTask]:
        """Steps 1-2: prompt with pool tasks, parse, filter, dedup against the pool (§2.1, §2.4)."""
        gen = self.config.generation
        rng = random.Random(f"{self.config.seed}:{round_number}")
        shown = [sample_prompt_tasks(rng, self.human, self.machine, gen.prompt_tasks,
                                     gen.prompt_human_tasks)
                 for _ in range(gen.prompts_per_round)]
        sampling = Sampling(gen.temperature, gen.top_p, gen.max_tokens,
                            instruction_stop(gen.max_list_items))
        requests = [Request(self.prompts.instruction_generation(tasks), sampling,
                            request_seed(self.config.seed, round_number, "instructions", slot),
                            self.config.engine.chat_template)
                    for slot, tasks in enumerate(shown)]
        completions = self._generate("instructions", requests)

        candidates: list[tuple[str, tuple[str, ...]]] = []
        for tasks, completion in zip(shown, completions):
            ids = tuple(t.id for t in tasks)
            items = parse_instruction_list(completion.text, len(tasks) + 1,
                                           completion.finish_reason == "length")
            self.stats.candidates += max(1, len(items))
            if not items:
                self._reject("unparseable")
                continue
            for item in items:
                reason = "truncated" if item.truncated else instruction_rejection(
                    item.text, self.config.filters)
                if reason:
                    self._reject(reason)
                else:
                    candidates.append((item.text, ids))

        decisions = self.pool.dedup_batch([text for text, _ in candidates], add=True)
        new: list[NewTask] = []
        for (text, ids), decision in zip(candidates, decisions):
            if not decision.keep:
                self._reject("rouge_l")
                continue
            self.stats.kept_instructions += 1
            task_id = f"r{round_number:04d}-{len(new):04d}"
            new.append(NewTask(Task(task_id, "", text, ()), round_number, ids,
                               decision.nearest_text, decision.score if decision.nearest_text
                               is not None else None))
        return new

    def identify_classification(self, round_number: int, new: list[NewTask]) -> list[NewTask]:
        """Step 3: ask whether each new instruction is a classification task (§2.2).

        An answer that is neither yes nor no counts as no (input-first instances)
        and is tallied as ``classification_unparseable`` in the instance rejections.
        """
        cls = self.config.classification
        sampling = Sampling(cls.temperature, 1.0, cls.max_tokens, ("\n",))
        requests = [Request(self.prompts.classification(n.task.instruction), sampling,
                            request_seed(self.config.seed, round_number, "classification", k),
                            self.config.engine.chat_template)
                    for k, n in enumerate(new)]
        answers = self._generate("classification", requests)
        out = []
        for n, answer in zip(new, answers):
            flag = parse_yes_no(answer.text)
            if flag is None:
                self.stats.instance_rejections["classification_unparseable"] += 1
            task = n.task
            out.append(NewTask(Task(task.id, task.name, task.instruction, task.instances,
                                    bool(flag)), n.round, n.prompt_task_ids,
                               n.nearest_instruction, n.nearest_rouge_l))
        return out

    def generate_instances(self, round_number: int, new: list[NewTask]) -> list[NewTask]:
        """Step 4: generate instances and filter them (§2.3, §2.4); tasks left with none drop."""
        inst = self.config.instances
        sampling = Sampling(inst.temperature, inst.top_p, inst.max_tokens, INSTANCE_STOP)
        requests = [Request(self.prompts.instances(n.task.instruction,
                                                   bool(n.task.is_classification)),
                            sampling,
                            request_seed(self.config.seed, round_number, "instances", k),
                            self.config.engine.chat_template)
                    for k, n in enumerate(new)]
        completions = self._generate("instances", requests)
        done = []
        for n, completion in zip(new, completions):
            parse = parse_output_first if n.task.is_classification else parse_input_first
            instances = parse(completion.text)
            if not instances:
                self._reject("unparseable_instances")
                continue
            verdict = filter_instances(instances, inst.max_instances)
            self.stats.instance_rejections.update(reason for _, reason in verdict.rejected)
            kept = self._drop_near_duplicates(n.task.instruction, verdict.kept)
            if verdict.task_reason or not kept:
                self._reject(verdict.task_reason or "near_duplicate")
                continue
            task = n.task
            done.append(NewTask(Task(task.id, task.name, task.instruction, kept,
                                     task.is_classification), n.round, n.prompt_task_ids,
                                n.nearest_instruction, n.nearest_rouge_l))
            self._remember_examples(done[-1].task)
        return done

    def write(self, tasks: Sequence[NewTask]) -> None:
        """Step 5: add tasks to the machine pool and their instances to the shards."""
        rows = []
        for n in tasks:
            self.machine.append(n.task)
            self.stats.tasks_written += 1
            self.stats.classification_tasks += bool(n.task.is_classification)
            for k, instance in enumerate(n.task.instances):
                rows.append(self._row(n, k, instance))
        self.stats.rows_written += len(rows)
        self.writer.add(rows)

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _example_text(instruction: str, instance: Instance) -> str:
        return f"{instruction}\n{instance.input}"

    def _drop_near_duplicates(self, instruction: str, instances: Sequence[Instance]
                              ) -> tuple[Instance, ...]:
        """Instances whose instruction + input is not a near-duplicate of another
        task's example (rapidfuzz ratio >= ``near_duplicate_threshold``)."""
        if self.examples is None:
            return tuple(instances)
        kept = []
        for instance in instances:
            hit, _ = self.examples.match(self._example_text(instruction, instance))
            if hit is None:
                kept.append(instance)
            else:
                self.stats.instance_rejections["near_duplicate"] += 1
        return tuple(kept)

    def _remember_examples(self, task: Task) -> None:
        """Index a task's examples once the whole task is decided, so its own
        instances (one instruction, several outputs) never match each other."""
        if self.examples is not None:
            for instance in task.instances:
                self.examples.add(self._example_text(task.instruction, instance))

    def _row(self, n: NewTask, k: int, instance: Instance) -> dict[str, Any]:
        task = n.task
        return {
            "id": f"{task.id}-{k}",
            "task_id": task.id,
            "instruction": task.instruction,
            "input": instance.input,
            "output": instance.output,
            "messages": messages_for(task.instruction, instance.input, instance.output),
            "is_classification": bool(task.is_classification),
            "model": self.engine.model_name,
            "round": n.round,
            "prompt_task_ids": list(n.prompt_task_ids),
            "nearest_instruction": n.nearest_instruction,
            "nearest_rouge_l": n.nearest_rouge_l,
        }

    def _reject(self, reason: str) -> None:
        self.stats.rejections[reason] += 1

    def _generate(self, stage: str, requests: list[Request]) -> list[Completion]:
        self.reporter.stage(stage, len(requests))
        if not requests:
            return []
        started = time.perf_counter()
        completions = self.engine.generate(requests, progress=self.reporter.advance)
        self.stats.engine.add(stage, completions, time.perf_counter() - started)
        return completions
