"""Step 3: classification task identification (Self-Instruct §2.2).

Each kept instruction is asked, in a few-shot prompt of yes/no examples, whether
it is a classification task (a task whose output comes from a small label set);
the answer decides how its instances are generated (step 4).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..engines.base import Request, Sampling
from ..parsing import parse_yes_no
from ..tasks import Candidate
from .base import CandidateStage, Records


class ClassificationIdentification(CandidateStage):
    """Asks "Is it classification?" of every kept instruction.

    An answer that is neither yes nor no counts as no (input-first instances)
    and is tallied as ``classification_unparseable``; an instruction without an
    answer (a refiltered round that never asked) is not classification.
    """

    name = "classification"

    def requests(self, round_number: int, kept: Sequence[Candidate]) -> list[Request]:
        """The yes/no prompt for each instruction: greedy by default, a few tokens, one line."""
        cls = self.config.classification
        sampling = Sampling(cls.temperature, 1.0, cls.max_tokens, ("\n",))
        return [self.request(round_number, c.instruction,
                             self.prompts.classification(c.instruction), sampling)
                for c in kept]

    def apply(self, kept: Sequence[Candidate], records: Records) -> None:
        """Set each candidate's ``is_classification``."""
        for candidate in kept:
            record = records.get(candidate.instruction)
            flag = parse_yes_no(record.text) if record is not None else None
            if record is not None:
                self.count_useful(record, [record.text] if flag is not None else [])
                if flag is None:
                    self.stats.instance_rejections["classification_unparseable"] += 1
            candidate.is_classification = bool(flag)
