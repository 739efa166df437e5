"""Step 4b (optional): a model judges every example, and the cuts drop the weak ones.

Self-Instruct's own review of 200 generated examples (Wang et al. 2023, §3.3)
found only 54% with every field valid; this stage asks a judge model its three
questions of every example that instance generation kept: is the instruction a
valid task, is the input appropriate, is the output correct and acceptable,
each scored on a fixed scale (``quality.scale_min`` .. ``quality.scale_max``)
with a one-sentence rationale, plus an overall score. The rubric is the
template ``prompts/<quality.rubric>.jinja``. Where the backend supports it, the
answer is constrained to the verdict's JSON schema (vLLM structured outputs);
otherwise the tolerant parser reads it (:func:`~selfinstruct.parsing.parse_judgement`).

Each example is one request keyed by a hash of its fields
(:func:`~selfinstruct.quality.example_key`), recorded in the ledger like every
stage, so a crash resumes without judging again and ``refilter`` re-applies other
cuts from the recorded verdicts. An example below a cut (``quality.min_*``) is
dropped with reason ``low_quality``; a task whose examples all go is rejected
with that reason. With a cut set, an example whose verdict is unreadable
(``judge_unparseable``) or was never asked (``not_judged``) cannot pass it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..config import Config
from ..engines.base import PROMPT_TOO_LONG, Request, Sampling
from ..parsing import judgement_schema, parse_judgement
from ..prompts import PromptBuilder
from ..quality import (JUDGE_UNPARSEABLE, JUDGING, LOW_QUALITY, NOT_JUDGED, Judgement,
                       example_key)
from ..stats import RunStats
from ..storage.ledger import RecordedRequest
from ..tasks import Candidate, Instance
from .base import CandidateStage, Records, request_seed


class QualityJudging(CandidateStage):
    """Judges every instance of every surviving candidate; applies the cuts.

    Args:
        config, prompts, stats: as :class:`~selfinstruct.stages.base.ModelStage`;
            ``prompts`` must have been built with the rubric
            (``PromptBuilder(..., rubric=config.quality.rubric)``).

    After :meth:`apply`, each surviving candidate's ``judgements`` holds the
    verdict (or None) and the reason (None, ``judge_unparseable``,
    ``prompt_too_long``, ``not_judged``) of each instance it keeps, and
    ``judged`` the (overall score, passed) pair of every instance judged.
    """

    name = JUDGING

    def __init__(self, config: Config, prompts: PromptBuilder, stats: RunStats):
        super().__init__(config, prompts, stats)
        quality = config.quality
        # key order matters: the grammar emits properties in the schema's order
        schema = (json.dumps(judgement_schema(quality.scale_min, quality.scale_max))
                  if quality.structured_output else None)
        self.sampling = Sampling(quality.temperature, 1.0, quality.max_tokens,
                                 json_schema=schema)

    def requests(self, round_number: int, kept: Sequence[Candidate]) -> list[Request]:
        """One judge request per instance of each candidate, keyed by the example's
        hash; the prompt is the rubric rendered with the example."""
        quality = self.config.quality
        requests, seen = [], set()
        for candidate in surviving(kept):
            for instance in candidate.instances:
                key = example_key(candidate.instruction, instance.input, instance.output)
                if key in seen:  # the same example twice cannot happen within a task
                    continue
                seen.add(key)
                prompt = self.prompts.judge(candidate.instruction, instance.input,
                                            instance.output, quality.scale_min,
                                            quality.scale_max)
                seed = request_seed(self.config.seed, round_number, self.name, key)
                requests.append(Request(prompt, self.sampling, seed, quality.chat_template,
                                        self.name, key))
        return requests

    def apply(self, kept: Sequence[Candidate], records: Records) -> None:
        """Read each verdict; drop instances below a cut (``low_quality``)."""
        quality = self.config.quality
        cuts = quality.cuts()
        for candidate in surviving(kept):
            survivors: list[Instance] = []
            verdicts: list[tuple[Judgement | None, str | None]] = []
            for instance in candidate.instances:
                judgement, reason = self.verdict(records.get(
                    example_key(candidate.instruction, instance.input, instance.output)))
                self.stats.judged += 1
                self.stats.judge_failures[reason or "ok"] += 1
                passed = self.passes(judgement, cuts)
                candidate.judged.append(
                    (judgement.overall if judgement is not None else None, passed))
                if not passed:
                    candidate.instance_rejections.append(reason or LOW_QUALITY)
                    continue
                survivors.append(instance)
                verdicts.append((judgement, reason))
            candidate.instances = tuple(survivors)
            candidate.judgements = tuple(verdicts)
            if not survivors:
                candidate.reject(self.name, LOW_QUALITY)

    def verdict(self, record: RecordedRequest | None) -> tuple[Judgement | None, str | None]:
        """``(judgement, None)``, or ``(None, reason)`` when there is no verdict."""
        if record is None:
            return None, NOT_JUDGED
        if record.finish_reason == PROMPT_TOO_LONG:
            return None, PROMPT_TOO_LONG
        quality = self.config.quality
        judgement = parse_judgement(record.text, quality.scale_min, quality.scale_max)
        self.count_useful(record, [record.text] if judgement is not None else [])
        if judgement is None:
            return None, JUDGE_UNPARSEABLE
        return judgement, None

    @staticmethod
    def passes(judgement: Judgement | None, cuts: dict[str, float]) -> bool:
        """Whether an example passes every cut; with no cut, every example passes."""
        if not cuts:
            return True
        if judgement is None:
            return False
        return all(judgement.score(name) >= cut for name, cut in cuts.items())


def surviving(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no earlier stage rejected."""
    return [c for c in candidates if c.reason is None]
