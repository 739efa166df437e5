"""``refilter`` and ``export`` with ``--drop-reviewed-invalid`` (issue 13): the examples a
reviewer answered "no" to on any of Self-Instruct §3.3's three questions leave the kept
set (refilter, reason ``reviewed_invalid``, recorded in the manifest) or the export
(counted on the command line and in the card); "yes" and unfinished labels drop
nothing; missing or damaged labels are one line, exit 2, nothing written.

The runs are real ``generate`` runs made with the scripted engine (no model): 5 rows in
4 tasks, task ``r0001-00001`` with two rows. Commands run in-process (CliRunner).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from selfinstruct.quality import QUALITY_COLUMNS, REVIEWED_INVALID, example_key
from selfinstruct.review.labels import Answers, LabelStore

from .judge_fakes import make_judged_run
from .test_safety_runs import make_scripted_run, tree_digests

NO = Answers(instruction=True, input=False, output=True)
YES = Answers(instruction=True, input=True, output=True)
UNFINISHED = Answers(instruction=True)  # input and output not answered yet


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    return {"plain": make_scripted_run(tmp_path_factory.mktemp("plain")),
            "judged": make_judged_run(tmp_path_factory.mktemp("judged"))}


def copy_of(sources: dict[str, Path], tmp_path: Path, kind: str = "plain") -> Path:
    """A private copy of a source run (its labels are this test's own); the recorded seed
    path still points at the original seeds, which have the recorded sha256."""
    run = tmp_path / f"{kind}-run"
    shutil.copytree(sources[kind], run)
    return run


def invoke(*args: str) -> Result:
    from selfinstruct.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result


def rows_of(run: Path) -> list[dict]:
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    return [r for f in manifest["files"] for r in pq.read_table(run / f["path"]).to_pylist()]


def key(row: dict) -> str:
    return example_key(row["instruction"], row["input"], row["output"])


def triple(row: dict) -> tuple[str, str, str]:
    return row["instruction"], row["input"], row["output"]


def label(run: Path, reviewer: str, *marks: tuple[dict, Answers]) -> None:
    store = LabelStore(run, reviewer).open()
    try:
        for row, answers in marks:
            store.put(row["id"], key(row), answers)
    finally:
        store.close()


def by_id(run: Path) -> dict[str, dict]:
    return {r["id"]: r for r in rows_of(run)}


def mark_some(run: Path) -> tuple[dict, dict]:
    """alice says "no" to the one-row task r0001-00000 and to one of the two rows of
    r0001-00001; bob says yes to everything about r0002-00002; carol has answered only
    the first question about r0003-00003. Returns the two invalid rows."""
    rows = by_id(run)
    whole, half = rows["r0001-00000-0"], rows["r0001-00001-1"]
    label(run, "alice", (whole, NO), (half, Answers(instruction=True, input=True,
                                                    output=False)))
    label(run, "bob", (rows["r0002-00002-0"], YES), (rows["r0001-00001-0"], YES))
    label(run, "carol", (rows["r0003-00003-0"], UNFINISHED))
    return whole, half


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text(encoding="utf-8"))


def ledger_candidates(run: Path) -> list[dict]:
    return [r for f in sorted(run.glob("ledger/round-*/candidates.parquet"))
            for r in pq.read_table(f).to_pylist()]


# -- refilter -----------------------------------------------------------------------


def test_refilter_drops_the_rows_reviewers_marked_invalid_and_records_it(sources, tmp_path):
    run = copy_of(sources, tmp_path)
    whole, half = mark_some(run)
    out = tmp_path / "out"
    result = ok(invoke("refilter", run, "-o", out, "--drop-reviewed-invalid"))

    source_rows, kept = rows_of(run), rows_of(out)
    assert len(source_rows) == 5
    assert [triple(r) for r in kept] == [triple(r) for r in source_rows
                                         if key(r) not in {key(whole), key(half)}]
    # the yes-yes-yes rows and the unfinished label's row are still there
    assert {"r0002-00002-0", "r0003-00003-0", "r0001-00001-0"} <= {
        r["id"] for r in source_rows if triple(r) in {triple(k) for k in kept}}
    # the task that lost its only row is gone as a task; rows are renumbered
    assert len({r["task_id"] for r in kept}) == 3
    assert whole["instruction"] not in {r["instruction"] for r in kept}
    assert sum(r["instruction"] == half["instruction"] for r in kept) == 1

    manifest = manifest_of(out)
    stats = manifest["stats"]
    assert stats["instance_rejections"][REVIEWED_INVALID] == 2
    assert stats["rejections"][REVIEWED_INVALID] == 1
    assert stats["tasks_written"] == 3 and stats["rows_written"] == 3 == manifest["rows"]
    review = stats["review"]
    assert review["drop_reviewed_invalid"] is True
    assert review["reviewers"] == ["alice", "bob", "carol"]
    assert review["invalid_examples"] == 2 and review["labelled"] == 5
    assert review["rows_dropped"] == 2 and review["tasks_dropped"] == 1
    assert review["labels"] == [
        {"path": f"review/labels-{name}.parquet",
         "sha256": hashlib.sha256((run / "review" / f"labels-{name}.parquet").read_bytes())
         .hexdigest()} for name in ("alice", "bob", "carol")]
    assert manifest["refiltered_from"] == str(run)

    dropped = [c for c in ledger_candidates(out) if c["reason"] == REVIEWED_INVALID]
    assert [(c["instruction"], c["stage"]) for c in dropped] == [(whole["instruction"],
                                                                  "review")]
    partial = [c for c in ledger_candidates(out) if c["instruction"] == half["instruction"]]
    assert partial[0]["instances"] == 1
    assert REVIEWED_INVALID in partial[0]["instance_rejections"]

    line = [x for x in result.output.splitlines() if "--drop-reviewed-invalid" in x]
    assert len(line) == 1, result.output
    assert "dropped 2 rows, 1 task left with none" in line[0]
    assert "reviewed_invalid" in line[0]
    assert 'reviewers alice, bob, carol answered "no" about 2 of the 5 examples' in line[0]


def test_refilter_with_the_flag_twice_gives_the_same_bytes_and_without_it_nothing_changes(
        sources, tmp_path):
    run = copy_of(sources, tmp_path)
    mark_some(run)
    first, second, plain = tmp_path / "a", tmp_path / "b", tmp_path / "plain"
    ok(invoke("refilter", run, "-o", first, "--drop-reviewed-invalid"))
    ok(invoke("refilter", run, "-o", second, "--drop-reviewed-invalid"))
    ok(invoke("refilter", run, "-o", plain))

    a, b = tree_digests(first), tree_digests(second)
    a.pop("manifest.json"), b.pop("manifest.json")
    assert a == b and any(name.startswith("data/") for name in a)
    ma, mb = manifest_of(first), manifest_of(second)
    assert ma["config"].pop("output") == str(first) and mb["config"].pop("output") == str(second)
    for m in (ma, mb):  # what differs between two invocations: when, and how long
        for field in ("created", "updated", "throughput"):
            m.pop(field)
        m["stats"].pop("seconds")
    assert ma == mb and ma["stats"]["review"]["rows_dropped"] == 2

    # without the flag the labels are ignored: the source's rows, byte for byte
    assert rows_of(plain) == rows_of(run)
    assert "review" not in manifest_of(plain)["stats"]
    assert REVIEWED_INVALID not in manifest_of(plain)["stats"]["instance_rejections"]
    source_shards = {f["path"]: f["sha256"] for f in manifest_of(run)["files"]}
    assert {f["path"]: f["sha256"] for f in manifest_of(plain)["files"]} == source_shards


def test_yes_and_unfinished_labels_drop_nothing(sources, tmp_path):
    run = copy_of(sources, tmp_path)
    rows = by_id(run)
    label(run, "alice", (rows["r0001-00000-0"], YES), (rows["r0001-00001-1"], UNFINISHED),
          (rows["r0002-00002-0"], Answers(input=True, output=True)))
    out = tmp_path / "out"
    result = ok(invoke("refilter", run, "-o", out, "--drop-reviewed-invalid"))
    assert rows_of(out) == rows_of(run)
    review = manifest_of(out)["stats"]["review"]
    assert review["invalid_examples"] == 0 and review["rows_dropped"] == 0
    assert review["labelled"] == 3
    assert 'dropped 0 rows (reviewed_invalid: reviewers alice answered "no" about 0 of the 3' \
        in result.output

    exported = tmp_path / "export"
    result = ok(invoke("export", run, "--format", "alpaca", "-o", exported,
                       "--drop-reviewed-invalid"))
    data = json.loads((exported / "train.json").read_text(encoding="utf-8"))
    assert len(data) == 5
    assert "dropped 0 rows" in result.output


def test_refilter_of_a_judged_run_keeps_each_rows_own_scores(sources, tmp_path):
    run = copy_of(sources, tmp_path, "judged")
    rows = by_id(run)
    label(run, "alice", (rows["r0001-00001-0"], NO))  # the first of a two-row task
    out = tmp_path / "out"
    ok(invoke("refilter", run, "-o", out, "--drop-reviewed-invalid"))
    source = {key(r): r for r in rows_of(run)}
    kept = rows_of(out)
    assert len(kept) == 4 and key(rows["r0001-00001-0"]) not in {key(r) for r in kept}
    for row in kept:  # the verdicts stay with their examples after the drop
        assert {c: row[c] for c in QUALITY_COLUMNS} == {c: source[key(row)][c]
                                                        for c in QUALITY_COLUMNS}
    assert manifest_of(out)["stats"]["instance_rejections"][REVIEWED_INVALID] == 1
    assert REVIEWED_INVALID not in manifest_of(out)["stats"]["rejections"]


# -- export -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["alpaca", "parquet"])
def test_export_leaves_out_the_rows_reviewers_marked_invalid_and_the_card_says_so(
        sources, tmp_path, fmt):
    run = copy_of(sources, tmp_path)
    whole, half = mark_some(run)
    out = tmp_path / "export"
    result = ok(invoke("export", run, "--format", fmt, "-o", out, "--drop-reviewed-invalid",
                       "--tokenizer", "none"))
    if fmt == "alpaca":
        exported = [(r["instruction"], r["input"], r["output"])
                    for r in json.loads((out / "train.json").read_text(encoding="utf-8"))]
    else:
        exported = [triple(r) for r in pq.read_table(
            out / "data" / "train-00000-of-00001.parquet").to_pylist()]
    assert exported == [triple(r) for r in rows_of(run)
                        if key(r) not in {key(whole), key(half)}]
    assert "train 3 rows" in result.output
    line = [x for x in result.output.splitlines() if "--drop-reviewed-invalid" in x]
    assert len(line) == 1 and "dropped 2 rows, 1 task left with none" in line[0], \
        result.output
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| train | 3 | 3 |" in card
    review = [x for x in card.splitlines() if x.startswith("- Human review")]
    assert len(review) == 1, card
    assert "this export" in review[0] and "2 rows left out (1 task with none left)" in review[0]
    assert "`reviewed_invalid`" in review[0]
    assert ("Reviewers `alice`, `bob`, `carol` marked 2 of the 5 examples they labelled "
            "invalid") in review[0]
    assert "unreviewed" not in card


def test_export_without_the_flag_keeps_every_row_and_a_refiltered_runs_card_tells(
        sources, tmp_path):
    run = copy_of(sources, tmp_path)
    mark_some(run)
    plain = tmp_path / "plain"
    ok(invoke("export", run, "--format", "alpaca", "-o", plain, "--tokenizer", "none"))
    assert len(json.loads((plain / "train.json").read_text(encoding="utf-8"))) == 5
    card = (plain / "README.md").read_text(encoding="utf-8")
    # no drop line; the run's labels make the review tables and the limitation's wording
    assert not [x for x in card.splitlines() if x.startswith("- Human review")]
    assert "Review: quality of" in card and "only a sample of them was reviewed" in card

    refiltered, exported = tmp_path / "refiltered", tmp_path / "export"
    ok(invoke("refilter", run, "-o", refiltered, "--drop-reviewed-invalid"))
    ok(invoke("export", refiltered, "--format", "alpaca", "-o", exported,
              "--tokenizer", "none"))
    assert len(json.loads((exported / "train.json").read_text(encoding="utf-8"))) == 3
    review = [x for x in (exported / "README.md").read_text(encoding="utf-8").splitlines()
              if x.startswith("- Human review")]
    assert len(review) == 1
    assert f"(`--drop-reviewed-invalid`, refiltered from `{run}`)" in review[0]
    assert "2 rows left out" in review[0]


# -- errors: one line, exit 2, nothing written ----------------------------------------


def no_review(run: Path) -> None:
    pass


def sample_only(run: Path) -> None:
    (run / "review").mkdir()
    (run / "review" / "sample.json").write_text("{}", encoding="utf-8")


def damaged(run: Path) -> None:
    label(run, "alice", (rows_of(run)[0], NO))
    (run / "review" / "labels-x.parquet").write_bytes(b"\x00garbage, not parquet\xff" * 8)


CASES = {
    "no-review-dir": (no_review, "has no review labels (run selfinstruct review first)"),
    "no-labels-file": (sample_only, "has no review labels (run selfinstruct review first)"),
    "damaged-labels": (damaged, "labels-x.parquet: not a readable labels file"),
}


@pytest.mark.parametrize("command", ["refilter", "export"])
@pytest.mark.parametrize("case", list(CASES))
def test_missing_or_damaged_labels_are_one_line_exit_2_and_nothing_is_written(
        sources, tmp_path, case, command):
    run = copy_of(sources, tmp_path)
    prepare, expected = CASES[case]
    prepare(run)
    before = tree_digests(run)
    out = tmp_path / "out"
    args = (["refilter", run, "-o", out] if command == "refilter"
            else ["export", run, "--format", "messages", "-o", out])
    result = invoke(*args, "--drop-reviewed-invalid")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and lines[0].startswith("Error: ")
    if case != "damaged-labels":
        assert f"{run} has no review labels" in lines[0]
    else:
        assert str(run / "review" / "labels-x.parquet") in lines[0]
    assert not out.exists(), "nothing written"
    assert not any(p.name.startswith((".out", "out")) for p in tmp_path.iterdir())
    assert tree_digests(run) == before


def test_export_of_a_plain_file_with_the_flag_is_refused(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi."})
                       + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = invoke("export", records, "--format", "alpaca", "-o", out,
                    "--drop-reviewed-invalid")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "--drop-reviewed-invalid needs a run directory" in lines[0]
    assert str(records) in lines[0]
    assert not out.exists()


def test_export_when_reviewers_marked_every_row_invalid_writes_nothing(sources, tmp_path):
    run = copy_of(sources, tmp_path)
    label(run, "alice", *[(r, NO) for r in rows_of(run)])
    out = tmp_path / "out"
    result = invoke("export", run, "--format", "alpaca", "-o", out, "--drop-reviewed-invalid")
    assert result.exit_code == 2 and "reviewers marked all 5 invalid" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", ["refilter", "export"])
def test_help_lists_the_flag(command):
    result = ok(invoke(command, "--help"))
    assert "--drop-reviewed-invalid" in result.output
    assert "§3.3" in result.output and "review/labels-*.parquet" in " ".join(
        result.output.split())
