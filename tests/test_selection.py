"""Tests for selfinstruct.selection: budgeted score-first selection with a diversity check."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from selfinstruct.dedup import rouge_l
from selfinstruct.selection import Selection, resolve_budget, select_best

# Instructions that share no words with one another: the diversity check never fires.
DISTINCT = [
    "Write a haiku about autumn leaves.",
    "Convert the temperature from Celsius to Fahrenheit.",
    "List three capital cities in Europe.",
    "Summarize this news article briefly.",
    "Translate that sentence into French.",
    "Classify each email as spam or not.",
    "Explain photosynthesis to a child.",
    "Sort these numbers ascending.",
    "Suggest names for my new puppy.",
    "Give synonyms of happy.",
    "Compute the factorial of seven.",
    "Describe your favourite movie plot.",
]


def row(i: int, overall: float | None, questions: tuple[float | None, ...] = (3, 3, 3),
        task: str | None = None, instruction: str | None = None) -> dict[str, object]:
    return {
        "id": f"r1-{i}-0",
        "task_id": task if task is not None else f"r1-{i}",
        "instruction": instruction if instruction is not None else DISTINCT[i % len(DISTINCT)],
        "quality_overall": overall,
        "quality_instruction": questions[0],
        "quality_input": questions[1],
        "quality_output": questions[2],
    }


def ids(selection: Selection) -> list[object]:
    return [r["id"] for r in selection.rows]


def test_cut_at_budget_keeps_the_best_in_input_order() -> None:
    rows = [row(i, s) for i, s in enumerate([2, 5, 1, 4, 3, 5])]
    sel = select_best(rows, 3, 0.7)
    # The three best: 5 (row 1), 5 (row 5), 4 (row 3); returned in input order.
    assert ids(sel) == ["r1-1-0", "r1-3-0", "r1-5-0"]
    assert sel.indices == (1, 3, 5)
    assert sel.budget == 3
    assert sel.considered == 6
    assert sel.unscored == 0
    assert sel.skipped_near_duplicate == 0
    assert sel.not_selected == 3
    assert all(a is b for a, b in zip(sel.rows, [rows[1], rows[3], rows[5]], strict=True))


@pytest.mark.parametrize(("fraction", "scored", "expected"), [
    (0.25, 10, 3),    # 2.5 -> 3: half rounds up
    (0.5, 5, 3),      # 2.5 -> 3
    (0.3, 5, 2),      # 1.5 -> 2
    (0.58, 25, 15),   # 14.5 -> 15, though 0.58 * 25 is 14.4999... in binary floating point
    (0.7, 45, 32),    # 31.5 -> 32, likewise
    (0.24, 10, 2),    # 2.4 -> 2
    (0.01, 10, 1),    # 0.1 -> at least 1
    (0.5, 0, 0),      # nothing scored: nothing to select
    (0.999, 3, 3),
])
def test_fraction_rounding(fraction: float, scored: int, expected: int) -> None:
    assert resolve_budget(fraction, scored) == expected


def test_fraction_counts_only_scored_rows() -> None:
    rows = [row(i, 5 - i % 5 if i < 8 else None) for i in range(12)]
    sel = select_best(rows, 0.5, 0.7)
    # 8 scored rows, half is 4; the 4 unscored rows do not count.
    assert sel.budget == 4
    assert len(sel.rows) == 4
    assert sel.considered == 8
    assert sel.unscored == 4


def test_ties_broken_by_question_mean_then_position() -> None:
    rows = [
        row(0, 4, (3, 3, 3)),
        row(1, 4, (5, 5, 5)),
        row(2, 4, (4, 4, 4)),
        row(3, 4, (4, 4, 4)),
        row(4, 4, (5, 5, None)),   # no mean: after every row that has one
        row(5, 3, (5, 5, 5)),      # a lower overall never beats a higher one
    ]
    assert ids(select_best(rows, 1, 0.7)) == ["r1-1-0"]
    assert ids(select_best(rows, 2, 0.7)) == ["r1-1-0", "r1-2-0"]     # 2 before 3: position
    assert ids(select_best(rows, 3, 0.7)) == ["r1-1-0", "r1-2-0", "r1-3-0"]
    assert ids(select_best(rows, 4, 0.7)) == ["r1-0-0", "r1-1-0", "r1-2-0", "r1-3-0"]
    assert ids(select_best(rows, 5, 0.7)) == ["r1-0-0", "r1-1-0", "r1-2-0", "r1-3-0", "r1-4-0"]


def test_equal_rows_prefer_the_earlier_and_calls_are_deterministic() -> None:
    rows = [row(i, 4, (4, 4, 4)) for i in range(6)]
    first = select_best(rows, 2, 0.7)
    assert ids(first) == ["r1-0-0", "r1-1-0"]
    assert select_best(rows, 2, 0.7) == first
    # Permuted, the earliest two of the permutation are taken.
    perm = [rows[i] for i in (4, 2, 5, 0, 1, 3)]
    assert ids(select_best(perm, 2, 0.7)) == ["r1-4-0", "r1-2-0"]


def test_distinct_scores_are_permutation_invariant() -> None:
    # Distinct (overall, mean) keys and some near duplicates: the selected set does not
    # depend on the input order, and the output follows whatever order was given.
    rows = [row(i, 1 + i % 5, (1 + i // 5, 1, 1)) for i in range(12)]
    rows.append(row(12, 5, (5, 5, 5), instruction="Write a haiku about autumn leaves please."))
    rows.append(row(13, 5, (4, 5, 5), instruction="Write a haiku about the autumn leaves."))
    base = select_best(rows, 7, 0.7)
    assert base.skipped_near_duplicate == 1
    rng = random.Random(7)
    for _ in range(20):
        perm = rows[:]
        rng.shuffle(perm)
        sel = select_best(perm, 7, 0.7)
        assert set(ids(sel)) == set(ids(base))
        assert sel.skipped_near_duplicate == base.skipped_near_duplicate
        position = {r["id"]: k for k, r in enumerate(perm)}
        assert [position[i] for i in ids(sel)] == sorted(position[i] for i in ids(sel))


def test_near_duplicate_from_another_task_is_skipped() -> None:
    close = "Write a short haiku about autumn leaves."
    assert rouge_l(DISTINCT[0], close) > 0.7
    rows = [
        row(0, 5, instruction=DISTINCT[0]),
        row(1, 4, instruction=close),              # another task, too close to row 0
        row(2, 3, instruction=DISTINCT[2]),
        row(3, 2, instruction=DISTINCT[3]),
    ]
    sel = select_best(rows, 3, 0.7)
    assert ids(sel) == ["r1-0-0", "r1-2-0", "r1-3-0"]
    assert sel.skipped_near_duplicate == 1
    assert sel.not_selected == 1
    # Above the pair's own score the check lets it through.
    loose = select_best(rows, 3, rouge_l(DISTINCT[0], close))
    assert ids(loose) == ["r1-0-0", "r1-1-0", "r1-2-0"]
    assert loose.skipped_near_duplicate == 0


def test_identical_instruction_of_another_task_is_skipped_even_at_threshold_one_minus() -> None:
    rows = [row(0, 5, task="a", instruction="Name a colour."),
            row(1, 4, task="b", instruction="Name a colour.")]
    assert ids(select_best(rows, 2, 0.99)) == ["r1-0-0"]
    # threshold 1: F1 1.0 is not above it, so nothing is skipped.
    assert ids(select_best(rows, 2, 1.0)) == ["r1-0-0", "r1-1-0"]


def test_same_task_instances_are_not_skipped() -> None:
    rows = [
        {**row(0, 5, task="t1", instruction=DISTINCT[0]), "id": "t1-0"},
        {**row(1, 4, task="t1", instruction=DISTINCT[0]), "id": "t1-1"},
        {**row(2, 3, task="t1", instruction=DISTINCT[0]), "id": "t1-2"},
        {**row(3, 4, task="t2", instruction=DISTINCT[0]), "id": "t2-0"},   # same text, other task
        {**row(4, 3, task="t2", instruction=DISTINCT[0]), "id": "t2-1"},
    ]
    sel = select_best(rows, 10, 0.7)
    assert ids(sel) == ["t1-0", "t1-1", "t1-2"]
    assert sel.skipped_near_duplicate == 2
    assert sel.budget == 10


def test_the_check_is_per_task_on_its_first_row_in_the_walk() -> None:
    # Rows of one task normally share the instruction; where they do not, the task is
    # judged once, on the instruction of its best row, as the docstring promises.
    close = "Write a short haiku about autumn leaves."
    rows = [
        {**row(0, 5, task="a", instruction=DISTINCT[0]), "id": "a-0"},
        {**row(1, 4, task="b", instruction=close), "id": "b-0"},          # too close to a
        {**row(2, 3, task="b", instruction=DISTINCT[5]), "id": "b-1"},    # skipped with b
        {**row(3, 2, task="a", instruction=close), "id": "a-1"},          # taken with a
    ]
    sel = select_best(rows, 10, 0.7)
    assert ids(sel) == ["a-0", "a-1"]
    assert sel.skipped_near_duplicate == 2


def test_none_overall_is_never_selected() -> None:
    rows = [row(0, None, (5, 5, 5)), row(1, 1), row(2, math.nan, (5, 5, 5)), row(3, None)]
    del rows[3]["quality_overall"]      # a missing column reads as None
    sel = select_best(rows, 4, 0.7)
    assert ids(sel) == ["r1-1-0"]
    assert sel.considered == 1
    assert sel.unscored == 3
    nothing = select_best([row(0, None)], 0.5, 0.7)
    assert nothing.rows == ()
    assert nothing.budget == 0


def test_budget_larger_than_the_rows() -> None:
    rows = [row(i, 1 + i) for i in range(4)]
    sel = select_best(rows, 100, 0.7)
    assert ids(sel) == [r["id"] for r in rows]
    assert sel.budget == 100
    assert sel.not_selected == 0
    assert select_best([], 5, 0.7).rows == ()


@pytest.mark.parametrize("budget", [0, -1, 2.5, 0.0, -0.5, math.nan, math.inf, True, "3"])
def test_bad_budgets_are_refused(budget: object) -> None:
    with pytest.raises(ValueError, match="budget") as info:
        select_best([row(0, 5)], budget, 0.7)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_whole_float_budget_is_accepted() -> None:
    assert select_best([row(i, 5) for i in range(4)], 2.0, 0.7).budget == 2


@pytest.mark.parametrize(("threshold", "tokenizer"), [(-0.1, "rouge"), (1.5, "rouge"),
                                                       (0.7, "words")])
def test_bad_threshold_or_tokenizer_refused(threshold: float, tokenizer: str) -> None:
    with pytest.raises(ValueError, match=r"threshold|tokenizer"):
        select_best([row(0, 5)], 1, threshold, tokenizer)


def test_bad_row_values_refused_in_one_line() -> None:
    bad = row(1, 5)
    bad["quality_overall"] = "five"
    with pytest.raises(ValueError, match=r"row 1 \(id 'r1-1-0'\): quality_overall") as info:
        select_best([row(0, 5), bad], 1, 0.7)
    assert "\n" not in str(info.value)
    no_task = row(0, 5)
    del no_task["task_id"]
    with pytest.raises(ValueError, match="task_id"):
        select_best([no_task], 1, 0.7)


def test_unicode_tokenizer_sees_cjk_near_duplicates() -> None:
    a = "把这句话翻译成英文。"
    b = "把这句话翻译成法文。"
    rows = [row(0, 5, instruction=a), row(1, 4, instruction=b)]
    # rouge_score's tokenizer drops CJK entirely: no tokens, no similarity.
    assert len(select_best(rows, 2, 0.7, "rouge").rows) == 2
    assert ids(select_best(rows, 2, 0.7, "unicode")) == ["r1-0-0"]


def test_selection_is_frozen_and_json_dict() -> None:
    rows = [row(0, 5), row(1, 4, instruction=DISTINCT[0]), row(2, None)]
    sel = select_best(rows, 2, 0.7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sel.budget = 3  # type: ignore[misc]
    assert sel.to_json_dict() == {
        "budget": 2, "selected": 1, "considered": 2, "unscored": 1,
        "skipped_near_duplicate": 1, "not_selected": 1, "diversity_threshold": 0.7,
        "tokenizer": "rouge",
    }


def test_numpy_scores_are_read() -> None:
    np = pytest.importorskip("numpy")
    rows = [row(0, np.int64(3)), row(1, np.float64(5.0)), row(2, np.float64("nan"))]
    sel = select_best(rows, np.int64(1), 0.7)
    assert ids(sel) == ["r1-1-0"]
    assert sel.unscored == 1


def test_rows_are_not_changed() -> None:
    rows = [row(i, 5 - i) for i in range(5)]
    before = [dict(r) for r in rows]
    select_best(rows, 2, 0.7)
    assert rows == before
