"""The vocabulary of quality scoring: the judge's questions, its verdict, its columns.

Self-Instruct's own review of 200 generated examples (Wang et al. 2023, §3.3,
"Quality") asked three questions of each: does the instruction describe a valid
task, is the input appropriate for the instruction, is the output a correct and
acceptable response to the instruction and input. The judging stage
(:mod:`.stages.judging`) asks a model those three questions of every example,
each scored on a fixed scale (``quality.scale_min`` .. ``quality.scale_max``,
1-5 by default) with a one-sentence rationale, plus an overall score.

Everything downstream (shards, ledger, ``inspect``, selection, ``refilter``)
reads the scores through the names defined here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

QUESTIONS = ("instruction", "input", "output")
"""The judge's three questions, in the order of Self-Instruct §3.3."""

SCORES = (*QUESTIONS, "overall")
"""Every score a verdict carries: the three questions and the overall score."""

JUDGING = "judging"
"""The judging stage's name: its ledger file is ``requests-judging.parquet``."""

LOW_QUALITY = "low_quality"
"""Reason code of an example (or of a task, when all its examples go) below a cut."""

JUDGE_UNPARSEABLE = "judge_unparseable"
"""Reason code of an example whose judge answer could not be read as a verdict
(no JSON object or line form, a missing score, a score outside the scale)."""

NOT_JUDGED = "not_judged"
"""Reason code of an example with no recorded judge answer where none may be asked
(``refilter`` of an example the source run never judged)."""

NOT_SELECTED = "not_selected"
"""Count key of examples left out by a ``keep_best`` budget."""

REVIEWED_INVALID = "reviewed_invalid"
"""Reason code of an example a human reviewer answered "no" to on any of the three
questions (``selfinstruct review``), dropped by ``refilter`` or ``export`` with
``--drop-reviewed-invalid`` (and of a task, when all its examples go)."""


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict on one example.

    Attributes:
        instruction, input, output: the scores of the three questions, each in
            ``[scale_min, scale_max]`` (floats, so a reward model's or an
            averaged score fits too).
        overall: the overall score, same scale.
        instruction_rationale, input_rationale, output_rationale: the judge's
            one-sentence reasons ("" when it gave none).
    """

    instruction: float
    input: float
    output: float
    overall: float
    instruction_rationale: str = ""
    input_rationale: str = ""
    output_rationale: str = ""

    def score(self, name: str) -> float:
        """The score named ``name``, one of :data:`SCORES`.

        Raises:
            KeyError: an unknown name.
        """
        if name not in SCORES:
            raise KeyError(name)
        value: float = getattr(self, name)
        return value


def column(name: str) -> str:
    """The shard column of score ``name``: ``quality_<name>``."""
    return f"quality_{name}"


def rationale_column(question: str) -> str:
    """The shard column of a question's rationale: ``quality_<question>_rationale``."""
    return f"quality_{question}_rationale"


REWARD = "reward"
"""The score name of a reward model's output (``quality_reward``): a real number,
higher is better, on no fixed scale (``selfinstruct score --reward-model``)."""

QUALITY_FIELDS = [
    *[pa.field(column(name), pa.float64()) for name in SCORES],
    pa.field(column(REWARD), pa.float64()),
    *[pa.field(rationale_column(q), pa.string()) for q in QUESTIONS],
    pa.field("quality_reason", pa.string()),
    pa.field("quality_judge", pa.string()),
]
"""Columns a judged run's shards add to :data:`~selfinstruct.storage.shards.SCHEMA`:
the four scores (null when unparseable), a reward model's ``quality_reward``
(null unless one scored), three rationales, ``quality_reason``
(null, or :data:`JUDGE_UNPARSEABLE` / ``prompt_too_long``) and ``quality_judge``
(the judge model's name)."""

QUALITY_COLUMNS = tuple(f.name for f in QUALITY_FIELDS)
"""The names of :data:`QUALITY_FIELDS`, in order."""


def example_key(instruction: str, input_text: str, output: str) -> str:
    """The judging stage's request key of an example: 16 hex digits of the sha256 of
    its three fields, so a judge answer is found again by content whatever the
    example's position (``refilter`` with other instance filters)."""
    data = "\x1f".join((instruction, input_text, output)).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def quality_values(judgement: Judgement | None, reason: str | None,
                   judge: str) -> dict[str, object]:
    """A row's quality columns (:data:`QUALITY_COLUMNS`) from a verdict, or nulls and
    the ``reason`` when there is none."""
    values: dict[str, object] = dict.fromkeys(QUALITY_COLUMNS)
    if judgement is not None:
        for name in SCORES:
            values[column(name)] = float(judgement.score(name))
        for question in QUESTIONS:
            values[rationale_column(question)] = getattr(judgement, f"{question}_rationale")
    values["quality_reason"] = reason if judgement is None else None
    values["quality_judge"] = judge
    return values


def passes_cuts(row: dict[str, object], cuts: dict[str, float]) -> bool:
    """Whether a judged row's scores meet every cut (score name -> lowest kept); a
    missing score fails any cut on it. With no cut, every row passes."""
    for name, cut in cuts.items():
        value = row.get(column(name))
        if not isinstance(value, (int, float)) or value < cut:
            return False
    return True
