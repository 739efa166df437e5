"""The review sample (selfinstruct/review/sample.py): seeded draws, proportional
stratified allocation (largest remainder), the order shuffled, and review/sample.json
kept, reused, refused when it disagrees with the options or the run, and never
overwritten when damaged."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from selfinstruct.review import ReviewError
from selfinstruct.review.sample import (
    allocate, draw, keys_of, open_sample, read_sample, sample_path, strata_of)


def frame_of(rounds: list[int], *, classification: list[bool | None] | None = None,
             overall: list[float | None] | None = None) -> pd.DataFrame:
    """A run's rows as load_run gives them: one per entry of ``rounds``."""
    n = len(rounds)
    data: dict[str, list] = {
        "id": [f"r{r:04d}-{k:04d}-0" for k, r in enumerate(rounds)],
        "instruction": [f"Task number {k}." for k in range(n)],
        "input": ["" if k % 2 else f"input {k}" for k in range(n)],
        "output": [f"output {k}" for k in range(n)],
        "round": rounds,
        "is_classification": classification or [k % 3 == 0 for k in range(n)],
    }
    if overall is not None:
        data["quality_overall"] = [math.nan if v is None else v for v in overall]
    return pd.DataFrame(data)


# 60 rows of round 1, 30 of round 2, 10 of round 3
ROUNDS = [1] * 60 + [2] * 30 + [3] * 10


@pytest.fixture
def frame() -> pd.DataFrame:
    return frame_of(ROUNDS)


# -- allocate: hand-computed largest-remainder allocations ---------------------------

@pytest.mark.parametrize("sizes, total, expected", [
    ({"a": 50, "b": 30, "c": 20}, 10, {"a": 5, "b": 3, "c": 2}),        # exact shares
    ({"a": 3, "b": 3, "c": 4}, 7, {"a": 2, "b": 2, "c": 3}),            # 2.1 2.1 2.8: c's .8
    ({"a": 3, "b": 3, "c": 4}, 5, {"a": 2, "b": 1, "c": 2}),            # 1.5 1.5 2: tie -> a
    ({"a": 10, "b": 10, "c": 10}, 4, {"a": 2, "b": 1, "c": 1}),         # equal: earliest
    ({"a": 7, "b": 2, "c": 1}, 5, {"a": 3, "b": 1, "c": 1}),            # c gets its one
    ({"a": 90, "b": 5, "c": 5}, 10, {"a": 8, "b": 1, "c": 1}),          # 9 .5 .5 -> one each
    ({"a": 97, "b": 1, "c": 1, "d": 1}, 4, {"a": 1, "b": 1, "c": 1, "d": 1}),
    ({"a": 1, "b": 1, "c": 1, "d": 1}, 2, {"a": 1, "b": 1, "c": 0, "d": 0}),  # too few
    ({"a": 1, "b": 100}, 50, {"a": 1, "b": 49}),
    ({"x": 6, "y": 3, "z": 1}, 10, {"x": 6, "y": 3, "z": 1}),           # everything
])
def test_allocate_matches_hand_computed_largest_remainder(sizes, total, expected):
    assert allocate(sizes, total) == expected


def test_allocate_sums_to_total_within_sizes_and_near_the_shares():
    rng = random.Random(7)
    for _ in range(300):
        sizes = {f"s{k}": rng.randint(1, 40) for k in range(rng.randint(1, 6))}
        total = rng.randint(1, sum(sizes.values()))
        counts = allocate(sizes, total)
        assert sum(counts.values()) == total
        assert all(0 <= counts[s] <= sizes[s] for s in sizes)
        if total >= len(sizes):
            assert all(counts[s] >= 1 for s in sizes), (sizes, total, counts)
        else:  # no minimum: plain largest remainder, never a whole draw from its share
            share = {s: total * sizes[s] / sum(sizes.values()) for s in sizes}
            assert all(abs(counts[s] - share[s]) < 1 for s in sizes), (sizes, total, counts)


# -- draw ------------------------------------------------------------------------------

