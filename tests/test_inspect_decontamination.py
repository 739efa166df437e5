"""`selfinstruct inspect`, the report and the export card of decontaminated data (issue 14):
counts per evaluation set and method, a sample of matches, which sets and methods the card
names; from a `decontaminate` output (manifest + contaminated.parquet) and from a `generate`
run (the ledger's `contamination` column, else the manifest's rejection totals).

The runs are written directly (shards, a ledger committed through RunDirectory, a manifest),
so these tests need neither an engine nor the evaluation-set readers."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfinstruct.analysis.decontamination import (
    CONTAMINATED_FILE,
    decontamination_statistics,
    strongest,
)
from selfinstruct.analysis.export import export_run
from selfinstruct.analysis.loading import load_run
from selfinstruct.analysis.report import render_html
from selfinstruct.analysis.stats import collect_statistics
from selfinstruct.analysis.tables import DECONTAMINATION_SECTION, render_console, tables
from selfinstruct.storage.files import file_digest
from selfinstruct.storage.ledger import RunDirectory
from selfinstruct.storage.manifest import MANIFEST
from selfinstruct.storage.shards import ShardWriter
from tests.small_run import rows as small_rows
from tests.small_run import write_small_run
from tests.test_inspect import cli

HOSTILE = "\x1b]0;owned\x07[bold red]<script>alert(1)</script>|pipe"
HUMAN_EVAL_SHA = "a" * 64
MBPP_SHA = "b" * 64
DIGITS = 12  # the card's sha256 prefix

DESCRIBE = {
    "benchmarks": [
        {"name": "HumanEval", "path": "evals/HumanEval.jsonl.gz", "fields": ["prompt"],
         "items": 164, "sha256": HUMAN_EVAL_SHA},
        {"name": "mbpp", "path": "evals/mbpp.jsonl", "fields": ["text", "code"],
         "items": 500, "sha256": MBPP_SHA}],
    "methods": {"ngram": {"n": 13, "min_item_tokens": 8}, "rouge": {"threshold": 0.7}},
}

# The dropped rows of the decontaminate output: (id, instruction, benchmark, item_id,
# item_text, method, score, coverage, [other matches (benchmark, method)])
DROPPED = [
    ("x-0", "def add(a, b): return the sum of two numbers", "HumanEval", "HumanEval/0",
     "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"", "ngram", 21.0, 0.85,
     [("HumanEval", "rouge")]),
    ("x-1", HOSTILE, "HumanEval", "HumanEval/7", HOSTILE, "rouge", 0.82, None, []),
    ("x-2", "Write a function to find the minimum cost path.", "mbpp", "mbpp/1",
     "Write a function to find the minimum cost path to reach (m, n).", "rouge", 0.91,
     None, []),
    ("x-3", "Check if a number is prime.", "HumanEval", "HumanEval/31",
     "def is_prime(n): return true if a given number is prime", "ngram", 13.0, 0.5,
     [("mbpp", "ngram")]),
    ("x-4", "Reverse the words of a sentence.", "mbpp", "mbpp/9", "Reverse words.",
     "ngram", 14.0, 1.0, []),
    ("x-5", "Sort the list by length.", "mbpp", "mbpp/12", "Sort a list by length.",
     "rouge", 0.75, None, []),
    ("x-6", "Count the vowels in a string.", "HumanEval", "HumanEval/64",
     "def vowels_count(s):", "ngram", 15.0, 0.6, []),
]

JOB_SUMMARY = {
    "rows_checked": 16, "rows_kept": 9, "rows_dropped": 7,
    "by_benchmark": {"HumanEval": {"examples": 4, "ngram": 3, "rouge": 2, "embedding": 0},
                     "mbpp": {"examples": 4, "ngram": 2, "rouge": 2, "embedding": 0}},
    "reasons": {"contaminated:HumanEval": 4, "contaminated:mbpp": 3},
    "notes": ["3 evaluation items have fewer than 8 words: the n-gram check skips them",
              "n-gram index built"],
    "seconds": {"read": 0.1, "index": 0.2, "check": 0.3, "total": 0.7},
}


def contaminated_table() -> pa.Table:
    match = pa.struct([("benchmark", pa.string()), ("item_index", pa.int64()),
                       ("item_id", pa.string()), ("method", pa.string()),
                       ("score", pa.float64()), ("coverage", pa.float64()),
                       ("shared", pa.int64())])
    schema = pa.schema([*(pa.field(n, pa.string()) for n in ("id", "task_id", "instruction",
                                                             "input", "output")),
                        ("benchmark", pa.string()), ("item_index", pa.int64()),
                        ("item_id", pa.string()), ("item_text", pa.string()),
                        ("method", pa.string()), ("score", pa.float64()),
                        ("coverage", pa.float64()), ("matches", pa.list_(match))])
    records = []
    for k, (rid, instruction, bench, item_id, text, method, score, cov, more) in \
            enumerate(DROPPED):
        best = {"benchmark": bench, "item_index": k, "item_id": item_id, "method": method,
                "score": score, "coverage": cov, "shared": 1 if method == "ngram" else None}
        records.append({"id": rid, "task_id": f"t{k}", "instruction": instruction,
                        "input": "", "output": "out", "benchmark": bench, "item_index": k,
                        "item_id": item_id, "item_text": text, "method": method,
                        "score": score, "coverage": cov,
                        "matches": [best, *({**best, "benchmark": b, "method": m}
                                            for b, m in more)]})
    return pa.Table.from_pylist(records, schema=schema)


def write_decontaminated(base: Path, *, contaminated: bool = True) -> Path:
    """A `decontaminate` output in ``base/clean``: the small run's rows as the clean
    shards, its manifest as the job writes it, and ``contaminated.parquet``."""
    out = base / "clean"
    writer = ShardWriter(out, shard_size=5)
    writer.add(small_rows())
    shards = writer.close()
    manifest = {
        "format": "selfinstruct-shards/1", "status": "complete",
        "created": "2026-01-01T00:00:00+00:00", "updated": "2026-01-01T00:00:00+00:00",
        "files": [{"path": s.path, "rows": s.rows, "sha256": s.sha256} for s in shards],
        "rows": sum(s.rows for s in shards), "rows_pending": 0, "tasks": 6, "rounds": 0,
        "ledger": None, "model": {"name": "TinyTest", "path": None, "source": "test"},
        "seeds": None,
        "config": {"seed": 3, "decontamination": {
            "against": ["evals/HumanEval.jsonl.gz:prompt", "evals/mbpp.jsonl:text,code"],
            "methods": ["ngram", "rouge"], "ngram": 13, "min_item_tokens": 8,
            "rouge_threshold": 0.7}},
        "versions": {"selfinstruct": "test"},
        "stats": {"decontamination": {**DESCRIBE, **JOB_SUMMARY}},
        "decontaminated_from": "data/alpaca_data.json",
    }
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    if contaminated:
        pq.write_table(contaminated_table(), out / CONTAMINATED_FILE)
    return out


def match(instance, benchmark, item, method, score, coverage=None) -> dict:
    return {"instance": instance, "benchmark": benchmark, "item_index": item,
            "item_id": f"{benchmark}/{item}", "method": method, "score": score,
            "coverage": coverage}


# Per round, the ledger's candidates: (instruction, stage, reason, instance_rejections,
# contamination). Round 1: an instruction rejected by both methods against HumanEval, one
# example of a written task dropped (matching HumanEval and mbpp), a task left with no
# example (its two examples matched mbpp). Round 2: an instruction matching mbpp by rouge.
LEDGER = {
    1: [("Write a haiku about autumn leaves.", "written", None,
         ["contaminated:HumanEval"],
         [match(2, "HumanEval", 11, "ngram", 17.0, 0.4), match(2, "mbpp", 5, "rouge", 0.8)]),
        ("Return the sum of a and b.", "instructions", "contaminated:HumanEval", [],
         [match(None, "HumanEval", 0, "ngram", 13.0, 0.9),
          match(None, "HumanEval", 0, "rouge", 0.95)]),
        ("Find the minimum cost path.", "decontamination", "contaminated:mbpp",
         ["contaminated:mbpp", "contaminated:mbpp"],
         [match(0, "mbpp", 1, "rouge", 0.9), match(1, "mbpp", 1, "ngram", 14.0, 0.7)]),
        ("Draw a picture of a cat.", "instructions", "blacklist:draw", [], None)],
    2: [(HOSTILE, "instructions", "contaminated:mbpp", [],
         [match(None, "mbpp", 3, "rouge", 0.88)]),
        ("Translate the sentence into French.", "written", None, [], None)],
}


def candidate(number: int, slot: int, entry: tuple) -> dict:
    instruction, stage, reason, dropped, contamination = entry
    return {"round": number, "slot": slot, "item": 0, "instruction": instruction,
            "stage": stage, "reason": reason, "nearest_instruction": None, "rouge_l": 0.1,
            "is_classification": False, "instances": 1, "instance_rejections": dropped,
            "prompt_task_ids": ["seed_1"], "completion": "", "quality": None,
            "quality_kept": None, "contamination": contamination}


def write_checked_run(base: Path) -> Path:
    """A `generate` run with ``[decontamination]`` in ``base/run``: the small run's shards,
    a two-round ledger with matches, and the manifest's config, identity and totals."""
    out = write_small_run(base)
    ledger = RunDirectory(out)
    rows = small_rows()
    for number, entries in LEDGER.items():
        ledger.commit_round(number, [candidate(number, k, e) for k, e in enumerate(entries)],
                            [r for r in rows if r["round"] == number])
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    manifest["ledger"] = "ledger"
    manifest["config"]["decontamination"] = {
        "against": ["evals/HumanEval.jsonl.gz:prompt", "mbpp=evals/mbpp.jsonl:text"],
        "methods": ["ngram", "rouge"], "ngram": 13, "min_item_tokens": 8,
        "rouge_threshold": 0.7, "embedding_model": None, "embedding_threshold": 0.9}
    manifest["identity"] = {"decontamination": [{"name": "HumanEval", "sha256": HUMAN_EVAL_SHA},
                                                {"name": "mbpp", "sha256": MBPP_SHA}]}
    manifest["stats"]["rejections"].update({"contaminated:HumanEval": 1,
                                            "contaminated:mbpp": 2})
    manifest["stats"]["instance_rejections"].update({"contaminated:HumanEval": 1,
                                                     "contaminated:mbpp": 2})
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def decontaminated(tmp_path_factory) -> Path:
    return write_decontaminated(tmp_path_factory.mktemp("decontaminated"))


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> Path:
    return write_checked_run(tmp_path_factory.mktemp("checked"))


