"""Real crashes: `selfinstruct generate` on the vLLM CPU engine, killed with SIGKILL at
named points, resumed each time; then `refilter` on the result.

On CPU vLLM is not batch-invariant, so the properties checked are the ones that
hold whatever the engine: nothing kept is lost, nothing is duplicated, committed
rounds are never regenerated, and the output is consistent with its manifest.
(Equality with an uninterrupted run, which needs a per-request-deterministic
engine, is proven in test_durability.py.)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from selfinstruct.storage.ledger import CRASH_ENV, RunDirectory
from selfinstruct.seeds import default_seeds_dir
from .engine_sizes import engine_test_config

BIN = Path(sys.executable).parent / "selfinstruct"

pytestmark = pytest.mark.engine


def generate(seeds: Path, out: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [str(BIN), "generate", "--config", str(engine_test_config(seeds.parent)),
         "--seeds", str(seeds), "--num-instructions", "10",
         "--output", str(out), "--seed", "11", "--prompts-per-round", "4",
         "--max-tokens", "200", "--shard-size", "4"],
        capture_output=True, text=True, timeout=900, env=env)


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


@pytest.fixture(scope="module")
def crashed_and_resumed(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    seeds = base / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    out = base / "run"
    runs, snapshots = [], []
    for point in ("round-1:after-instructions", "round-1:before-commit",
                  "round-2:before-manifest", None):
        result = generate(seeds, out, point)
        runs.append(result)
        snapshots.append({d.name: digests(d) for d in sorted((out / "ledger").iterdir())
                          if (d / "commit.json").is_file()})
    return out, runs, snapshots


def test_each_crash_killed_the_process_and_the_last_run_finished(crashed_and_resumed):
    _, runs, _ = crashed_and_resumed
    assert [r.returncode for r in runs[:3]] == [-signal.SIGKILL] * 3, \
        [r.stderr[-2000:] for r in runs]
    assert runs[3].returncode == 0, runs[3].stderr[-3000:]
    assert all("Resuming the run" in r.stderr for r in runs[1:])


def test_committed_rounds_are_never_rewritten(crashed_and_resumed):
    _, _, snapshots = crashed_and_resumed
    for earlier, later in itertools.pairwise(snapshots):
        for round_name, files in earlier.items():
            assert later[round_name] == files, f"{round_name} changed after it was committed"
    assert "round-00001" in snapshots[2]


def test_nothing_lost_nothing_duplicated(crashed_and_resumed):
    out, _, _ = crashed_and_resumed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["tasks"] == 10
    rows = []
    for entry in manifest["files"]:
        path = out / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        rows += pq.read_table(path).to_pylist()
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("data/*.parquet")) == \
        sorted(f["path"] for f in manifest["files"])
    assert len(rows) == manifest["rows"] and manifest["rows_pending"] == 0
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["task_id"] for r in rows}) == 10
    ledger = RunDirectory(out)
    recorded = [r for n in range(1, ledger.committed_rounds() + 1)
                for r in ledger.committed_rows(n, ledger.read_commit(n))]
    assert recorded == rows  # every kept example traces to the ledger, in order
    assert not list(out.rglob("*.tmp"))


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "out"
    holder = RunDirectory(out)
    holder.lock()
    try:
        seeds = default_seeds_dir()
        result = subprocess.run([str(BIN), "generate", "--seeds", str(seeds), "--output",
                                 str(out), "--model", str(model)],
                                capture_output=True, text=True, timeout=60)
    finally:
        holder.unlock()
    assert result.returncode == 2
    assert f"another selfinstruct run (pid {os.getpid()})" in result.stderr


def examples(directory: Path) -> list[tuple[str, str, str]]:
    return [(r["instruction"], r["input"], r["output"])
            for f in sorted(directory.glob("data/*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_refilter_cli_original_settings_and_stricter(crashed_and_resumed, tmp_path):
    out = crashed_and_resumed[0]
    same = subprocess.run([str(BIN), "refilter", str(out), "-o", str(tmp_path / "same")],
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0, same.stderr
    assert examples(tmp_path / "same") == examples(out)
    strict = subprocess.run([str(BIN), "refilter", str(out), "-o", str(tmp_path / "strict"),
                             "--rouge-threshold", "0.3"], capture_output=True, text=True,
                            timeout=120)
    assert strict.returncode == 0, strict.stderr
    assert set(examples(tmp_path / "strict")) <= set(examples(out))
    assert len(examples(tmp_path / "strict")) < len(examples(out))