@pytest.mark.parametrize("stratify", [None, "round", "classification"])
def test_the_same_frame_size_and_seed_draw_the_same_sample(frame, stratify):
    first = draw(frame, 20, seed=5, stratify=stratify)
    assert draw(frame, 20, seed=5, stratify=stratify) == first
    assert draw(frame.copy(), 20, seed=5, stratify=stratify) == first
    other = draw(frame, 20, seed=6, stratify=stratify)
    assert other[0] != first[0]
    assert len(set(first[0])) == 20 and all(0 <= p < len(frame) for p in first[0])


def test_a_sample_larger_than_the_run_is_every_row_once(frame):
    positions, strata = draw(frame, 500, seed=1)
    assert sorted(positions) == list(range(len(frame))) and strata == [None] * len(frame)
    positions, strata = draw(frame, 500, seed=1, stratify="round")
    assert sorted(positions) == list(range(len(frame)))
    assert Counter(strata) == {"round 1": 60, "round 2": 30, "round 3": 10}


def test_stratified_by_round_is_proportional_and_labels_match_the_rows(frame):
    positions, strata = draw(frame, 20, seed=2, stratify="round")
    assert Counter(strata) == {"round 1": 12, "round 2": 6, "round 3": 2}
    assert strata == [f"round {frame['round'][p]}" for p in positions]


def test_every_stratum_is_present_when_the_size_allows():
    rows = frame_of([1] * 95 + [2] * 3 + [3] * 2)
    _, strata = draw(rows, 3, seed=0, stratify="round")
    assert Counter(strata) == {"round 1": 1, "round 2": 1, "round 3": 1}
    _, strata = draw(rows, 10, seed=0, stratify="round")
    assert Counter(strata) == {"round 1": 8, "round 2": 1, "round 3": 1}


def test_the_stratified_sample_is_shuffled_not_in_blocks(frame):
    positions, strata = draw(frame, 40, seed=3, stratify="round")
    changes = sum(1 for a, b in itertools.pairwise(strata) if a != b)
    assert changes > 8, strata  # in blocks there would be 2 changes
    assert positions != sorted(positions)


def test_stratified_by_classification_counts_unknown_as_its_own_stratum():
    kinds: list[bool | None] = [True] * 20 + [False] * 70 + [None] * 10
    rows = frame_of([1] * 100, classification=kinds)
    assert strata_of(rows, "classification")[:1] == ["classification"]
    positions, strata = draw(rows, 10, seed=4, stratify="classification")
    assert Counter(strata) == {"classification": 2, "generation": 7, "unknown": 1}
    expect = {True: "classification", False: "generation", None: "unknown"}
    assert strata == [expect[kinds[p]] for p in positions]


def test_stratified_by_score_bins_the_overall_score_down_and_keeps_the_unscored():
    overall: list[float | None] = [5.0] * 40 + [4.5] * 20 + [3.0] * 30 + [None] * 10
    rows = frame_of([1] * 100, overall=overall)
    labels = strata_of(rows, "score")
    assert Counter(labels) == {"overall 5": 40, "overall 4": 20, "overall 3": 30,
                               "unscored": 10}
    positions, strata = draw(rows, 10, seed=9, stratify="score")
    assert Counter(strata) == {"overall 5": 4, "overall 4": 2, "overall 3": 3, "unscored": 1}
    assert strata == [labels[p] for p in positions]


def test_stratify_score_on_an_unjudged_run_is_refused(frame):
    with pytest.raises(ReviewError, match="not judged"):
        draw(frame, 10, seed=0, stratify="score")
    with pytest.raises(ReviewError, match="unknown value 'colour'"):
        strata_of(frame, "colour")


# -- open_sample and review/sample.json ---------------------------------------------------

