"""Budgeted selection of the best judged examples: :func:`select_best`.

The rule is Deita's (Liu et al., "What Makes Good Data for Alignment? A
Comprehensive Study of Automatic Data Selection in Instruction Tuning", ICLR
2024; its "score-first, diversity-aware" selection): sort the examples by score,
best first, and walk that order, taking an example unless it is too close to one
already taken, until the budget is spent. Deita measures closeness by the cosine
of embeddings; here it is the exact ROUGE-L F1 of the instructions, the measure
and the index (:class:`~selfinstruct.dedup.index.RougeIndex`) that Self-Instruct's
own diversity filter uses, so "too close" means what it means in the rest of a run.

Pure: no I/O, the rows are read and never changed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .dedup.index import RougeIndex
from .dedup.rouge import TOKENIZERS
from .quality import QUESTIONS, column

_QUESTION_COLUMNS = tuple(column(q) for q in QUESTIONS)


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_best`.

    Attributes:
        rows: the selected rows (the caller's dict objects, not copies), in their
            order in the input, so shards keep the run's order.
        indices: their positions in the input rows, ascending.
        budget: the resolved budget, a count of examples (a fraction already
            applied); it may exceed ``len(rows)`` when too few rows qualify.
        considered: rows with an overall score (the only ones that can be selected).
        unscored: rows whose overall score is None (or NaN): never selected.
        skipped_near_duplicate: rows passed over, before the budget was reached,
            because their task's instruction is too close to a selected task's.
        threshold: the ROUGE-L F1 above which a row was skipped.
        tokenizer: the ROUGE-L tokenizer (``"rouge"`` or ``"unicode"``).
    """

    rows: tuple[Mapping[str, Any], ...]
    indices: tuple[int, ...]
    budget: int
    considered: int
    unscored: int
    skipped_near_duplicate: int
    threshold: float
    tokenizer: str

    @property
    def not_selected(self) -> int:
        """Scored rows left out: near duplicates and rows past the budget."""
        return self.considered - len(self.rows)

    def to_json_dict(self) -> dict[str, Any]:
        """The counts for the manifest's stats: ``budget``, ``selected``,
        ``considered``, ``unscored``, ``skipped_near_duplicate``,
        ``not_selected``, ``diversity_threshold``, ``tokenizer``."""
        return {
            "budget": self.budget,
            "selected": len(self.rows),
            "considered": self.considered,
            "unscored": self.unscored,
            "skipped_near_duplicate": self.skipped_near_duplicate,
            "not_selected": self.not_selected,
            "diversity_threshold": self.threshold,
            "tokenizer": self.tokenizer,
        }


def _is_number(value: object) -> bool:
    """A real number (int, float, numpy scalar), not a bool (callers may pass anything
    a config or a file holds)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def resolve_budget(budget: float, scored: int) -> int:
    """The number of examples a budget asks for.

    Args:
        budget: ``>= 1``: that many examples (a whole number); ``0 < budget < 1``:
            that fraction of the ``scored`` rows, rounded half up on the decimal
            value as written (0.25 of 10 rows is 3), and at least 1 when
            ``scored > 0``.
        scored: how many rows have an overall score.

    Raises:
        ValueError: a budget that is not a number, not finite, ``<= 0``, or ``>= 1``
            and not whole (one line).
    """
    if not _is_number(budget):
        raise ValueError(f"budget must be a number, got {budget!r}")
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a whole number >= 1 or a fraction in (0, 1), "
                         f"got {budget!r}")
    if budget >= 1:
        if budget != int(budget):
            raise ValueError(f"budget >= 1 is a whole number of examples, got {budget!r}")
        return int(budget)
    count = int((Decimal(repr(float(budget))) * scored).to_integral_value(ROUND_HALF_UP))
    return max(count, 1) if scored else 0


def _score(row: Mapping[str, Any], name: str, position: int) -> float | None:
    """A score column's value as a float, None for a missing, null or NaN value."""
    value = row.get(name)
    if value is None:
        return None
    if not _is_number(value):
        raise ValueError(f"row {position} (id {row.get('id')!r}): {name} must be a number "
                         f"or null, got {value!r}")
    value = float(value)
    return None if math.isnan(value) else value


def _field(row: Mapping[str, Any], name: str, position: int) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise ValueError(f"row {position} (id {row.get('id')!r}): {name} must be a string, "
                         f"got {value!r}")
    return value


