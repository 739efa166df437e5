"""The domain types: a task of the pool and its instances (Self-Instruct §2.1).

A task is an instruction with one or more instances, each an (input, output)
pair; the human seed tasks and the machine-made tasks of the pool share this shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .quality import Judgement


@dataclass(frozen=True)
class Instance:
    """One (input, output) pair of a task; ``input`` is "" when the task takes none."""

    input: str
    output: str


@dataclass(frozen=True)
class Task:
    """A task of the pool: an instruction with its instances.

    Attributes:
        id: unique within the pool.
        name: a short label (seed tasks) or "" (machine-generated).
        instruction: the task's instruction text.
        instances: at least one for seed tasks.
        is_classification: True/False, or None when the source does not say.
    """

    id: str
    name: str
    instruction: str
    instances: tuple[Instance, ...]
    is_classification: bool | None = None


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
    judgements: tuple[tuple[Judgement | None, str | None], ...] = ()
    """Judged runs: the verdict (or None) and its absence's reason, per kept instance."""
    judged: list[tuple[float | None, bool]] = field(default_factory=list)
    """Judged runs: (overall score or None, passed the cuts) of each judged instance."""
    contamination: list[dict[str, Any]] = field(default_factory=list)
    """Decontaminated runs: the evaluation-set matches of the instruction (``instance``
    None) or of each instance dropped for one (its index), as the ledger records them."""

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
            "quality": [score for score, _ in self.judged] if self.judged else None,
            "quality_kept": [kept for _, kept in self.judged] if self.judged else None,
            "contamination": self.contamination or None,
        }
