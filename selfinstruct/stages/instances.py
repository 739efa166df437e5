"""Step 4: instance generation and the instance filters (Self-Instruct §2.2).

Classification tasks are prompted output-first (a class label, then an input
for it), the others input-first (an input, then its output), which the paper
found avoids inputs biased towards one label. The parsed instances then pass the
instance filters (§2.2, filtering and postprocessing: an empty output, an
input equal to its output, a field ending in a colon, exact duplicates, a shared
input with different outputs, at most ``max_instances``) and near-duplicate
detection against other tasks' examples.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Config
from ..dedup import NearDuplicateIndex
from ..engines.base import PROMPT_TOO_LONG, Request, Sampling
from ..filters import filter_instances
from ..parsing import parse_input_first, parse_output_first
from ..prompts import PromptBuilder, instance_stop
from ..stats import RunStats
from ..tasks import Candidate, Instance, Task
from .base import CandidateStage, Records


class InstanceGeneration(CandidateStage):
    """Generates, parses and filters the instances of every kept instruction.

    Args:
        config, prompts, stats: as :class:`~selfinstruct.stages.base.ModelStage`.
        seed_tasks: the human seed tasks, whose examples start the
            near-duplicate index.

    A candidate ends with its instances set, or rejected at stage "instances"
    with ``not_generated`` (no answer: a refiltered round never asked),
    ``prompt_too_long``, ``unparseable_instances``, a task-level filter reason,
    or ``near_duplicate`` (every instance was one).
    """

    name = "instances"

    def __init__(self, config: Config, prompts: PromptBuilder, stats: RunStats,
                 seed_tasks: Sequence[Task] = ()):
        super().__init__(config, prompts, stats)
        threshold = config.instances.near_duplicate_threshold
        self.examples = NearDuplicateIndex(threshold) if threshold is not None else None
        for task in seed_tasks:
            self.remember(task)

    def requests(self, round_number: int, kept: Sequence[Candidate]) -> list[Request]:
        """Output-first prompts (300 tokens) for classification tasks, input-first
        (350) for the rest, both stopping at the next task or one example too many
        (the reference implementation's limits)."""
        inst = self.config.instances
        stop = instance_stop(inst.max_instances)
        sampling = {kind: Sampling(inst.temperature, inst.top_p, limit, stop,
                                   inst.presence_penalty, inst.frequency_penalty)
                    for kind, limit in ((True, inst.output_first_max_tokens),
                                        (False, inst.max_tokens))}
        return [self.request(round_number, c.instruction,
                             self.prompts.instances(c.instruction, bool(c.is_classification)),
                             sampling[bool(c.is_classification)])
                for c in kept]

    def apply(self, kept: Sequence[Candidate], records: Records) -> None:
        """Parse and filter each candidate's instances; index the survivors' examples."""
        inst = self.config.instances
        for candidate in kept:
            record = records.get(candidate.instruction)
            if record is None:
                candidate.reject(self.name, "not_generated")
                continue
            if record.finish_reason == PROMPT_TOO_LONG:
                candidate.reject(self.name, PROMPT_TOO_LONG)
                continue
            parse = parse_output_first if candidate.is_classification else parse_input_first
            instances = parse(record.text)
            self.count_useful(record, [i.input + i.output for i in instances])
            if not instances:
                candidate.reject(self.name, "unparseable_instances")
                continue
            verdict = filter_instances(instances, inst.max_instances)
            candidate.instance_rejections = [reason for _, reason in verdict.rejected]
            if verdict.task_reason:
                candidate.reject(self.name, verdict.task_reason)
                continue
            candidate.instances = self.drop_near_duplicates(candidate, verdict.kept)
            if not candidate.instances:
                candidate.reject(self.name, "near_duplicate")
                continue
            self.remember(Task("", "", candidate.instruction, candidate.instances))

    @staticmethod
    def example_text(instruction: str, instance: Instance) -> str:
        """What near-duplicate detection compares: the instruction, a newline, the input."""
        return f"{instruction}\n{instance.input}"

    def drop_near_duplicates(self, candidate: Candidate, instances: Sequence[Instance]
                             ) -> tuple[Instance, ...]:
        """Instances whose instruction + input is not a near-duplicate of another
        task's example (rapidfuzz ratio >= ``near_duplicate_threshold``); each one
        dropped adds ``near_duplicate`` to the candidate's instance rejections."""
        if self.examples is None:
            return tuple(instances)
        kept = []
        for instance in instances:
            hit, _ = self.examples.match(self.example_text(candidate.instruction, instance))
            if hit is None:
                kept.append(instance)
            else:
                candidate.instance_rejections.append("near_duplicate")
        return tuple(kept)

    def remember(self, task: Task) -> None:
        """Index a task's examples once the whole task is decided, so its own
        instances (one instruction, several outputs) never match each other."""
        if self.examples is not None:
            for instance in task.instances:
                self.examples.add(self.example_text(task.instruction, instance))