def stats_of(path: Path) -> dict:
    return collect_statistics(load_run(path), None, None, verb_parser=None)


def by_name(decon: dict) -> dict[str, dict]:
    return {r["name"]: r for r in decon["by_benchmark"]}


def shown(stats: dict) -> dict:
    return {t.title: t for t in tables(stats)}


def console_text(stats: dict) -> str:
    from selfinstruct.terminal import safe_console

    buffer = io.StringIO()
    render_console(stats, safe_console(file=buffer, width=250, force_terminal=False))
    return buffer.getvalue()


# -- a decontaminate output ------------------------------------------------------


def test_a_decontaminate_output_counts_per_set_and_method_from_its_manifest(decontaminated):
    decon = stats_of(decontaminated)["decontamination"]
    assert decon["source"] == "decontaminate"
    assert decon["from"] == "data/alpaca_data.json"
    assert [b["name"] for b in decon["benchmarks"]] == ["HumanEval", "mbpp"]
    assert decon["benchmarks"][0] == DESCRIBE["benchmarks"][0]
    assert decon["methods"] == DESCRIBE["methods"]
    assert (decon["rows_checked"], decon["rows_kept"], decon["examples_dropped"]) == (16, 9, 7)
    assert decon["instructions_rejected"] is None and decon["tasks_rejected"] is None
    per = by_name(decon)
    assert per["HumanEval"]["examples"] == 4 and per["mbpp"]["examples"] == 4
    assert per["HumanEval"]["methods"] == {"ngram": {"instructions": None, "examples": 3},
                                           "rouge": {"instructions": None, "examples": 2}}
    assert per["mbpp"]["methods"]["rouge"]["examples"] == 2
    assert decon["check_notes"][0].startswith("3 evaluation items have fewer than 8 words")


