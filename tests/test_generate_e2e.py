"""End to end: `selfinstruct generate` on the real vLLM CPU engine with the embedded model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from selfinstruct.seeds import default_seeds_dir, load_seed_tasks
from selfinstruct.storage.shards import SCHEMA
from .engine_sizes import engine_test_config

BIN = Path(sys.executable).parent / "selfinstruct"

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A small real run: 12 bundled seeds, 2 new tasks wanted, 16 prompts a round."""
    base = tmp_path_factory.mktemp("e2e")
    seeds = base / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    out = base / "run"
    result = subprocess.run(
        [str(BIN), "generate", "--config", str(engine_test_config(base)),
         "--seeds", str(seeds), "--num-instructions", "2",
         "--output", str(out), "--seed", "7", "--prompts-per-round", "16",
         "--max-tokens", "256", "--max-rounds", "4", "--shard-size", "3"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "new tasks written" in result.stdout
    return out


def test_manifest_lists_every_shard_with_its_hash(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["files"], "no shards written"
    on_disk = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.glob("data/*.parquet"))
    assert on_disk == sorted(f["path"] for f in manifest["files"])
    for entry in manifest["files"]:
        data = (run_dir / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert pq.read_metadata(run_dir / entry["path"]).num_rows == entry["rows"] <= 3
    assert manifest["rows"] == sum(f["rows"] for f in manifest["files"])
    assert manifest["config"]["generation"]["prompts_per_round"] == 16
    assert manifest["versions"]["vllm"]
    assert manifest["model"]["name"] == "SmolLM2-135M-Instruct"
    assert manifest["stats"]["engine"]["output_tokens"] > 0


def test_at_least_one_new_instruction_with_schema_and_provenance(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["tasks"] == 2
    rows = []
    for entry in manifest["files"]:
        table = pq.read_table(run_dir / entry["path"])
        assert table.schema.equals(SCHEMA)
        metadata = pq.ParquetFile(run_dir / entry["path"]).metadata
        assert metadata.row_group(0).column(0).compression == "ZSTD"
        rows += table.to_pylist()
    seed_instructions = {t.instruction for t in load_seed_tasks(default_seeds_dir())}
    for row in rows:
        assert row["instruction"] not in seed_instructions
        assert row["output"].strip()
        user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        assert row["messages"] == [{"role": "user", "content": user},
                                   {"role": "assistant", "content": row["output"]}]
        assert row["model"] == "SmolLM2-135M-Instruct"
        assert len(row["prompt_task_ids"]) == 8
        assert row["nearest_rouge_l"] is None or row["nearest_rouge_l"] <= 0.7


def test_shards_load_with_datasets(run_dir):
    import datasets

    data = datasets.load_dataset("parquet", data_files=str(run_dir / "data" / "*.parquet"),
                                 split="train")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert data.num_rows == manifest["rows"] >= 2
    assert set(data.column_names) == set(SCHEMA.names)


def test_no_command_changes_a_real_run_directory(run_dir, tmp_path):
    """Issue 10: every command, whatever its flags, leaves a real vLLM run as it was."""
    import shutil

    from .test_safety_runs import assert_commands_change_nothing, tree_digests

    copy = tmp_path / "copy" / "run"
    shutil.copytree(run_dir.parent, copy.parent, symlinks=True)
    before = tree_digests(copy)
    results = assert_commands_change_nothing(copy, tmp_path / "elsewhere")
    assert tree_digests(copy) == before
    assert all(result.returncode == 0 for args, result in results
               if args[0] in ("inspect", "export") and str(copy) not in " ".join(args[2:]))
