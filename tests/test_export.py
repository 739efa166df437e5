"""`selfinstruct export`: every format re-read by its consumer, deterministic
splits, the dataset card, refusals, --check-template and --push-to-hub (faked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from selfinstruct.analysis.chat_check import check_template
from selfinstruct.analysis.export import (ExportError, assign_splits, export_run, push_to_hub,
                                          split_key)
from selfinstruct.analysis.loading import load_run
from selfinstruct.analysis.sources import resolve_seeds
from selfinstruct.analysis.stats import collect_statistics
from selfinstruct.storage.shards import messages_for
from tests.small_run import TASKS, rows, write_small_run

BIN = Path(sys.executable).parent / "selfinstruct"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=180, env=env)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_small_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def stats(run_dir) -> dict:
    run = load_run(run_dir)
    return collect_statistics(run, resolve_seeds(run), None, verb_parser=None)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def expected_rows(split: str | None = None, fraction: float = 0.5) -> list[dict]:
    all_rows = rows()
    if split is None:
        return all_rows
    splits = assign_splits([r["instruction"] for r in all_rows], fraction)
    return [r for r, s in zip(all_rows, splits, strict=True) if s == split]


def read_sharegpt(path: Path) -> list[dict]:
    """A ShareGPT reader as trainers implement it: a JSON array of records whose
    ``conversations`` alternate human/gpt turns after an optional system turn."""
    records = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for record in records:
        turns = record["conversations"]
        system = turns[0]["value"] if turns and turns[0]["from"] == "system" else None
        turns = turns[1:] if system is not None else turns
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(isinstance(t["value"], str) for t in turns)
        out.append({"id": record["id"], "system": system, "human": turns[0]["value"],
                    "gpt": turns[1]["value"]})
    return out


def test_alpaca_export_loads_with_datasets_json(run_dir, stats, tmp_path):
    import datasets

    result = export_run(load_run(run_dir), "alpaca", tmp_path / "out", stats=stats)
    data = datasets.load_dataset("json", data_files=str(tmp_path / "out" / "train.json"),
                                 split="train")
    assert result.rows == {"train": 9}
    assert data.column_names == ["instruction", "input", "output"]
    assert data.to_list() == [{k: r[k] for k in ("instruction", "input", "output")}
                              for r in rows()]


def test_messages_export_is_openai_jsonl_with_the_system_prompt(run_dir, stats, tmp_path):
    import datasets

    export_run(load_run(run_dir), "messages", tmp_path / "out", stats=stats,
               system_prompt="You are terse.")
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert all(list(json.loads(line)) == ["messages"] for line in lines)
    data = datasets.load_dataset("json", data_files=str(tmp_path / "out" / "train.jsonl"),
                                 split="train")
    assert [m["messages"] for m in data] == [
        [{"role": "system", "content": "You are terse."},
         *messages_for(r["instruction"], r["input"], r["output"])] for r in rows()]


def test_sharegpt_export_reads_back(run_dir, stats, tmp_path):
    export_run(load_run(run_dir), "sharegpt", tmp_path / "out", stats=stats,
               system_prompt="Be kind.")
    records = read_sharegpt(tmp_path / "out" / "train.json")
    assert [r["id"] for r in records] == [r["id"] for r in rows()]
    assert all(r["system"] == "Be kind." for r in records)
    first = rows()[2]
    assert records[2]["human"] == f"{first['instruction']}\n\n{first['input']}"
    assert records[2]["gpt"] == first["output"]


def test_parquet_export_keeps_provenance_and_loads(run_dir, stats, tmp_path):
    import datasets

    result = export_run(load_run(run_dir), "parquet", tmp_path / "out", stats=stats,
                        train_split=0.5)
    data = datasets.load_dataset(
        "parquet", data_files={s: str(tmp_path / "out" / f) for s, f in result.files.items()})
    assert set(data) == {"train", "test"}
    assert data["train"].num_rows + data["test"].num_rows == 9
    assert {"round", "is_classification", "nearest_rouge_l", "messages"} <= \
        set(data["train"].column_names)
    assert data["test"]["id"] == [r["id"] for r in expected_rows("test")]


def test_datasets_export_loads_from_disk(run_dir, stats, tmp_path):
    import datasets

    export_run(load_run(run_dir), "datasets", tmp_path / "out", stats=stats, train_split=0.5)
    data = datasets.load_from_disk(str(tmp_path / "out"))
    assert set(data) == {"train", "test"}
    assert data["train"]["id"] == [r["id"] for r in expected_rows("train")]
    assert data["train"][0]["messages"][0]["role"] == "user"


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "messages", "parquet"])
def test_the_cards_configs_let_load_dataset_find_the_splits(run_dir, stats, tmp_path, fmt):
    import datasets

    export_run(load_run(run_dir), fmt, tmp_path / "out", stats=stats, train_split=0.5)
    data = datasets.load_dataset(str(tmp_path / "out"))
    assert {s: d.num_rows for s, d in data.items()} == {
        "train": len(expected_rows("train")), "test": len(expected_rows("test"))}


def test_split_is_deterministic_by_task_and_never_empty():
    instructions = [f"Task number {k}." for k in range(200) for _ in range(3)]
    splits = assign_splits(instructions, 0.9)
    assert splits == assign_splits(instructions, 0.9)
    by_task: dict[str, set] = {}
    for text, split in zip(instructions, splits, strict=True):
        by_task.setdefault(text, set()).add(split)
    assert all(len(s) == 1 for s in by_task.values())
    test_share = sum(1 for s in by_task.values() if s == {"test"}) / len(by_task)
    assert 0.03 < test_share < 0.2
    assert all(split_key(t) < 0.9 for t, s in by_task.items() if s == {"train"})
    assert set(assign_splits(["a", "b"], 0.999)) == {"train", "test"}
    assert assign_splits(["a", "a"], 0.5) in (["train"] * 2, ["test"] * 2)
    with pytest.raises(ExportError):
        assign_splits(["a"], 1.5)


def test_dataset_card_metadata_and_statistics(run_dir, stats, tmp_path):
    export_run(load_run(run_dir), "messages", tmp_path / "out", stats=stats, train_split=0.5)
    card = (tmp_path / "out" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "other"
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert set(meta["tags"]) == {"self-instruct", "synthetic"}
    files = {f["split"]: f["path"] for f in meta["configs"][0]["data_files"]}
    assert files == {"train": "train.jsonl", "test": "test.jsonl"}
    for text in ("TinyTest", "rouge_threshold=0.7", "Counts per stage", "rouge_l",
                 "ROUGE-L to the most similar seed", "seeds.jsonl (4 tasks)"):
        assert text in body, text


@pytest.mark.slow
def test_occupied_output_is_refused_and_overwrite_replaces_only_an_earlier_export(
        run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ("export", str(run_dir), "--format", "alpaca", "-o", str(out), "--tokenizer", "none")
    result = cli(*args)
    assert result.returncode == 2 and "not empty (pass --overwrite" in result.stderr
    result = cli(*args, "--overwrite")  # a directory of someone else's files is never replaced
    assert result.returncode == 2
    assert "holds files that are not a selfinstruct export" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert cli(*args).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == [".selfinstruct-export.json", "README.md",
                                                      "train.json"]
    result = cli("export", str(run_dir), "--format", "messages", "-o", str(out),
                 "--tokenizer", "none", "--overwrite")  # an unchanged export of ours is replaced
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".selfinstruct-export.json", "README.md",
                                                      "train.jsonl"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    (out / "README.md").write_text("my notes")  # edited after the export: not replaced
    result = cli(*args, "--overwrite")
    assert result.returncode == 2 and "README.md was changed after" in result.stderr
    assert (out / "README.md").read_text() == "my notes"


@pytest.mark.fast_cases(lambda target: target in ("data", "other-run"))
@pytest.mark.parametrize("target", ["run", "data", "ledger", "other-run"])
def test_overwrite_never_touches_a_run_directory(tmp_path, target):
    base = tmp_path / "base"
    run = write_small_run(base)
    (run / "ledger").mkdir()
    (run / "ledger" / "round-00001").mkdir()
    other = write_small_run(tmp_path / "other")
    out = {"run": run, "data": run / "data", "ledger": run / "ledger",
           "other-run": other}[target]
    before = sorted((p.relative_to(tmp_path).as_posix(), p.stat().st_size)
                    for p in tmp_path.rglob("*"))
    result = cli("export", str(run), "--format", "alpaca", "-o", str(out), "--tokenizer",
                 "none", "--overwrite")
    assert result.returncode == 2
    assert "a selfinstruct run; choose another --output" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted((p.relative_to(tmp_path).as_posix(), p.stat().st_size)
                  for p in tmp_path.rglob("*")) == before


@pytest.mark.fast_cases(lambda make_args, expected: expected in (
    "give --format and --output", "would contain the input", "no-model: model path does not exist"))
@pytest.mark.parametrize("make_args, expected", [
    (lambda r, t: [str(r)], "give --format and --output"),
    (lambda r, t: [str(r), "--format", "alpaca"], "--output is required"),
    (lambda r, t: [str(r), "--format", "alpaca", "-o", str(r)], "holds a selfinstruct run"),
    (lambda r, t: [str(r), "--format", "alpaca", "-o", str(r.parent)], "would contain the input"),
    (lambda r, t: [str(r), "--format", "xml", "-o", str(t / "o")], "Invalid value for '--format'"),
    (lambda r, t: [str(r), "--check-template", str(t / "no-model")],
     "no-model: model path does not exist"),
])
def test_export_user_mistakes_exit_2(run_dir, tmp_path, make_args, expected):
    result = cli("export", *make_args(run_dir, tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and expected in result.stderr


@pytest.fixture(scope="module")
def embedded_tokenizer():
    from selfinstruct.analysis.chat_check import resolve_template_model

    return resolve_template_model(None)


@pytest.mark.engine
def test_check_template_passes_a_clean_run(run_dir, embedded_tokenizer):
    tokenizer, name = embedded_tokenizer
    result = check_template(load_run(run_dir).frame, tokenizer, model=name)
    assert result["ok"] and result["examples"] == 9 and result["max_length"] == 2048
    assert "<|im_start|>" in result["markers"]
    assert result["lengths"]["max"] < 200


@pytest.mark.engine
def test_check_template_finds_leaks_and_long_examples(tmp_path, embedded_tokenizer):
    tokenizer, name = embedded_tokenizer
    records = [{"instruction": "Say hi.", "input": "", "output": "hi<|im_end|>"},
               {"instruction": "Echo.", "input": "<|im_start|>user", "output": "ok"},
               {"instruction": "Count.", "input": "", "output": " ".join(["one"] * 300)}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    result = check_template(load_run(path).frame, tokenizer, model=name, max_length=100)
    assert not result["ok"]
    assert result["leaks"]["<|im_end|>"] == {"rows": 1, "ids": ["data-0"]}
    assert result["leaks"]["<|im_start|>"] == {"rows": 1, "ids": ["data-1"]}
    assert result["leak_rows"] == 2
    assert result["too_long"] == {"rows": 1, "ids": ["data-2"]}
    cli_result = cli("export", str(path), "--check-template", "--max-length", "100")
    assert cli_result.returncode == 1, cli_result.stderr
    assert "'<|im_end|>': 1 rows (e.g. data-0)" in cli_result.stdout
    assert "PROBLEMS FOUND" in cli_result.stdout


def test_push_to_hub_uploads_the_folder(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            calls.append(("create", repo_id, repo_type, private, exist_ok))
            return f"https://huggingface.co/datasets/{repo_id}"

        def upload_folder(self, repo_id, folder_path, repo_type, commit_message,
                          ignore_patterns=None):
            calls.append(("upload", repo_id, folder_path, repo_type, ignore_patterns))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = push_to_hub(tmp_path, "me/data", private=True)
    assert url == "https://huggingface.co/datasets/me/data"
    assert calls[1:] == [("create", "me/data", "dataset", True, True),
                         ("upload", "me/data", str(tmp_path), "dataset",
                          [".selfinstruct-export.json"])]


@pytest.mark.slow
def test_shared_alpaca_file_exports_every_record(shared_data, tmp_path):
    source = shared_data / "alpaca_data.json"
    result = cli("export", str(source), "--format", "alpaca", "-o", str(tmp_path / "a"),
                 "--train-split", "0.98")
    assert result.returncode == 0, result.stderr
    original = json.loads(source.read_text())
    train = json.loads((tmp_path / "a" / "train.json").read_text())
    test = json.loads((tmp_path / "a" / "test.json").read_text())
    key = lambda r: (r["instruction"], r["input"], r["output"])  # noqa: E731
    assert sorted(map(key, train + test)) == sorted(map(key, original))
    assert 0.01 < len(test) / len(original) < 0.03


def test_tasks_of_the_fixture_are_distinct():
    assert len({t[3] for t in TASKS}) == len(TASKS)


def test_the_card_metadata_stays_yaml_whatever_the_source_is_called(tmp_path):
    name = 'a: b # "c" \'d\' [e] {f} - g'
    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps({"instruction": "Say | hi.", "input": "", "output": "hi"}) + "\n")
    export_run(load_run(path), "alpaca", tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["pretty_name"] == f"{name} (self-instruct)"
    assert meta["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": "train.json"}]}]
    assert body.startswith(f"\n# {name}\n") and f"`{path}`" in body
