"""Step 1: instruction generation (Self-Instruct §2.2).

Each prompt shows ``prompt_tasks`` tasks of the pool (``prompt_human_tasks`` human
seeds, the rest machine-made; all human until enough machine tasks exist) as a
numbered list and lets the model continue it; the completion's items are the
round's candidate instructions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..config import Config
from ..engines.base import Request, Sampling
from ..parsing import parse_instruction_list
from ..prompts import PromptBuilder, instruction_stop, sample_prompt_tasks
from ..stats import RunStats
from ..tasks import Candidate, Task
from .base import ModelStage, Records, failed_completion


class InstructionGeneration(ModelStage):
    """Prompts with pool tasks and parses the numbered lists into candidates.

    Args:
        config, prompts, stats: as :class:`~selfinstruct.stages.base.ModelStage`.
        human: the human seed tasks.
        machine: the machine-made tasks of the pool (the pipeline's list, read
            as it grows).
    """

    name = "instructions"

    def __init__(self, config: Config, prompts: PromptBuilder, stats: RunStats,
                 human: Sequence[Task], machine: Sequence[Task]):
        super().__init__(config, prompts, stats)
        self.human, self.machine = human, machine

    def requests(self, round_number: int) -> tuple[list[Request], dict[str, tuple[str, ...]]]:
        """The round's ``prompts_per_round`` prompts (key: the slot number) and the
        ids of the tasks each shows. The tasks come from ``Random(f"{seed}:{round}")``."""
        gen = self.config.generation
        rng = random.Random(f"{self.config.seed}:{round_number}")
        sampling = Sampling(gen.temperature, gen.top_p, gen.max_tokens,
                            instruction_stop(gen.max_list_items) + tuple(gen.stop),
                            gen.presence_penalty, gen.frequency_penalty)
        requests, shown = [], {}
        for slot in range(gen.prompts_per_round):
            tasks = sample_prompt_tasks(rng, self.human, self.machine, gen.prompt_tasks,
                                        gen.prompt_human_tasks)
            requests.append(self.request(round_number, slot,
                                         self.prompts.instruction_generation(tasks), sampling))
            shown[str(slot)] = tuple(t.id for t in tasks)
        return requests, shown

    def candidates(self, records: Records) -> list[Candidate]:
        """The candidates of the answers, slot by slot, item by item.

        A completion over the context is one candidate rejected with
        ``prompt_too_long``, one without a parseable item one rejected with
        ``unparseable``; the last item of a completion cut at ``max_tokens`` is
        rejected as ``truncated``. The items continue the prompt's list, so the
        first is numbered one past the tasks shown. A slot without an answer (a
        refiltered round whose prompt was never answered) gives nothing.
        """
        candidates: list[Candidate] = []
        for key in sorted(records, key=int):
            record = records[key]
            if record is None:
                continue
            first = len(record.prompt_task_ids) + 1
            items = parse_instruction_list(record.text, first, record.finish_reason == "length")
            self.count_useful(record, [i.text for i in items if not i.truncated])
            failed = failed_completion(key, record, items)
            if failed is not None:
                candidates.append(failed)
            for item in items:
                candidate = Candidate(int(key), item.number, item.text,
                                      record.prompt_task_ids, record.text)
                if item.truncated:
                    candidate.reject(self.name, "truncated")
                candidates.append(candidate)
        return candidates
