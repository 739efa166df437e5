"""The statistics of a human review in `selfinstruct inspect`: Wilson intervals,
Cohen's kappa, the per-reviewer and pooled quality table beside the paper's, the
agreement between reviewers, the judge against the reviewers and the overall-score
cut table; under "review" in --json, as tables, and as a section of --report.

Runs are written directly (tests/small_run.py, tests/test_inspect_quality.py), the
sample with open_sample and the labels with LabelStore, as `selfinstruct review`
writes them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from selfinstruct.analysis.loading import RunData, load_run
from selfinstruct.analysis.review import (cohen_kappa, judge_agreement, judge_thresholds,
                                          pooled_labels, review_statistics, wilson_interval)
from selfinstruct.analysis.stats import collect_statistics
from selfinstruct.analysis.tables import render_console, tables
from selfinstruct.quality import example_key
from selfinstruct.review import PAPER_QUALITY
from selfinstruct.review.labels import Answers, LabelStore, labels_path
from selfinstruct.review.sample import open_sample
from tests.small_run import write_small_run
from tests.test_inspect import cli
from tests.test_inspect_quality import write_judged_run

QUALITY_TITLE = "Review: quality of 6 reviewed examples (Self-Instruct §3.3)"

# -- the formulas, against values worked out by hand ------------------------------


def test_wilson_interval_matches_hand_values():
    # 8/10: centre (0.8 + 1.92073/10) / 1.384146 = 0.71677, half 0.22655
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-5) and high == pytest.approx(0.94332, abs=1e-5)
    # 0/10: low exactly 0, high z²/n / (1 + z²/n) = 0.384146 / 1.384146
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-5))
    assert wilson_interval(10, 10) == (pytest.approx(0.72247, abs=1e-5), 1.0)
    # 4/6: centre 0.60160, half 0.30162
    low, high = wilson_interval(4, 6)
    assert low == pytest.approx(0.29999, abs=1e-4) and high == pytest.approx(0.90322, abs=1e-4)
    # a 90% interval (z = 1.6449) is narrower
    narrow = wilson_interval(8, 10, z=1.6448536269514722)
    assert narrow[0] > 0.4902 and narrow[1] < 0.9433
    assert wilson_interval(0, 0) is None
    for bad in ((11, 10), (-1, 10), (0, -1)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_cohen_kappa_matches_a_textbook_table():
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5·0.6 + 0.5·0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4
    a = [True] * 20 + [True] * 5 + [False] * 10 + [False] * 15
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(b, a) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == 1.0
    # complete disagreement on a balanced set: p_o 0, p_e 0.5 -> -1
    assert cohen_kappa([True, False], [False, True]) == -1.0
    # undefined: both constant and equal (p_e = 1), or no items
    assert cohen_kappa([True] * 4, [True] * 4) is None
    assert cohen_kappa([], []) is None
    # both constant but opposite: p_o = p_e = 0 -> 0
    assert cohen_kappa([True] * 3, [False] * 3) == 0.0
    with pytest.raises(ValueError):
        cohen_kappa([True], [True, False])


def test_pooled_label_is_valid_only_when_every_reviewer_said_yes():
    yes = {"instruction": True, "input": True, "output": True}
    answers = {
        "alice": {"k1": yes, "k2": {**yes, "output": False}, "k3": yes},
        "bob": {"k1": yes, "k2": yes, "k3": {**yes, "instruction": False}, "k4": yes},
    }
    pooled = pooled_labels(answers)
    assert pooled == {
        "k1": {**yes, "all": True},
        "k2": {**yes, "output": False, "all": False},  # alice's no wins
        "k3": {**yes, "instruction": False, "all": False},  # bob's no wins
        "k4": {**yes, "all": True},  # only bob completed it
    }


def labelled(*valid: bool) -> dict[str, dict[str, bool]]:
    return {f"k{i}": {"instruction": True, "input": True, "output": v, "all": v}
            for i, v in enumerate(valid)}


def test_the_cut_table_on_a_hand_made_set():
    # overall scores 1..5 with the humans' all-three verdict
    labels = labelled(False, False, True, False, True, True, True)
    overall = [1.0, 2.0, 3.0, 3.5, 4.0, 5.0, float("nan")]
    scores = {f"k{i}": {"overall": s} for i, s in enumerate(overall)}
    out = judge_agreement(labels, scores, {}, (1, 5), ["overall"])
    assert (out["n"], out["valid"], out["unscored"]) == (6, 3, 1)
    assert [(c["cut"], c["kept"], c["kept_valid"], c["precision"], c["recall"])
            for c in out["cuts"]] == [
        (1, 6, 3, 0.5, 1.0), (2, 5, 3, 0.6, 1.0), (3, 4, 3, 0.75, 1.0),
        (4, 2, 2, 1.0, 0.6667), (5, 1, 1, 1.0, 0.3333)]
    assert out["cut_for_precision_90"] == 4
    assert out["cuts"][3]["high"] == 1.0 and out["cuts"][3]["low"] == pytest.approx(0.3424, 1e-3)
    assert out["questions"] == {}  # no question columns

    # no cut reaches 90%: the top one has a human "no"
    labels = labelled(True, False, True, False)
    scores = {f"k{i}": {"overall": s} for i, s in enumerate([2.0, 3.0, 4.0, 5.0])}
    out = judge_agreement(labels, scores, {}, (1, 5), ["overall"])
    assert out["cut_for_precision_90"] is None
    assert [c["precision"] for c in out["cuts"]] == [0.5, 0.5, 0.3333, 0.5, 0.0]
    assert out["cuts"][-1]["kept"] == 1 and out["cuts"][-1]["recall"] == 0.0

    # nobody valid: recall undefined, precision 0 where anything is kept
    out = judge_agreement(labelled(False), {"k0": {"overall": 3.0}}, {}, (1, 5), ["overall"])
    assert [(c["kept"], c["precision"], c["recall"]) for c in out["cuts"]] == [
        (1, 0.0, None), (1, 0.0, None), (1, 0.0, None), (0, None, None), (0, None, None)]


def frame_run(config: dict) -> RunData:
    return RunData(Path("run"), "run", pd.DataFrame(), {"config": config})


def test_thresholds_are_the_runs_cut_or_above_the_midpoint():
    assert judge_thresholds(frame_run({}), (1, 5)) == (
        dict.fromkeys(("instruction", "input", "output"), 4.0),
        dict.fromkeys(("instruction", "input", "output"), "scale"))
    thresholds, origin = judge_thresholds(
        frame_run({"quality": {"min_output": 3.0, "min_input": None, "min_instruction": True}}),
        (1, 10))
    assert thresholds == {"instruction": 6.0, "input": 6.0, "output": 3.0}
    assert origin == {"instruction": "scale", "input": "scale", "output": "min_output"}
    assert judge_thresholds(frame_run({}), (0, 10))[0]["output"] == 6.0
    assert judge_thresholds(frame_run({}), (1, 4))[0]["output"] == 3.0


# -- a judged run reviewed by two people --------------------------------------------

YES, NO = True, False
# row id -> (alice's answers, bob's answers); None: not labelled; a None inside: unanswered
LABELS = {
    "r0001-0000-0": ((YES, YES, YES), (YES, YES, YES)),
    "r0001-0000-1": ((YES, YES, NO), (YES, YES, YES)),
    "r0001-0001-0": ((YES, NO, NO), (NO, NO, NO)),
    "r0001-0001-1": ((YES, YES, YES), (YES, YES, None)),  # the judge could not score it
    "r0002-0000-0": ((YES, YES, YES), (YES, YES, YES)),
    "r0002-0001-0": ((YES, YES, YES), None),
}


def key_of(row: dict) -> str:
    return example_key(row["instruction"], row["input"], row["output"])


def put_labels(run_dir: Path, reviewer: str, answers: dict[str, tuple | None]) -> None:
    keys = {row["id"]: key_of(row) for row in load_run(run_dir).frame.to_dict("records")}
    store = LabelStore(run_dir, reviewer).open()
    try:
        for row_id, given in answers.items():
            if given is not None:
                store.put(row_id, keys[row_id], Answers(
                    instruction=given[0], input=given[1], output=given[2]))
    finally:
        store.close()


def reviewed_run(base: Path) -> Path:
    run_dir = write_judged_run(base)
    open_sample(run_dir, load_run(run_dir).frame, 6, 0, None)
    put_labels(run_dir, "alice", {k: v[0] for k, v in LABELS.items()})
    put_labels(run_dir, "bob", {k: v[1] for k, v in LABELS.items()})
    return run_dir


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> Path:
    return reviewed_run(tmp_path_factory.mktemp("reviewed"))


@pytest.fixture(scope="module")
def stats(reviewed) -> dict:
    return collect_statistics(load_run(reviewed), None, None, verb_parser=None)


def counts(questions: dict) -> dict[str, tuple[int, int]]:
    return {item: (v["yes"], v["n"]) for item, v in questions.items()}


def test_per_reviewer_and_pooled_shares(stats):
    review = stats["review"]
    assert review["sample"] == {"size": 6, "requested": 6, "seed": 0, "stratify": None,
                                "in_run": 6}
    alice, bob = review["reviewers"]
    assert (alice["name"], alice["labelled"], alice["reviewed"], alice["partial"]) == \
        ("alice", 6, 6, 0)
    assert counts(alice["questions"]) == {"instruction": (6, 6), "input": (5, 6),
                                          "output": (4, 6), "all": (4, 6)}
    assert alice["questions"]["all"] == {"yes": 4, "n": 6, "share": 0.6667, "low": 0.3,
                                         "high": 0.9032}
    assert (bob["name"], bob["labelled"], bob["reviewed"], bob["partial"]) == ("bob", 5, 4, 1)
    assert counts(bob["questions"]) == {"instruction": (3, 4), "input": (3, 4),
                                        "output": (3, 4), "all": (3, 4)}
    pooled = review["pooled"]
    assert (pooled["reviewers"], pooled["reviewed"]) == (2, 6)
    assert counts(pooled["questions"]) == {"instruction": (5, 6), "input": (5, 6),
                                           "output": (4, 6), "all": (4, 6)}
    assert review["paper"] == PAPER_QUALITY


def test_agreement_between_the_two_reviewers(stats):
    # both completed four examples: instruction alice TTTT / bob TTFT (kappa 0),
    # input TTFT / TTFT (1), output and all three TFFT / TTFT (p_o 3/4, p_e 1/2: 0.5)
    [pair] = stats["review"]["agreement"]
    assert (pair["a"], pair["b"], pair["n"]) == ("alice", "bob", 4)
    assert pair["kappa"] == {"instruction": 0.0, "input": 1.0, "output": 0.5, "all": 0.5}
    assert pair["agree"] == {"instruction": 0.75, "input": 1.0, "output": 0.75, "all": 0.75}


def test_the_judge_against_the_pooled_labels(stats):
    judge = stats["review"]["judge"]
    assert judge["thresholds"] == {"instruction": 4.0, "input": 4.0, "output": 4.0}
    assert judge["run_cut"] == 3.0 and judge["scale"] == {"min": 1, "max": 5}
    # human (pooled) vs judge (score >= 4) over the five scored examples:
    # instruction TTFTT / TTTTT; input TTFTT / TTFTT; output TFFTT / TTFTT
    q = judge["questions"]
    assert {item: (v["n"], v["unscored"], v["accuracy"], v["kappa"]) for item, v in q.items()} \
        == {"instruction": (5, 1, 0.8, 0.0), "input": (5, 1, 1.0, 1.0),
            "output": (5, 1, 0.8, 0.5455), "all": (5, 1, 0.8, 0.5455)}
    # overall 5, 4.5, 3, 4, 5 with valid T, F, F, T, T
    assert (judge["n"], judge["valid"], judge["unscored"]) == (5, 3, 1)
    assert [(c["cut"], c["kept"], c["precision"], c["recall"]) for c in judge["cuts"]] == [
        (1, 5, 0.6, 1.0), (2, 5, 0.6, 1.0), (3, 5, 0.6, 1.0), (4, 4, 0.75, 1.0),
        (5, 2, 1.0, 0.6667)]
    assert judge["cut_for_precision_90"] == 5


def test_the_review_tables_and_console(stats):
    from selfinstruct.terminal import safe_console

    shown = {t.title: t for t in tables(stats)}
    quality = shown[QUALITY_TITLE]
    assert quality.headers == ("question", "alice", "bob", "pooled", "paper")
    assert quality.rows[0] == ("examples reviewed", "6", "4", "6", "200")
    assert quality.rows[4] == ("all three", "67% (30\N{EN DASH}90%)", "75% (30\N{EN DASH}95%)",
                               "67% (30\N{EN DASH}90%)", "54%")
    assert quality.rows[1][1] == "100% (61\N{EN DASH}100%)" and quality.rows[1][-1] == "92%"
    assert "1 example answered in part left out" in quality.note
    assert "every reviewer who completed it said yes" in quality.note
    agreement = shown["Review: agreement between reviewers (Cohen's kappa)"]
    assert agreement.rows == [("alice / bob", "4", "0.00 (75%)", "1.00 (100%)", "0.50 (75%)",
                               "0.50 (75%)")]
    judge = shown["Review: the judge against the reviewers"]
    assert judge.rows[2] == ("output (correct?)", "score >= 4", "5", "1", "80%", "0.55")
    assert judge.rows[3][:2] == ("all three", "each question at its threshold")
    cuts = shown["Review: overall-score cuts against the reviewers"]
    assert cuts.rows[3] == ("4", "4", "3", "75% (30\N{EN DASH}95%)", "100%")
    assert "cut for 90% precision: overall >= 5" in cuts.note
    assert "below overall 3" in cuts.note
    assert all(t.section == "review" for t in shown.values() if t.title.startswith("Review"))

    buffer = io.StringIO()
    render_console(stats, safe_console(file=buffer, width=200, force_terminal=False))
    out = buffer.getvalue()
    for text in (QUALITY_TITLE, "agreement between reviewers", "the judge against",
                 "overall-score cuts", "cut for 90% precision"):
        assert text in out, text


def test_inspect_json_and_report_hold_the_review(reviewed, tmp_path):
    report = tmp_path / "report"
    result = cli("inspect", str(reviewed), "--json", "--tokenizer", "none",
                 "--report", str(report))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert set(stats["review"]) == {"sample", "reviewers", "pooled", "paper", "agreement",
                                    "judge"}
    assert stats["review"]["judge"]["cut_for_precision_90"] == 5
    assert [r["name"] for r in stats["review"]["reviewers"]] == ["alice", "bob"]
    assert "quality" in stats  # the judge's own section is still there
    page = (report / "index.html").read_text(encoding="utf-8")
    start = page.index('<section id="review">')
    section = page[start:page.index("</section>", start)]
    for text in ("Human review", QUALITY_TITLE, "Review: agreement between reviewers",
                 "Review: the judge against the reviewers",
                 "Review: overall-score cuts against the reviewers", "67% (30\N{EN DASH}90%)"):
        assert text in section, text
    quality_start = page.index('<section id="quality">')
    assert "Review:" not in page[quality_start:page.index("</section>", quality_start)]

    console = cli("inspect", str(reviewed), "--tokenizer", "none")
    assert console.returncode == 0, console.stderr
    assert QUALITY_TITLE in console.stdout and "cut for 90% precision" in console.stdout


# -- one reviewer, an unjudged run, and what cannot be read --------------------------


def small_reviewed(base: Path) -> Path:
    run_dir = write_small_run(base)
    frame = load_run(run_dir).frame
    open_sample(run_dir, frame, 4, 3, None)
    return run_dir


def sampled_ids(run_dir: Path) -> list[str]:
    return [e["id"] for e in json.loads(
        (run_dir / "review" / "sample.json").read_text(encoding="utf-8"))["examples"]]


def test_one_reviewer_on_an_unjudged_run(tmp_path):
    run_dir = small_reviewed(tmp_path / "small")
    ids = sampled_ids(run_dir)
    put_labels(run_dir, "carol", {ids[0]: (YES, YES, YES), ids[1]: (YES, NO, YES),
                                  ids[2]: (None, None, None)})
    stats = collect_statistics(load_run(run_dir), None, None, verb_parser=None)
    review = stats["review"]
    assert review["pooled"] is None and review["agreement"] == [] and review["judge"] is None
    [carol] = review["reviewers"]
    assert (carol["reviewed"], carol["partial"]) == (2, 0)  # all three unanswered: not partial
    assert counts(carol["questions"]) == {"instruction": (2, 2), "input": (1, 2),
                                          "output": (2, 2), "all": (1, 2)}
    titles = [t.title for t in tables(stats)]
    assert "Review: quality of 2 reviewed examples (Self-Instruct §3.3)" in titles
    assert not any("agreement" in t or "judge" in t or "cuts" in t for t in titles)
    shown = {t.title: t for t in tables(stats)}
    assert shown["Review: quality of 2 reviewed examples (Self-Instruct §3.3)"].headers == (
        "question", "carol", "paper")


def test_runs_without_labels_have_no_review_key(tmp_path):
    run_dir = write_small_run(tmp_path / "plain")
    stats = collect_statistics(load_run(run_dir), None, None, verb_parser=None)
    assert "review" not in stats
    assert not any(t.title.startswith("Review") for t in tables(stats))
    # a drawn sample without any answers yet is no review either
    open_sample(run_dir, load_run(run_dir).frame, 3, 0, None)
    assert review_statistics(load_run(run_dir)) == (None, [])
    result = cli("inspect", str(run_dir), "--json", "--tokenizer", "none",
                 "--report", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    assert "review" not in json.loads(result.stdout)
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert 'id="review"' not in page and "Human review" not in page
    records = tmp_path / "alpaca.jsonl"
    records.write_text(json.dumps({"instruction": "Name a colour.", "output": "blue"}) + "\n")
    assert "review" not in collect_statistics(load_run(records), None, None, verb_parser=None)


def test_a_damaged_labels_file_is_a_note_not_a_crash(tmp_path):
    run_dir = small_reviewed(tmp_path / "damaged")
    ids = sampled_ids(run_dir)
    put_labels(run_dir, "carol", {ids[0]: (YES, YES, YES)})
    put_labels(run_dir, "dave", {ids[0]: (NO, YES, YES)})
    broken = labels_path(run_dir, "dave")
    broken.write_bytes(broken.read_bytes()[:40])
    stats = collect_statistics(load_run(run_dir), None, None, verb_parser=None)
    assert [r["name"] for r in stats["review"]["reviewers"]] == ["carol"]
    assert any(str(broken) in n and "dave's labels not counted" in n for n in stats["notes"])
    result = cli("inspect", str(run_dir), "--tokenizer", "none")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "dave's labels not counted" in result.stdout

    # a damaged sample.json: every labelled example of the run counts, with a note
    (run_dir / "review" / "sample.json").write_text("{not json", encoding="utf-8")
    stats = collect_statistics(load_run(run_dir), None, None, verb_parser=None)
    assert stats["review"]["sample"] is None
    assert stats["review"]["reviewers"][0]["reviewed"] == 1
    assert any("sample.json" in n and "not read" in n for n in stats["notes"])
    assert any("every labelled example of the run is counted" in n for n in stats["notes"])


def test_a_labels_file_linking_out_of_the_run_is_not_read(tmp_path):
    run_dir = small_reviewed(tmp_path / "linked")
    ids = sampled_ids(run_dir)
    put_labels(run_dir, "carol", {ids[0]: (YES, YES, YES)})
    outside = tmp_path / "elsewhere.parquet"
    outside.write_bytes(labels_path(run_dir, "carol").read_bytes())
    labels_path(run_dir, "mallory").symlink_to(outside)
    review, notes = review_statistics(load_run(run_dir))
    assert [r["name"] for r in review["reviewers"]] == ["carol"]
    assert any("labels-mallory.parquet" in n and "inside the run" in n for n in notes)


def test_labels_of_examples_no_longer_in_the_run_are_counted_in_a_note(tmp_path):
    run_dir = small_reviewed(tmp_path / "gone")
    ids = sampled_ids(run_dir)
    put_labels(run_dir, "carol", {ids[0]: (YES, YES, YES)})
    store = LabelStore(run_dir, "carol").open()
    try:
        for k in range(3):  # examples of an earlier version of the run
            store.put(f"old-{k}", example_key(f"Old task {k}.", "", "done"),
                      Answers(instruction=True, input=True, output=True))
    finally:
        store.close()
    # and one example of the run that is outside the sample (drawn again since)
    frame = load_run(run_dir).frame
    other = next(r for r in frame.to_dict("records") if r["id"] not in ids)
    put_labels(run_dir, "erin", {other["id"]: (YES, YES, YES)})
    review, notes = review_statistics(load_run(run_dir))
    assert [(r["name"], r["labelled"], r["reviewed"]) for r in review["reviewers"]] == [
        ("carol", 4, 1), ("erin", 1, 0)]
    assert any("3 labels (3 examples) are of examples no longer in the run" in n for n in notes)
    assert any("1 labelled examples are not in the current review sample" in n for n in notes)
    assert review["pooled"]["reviewed"] == 1  # erin completed nothing in the sample
    assert review["agreement"][0]["n"] == 0
    assert review["agreement"][0]["kappa"]["all"] is None


def test_the_sample_shrinking_is_noted(tmp_path):
    """A sampled example whose row is gone (the run's shards were replaced) is noted
    and not counted; the others still are."""
    run_dir = reviewed_run(tmp_path / "shrunk")
    sample_file = run_dir / "review" / "sample.json"
    sample = json.loads(sample_file.read_text(encoding="utf-8"))
    sample["examples"].append({"id": "r9-0", "key": "0" * 16, "stratum": None})
    sample_file.write_text(json.dumps(sample), encoding="utf-8")
    review, notes = review_statistics(load_run(run_dir))
    assert review["sample"]["size"] == 7 and review["sample"]["in_run"] == 6
    assert any("1 of the sample's 7 examples are no longer in the run" in n for n in notes)
    assert review["pooled"]["reviewed"] == 6

