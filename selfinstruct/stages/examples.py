"""The Alpaca recipe's one model call: whole tasks in one completion (Stanford Alpaca).

Stanford Alpaca (Taori et al. 2023, ``generate_instruction.py``) replaces
Self-Instruct's three calls with one: each prompt shows ``prompt_tasks`` seed
tasks (3), drawn from the human seeds only, never from the growing pool, each
with its first instance as numbered "Instruction / Input / Output" blocks, and
the model continues the list up to block ``max_list_items`` (19), so one
completion holds up to 16 new tasks of one instance each, with no
classification step. The blocks then pass the same instruction filters and
ROUGE-L check against the pool as Self-Instruct's instructions (the pipeline's
step 2).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..config import Config
from ..engines.base import Request, Sampling
from ..parsing import parse_example_blocks
from ..prompts import PromptBuilder, alpaca_stop
from ..stats import RunStats
from ..tasks import Candidate, Instance, Task
from .base import ModelStage, Records, failed_completion


class ExampleGeneration(ModelStage):
    """Prompts with seed tasks and parses the completions' blocks into candidates,
    each holding its one instance.

    Args:
        config, prompts, stats: as :class:`~selfinstruct.stages.base.ModelStage`
            (``prompts`` loaded for the alpaca recipe).
        human: the human seed tasks (each with at least one instance).
    """

    name = "examples"

    def __init__(self, config: Config, prompts: PromptBuilder, stats: RunStats,
                 human: Sequence[Task]):
        super().__init__(config, prompts, stats)
        self.human = human

    def requests(self, round_number: int) -> tuple[list[Request], dict[str, tuple[str, ...]]]:
        """The round's ``prompts_per_round`` prompts (key: the slot number) and the ids
        of the seed tasks each shows: ``prompt_tasks`` distinct seeds per prompt, from
        ``Random(f"{seed}:{round}")`` (the reference: ``random.sample(seeds, 3)``)."""
        gen = self.config.generation
        rng = random.Random(f"{self.config.seed}:{round_number}")
        sampling = Sampling(gen.temperature, gen.top_p, gen.max_tokens,
                            alpaca_stop(gen.max_list_items) + tuple(gen.stop),
                            gen.presence_penalty, gen.frequency_penalty)
        list_size = gen.max_list_items + 1
        requests, shown = [], {}
        for slot in range(gen.prompts_per_round):
            tasks = rng.sample(list(self.human), min(gen.prompt_tasks, len(self.human)))
            requests.append(self.request(round_number, slot,
                                         self.prompts.alpaca_generation(tasks, list_size),
                                         sampling))
            shown[str(slot)] = tuple(t.id for t in tasks)
        return requests, shown

    def candidates(self, records: Records) -> list[Candidate]:
        """The candidates of the answers, slot by slot, block by block.

        A well-formed block becomes a candidate with its instance set; a malformed
        one a candidate rejected at stage "instructions" with the parser's reason
        (:data:`~selfinstruct.parsing.EXAMPLE_REASONS`, ``truncated`` for the last
        block of a completion cut at ``max_tokens``). A completion over the context
        is one candidate rejected with ``prompt_too_long``, one without a block one
        rejected with ``unparseable``. A slot without an answer gives nothing.
        """
        candidates: list[Candidate] = []
        for key in sorted(records, key=int):
            record = records[key]
            if record is None:
                continue
            first = len(record.prompt_task_ids) + 1
            blocks = parse_example_blocks(record.text, first, record.finish_reason == "length")
            self.count_useful(record, [b.instruction + b.input + b.output
                                       for b in blocks if b.reason is None])
            failed = failed_completion(key, record, blocks)
            if failed is not None:
                candidates.append(failed)
                continue
            for block in blocks:
                candidate = Candidate(int(key), block.number, block.instruction,
                                      record.prompt_task_ids, record.text)
                if block.reason is not None:
                    candidate.reject("instructions", block.reason)
                else:
                    candidate.instances = (Instance(block.input, block.output),)
                candidates.append(candidate)
        return candidates
