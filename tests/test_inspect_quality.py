"""`selfinstruct inspect` of a judged run: score distributions per question and per
round, an example at each score, kept/dropped by score from the ledger, the budget's
selection; as tables, under "quality" in --json, and as a section of --report.

The judged run is written directly (shards with the quality columns, a ledger
committed through RunDirectory, a manifest with the shards' sha256), so these tests
do not depend on the judging stage."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfinstruct.analysis.loading import load_run
from selfinstruct.analysis.quality import score_summary
from selfinstruct.analysis.stats import collect_statistics
from selfinstruct.analysis.tables import render_console, tables
from selfinstruct.quality import QUALITY_FIELDS, QUESTIONS, SCORES, column, rationale_column
from selfinstruct.storage.files import file_digest, write_json
from selfinstruct.storage.ledger import CANDIDATE_SCHEMA, RunDirectory
from selfinstruct.storage.manifest import Manifest, write_manifest
from selfinstruct.storage.shards import DATA_DIR, SCHEMA, messages_for
from tests.small_run import write_small_run
from tests.test_inspect import cli

JUDGE = "TinyJudge"
HOSTILE = "\x1b]0;owned\x07[bold red]<script>alert(1)</script>"

# (task_id, round, instruction, [(input, output, (instruction, input, output, overall))]);
# None scores: the judge's answer was unparseable.
TASKS = [
    ("r0001-0000", 1, "Write a haiku about autumn leaves.",
     [("", "Red leaves drift down slow.", (5, 5, 5, 5)),
      ("", "Crisp air, golden light.", (5, 4, 4.5, 4.5))]),
    ("r0001-0001", 1, "Classify the review as positive or negative.",
     [("The food was great.", "negative", (4, 3, 2, 3)),
      ("Cold soup.", "negative", None)]),
    ("r0002-0000", 2, "Translate the sentence into French.",
     [("Good morning.", "Bonjour.", (5, 5, 4, 4))]),
    ("r0002-0001", 2, "Explain how a rainbow forms.",
     [("", "Sunlight is refracted in raindrops.", (5, 5, 5, 5))]),
]

# Per round, the ledger's candidates: (instruction, stage, reason, quality, quality_kept);
# the fruit task and three instances were dropped by the min_overall = 3 cut.
LEDGER = {
    1: [("Write a haiku about autumn leaves.", "written", None, [5.0, 4.5, 2.0],
         [True, True, False]),
        ("Classify the review as positive or negative.", "written", None, [3.0, None, 1.0],
         [True, True, False]),
        ("Generate a list of three fruits.", "instances", "low_quality", [1.0, 2.0],
         [False, False]),
        ("Draw a picture of a cat.", "instructions", "blacklist:draw", None, None)],
    2: [("Translate the sentence into French.", "written", None, [4.0], [True]),
        ("Explain how a rainbow forms.", "written", None, [5.0], [True])],
}

SELECTION = {"budget": 6, "considered": 7, "selected": 6, "unscored": 1,
             "skipped_near_duplicate": 0}


def shard_rows() -> list[dict]:
    rows = []
    for task_id, number, instruction, instances in TASKS:
        for k, (input_text, output, scores) in enumerate(instances):
            row = {"id": f"{task_id}-{k}", "task_id": task_id, "instruction": instruction,
                   "input": input_text, "output": output,
                   "messages": messages_for(instruction, input_text, output),
                   "is_classification": "Classify" in instruction, "model": "TinyTest",
                   "round": number, "prompt_task_ids": ["seed_1"],
                   "nearest_instruction": None, "nearest_rouge_l": None,
                   "quality_reason": None if scores else "judge_unparseable",
                   "quality_judge": JUDGE}
            for name, score in zip(SCORES, scores or (None,) * 4, strict=True):
                row[column(name)] = None if score is None else float(score)
            for question in QUESTIONS:
                row[rationale_column(question)] = (
                    None if scores is None else
                    HOSTILE if task_id == "r0001-0001" else f"{question} of {task_id}-{k} ok")
            rows.append(row)
    return rows


def candidate(number: int, slot: int, entry: tuple) -> dict:
    instruction, stage, reason, quality, kept = entry
    return {"round": number, "slot": slot, "item": 0, "instruction": instruction,
            "stage": stage, "reason": reason, "nearest_instruction": None, "rouge_l": 0.1,
            "is_classification": False, "instances": len(quality or []),
            "instance_rejections": ["low_quality"] * (kept or []).count(False),
            "prompt_task_ids": ["seed_1"], "completion": "", "quality": quality,
            "quality_kept": kept}


def write_judged_run(base: Path, *, ledger_quality: bool = True) -> Path:
    """A judged run in ``base/run``: two shards, a two-round ledger, a manifest."""
    out = base / "run"
    (out / DATA_DIR).mkdir(parents=True)
    schema = pa.schema([*SCHEMA, *QUALITY_FIELDS])
    rows = shard_rows()
    files = []
    for k, chunk in enumerate((rows[:4], rows[4:])):
        path = out / DATA_DIR / f"shard-{k:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), path)
        files.append({"path": f"{DATA_DIR}/{path.name}", "rows": len(chunk),
                      "sha256": file_digest(path)})
    ledger = RunDirectory(out)
    for number, entries in LEDGER.items():
        candidates = [candidate(number, slot, e) for slot, e in enumerate(entries)]
        round_rows = [{k: v for k, v in r.items() if k in SCHEMA.names}
                      for r in rows if r["round"] == number]
        if ledger_quality:
            ledger.commit_round(number, candidates, round_rows)
        else:  # a ledger written before quality scoring: no quality columns
            directory = ledger.round_dir(number)
            directory.mkdir(parents=True)
            old = pa.schema([f for f in CANDIDATE_SCHEMA if not f.name.startswith("quality")])
            path = directory / "candidates.parquet"
            pq.write_table(pa.Table.from_pylist(candidates, schema=old), path)
            write_json(directory / "commit.json",
                       {"round": number, "files": {"candidates.parquet": file_digest(path)},
                        "rows": len(round_rows)})
    write_manifest(out, Manifest(
        format="selfinstruct-shards/1", status="complete", files=files, rows=len(rows),
        tasks=len(TASKS), rounds=2, ledger="ledger",
        model={"name": "TinyTest", "path": None, "source": "test"},
        config={"seed": 1, "quality": {"judge": True, "scale_min": 1, "scale_max": 5,
                                       "min_overall": 3.0}},
        stats={"rounds": 2, "candidates": 6, "selection": SELECTION}))
    return out


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> Path:
    return write_judged_run(tmp_path_factory.mktemp("judged"))


@pytest.fixture(scope="module")
def quality(judged) -> dict:
    stats = collect_statistics(load_run(judged), None, None, verb_parser=None)
    return stats["quality"]


def distribution(summary: dict) -> dict[int, int]:
    return {d["score"]: d["count"] for d in summary["distribution"]}


def test_scores_per_question_count_each_value_and_the_unparseable(quality):
    assert quality["scale"] == {"min": 1, "max": 5}
    assert quality["judges"] == [JUDGE] and quality["rows"] == 6
    assert quality["reasons"] == {"judge_unparseable": 1}
    scores = quality["scores"]
    assert list(scores) == list(SCORES)
    assert distribution(scores["instruction"]) == {1: 0, 2: 0, 3: 0, 4: 1, 5: 4}
    assert distribution(scores["input"]) == {1: 0, 2: 0, 3: 1, 4: 1, 5: 3}
    # 4.5 is counted at 4 (rounded down)
    assert distribution(scores["output"]) == {1: 0, 2: 1, 3: 0, 4: 2, 5: 2}
    assert distribution(scores["overall"]) == {1: 0, 2: 0, 3: 1, 4: 2, 5: 2}
    assert [(scores[n]["count"], scores[n]["unparseable"], scores[n]["mean"]) for n in SCORES] \
        == [(5, 1, 4.8), (5, 1, 4.4), (5, 1, 4.1), (5, 1, 4.3)]


def test_per_round_mean_count_and_distribution(quality):
    rounds = {r["round"]: r for r in quality["rounds"]}
    assert sorted(rounds) == [1, 2]
    assert (rounds[1]["count"], rounds[1]["unparseable"], rounds[1]["mean"]) == (3, 1, 4.17)
    assert distribution(rounds[1]) == {1: 0, 2: 0, 3: 1, 4: 1, 5: 1}
    assert (rounds[2]["count"], rounds[2]["unparseable"], rounds[2]["mean"]) == (2, 0, 4.5)
    assert distribution(rounds[2]) == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1}


def test_one_example_at_each_overall_score_with_its_rationales(judged, quality):
    examples = quality["examples"]
    assert [e["score"] for e in examples] == [3, 4, 5]
    by_id = {r["id"]: r for r in shard_rows()}
    for example in examples:
        row = by_id[example["id"]]
        assert int(row["quality_overall"]) == example["score"]
        assert example["scores"] == {n: row[column(n)] for n in SCORES}
        assert example["rationales"] == {q: row[rationale_column(q)] for q in QUESTIONS}
        assert example["instruction"] == row["instruction"]
        assert example["round"] == row["round"]
    assert examples[0]["id"] == "r0001-0001-0" and examples[0]["rationales"]["input"] == HOSTILE
    # a fixed seed: the same rows on every call
    again = collect_statistics(load_run(judged), None, None, verb_parser=None)["quality"]
    assert again["examples"] == examples


def test_kept_and_dropped_by_score_come_from_the_ledger(quality):
    kept = quality["kept_by_score"]
    assert kept["source"] == "ledger"
    assert (kept["judged"], kept["kept"], kept["dropped"]) == (10, 6, 4)
    assert [(r["score"], r["judged"], r["kept"], r["dropped"]) for r in kept["rows"]] == [
        (1, 2, 0, 2), (2, 2, 0, 2), (3, 1, 1, 0), (4, 2, 2, 0), (5, 2, 2, 0)]
    assert kept["unparseable"] == {"judged": 1, "kept": 1, "dropped": 0}
    assert quality["cuts"] == {"overall": 3.0}
    assert quality["selection"] == SELECTION


def test_the_quality_tables_render_with_hostile_rationales_escaped(judged):
    from rich.console import Console

    from selfinstruct.terminal import safe_console

    stats = collect_statistics(load_run(judged), None, None, sample=0, verb_parser=None)
    shown = {t.title: t for t in tables(stats)}
    scores = shown["Quality scores (Self-Instruct §3.3 questions)"]
    assert scores.headers == ("question", "n", "mean", "unparseable", "1", "2", "3", "4", "5")
    assert scores.rows[3] == ("overall", "5", "4.30", "1", "0", "0", "1", "2", "2")
    kept = shown["Quality: kept and dropped by overall score (from the ledger)"]
    assert kept.rows[0] == ("1", "2", "0", "2", "0.0%")
    assert kept.rows[-1] == ("unparseable", "1", "1", "0", "100.0%")
    assert "Quality per round (overall score)" in shown
    assert "Quality: selection (keep_best budget)" in shown

    buffer = io.StringIO()
    console = safe_console(file=buffer, width=220, force_terminal=False)
    assert isinstance(console, Console)
    render_console(stats, console)
    out = buffer.getvalue()
    for text in ("Quality scores", "instruction (a valid task?)", "Quality per round",
                 "an example at each overall score", "kept and dropped", "keep_best",
                 "skipped near duplicate", "judge: TinyJudge", "judge_unparseable 1"):
        assert text in out, text
    assert "\x1b" not in out and "\\u001b]0;owned" in out
    assert "[bold red]" in out  # markup in the data shown as text


def test_inspect_json_and_report_hold_the_quality_section(judged, tmp_path):
    report = tmp_path / "report"
    result = cli("inspect", str(judged), "--json", "--tokenizer", "none",
                 "--report", str(report))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert set(stats["quality"]) == {"scale", "judges", "rows", "reasons", "scores", "rounds",
                                     "examples", "kept_by_score", "cuts", "selection", "reward"}
    assert stats["quality"]["reward"] is None
    assert distribution(stats["quality"]["scores"]["overall"]) == {1: 0, 2: 0, 3: 1, 4: 2, 5: 2}
    assert stats["quality"]["examples"][0]["rationales"]["input"] == HOSTILE
    assert json.loads((report / "stats.json").read_text(encoding="utf-8"))["quality"] \
        == stats["quality"]
    assert (report / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    section = page[page.index('<section id="quality">'):page.index("</section>")]
    for text in ("Quality scores (Self-Instruct §3.3 questions)", "Quality per round",
                 "kept and dropped by overall score", 'id="fig-quality"',
                 'src="data:image/png;base64,'):
        assert text in section, text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in section
    # the other figures stay outside the section
    assert 'id="fig-rejections"' not in section


def test_a_ledger_from_before_scoring_or_a_damaged_one_gives_a_note(tmp_path):
    old = write_judged_run(tmp_path / "old", ledger_quality=False)
    stats = collect_statistics(load_run(old), None, None, verb_parser=None)
    assert stats["quality"]["kept_by_score"] is None
    assert stats["quality"]["scores"]["overall"]["count"] == 5
    assert any("ledger records no scores" in n for n in stats["notes"])
    assert "Quality: kept and dropped by overall score (from the ledger)" \
        not in {t.title for t in tables(stats)}

    damaged = tmp_path / "damaged"
    shutil.copytree(write_judged_run(tmp_path / "src"), damaged)
    path = damaged / "ledger" / "round-00002" / "candidates.parquet"
    path.write_bytes(path.read_bytes()[:-4] + b"XXXX")
    stats = collect_statistics(load_run(damaged), None, None, verb_parser=None)
    assert stats["quality"]["kept_by_score"] is None
    assert any("damaged ledger" in n and "round-00002" in n for n in stats["notes"])


def test_runs_and_files_without_scores_have_no_quality_key(tmp_path):
    run_dir = write_small_run(tmp_path / "plain")
    stats = collect_statistics(load_run(run_dir), None, None, sample=1, verb_parser=None)
    assert "quality" not in stats
    assert not any(t.title.startswith("Quality") for t in tables(stats))
    records = tmp_path / "alpaca.jsonl"
    records.write_text(json.dumps({"instruction": "Name a colour.", "output": "blue"}) + "\n")
    assert "quality" not in collect_statistics(load_run(records), None, None, verb_parser=None)
    result = cli("inspect", str(run_dir), "--json", "--tokenizer", "none")
    assert result.returncode == 0, result.stderr
    assert "quality" not in json.loads(result.stdout)


def test_a_plain_file_with_scores_gets_them_without_ledger_numbers(tmp_path):
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (
        {"instruction": "Name a colour.", "output": "blue", "quality_overall": 2.0},
        {"instruction": "Name a fruit.", "output": "pear", "quality_overall": None},
        {"instruction": "Name a tree.", "output": "oak", "quality_overall": "n/a"})))
    quality = collect_statistics(load_run(path), None, None, verb_parser=None)["quality"]
    overall = quality["scores"]["overall"]
    assert (overall["count"], overall["unparseable"]) == (1, 2)
    assert distribution(overall) == {1: 0, 2: 1, 3: 0, 4: 0, 5: 0}
    assert list(quality["scores"]) == ["overall"]  # the question columns are absent
    assert quality["kept_by_score"] is None and quality["selection"] is None
    assert quality["rounds"] == [] and quality["judges"] == []


def test_fractional_and_out_of_scale_scores_are_binned_down():
    import pandas as pd

    summary = score_summary(pd.Series([0.5, 1.0, 2.99, 3.0, 7.2, float("nan")]), (1, 3))
    assert distribution(summary) == {0: 1, 1: 1, 2: 1, 3: 1, 7: 1}
    assert (summary["count"], summary["unparseable"]) == (5, 1)
    assert summary["mean"] == round((0.5 + 1 + 2.99 + 3 + 7.2) / 5, 2)


def test_reward_scores_are_summarised_and_tabled():
    import pandas as pd

    from selfinstruct.analysis.quality import reward_summary
    from selfinstruct.analysis.tables import quality_tables

    frame = pd.DataFrame({"quality_reward": [0.5, -1.0, None, 2.0, 1.5]})
    summary = reward_summary(frame)
    assert summary == {"count": 4, "missing": 1, "mean": 0.75, "min": -1.0, "p25": 0.125,
                       "median": 1.0, "p75": 1.625, "max": 2.0}
    assert reward_summary(pd.DataFrame({"quality_reward": [None, None]})) is None
    tables = quality_tables({"scale": {"min": 1, "max": 5}, "scores": {}, "reasons": {},
                             "judges": ["rm"], "rows": 5, "rounds": [], "examples": [],
                             "reward": summary})
    reward = [t for t in tables if "reward" in t.title]
    assert reward and reward[0].rows[0][0] == "4"
