"""Exports and ``inspect`` samples of judged runs: the Parquet and datasets exports keep
the judge's columns (QUALITY_FIELDS), the trainer formats stay as they are, the card
says how the run was judged (judge, scale, cuts, budget), and the sample table shows
the overall score."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from selfinstruct.analysis.export import export_run
from selfinstruct.analysis.loading import load_run
from selfinstruct.analysis.stats import collect_statistics
from selfinstruct.analysis.tables import SAMPLE_TITLE, tables
from selfinstruct.quality import QUALITY_COLUMNS, QUALITY_FIELDS

from .judge_fakes import make_judged_run, use_scripted_judge
from .small_run import write_small_run


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> Path:
    """A judged run, every example kept."""
    return make_judged_run(tmp_path_factory.mktemp("judged"))


@pytest.fixture(scope="module")
def selected(tmp_path_factory) -> Path:
    """A judged run cut at overall >= 2, then the 3 best kept."""
    return make_judged_run(tmp_path_factory.mktemp("selected"),
                           **{"min_quality:quality.min_overall": 2.0, "keep_best": 3.0})


def shard_rows(run: Path) -> dict[str, dict]:
    return {r["id"]: r for path in sorted((run / "data").glob("*.parquet"))
            for r in pq.read_table(path).to_pylist()}


def card_body(directory: Path) -> str:
    return (directory / "README.md").read_text(encoding="utf-8").split("---\n", 2)[2]


def test_parquet_export_of_a_judged_run_keeps_every_quality_column(judged, tmp_path):
    result = export_run(load_run(judged), "parquet", tmp_path / "out", train_split=0.5)
    source = shard_rows(judged)
    exported = {}
    for name in ("train", "test"):
        table = pq.read_table(tmp_path / "out" / result.files[name])
        for field in QUALITY_FIELDS:
            assert table.schema.field(field.name).type == field.type, field.name
        exported.update({r["id"]: r for r in table.to_pylist()})
    assert exported.keys() == source.keys()
    for rid, row in exported.items():
        for name in QUALITY_COLUMNS:
            assert row[name] == source[rid][name], (rid, name)
    assert any(r["quality_overall"] is not None for r in exported.values())
    assert {r["quality_judge"] for r in exported.values()} == {"model"}


def test_datasets_export_of_a_judged_run_keeps_every_quality_column(judged, tmp_path):
    import datasets

    export_run(load_run(judged), "datasets", tmp_path / "out")
    loaded = datasets.load_from_disk(str(tmp_path / "out"))["train"]
    assert set(QUALITY_COLUMNS) <= set(loaded.column_names)
    assert loaded.features["quality_overall"].dtype == "float64"
    source = shard_rows(judged)
    for row in loaded:
        assert {n: row[n] for n in QUALITY_COLUMNS} == {n: source[row["id"]][n]
                                                         for n in QUALITY_COLUMNS}


def test_a_judged_export_keeps_null_scores_and_an_unjudged_one_has_no_quality_column(
        judged, tmp_path):
    from selfinstruct.analysis.export import arrow_table

    frame = load_run(judged).frame.copy()
    frame.loc[frame.index[0], ["quality_overall", "quality_output"]] = None
    frame.loc[frame.index[0], "quality_reason"] = "judge_unparseable"
    table = arrow_table(frame)
    assert table.column("quality_overall")[0].as_py() is None
    assert table.schema.field("quality_overall").type == pa.float64()
    assert table.column("quality_reason")[0].as_py() == "judge_unparseable"
    plain = write_small_run(tmp_path / "plain")
    export_run(load_run(plain), "parquet", tmp_path / "out")
    names = pq.read_schema(tmp_path / "out" / "data" / "train-00000-of-00001.parquet").names
    assert not [n for n in names if n.startswith("quality_")]


@pytest.mark.parametrize("fmt, keys", [
    ("alpaca", {"instruction", "input", "output"}),
    ("sharegpt", {"id", "conversations"}),
    ("messages", {"messages"}),
])
def test_trainer_formats_of_a_judged_run_carry_no_scores(judged, tmp_path, fmt, keys):
    result = export_run(load_run(judged), fmt, tmp_path / "out")
    path = tmp_path / "out" / result.files["train"]
    text = path.read_text(encoding="utf-8")
    records = ([json.loads(line) for line in text.splitlines()] if fmt == "messages"
               else json.loads(text))
    assert records and all(set(r) == keys for r in records)
    assert "quality_" not in text
    body = card_body(tmp_path / "out")
    assert "Judged by `model`" in body
    assert "the scores are in the parquet and datasets exports, not in this format" in body


def test_the_card_says_how_the_run_was_judged_and_chosen(selected, tmp_path):
    manifest = json.loads((selected / "manifest.json").read_text())
    selection = manifest["stats"]["selection"]
    assert selection["selected"] == 3 and selection["considered"] > 3
    export_run(load_run(selected), "parquet", tmp_path / "out")
    body = card_body(tmp_path / "out")
    assert ("- Judged by `model`: Self-Instruct §3.3's three questions (valid instruction, "
            "appropriate input, correct output), each scored 1-5 with a rationale, plus an "
            "overall score (rubric `judge`); the scores are the `quality_*` columns.") in body
    assert ("- Cuts: kept only examples scored overall >= 2 (the others were dropped as "
            "`low_quality`).") in body
    assert ("- Budget: `keep_best` 3 (the best-scored examples, skipping an instruction with "
            "ROUGE-L F1 above 0.7 to one already chosen): 3 selected of "
            f"{selection['considered']}.") in body
    assert "and the judge's scores and rationales (`quality_*`)" in body


def test_an_unjudged_card_says_nothing_of_judging(judged, tmp_path):
    plain = write_small_run(tmp_path / "plain")
    export_run(load_run(plain), "parquet", tmp_path / "out")
    body = card_body(tmp_path / "out")
    assert "Judged" not in body and "quality_" not in body and "Budget" not in body
    export_run(load_run(judged), "parquet", tmp_path / "judged")
    body = card_body(tmp_path / "judged")
    assert "Judged by" in body and "Cuts:" not in body and "Budget:" not in body


def test_the_card_of_a_score_run_names_its_source_and_judge(tmp_path, monkeypatch):
    from selfinstruct.cli import main

    use_scripted_judge(monkeypatch)
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"instruction": f"Name a colour, number {k}.",
                                           "input": "", "output": "Blue."}) + "\n"
                               for k in range(6)))
    result = CliRunner().invoke(main, ["score", str(records), "-o", str(tmp_path / "scored"),
                                       "--min-quality", "output=2"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["export", str(tmp_path / "scored"), "--format",
                                       "parquet", "-o", str(tmp_path / "out"),
                                       "--tokenizer", "none"])
    assert result.exit_code == 0, result.output
    body = card_body(tmp_path / "out")
    assert f"Instruction data from `{records}`, judged with `selfinstruct score`" in body
    assert f"- Examples: `{records}`; judge `scripted`" in body
    assert "Judged by `scripted`" in body and "overall >= " not in body
    assert "output >= 2" in body
    assert "Seed tasks" not in body and "bootstrapped" not in body


# -- inspect: the sample table -------------------------------------------------------------


def test_inspect_samples_show_the_overall_score_of_a_judged_run(judged, tmp_path):
    run = load_run(judged)
    stats = collect_statistics(run, None, None, sample=50, verb_parser=None)
    rows = stats["samples"]["rows"]
    source = shard_rows(judged)
    assert rows and all(r["quality_overall"] == source[r["id"]]["quality_overall"]
                        for r in rows)
    sample = next(t for t in tables(stats) if t.title == SAMPLE_TITLE)
    assert sample.headers == ("id", "instruction", "input", "output", "overall")
    for row, shown in zip(rows, sample.rows, strict=True):
        value = row["quality_overall"]
        assert shown[-1] == ("—" if value is None else f"{value:g}")

    plain = collect_statistics(load_run(write_small_run(tmp_path / "plain")), None, None,
                               sample=3, verb_parser=None)
    assert "quality_overall" not in plain["samples"]["rows"][0]
    sample = next(t for t in tables(plain) if t.title == SAMPLE_TITLE)
    assert sample.headers == ("id", "instruction", "input", "output")


def test_inspect_prints_the_overall_column_and_takes_any_value_in_it(judged, tmp_path):
    from selfinstruct.cli import main

    result = CliRunner().invoke(main, ["inspect", str(judged), "--tokenizer", "none",
                                       "--sample", "3"])
    assert result.exit_code == 0, result.output
    shown = result.stdout[result.stdout.index(SAMPLE_TITLE):]
    header = next(line for line in shown.splitlines() if "instruction" in line)
    assert "overall" in header, header
    odd = tmp_path / "odd.jsonl"  # a plain file's score column may hold anything
    odd.write_text("".join(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi.",
                                       "quality_overall": value}) + "\n"
                           for value in ("high", 4.5, None, True)))
    result = CliRunner().invoke(main, ["inspect", str(odd), "--tokenizer", "none",
                                       "--sample", "4"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    shown = result.stdout[result.stdout.index(SAMPLE_TITLE):]
    assert "overall" in shown and "high" in shown and "4.50" in shown