def test_the_sample_comes_from_contaminated_parquet_with_a_fixed_seed(decontaminated):
    decon = stats_of(decontaminated)["decontamination"]
    sample = decon["sample"]
    assert decon["sample_of"] == len(DROPPED) and len(sample) == 5
    rows = {r[0]: r for r in DROPPED}
    ids = [m["id"] for m in sample]
    assert ids == sorted(ids, key=lambda i: int(i.split("-")[1]))  # in file order
    for m in sample:
        _, instruction, bench, item_id, text, method, score, cov, _ = rows[m["id"]]
        assert (m["instruction"], m["benchmark"], m["item_id"], m["item_text"], m["method"],
                m["score"], m["coverage"]) == (instruction, bench, item_id, text, method,
                                               score, cov)
    assert stats_of(decontaminated)["decontamination"]["sample"] == sample  # same draw


def test_a_decontaminate_output_renders_tables_with_hostile_text_escaped(decontaminated):
    stats = stats_of(decontaminated)
    titles = shown(stats)
    per_set = titles["Decontamination: flagged per evaluation set"]
    assert per_set.headers == ("evaluation set", "items", "sha256", "examples dropped")
    assert per_set.rows == [("HumanEval", "164", HUMAN_EVAL_SHA[:12], "4"),
                            ("mbpp", "500", MBPP_SHA[:12], "4")]
    assert "16 rows checked, 9 kept, 7 dropped" in per_set.note
    assert "13-word n-grams" in per_set.note and "above 0.7" in per_set.note
    methods = titles["Decontamination: flagged per evaluation set and method"]
    assert methods.rows == [("HumanEval", "n-gram overlap", "3"), ("HumanEval", "ROUGE-L F1", "2"),
                            ("mbpp", "n-gram overlap", "2"), ("mbpp", "ROUGE-L F1", "2")]
    sample = titles["Decontamination: a sample of matches"]
    assert {t.section for t in tables(stats) if t.title.startswith("Decontamination")} \
        == {DECONTAMINATION_SECTION}
    ngram = next(r for r in sample.rows if r[4] == "n-gram overlap")
    assert ngram[5].endswith(" words") and ngram[6].endswith("%")

    out = console_text(stats)
    for text in ("Decontamination: flagged per evaluation set", "HumanEval/",
                 "a sample of matches", "fixed seed"):
        assert text in out, text
    assert any(m["instruction"] == HOSTILE for m in stats["decontamination"]["sample"])
    assert "\\u001b]0;owned" in out and "[bold red]" in out and "\x1b" not in out