def test_open_sample_writes_sample_json_and_reuses_it_when_options_are_left_out(
        tmp_path, frame):
    sample, positions, notes = open_sample(tmp_path, frame, 12, 4, "round")
    path = sample_path(tmp_path)
    assert path == tmp_path / "review" / "sample.json" and notes == []
    on_disk = json.loads(path.read_text())
    assert on_disk["seed"] == 4 and on_disk["requested"] == 12 and on_disk["stratify"] == "round"
    assert on_disk["rows_in_run"] == 100 and len(on_disk["examples"]) == 12
    ids = frame["id"].tolist()
    keys = keys_of(frame)
    assert [e["id"] for e in on_disk["examples"]] == [ids[p] for p in positions]
    assert [e["key"] for e in on_disk["examples"]] == [keys[p] for p in positions]
    assert (positions, [e.stratum for e in sample.examples]) == draw(frame, 12, 4, "round")
    before = path.read_bytes()
    stat = path.stat()

    again, again_positions, _ = open_sample(tmp_path, frame, None, None, None)
    assert again == sample and again_positions == positions
    same, same_positions, _ = open_sample(tmp_path, frame, 12, 4, "round")  # same, explicit
    assert same == sample and same_positions == positions
    assert path.read_bytes() == before and path.stat().st_ino == stat.st_ino
    assert read_sample(tmp_path) == sample


def test_a_kept_sample_follows_its_rows_when_the_run_is_reordered(tmp_path, frame):
    sample, _, _ = open_sample(tmp_path, frame, 5, 1, None)
    reordered = frame.iloc[::-1].reset_index(drop=True)
    _, moved, _ = open_sample(tmp_path, reordered, None, None, None)
    assert [reordered["id"][p] for p in moved] == [e.id for e in sample.examples]


def test_defaults_are_200_rows_seed_0_and_no_strata(tmp_path):
    rows = frame_of([1] * 300)
    sample, positions, notes = open_sample(tmp_path, rows, None, None, None)
    assert (sample.requested, sample.seed, sample.stratify, len(positions)) == (200, 0, None, 200)
    assert positions == draw(rows, 200, 0)[0] and notes == []


@pytest.mark.parametrize("size, seed, stratify, named", [
    (13, None, None, "--sample 13"),
    (None, 5, None, "--seed 5"),
    (None, None, "classification", "--stratify classification"),
    (12, 4, None, None),  # stratify left out: fine
])
def test_different_explicit_options_are_refused_in_one_line(tmp_path, frame, size, seed,
                                                             stratify, named):
    open_sample(tmp_path, frame, 12, 4, "round")
    before = sample_path(tmp_path).read_bytes()
    if named is None:
        open_sample(tmp_path, frame, size, seed, stratify)
        return
    with pytest.raises(ReviewError) as error:
        open_sample(tmp_path, frame, size, seed, stratify)
    message = str(error.value)
    assert "\n" not in message and str(sample_path(tmp_path)) in message
    assert "--sample 12 --seed 4 --stratify round" in message and named in message
    assert "--resample" in message
    assert sample_path(tmp_path).read_bytes() == before


def test_resample_draws_again_with_the_new_options(tmp_path, frame):
    open_sample(tmp_path, frame, 12, 4, "round")
    sample, positions, _ = open_sample(tmp_path, frame, 8, 9, None, resample=True)
    assert (sample.requested, sample.seed, sample.stratify) == (8, 9, None)
    assert positions == draw(frame, 8, 9)[0]
    assert read_sample(tmp_path) == sample
    # and with the options left out, a resample uses the defaults, not the kept ones
    sample, _, _ = open_sample(tmp_path, frame, None, None, None, resample=True, default_size=3)
    assert (sample.requested, sample.seed, sample.stratify) == (3, 0, None)


def test_a_sample_larger_than_the_run_notes_it_and_takes_every_row(tmp_path, frame):
    sample, positions, notes = open_sample(tmp_path, frame, 500, None, None)
    assert sorted(positions) == list(range(100)) and sample.requested == 500
    assert notes == ["--sample 500 is more than the run's 100 rows: reviewing all 100"]
    _, _, notes = open_sample(tmp_path, frame, None, None, None)  # reused: said once
    assert notes == []


def test_a_sample_naming_examples_no_longer_in_the_run_is_refused(tmp_path, frame):
    sample, positions, _ = open_sample(tmp_path, frame, 5, 0, None)
    changed = frame.copy()
    changed.loc[positions[2], "output"] = "a different output"
    before = sample_path(tmp_path).read_bytes()
    with pytest.raises(ReviewError) as error:
        open_sample(tmp_path, changed, None, None, None)
    message = str(error.value)
    assert str(sample_path(tmp_path)) in message and "\n" not in message
    assert "1 sampled examples" in message and sample.examples[2].id in message
    assert "--resample" in message
    assert sample_path(tmp_path).read_bytes() == before
    resampled, _, _ = open_sample(tmp_path, changed, None, None, None, resample=True)
    assert resampled.rows_in_run == 100