def select_best(rows: Sequence[Mapping[str, Any]], budget: float, threshold: float,
                tokenizer: str = "rouge", by: str = "overall") -> Selection:
    """Select at most ``budget`` examples, best scores first, skipping near duplicates.

    The rule (Deita, Liu et al. 2024: score-first selection with a diversity
    threshold, here ROUGE-L F1 of instructions instead of embedding cosine):

    1. Rows whose ``quality_overall`` is None (or NaN) are never selected; they are
       counted in ``unscored``.
    2. The others are walked in one fixed order: ``quality_overall`` descending,
       then the mean of ``quality_instruction``, ``quality_input`` and
       ``quality_output`` descending (a row missing any of the three has no mean
       and comes after every row with one), then the row's position in ``rows``
       ascending. The order, and so the result, depends only on the rows' values
       and their order: two rows equal in both scores go in input order (the
       earlier one is preferred); reordering rows whose scores differ does not
       change which rows are selected.
    3. A row is taken unless its task's instruction has ROUGE-L F1 ``> threshold``
       with the instruction of a task already selected (Self-Instruct's ``>``:
       exactly the threshold is taken). The check is per task (``task_id``): the
       task's instruction is the one of its first row in the walk, checked once;
       further rows of a selected task are taken (instances of one task share the
       instruction), and further rows of a skipped task are skipped.
    4. The walk stops when ``budget`` rows are taken or the rows run out.

    Args:
        rows: shard rows, each a mapping with at least ``id``, ``task_id`` and
            ``instruction`` (strings) and the score columns of
            :mod:`selfinstruct.quality` (numbers or None; a missing column is None).
        budget: ``>= 1``: that many examples (whole); ``0 < budget < 1``: that
            fraction of the scored rows (see :func:`resolve_budget`).
        threshold: ROUGE-L F1 in [0, 1] above which a row is skipped (1 disables
            the check).
        tokenizer: ``"rouge"`` (rouge_score's, as Self-Instruct) or ``"unicode"``.
        by: the score that orders the walk (``quality_<by>``): ``"overall"`` (the
            judge's), or ``"reward"`` (a reward model's, ``quality_reward``) in
            place of ``quality_overall`` in rules 1 and 2.

    Returns:
        A :class:`Selection`; its ``rows`` are in input order.

    Raises:
        ValueError: a bad budget, threshold or tokenizer, or a row whose
            ``task_id``/``instruction`` is not a string or whose score is not a
            number (one line, naming the row's position and id).

    Cost: one sort and at most one exact index query per task (the index of
    :mod:`selfinstruct.dedup.index`, prefix-filtered, not a scan of the pool).
    """
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"diversity threshold must be a number in [0, 1], got {threshold!r}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")

    keys: list[tuple[float, float, int]] = []
    unscored = 0
    for position, row in enumerate(rows):
        overall = _score(row, column(by), position)
        questions = [_score(row, name, position) for name in _QUESTION_COLUMNS]
        _field(row, "task_id", position)
        _field(row, "instruction", position)
        if overall is None:
            unscored += 1
            continue
        known = [q for q in questions if q is not None]
        mean = math.fsum(known) / len(known) if len(known) == len(questions) else -math.inf
        # Negated for an ascending sort; -inf sorts a missing mean last.
        keys.append((-overall, -mean, position))
    count = resolve_budget(budget, len(keys))
    keys.sort()

    index = RougeIndex(threshold=threshold, tokenizer=tokenizer)
    selected_tasks: set[str] = set()
    skipped_tasks: set[str] = set()
    chosen: list[int] = []
    skipped = 0
    for _, _, position in keys:
        if len(chosen) >= count:
            break
        row = rows[position]
        task = row["task_id"]
        if task not in selected_tasks:
            if task in skipped_tasks:
                skipped += 1
                continue
            decision = index.dedup_batch([row["instruction"]], add=True,
                                         exact_nearest_for_kept=False)[0]
            if not decision.keep:
                # The index only grows, so the task stays too close for good.
                skipped_tasks.add(task)
                skipped += 1
                continue
            selected_tasks.add(task)
        chosen.append(position)
    chosen.sort()
    return Selection(
        rows=tuple(rows[i] for i in chosen),
        indices=tuple(chosen),
        budget=count,
        considered=len(keys),
        unscored=unscored,
        skipped_near_duplicate=skipped,
        threshold=float(threshold),
        tokenizer=tokenizer,
    )
