"""The domain types: a task of the pool and its instances (Self-Instruct §2.1).

A task is an instruction with one or more instances, each an (input, output)
pair; the human seed tasks and the machine-made tasks of the pool share this shape.
"""

from __future__ import annotations

from dataclasses import dataclass


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