def test_a_run_without_rows_is_refused_and_writes_nothing(tmp_path, frame):
    with pytest.raises(ReviewError, match="no rows to review"):
        open_sample(tmp_path, frame.iloc[:0], 5, 0, None)
    assert not (tmp_path / "review").exists()


def test_stratify_score_on_an_unjudged_run_writes_no_sample(tmp_path, frame):
    with pytest.raises(ReviewError, match="not judged"):
        open_sample(tmp_path, frame, 5, 0, "score")
    assert not sample_path(tmp_path).exists()


def good_sample(tmp_path: Path, frame: pd.DataFrame) -> dict:
    open_sample(tmp_path, frame, 4, 0, None)
    return json.loads(sample_path(tmp_path).read_text())


@pytest.mark.parametrize("damage, field", [
    (lambda d: b"\x00\x01garbage{{", "(document)"),
    (lambda d: b"", "(document)"),
    (lambda d: b"[1, 2]", "(document)"),
    (lambda d: json.dumps({**d, "seed": "four"}).encode(), "seed"),
    (lambda d: json.dumps({**d, "format": 2}).encode(), "format"),
    (lambda d: json.dumps({**d, "stratify": "colour"}).encode(), "stratify"),
    (lambda d: json.dumps({**d, "surprise": 1}).encode(), "surprise"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "rows_in_run"}).encode(),
     "rows_in_run"),
    (lambda d: json.dumps({**d, "examples": [{"id": "x"}]}).encode(), "examples.0.key"),
])
def test_a_damaged_sample_json_is_refused_naming_path_and_field_and_kept(
        tmp_path, frame, damage, field):
    data = good_sample(tmp_path, frame)
    path = sample_path(tmp_path)
    path.write_bytes(damage(data))
    before = path.read_bytes()
    for call in (lambda: read_sample(tmp_path),
                 lambda: open_sample(tmp_path, frame, None, None, None),
                 lambda: open_sample(tmp_path, frame, 4, 0, None)):
        with pytest.raises(ReviewError) as error:
            call()
        message = str(error.value)
        assert message.startswith(f"{path}: field '{field}'"), message
        assert "\n" not in message
    assert path.read_bytes() == before


def test_a_sample_json_that_is_not_utf8_is_refused_naming_the_path(tmp_path, frame):
    good_sample(tmp_path, frame)
    path = sample_path(tmp_path)
    path.write_bytes(b'{"seed": "\xff\xfe"}')
    with pytest.raises(ReviewError, match="cannot read") as error:
        open_sample(tmp_path, frame, None, None, None)
    assert str(path) in str(error.value)
    assert path.read_bytes() == b'{"seed": "\xff\xfe"}'


@pytest.fixture(scope="module")
def generated_judged_run(tmp_path_factory) -> Path:
    """A judged run made by `generate` with the scripted engine (5 rows, 3 rounds)."""
    from tests.judge_fakes import make_judged_run

    return make_judged_run(tmp_path_factory.mktemp("generated-judged"))


def test_a_generated_judged_run_is_sampled_from_every_score_and_round(generated_judged_run,
                                                                      tmp_path):
    from selfinstruct.analysis.loading import load_run

    rows = load_run(generated_judged_run).frame
    for stratify in ("score", "round", "classification"):
        labels = strata_of(rows, stratify)
        groups = set(labels)
        assert len(groups) >= 2, (stratify, labels)
        sample, positions, _ = open_sample(tmp_path / stratify, rows, len(groups), 0, stratify)
        assert sorted(e.stratum for e in sample.examples) == sorted(groups)
        assert [labels[p] for p in positions] == [e.stratum for e in sample.examples]
        assert [e.key for e in sample.examples] == [keys_of(rows)[p] for p in positions]
    assert "unscored" in strata_of(rows, "score")  # the scripted judge's unreadable answer
