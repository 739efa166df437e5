"""The Alpaca recipe end to end on the real vLLM CPU engine with the embedded model:
a run killed with SIGKILL before its first commit, resumed, then refused with the
other recipe, refiltered without an engine, and loaded with `datasets`.

Sized for the slow CPU (tests/engine_sizes.py): 4 prompts a round, 256 tokens each.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from selfinstruct.seeds import default_seeds_dir
from selfinstruct.storage.ledger import CRASH_ENV

BIN = Path(sys.executable).parent / "selfinstruct"

pytestmark = pytest.mark.engine


def generate(out: Path, *extra: str, crash_at: str | None = None
             ) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [str(BIN), "generate", "--recipe", "alpaca", "--seeds", str(default_seeds_dir()),
         "--num-instructions", "2", "--output", str(out), "--seed", "5",
         "--prompts-per-round", "4", "--max-tokens", "256", "--max-rounds", "2", *extra],
        capture_output=True, text=True, timeout=900, env=env)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("alpaca") / "run"
    crashed = generate(out, crash_at="round-1:before-commit")
    stage = out / "ledger" / "round-00001" / "requests-examples.parquet"
    before = digest(stage) if stage.is_file() else None
    finished = generate(out)
    return out, crashed, finished, before


def test_the_killed_run_resumes_without_asking_its_round_again(resumed):
    out, crashed, finished, before = resumed
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Resuming the run" in finished.stderr
    # the completions recorded before the kill are the ones the resumed run used
    stage = out / "ledger" / "round-00001" / "requests-examples.parquet"
    assert before is not None and digest(stage) == before
    assert (out / "ledger" / "round-00001" / "commit.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["recipe"] == "alpaca"
    assert manifest["identity"]["prompts_sha256"].keys() == {"alpaca_generation"}
    by_stage = manifest["stats"]["engine"]["by_stage"]
    assert set(by_stage) == {"examples"}  # no classification, no instance generation
    assert by_stage["examples"]["requests"] == 4 * manifest["stats"]["rounds"]


def test_its_shards_are_whole_alpaca_examples_that_load_with_datasets(resumed):
    out = resumed[0]
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest["rows"] == 0:
        pytest.skip("the 135M model wrote no task that passed the filters in 2 rounds")
    import datasets

    files = [str(out / f["path"]) for f in manifest["files"]]
    data = datasets.load_dataset("parquet", data_files=files, split="train")
    assert data.num_rows == manifest["rows"] == manifest["tasks"]  # one instance a task
    for row in data:
        assert row["instruction"] and row["output"]
        assert row["is_classification"] is None
        assert len(row["prompt_task_ids"]) == 3
        assert row["messages"][-1] == {"role": "assistant", "content": row["output"]}
    seed_ids = {json.loads(line)["id"] for line in
                (default_seeds_dir() / "seed_tasks.jsonl").read_text().splitlines()}
    assert {i for row in data for i in row["prompt_task_ids"]} <= seed_ids


def test_a_resume_with_the_other_recipe_is_refused(resumed):
    out = resumed[0]
    result = subprocess.run(
        [str(BIN), "generate", "--seeds", str(default_seeds_dir()), "--num-instructions", "2",
         "--output", str(out), "--seed", "5", "--prompts-per-round", "4",
         "--max-tokens", "256", "--max-rounds", "2"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "recipe = 'alpaca', not 'self-instruct'" in result.stderr
    assert "Traceback" not in result.stderr


def test_refilter_rederives_the_run_without_an_engine(resumed, tmp_path):
    out = resumed[0]
    same = subprocess.run([str(BIN), "refilter", str(out), "-o", str(tmp_path / "same")],
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0, same.stderr[-2000:]

    def examples(directory: Path) -> list[tuple[str, str, str]]:
        return [(r["instruction"], r["input"], r["output"])
                for f in sorted(directory.glob("data/*.parquet"))
                for r in pq.read_table(f).to_pylist()]

    assert examples(tmp_path / "same") == examples(out)
