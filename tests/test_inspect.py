"""`selfinstruct inspect`: counts of a fixed run, plain Alpaca-style files, the
paper's diversity analyses, --where filters, the ledger hook, and user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from selfinstruct.dedup import rouge_l
from selfinstruct.analysis.loading import InspectError, load_run
from selfinstruct.analysis.sources import resolve_seeds, resolve_tokenizer
from selfinstruct.analysis.stats import collect_statistics, rouge_to_seeds, token_counts
from selfinstruct.analysis.verbs import heuristic_verb_object, verb_statistics
from selfinstruct.analysis.where import filter_rows
from tests.small_run import SEEDS, TASKS, write_small_run

BIN = Path(sys.executable).parent / "selfinstruct"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps titles at 80 columns in a pipe
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_small_run(tmp_path_factory.mktemp("inspect"))


def test_inspect_json_returns_the_expected_counts(run_dir):
    result = cli("inspect", str(run_dir), "--json", "--sample", "2")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["counts"] == {
        "rows": 9, "tasks": 6, "rounds": 2, "candidates": 40, "kept_instructions": 9,
        "tasks_written": 6, "rows_written": 9, "classification_tasks": 2,
        "classification_share": 0.3333, "empty_inputs": 4, "duplicate_rows": 0}
    assert [(s["stage"], s["count"]) for s in stats["stages"]] == [
        ("candidate instructions", 40), ("kept after instruction filters and ROUGE-L", 9),
        ("tasks with valid instances", 6), ("tasks written", 6), ("instances written (rows)", 9)]
    assert stats["rejections"] == {
        "source": "manifest",
        "instruction": {"blacklist:image": 3, "rouge_l": 20, "too_short": 5, "unparseable": 3},
        "task": {"no_instances": 2, "unparseable_instances": 1},
        "instance": {"duplicate_instance": 2}}
    assert [(r["round"], r["tasks_written"], r["rows"], r["classification_tasks"], r["kept_rate"])
            for r in stats["rounds"]["rows"]] == [(1, 3, 5, 1, None), (2, 3, 4, 1, None)]
    assert any("ledger not available" in n for n in stats["notes"])
    # the run's model directory is a path from the manifest: not followed, said in a note
    assert stats["lengths"]["tokens"] is None
    assert any("comes from manifest.json and is not followed" in n for n in stats["notes"])
    words = stats["lengths"]["words"]
    assert (words["instruction"]["count"], words["input"]["count"], words["output"]["count"]) \
        == (6, 5, 9)
    overlap = stats["rouge_to_seeds"]
    assert overlap["count"] == 6 and overlap["seeds"] == 4
    assert overlap["above_threshold"] == 2  # French vs Spanish (0.8), the two classify tasks
    assert overlap["closest"][0] == {"instruction": "Translate the sentence into French.",
                                     "seed": "Translate the sentence into Spanish.",
                                     "rouge_l": 0.8}
    verbs = stats["verbs"]
    assert verbs["method"].startswith("first-word heuristic")
    assert (verbs["with_verb"], verbs["with_verb_object"]) == (5, 4)
    assert {v["verb"] for v in verbs["top"]} == {"write", "classify", "generate", "translate",
                                                 "explain"}
    assert stats["samples"]["matched"] == 9 and len(stats["samples"]["rows"]) == 2


def test_inspect_tables_show_stages_rejections_and_the_ledger_note(run_dir):
    result = cli("inspect", str(run_dir), "--tokenizer", "none", "--where", "round=2",
                 "--where", "instruction~RAINBOW")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("Counts per stage", "candidate instructions", "blacklist:image",
                 "Per round", "ledger not available", "Self-Instruct Figure 4",
                 "Self-Instruct Figure 3", "r0002-0001-0", "1 of 1 matching"):
        assert text in out, text


def test_rouge_to_seeds_is_the_exact_maximum_over_seeds():
    seeds = [s["instruction"] for s in SEEDS]
    instructions = [t[3] for t in TASKS]
    overlap = rouge_to_seeds(instructions, seeds)
    best = [max(rouge_l(i, s) for s in seeds) for i in instructions]
    assert overlap["max"] == round(max(best), 4)
    assert overlap["mean"] == round(sum(best) / len(best), 2)
    assert sum(overlap["histogram"]["counts"]) == len(instructions)


@pytest.mark.engine
def test_token_lengths_use_the_embedded_models_tokenizer(run_dir):
    from selfinstruct.models import resolve_model

    path = resolve_model(None).path  # converted once and cached
    run = load_run(run_dir)
    source = resolve_tokenizer(run, path)
    stats = collect_statistics(run, None, source, verb_parser=None)
    tokens = stats["lengths"]["tokens"]
    assert tokens["output"]["count"] == 9 and tokens["output"]["max"] > 10
    assert token_counts(source.tokenizer, ["Bonjour."]) == [
        len(source.tokenizer("Bonjour.", add_special_tokens=False)["input_ids"])]


@pytest.mark.engine
def test_the_run_model_is_found_by_its_recorded_hash_not_its_recorded_path():
    from selfinstruct.analysis.sources import trusted_model_path
    from selfinstruct.models import cache_dir, resolve_model

    embedded = resolve_model(None)
    recorded = {"path": "/etc", "source": "embedded", "gguf_sha256": embedded.sha256}
    assert trusted_model_path(recorded) == str(cache_dir() / "models" / embedded.sha256[:16])
    assert trusted_model_path(recorded) == embedded.path
    assert trusted_model_path({"path": "/some/dir", "source": "directory"}) is None
    assert trusted_model_path({"path": "HuggingFaceTB/SmolLM2-135M", "source": "hub"}) \
        == "HuggingFaceTB/SmolLM2-135M"
    assert trusted_model_path({"path": "/abs/../x", "source": "hub"}) is None
    assert trusted_model_path({"path": "x", "source": "gguf", "gguf_sha256": "../.."}) is None


@pytest.mark.parametrize("writer", ["json", "jsonl", "parquet", "csv"])
def test_plain_alpaca_files_are_read_as_a_run_without_manifest(tmp_path, writer):
    records = [{"instruction": "Name a colour.", "input": "", "output": "Red."},
               {"instruction": "Name a colour.", "input": "", "output": "Blue."},
               {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"}]
    path = tmp_path / f"data.{writer}"
    if writer == "json":
        path.write_text(json.dumps(records, indent=2))
    elif writer == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif writer == "parquet":
        pd.DataFrame(records).to_parquet(path)
    else:
        pd.DataFrame(records).to_csv(path, index=False)
    run = load_run(path)
    assert run.kind == "file" and run.manifest is None
    stats = collect_statistics(run, resolve_seeds(run), None, verb_parser=None)
    counts = stats["counts"]
    assert (counts["rows"], counts["tasks"], counts["empty_inputs"]) == (3, 2, 2)
    assert counts["candidates"] is None and counts["classification_tasks"] is None
    assert stats["rejections"]["source"] == "none"
    assert stats["rouge_to_seeds"] is None
    assert any("--seeds" in n for n in stats["notes"])
    seeded = collect_statistics(run, resolve_seeds(run, _seed_file(tmp_path)), None,
                                verb_parser=None)
    assert seeded["rouge_to_seeds"]["count"] == 2


def _seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    return path


def test_self_instruct_jsonl_with_instances_is_exploded(tmp_path):
    run = load_run(_seed_file(tmp_path))
    assert len(run.frame) == 4 and set(run.frame["task_id"]) == {s["id"] for s in SEEDS}


def test_where_filters_by_type():
    frame = pd.DataFrame({"round": [1, 2, 3], "is_classification": [True, False, True],
                          "instruction": ["Write a poem.", "Sum it.", "Write code."]})
    assert filter_rows(frame, ["round>=2"]).index.tolist() == [1, 2]
    assert filter_rows(frame, ["is_classification=true", "instruction~^write"]).index.tolist() \
        == [0, 2]
    assert filter_rows(frame, ["instruction='Sum it.'"]).index.tolist() == [1]
    with pytest.raises(InspectError, match="unknown column 'nope'"):
        filter_rows(frame, ["nope=1"])
    with pytest.raises(InspectError, match="'round' is numeric"):
        filter_rows(frame, ["round>x"])


@pytest.mark.parametrize("text, expected", [
    ("Write a short story about a dragon.", ("write", "story")),
    ("Please generate a list of 5 ideas.", ("generate", "list")),
    ("Tell me the best way to cook rice.", ("tell", "way")),
    ("Come up with a name for a bakery.", ("come up with", "name")),
    ("Explain how a rainbow forms.", ("explain", None)),
    ("What is the capital of France?", (None, None)),
    ("Given a list of numbers, sort them.", (None, None)),
])
def test_verb_heuristic(text, expected):
    assert heuristic_verb_object(text) == expected


def test_verb_statistics_use_a_parser_when_given():
    def token(text, dep, pos, children=()):
        return SimpleNamespace(text=text, lemma_=text.lower(), dep_=dep, pos_=pos,
                               children=list(children))

    def parse(texts):
        for _ in texts:
            obj = token("essay", "dobj", "NOUN")
            yield [token("writes", "ROOT", "VERB", [obj]), obj]

    stats = verb_statistics(["x", "y"], parser=(parse, "fake_model"))
    assert stats["method"].startswith("spaCy dependency parse (fake_model)")
    assert stats["top"] == [{"verb": "writes", "count": 2,
                             "objects": [{"object": "essay", "count": 2}]}]


@pytest.fixture(scope="module")
def ledger_run(tmp_path_factory):
    """A real run with a ledger: the pipeline on the scripted engine of test_pipeline.py,
    with a manifest carrying its stats (as run.py writes it)."""
    from selfinstruct.storage.files import write_json
    from tests.test_pipeline import make_loop

    path = tmp_path_factory.mktemp("ledger")
    loop, _, writer = make_loop(path, n=8)
    stats = loop.run()
    shards = writer.close()
    write_json(path / "manifest.json", {
        "format": "selfinstruct-shards/1", "status": "complete",
        "files": [{"path": s.path, "rows": s.rows, "sha256": s.sha256} for s in shards],
        "model": {"name": "scripted", "path": None, "source": "test"},
        "seeds": {"path": None}, "config": loop.config.to_json_dict(),
        "stats": stats.to_json_dict()})
    return path, stats


def test_the_ledger_gives_rejections_and_per_round_kept_rates(ledger_run):
    path, stats = ledger_run
    result = collect_statistics(load_run(path), None, None, verb_parser=None)
    rejections = result["rejections"]
    assert rejections["source"] == "ledger"
    assert {**rejections["instruction"], **rejections["task"]} == dict(stats.rejections)
    assert "over_target" not in rejections["instruction"]
    assert rejections["instance"] == dict(stats.instance_rejections)
    rounds = result["rounds"]["rows"]
    assert result["rounds"]["source"] == "ledger" and len(rounds) == stats.rounds
    assert sum(r["candidates"] for r in rounds) == stats.candidates
    assert sum(r["kept"] for r in rounds) == stats.kept_instructions
    assert all(r["kept_rate"] == round(r["kept"] / r["candidates"], 4) for r in rounds)
    assert sum(r["tasks_written"] for r in rounds) == stats.tasks_written == 8
    assert not any("ledger" in n for n in result["notes"])
    funnel = {s["stage"]: s["count"] for s in result["stages"]}
    assert funnel["tasks with valid instances"] - stats.rejections.get("over_target", 0) \
        == funnel["tasks written"]


def test_a_damaged_ledger_falls_back_to_the_manifest(ledger_run, tmp_path):
    import shutil

    path, stats = ledger_run
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    candidates = copy / "ledger" / "round-00001" / "candidates.parquet"
    candidates.write_bytes(candidates.read_bytes()[:-10] + b"0123456789")
    result = collect_statistics(load_run(copy), None, None, verb_parser=None)
    assert result["rejections"]["source"] == "manifest"
    assert any("damaged ledger" in n for n in result["notes"])
    assert {**result["rejections"]["instruction"], **result["rejections"]["task"]} \
        == dict(stats.rejections)


@pytest.mark.fast_cases(lambda make, expected: expected in (
    "no manifest.json", "b.json (record 1): field 'instruction': expected a string",
    "unknown column 'colour'"))
@pytest.mark.parametrize("make, expected", [
    (lambda t: [str(t / "absent")], "absent: no such file or directory"),
    (lambda t: [str(t)], "no manifest.json"),
    (lambda t: [str((t / "a.json").write_text('[{"instruction": "x"}]') and t / "a.json")],
     "a.json: field 'output': missing column"),
    (lambda t: [str((t / "b.json").write_text('[{"instruction": 3, "output": "y"}]')
                    and t / "b.json")],
     "b.json (record 1): field 'instruction': expected a string"),
    (lambda t: [str((t / "c.txt").write_text("x") and t / "c.txt")], "unsupported format '.txt'"),
    (lambda t: [str(write_small_run(t / "r")), "--where", "colour=red"],
     "unknown column 'colour'"),
    (lambda t: [str(write_small_run(t / "r")), "--seeds", str(t / "none.jsonl")],
     "none.jsonl: seed file not found"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, make, expected):
    result = cli("inspect", *make(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert expected in lines[0]


@pytest.mark.slow
def test_shared_alpaca_file_inspects(shared_data):
    run = load_run(shared_data / "alpaca_data.json")
    stats = collect_statistics(run, None, None, verb_parser=None)
    assert stats["counts"]["rows"] == 52002
    assert stats["verbs"]["top"][0]["verb"] == "generate"


def test_a_run_without_rows_still_inspects_and_reports(tmp_path):
    run_dir = write_small_run(tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for entry in manifest["files"]:
        (run_dir / entry["path"]).unlink()
    manifest["files"] = []
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    run = load_run(run_dir)
    stats = collect_statistics(run, resolve_seeds(run), None, verb_parser=None)
    assert stats["counts"]["rows"] == 0 and stats["rouge_to_seeds"]["count"] == 0
    from selfinstruct.analysis.report import write_report

    written = write_report(stats, tmp_path / "report")
    assert {"index", "stats", "lengths_words", "rejections"} <= set(written)


def test_the_html_report_shows_markup_in_the_data_as_text(tmp_path):
    from html.parser import HTMLParser

    from selfinstruct.analysis.report import write_report

    attack = '<script>alert("x")</script><img src=x onerror=alert(1)> & \'q\' {{ 7*7 }}'
    folder = tmp_path / "<b>odd"
    folder.mkdir()
    path = folder / "data<i>.jsonl"
    records = [{"instruction": "Say " + attack, "input": "in " + attack, "output": attack},
               {"instruction": "Name a colour.", "input": "", "output": "blue"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = load_run(path)
    stats = collect_statistics(run, None, None, sample=5, verb_parser=None)
    page = write_report(stats, tmp_path / "report")["index"].read_text(encoding="utf-8")

    class Elements(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.text = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

        def handle_data(self, data):
            self.text.append(data)

    parsed = Elements()
    parsed.feed(page)
    tags = [tag for tag, _ in parsed.tags]
    assert tags.count("script") == 1 and "b" not in tags and "i" not in tags
    assert [attrs["src"][:22] for tag, attrs in parsed.tags if tag == "img"] \
        == ["data:image/png;base64,"] * tags.count("img")
    assert not any("onerror" in attrs for _, attrs in parsed.tags)
    text = "".join(parsed.text)
    assert text.count("Say " + attack) == 1 and text.count("in " + attack) == 1
    assert f"selfinstruct inspect: {path}" in text and "{{ 7*7 }}" in text