def test_the_report_shows_the_decontamination_section_escaped(decontaminated):
    stats = stats_of(decontaminated)
    stats["decontamination"]["sample"][0]["instruction"] = HOSTILE  # make sure one is shown
    page = render_html(stats, {})
    section = page[page.index('<section id="decontamination">'):]
    section = section[:section.index("</section>")]
    for text in ("<h1>Decontamination</h1>", "Decontamination: flagged per evaluation set",
                 "per evaluation set and method", "a sample of matches", "HumanEval",
                 "&lt;script&gt;alert(1)"):
        assert text in section, text
    assert "<script>alert(1)" not in page
    assert "Overview" not in section  # the main tables stay outside


def test_a_damaged_or_missing_contaminated_parquet_is_a_note(decontaminated, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(decontaminated, damaged)
    path = damaged / CONTAMINATED_FILE
    path.write_bytes(path.read_bytes()[:40])
    stats = stats_of(damaged)
    decon = stats["decontamination"]
    assert decon["sample"] is None and by_name(decon)["HumanEval"]["examples"] == 4
    assert any(CONTAMINATED_FILE in n and "unreadable" in n for n in stats["notes"])
    assert "Decontamination: a sample of matches" not in shown(stats)
    console_text(stats)

    path.unlink()
    stats = stats_of(damaged)
    assert stats["decontamination"]["sample"] is None
    assert any(CONTAMINATED_FILE in n and "missing" in n for n in stats["notes"])

    pq.write_table(pa.table({"id": ["a"], "score": [1.0]}), path)  # readable, wrong columns
    stats = stats_of(damaged)
    assert any("field 'instruction': missing column" in n for n in stats["notes"])


def test_a_malformed_manifest_record_is_a_note_not_a_crash(decontaminated, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(decontaminated, odd)
    manifest = json.loads((odd / MANIFEST).read_text(encoding="utf-8"))
    manifest["stats"]["decontamination"].update(
        by_benchmark=["not", "a", "dict"], rows_checked="many",
        benchmarks=[{"name": "HumanEval", "items": "lots", "sha256": 5}, 7])
    (odd / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    stats = stats_of(odd)
    decon = stats["decontamination"]
    assert decon["benchmarks"] == [{"name": "HumanEval", "path": None, "fields": None,
                                    "items": None, "sha256": None}]
    assert decon["rows_checked"] is None
    assert any("stats.decontamination.by_benchmark" in n for n in stats["notes"])
    assert shown(stats)["Decontamination: flagged per evaluation set"].rows[0][:3] \
        == ("HumanEval", "—", "—")
    console_text(stats)


def test_inspect_json_and_report_of_a_decontaminate_output(decontaminated, tmp_path):
    report = tmp_path / "report"
    result = cli("inspect", str(decontaminated), "--json", "--tokenizer", "none",
                 "--report", str(report))
    assert result.returncode == 0, result.stderr
    decon = json.loads(result.stdout)["decontamination"]
    assert set(decon) == {"source", "from", "benchmarks", "methods", "rows_checked",
                          "rows_kept", "instructions_rejected", "examples_dropped",
                          "tasks_rejected", "by_benchmark", "check_notes", "sample",
                          "sample_of"}
    assert decon["examples_dropped"] == 7 and len(decon["sample"]) == 5
    assert json.loads((report / "stats.json").read_text(encoding="utf-8"))["decontamination"] \
        == decon
    assert '<section id="decontamination">' in (report / "index.html").read_text("utf-8")


# -- a generate run with [decontamination] --------------------------------------


def test_a_checked_run_counts_per_set_and_method_from_the_ledger(checked):
    decon = stats_of(checked)["decontamination"]
    assert decon["source"] == "ledger" and decon["from"] is None
    assert decon["benchmarks"] == [
        {"name": "HumanEval", "path": "evals/HumanEval.jsonl.gz", "fields": ["prompt"],
         "items": None, "sha256": HUMAN_EVAL_SHA},
        {"name": "mbpp", "path": "evals/mbpp.jsonl", "fields": ["text"], "items": None,
         "sha256": MBPP_SHA}]
    assert decon["methods"] == {"ngram": {"n": 13, "min_item_tokens": 8},
                                "rouge": {"threshold": 0.7}}
    assert (decon["instructions_rejected"], decon["examples_dropped"],
            decon["tasks_rejected"]) == (2, 3, 1)
    per = by_name(decon)
    human, mbpp = per["HumanEval"], per["mbpp"]
    assert (human["instructions"], human["examples"], human["tasks"]) == (1, 1, 0)
    assert (mbpp["instructions"], mbpp["examples"], mbpp["tasks"]) == (1, 3, 1)
    assert human["methods"] == {"ngram": {"instructions": 1, "examples": 1},
                                "rouge": {"instructions": 1, "examples": 0}}
    assert mbpp["methods"] == {"ngram": {"instructions": 0, "examples": 1},
                               "rouge": {"instructions": 1, "examples": 2}}
    # every flagged instruction or example is in the sample (5 of them), with the
    # strongest match: ngram before rouge
    sample = decon["sample"]
    assert decon["sample_of"] == 5 and len(sample) == 5
    assert [(m["round"], m["where"], m["benchmark"], m["method"]) for m in sample] == [
        (1, "example 2", "HumanEval", "ngram"), (1, "instruction", "HumanEval", "ngram"),
        (1, "example 0", "mbpp", "rouge"), (1, "example 1", "mbpp", "ngram"),
        (2, "instruction", "mbpp", "rouge")]
    assert sample[1]["coverage"] == 0.9 and sample[1]["item_id"] == "HumanEval/0"
    assert all(m["item_text"] is None for m in sample)  # the ledger keeps no item text
    assert sample[4]["instruction"] == HOSTILE


def test_a_checked_run_renders_tables_and_a_report_section(checked):
    stats = stats_of(checked)
    titles = shown(stats)
    per_set = titles["Decontamination: flagged per evaluation set"]
    assert per_set.headers == ("evaluation set", "items", "sha256", "instructions rejected",
                               "examples dropped", "tasks left with none")
    assert per_set.rows == [("HumanEval", "—", HUMAN_EVAL_SHA[:12], "1", "1", "0"),
                            ("mbpp", "—", MBPP_SHA[:12], "1", "3", "1")]
    assert "2 instructions rejected at the filter, 3 examples dropped, 1 task left" \
        in per_set.note
    methods = titles["Decontamination: flagged per evaluation set and method"]
    assert methods.headers == ("evaluation set", "method", "instructions rejected",
                               "examples dropped")
    assert ("mbpp", "ROUGE-L F1", "1", "2") in methods.rows
    sample = titles["Decontamination: a sample of matches"]
    assert sample.rows[1][:7] == ("round 1, instruction", "Return the sum of a and b.",
                                  "HumanEval", "HumanEval/0", "n-gram overlap", "13 words",
                                  "90.0%")
    assert sample.rows[4][5] == "0.880" and "not in the ledger" in sample.rows[4][7]

    out = console_text(stats)
    assert "\x1b" not in out and "\\u001b]0;owned" in out and "[bold red]" in out
    page = render_html(stats, {})
    section = page[page.index('<section id="decontamination">'):]
    assert "&lt;script&gt;alert(1)" in section and "<script>alert(1)" not in page


def test_strongest_match_follows_the_method_order_then_the_score():
    matches = [match(0, "b", 1, "rouge", 0.99), match(0, "a", 2, "ngram", 13.0),
               match(0, "c", 3, "ngram", 20.0)]
    assert strongest(matches)["benchmark"] == "c"
    assert strongest(matches[:1])["benchmark"] == "b"


def test_without_a_usable_ledger_the_manifest_totals_give_the_counts(checked, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(checked, damaged)
    path = damaged / "ledger" / "round-00002" / "candidates.parquet"
    path.write_bytes(path.read_bytes()[:-4] + b"XXXX")
    stats = stats_of(damaged)
    decon = stats["decontamination"]
    assert decon["source"] == "manifest" and decon["sample"] is None
    per = by_name(decon)
    assert (per["HumanEval"]["instructions"], per["HumanEval"]["examples"]) == (1, 1)
    assert (per["mbpp"]["instructions"], per["mbpp"]["examples"]) == (2, 2)
    assert (decon["instructions_rejected"], decon["examples_dropped"]) == (3, 3)
    assert decon["tasks_rejected"] is None
    assert any("damaged ledger" in n and "from manifest.json" in n for n in stats["notes"])
    titles = shown(stats)
    assert titles["Decontamination: flagged per evaluation set"].headers[3] \
        == "instructions or tasks rejected"
    assert "Decontamination: flagged per evaluation set and method" not in titles
    assert "Decontamination: a sample of matches" not in titles

    shutil.rmtree(damaged / "ledger")
    stats = stats_of(damaged)
    assert stats["decontamination"]["source"] == "manifest"
    assert any("no ledger" in n for n in stats["notes"])


def test_a_ledger_from_before_decontamination_falls_back_to_the_manifest(checked, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(checked, old)
    for number in (1, 2):
        directory = old / "ledger" / f"round-{number:05d}"
        path = directory / "candidates.parquet"
        table = pq.read_table(path).drop_columns(["contamination"])
        pq.write_table(table, path)
        commit = json.loads((directory / "commit.json").read_text(encoding="utf-8"))
        commit["files"]["candidates.parquet"] = file_digest(path)
        (directory / "commit.json").write_text(json.dumps(commit), encoding="utf-8")
    stats = stats_of(old)
    assert stats["decontamination"]["source"] == "manifest"
    assert any("written before decontamination" in n for n in stats["notes"])


# -- runs that were not checked --------------------------------------------------


def test_runs_and_files_not_checked_have_no_decontamination_key(tmp_path):
    run_dir = write_small_run(tmp_path / "plain")
    stats = stats_of(run_dir)
    assert "decontamination" not in stats
    assert not any(t.title.startswith("Decontamination") for t in tables(stats))
    assert 'id="decontamination"' not in render_html(stats, {})
    off = tmp_path / "off"
    shutil.copytree(run_dir, off)
    manifest = json.loads((off / MANIFEST).read_text(encoding="utf-8"))
    manifest["config"]["decontamination"] = {"against": [], "methods": ["ngram", "rouge"]}
    (off / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    assert "decontamination" not in stats_of(off)
    assert decontamination_statistics(load_run(off)) == (None, [])
    records = tmp_path / "alpaca.jsonl"
    records.write_text(json.dumps({"instruction": "Name a colour.", "output": "blue"}) + "\n")
    assert "decontamination" not in stats_of(records)
    result = cli("inspect", str(run_dir), "--json", "--tokenizer", "none")
    assert result.returncode == 0, result.stderr
    assert "decontamination" not in json.loads(result.stdout)


# -- the dataset card ------------------------------------------------------------


def card_body(directory: Path) -> str:
    return (directory / "README.md").read_text(encoding="utf-8").split("---\n", 2)[2]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_the_card_of_a_decontaminate_output_names_the_sets_and_methods(decontaminated,
                                                                        tmp_path):
    run = load_run(decontaminated)
    export_run(run, "alpaca", tmp_path / "out", stats=stats_of(decontaminated))
    body = card_body(tmp_path / "out")
    line = next(x for x in body.splitlines() if x.startswith("- Decontamination"))
    assert "`selfinstruct decontaminate` of `data/alpaca_data.json`" in line
    assert f"`HumanEval` (164 items, sha256 `{HUMAN_EVAL_SHA[:DIGITS]}…`)" in line
    assert f"`mbpp` (500 items, sha256 `{MBPP_SHA[:DIGITS]}…`)" in line
    assert HUMAN_EVAL_SHA[:DIGITS + 1] not in body
    assert "13-word n-grams" in body
    assert "ROUGE-L F1 of instruction + input to an item above 0.7" in body
    assert "Dropped: 7 of 16 examples: `HumanEval` 4, `mbpp` 4" in body
    # the statistics carry the counts but never the sample (it would copy evaluation items)
    assert "Decontamination: flagged per evaluation set" in body
    assert "a sample of matches" not in body and "HumanEval/0" not in body


def test_the_card_of_a_checked_run_says_what_generation_dropped(checked, tmp_path):
    export_run(load_run(checked), "messages", tmp_path / "out", stats=None)
    body = card_body(tmp_path / "out")
    line = next(x for x in body.splitlines() if x.startswith("- Decontamination"))
    assert "during generation" in line and "2 evaluation sets" in line
    assert f"`HumanEval` (sha256 `{HUMAN_EVAL_SHA[:DIGITS]}…`)" in line
    assert ("Dropped: 2 instructions and 3 examples (1 task left with none): "
            "`HumanEval` 1 instruction and 1 example; `mbpp` 1 instruction and 3 examples "
            "(a row matching two sets counts under each)") in body


def test_the_card_escapes_a_hostile_set_name(decontaminated, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(decontaminated, odd)
    manifest = json.loads((odd / MANIFEST).read_text(encoding="utf-8"))
    manifest["stats"]["decontamination"]["benchmarks"][0]["name"] = "evil|set\nnext"
    (odd / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    export_run(load_run(odd), "alpaca", tmp_path / "out", stats=None)
    body = card_body(tmp_path / "out")
    assert "`evil\\|set next`" in body and "evil|set" not in body


def test_the_card_of_an_unchecked_run_says_nothing_new(tmp_path):
    run_dir = write_small_run(tmp_path / "plain")
    export_run(load_run(run_dir), "alpaca", tmp_path / "out", stats=stats_of(run_dir))
    body = card_body(tmp_path / "out")
    assert "Decontamination" not in body and "evaluation set" not in body


def test_non_finite_scores_in_contaminated_parquet_are_shown_as_unknown(decontaminated,
                                                                         tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(decontaminated, odd)
    table = contaminated_table()
    n = table.num_rows
    table = table.set_column(table.schema.get_field_index("score"), "score",
                             pa.array([float("inf")] * n))
    table = table.set_column(table.schema.get_field_index("coverage"), "coverage",
                             pa.array([float("nan")] * n))
    pq.write_table(table, odd / CONTAMINATED_FILE)
    stats = stats_of(odd)
    assert all(m["score"] is None and m["coverage"] is None
               for m in stats["decontamination"]["sample"])
    rows = shown(stats)["Decontamination: a sample of matches"].rows
    assert {(r[5], r[6]) for r in rows} == {("—", "—")}


def test_the_card_from_manifest_totals_says_how_it_counted(checked, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(checked, bare)
    shutil.rmtree(bare / "ledger")
    export_run(load_run(bare), "alpaca", tmp_path / "out", stats=None)
    body = card_body(tmp_path / "out")
    assert ("Dropped: 3 instructions and 3 examples: `HumanEval` 1 instruction and 1 example; "
            "`mbpp` 2 instructions and 2 examples (counted under the strongest match's set "
            "only; instruction counts include tasks left with no example)") in body
