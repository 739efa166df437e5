"""Quality scoring on the real vLLM CPU engine with the embedded model.

A small `generate --judge` run is killed (SIGKILL) right after its first judging
batch is recorded and then resumed; `refilter --min-quality` re-cuts it from the
recorded verdicts; `score` judges a slice of the real Alpaca file and re-cuts it.
The 135M model is a poor judge: these tests check the mechanics (every row
scored or given a reason, every judge request recorded, nothing asked twice),
not the scores' values.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from selfinstruct.quality import QUALITY_COLUMNS, column, example_key
from selfinstruct.seeds import default_seeds_dir
from selfinstruct.storage.ledger import CRASH_ENV

from .engine_sizes import engine_test_config

BIN = Path(sys.executable).parent / "selfinstruct"

pytestmark = pytest.mark.engine

JUDGE_TOKENS = "160"
"""Judge answers' token limit here: the slow case (tests/engine_sizes.py)."""


def selfinstruct(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=900,
                          env=env)


def rows_of(run: Path) -> list[dict]:
    manifest = json.loads((run / "manifest.json").read_text())
    return [r for f in manifest["files"] for r in pq.read_table(run / f["path"]).to_pylist()]


def judging_records(run: Path) -> dict[str, dict]:
    return {r["key"]: r for f in sorted(run.glob("ledger/round-*/requests-judging.parquet"))
            for r in pq.read_table(f).to_pylist()}


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    base = tmp_path_factory.mktemp("judged")
    seeds = base / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    config = engine_test_config(base)
    with open(config, "a", encoding="utf-8") as toml:
        toml.write(f"\n[quality]\nmax_tokens = {JUDGE_TOKENS}\n")
    out = base / "run"
    args = ("generate", "--config", str(config), "--seeds", str(seeds), "--judge",
            "--num-instructions", "3", "--output", str(out), "--seed", "5",
            "--prompts-per-round", "4", "--max-tokens", "160")
    crashed = selfinstruct(*args, crash_at="round-1:after-judging")
    first = out / "ledger/round-00001/requests-judging.parquet"
    after_crash = first.read_bytes() if first.is_file() else b""
    resumed = selfinstruct(*args)
    return out, crashed, resumed, after_crash, base


def test_a_kill_after_judging_resumes_without_judging_again(judged):
    out, crashed, resumed, after_crash, _ = judged
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert after_crash, "the judging batch was recorded before the kill"
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming the run" in resumed.stderr
    first = out / "ledger/round-00001/requests-judging.parquet"
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(after_crash).digest(), \
        "round 1's judge answers were kept, not asked again"


def test_every_row_has_a_score_or_a_reason_and_every_judge_request_is_recorded(judged):
    out, *_ = judged
    rows = rows_of(out)
    assert rows
    records = judging_records(out)
    for row in rows:
        assert set(QUALITY_COLUMNS) <= set(row)
        key = example_key(row["instruction"], row["input"], row["output"])
        assert key in records
        if row[column("overall")] is None:
            assert row["quality_reason"] in ("judge_unparseable", "prompt_too_long")
        else:
            assert 1 <= row[column("overall")] <= 5 and row["quality_reason"] is None
    manifest = json.loads((out / "manifest.json").read_text())
    by_stage = manifest["stats"]["engine"]["by_stage"]
    assert by_stage["judging"]["requests"] == len(records)
    assert by_stage["judging"]["output_tokens"] > 0
    assert manifest["stats"]["quality"]["judged"] >= len(rows)
    # the judge answered in JSON (structured outputs): most answers parse
    verdicts = manifest["stats"]["quality"]["verdicts"]
    print("verdicts of the embedded judge:", verdicts,
          "overall scores:", sorted(r[column("overall")] or 0 for r in rows))
    assert verdicts.get("ok", 0) >= 1


def test_refilter_min_quality_is_a_subset_without_an_engine(judged):
    out, *_, base = judged
    rows = rows_of(out)
    scores = sorted(r[column("overall")] for r in rows if r[column("overall")] is not None)
    cut = scores[len(scores) // 2] if scores else 1.0
    started = time.perf_counter()
    result = selfinstruct("refilter", str(out), "--output", str(base / "cut"),
                          "--min-quality", f"{cut:g}")
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Loading" not in result.stderr and seconds < 60, "no engine was started"
    kept = rows_of(base / "cut")
    assert all(r[column("overall")] is not None and r[column("overall")] >= cut for r in kept)
    assert {r["id"] for r in kept} <= {r["id"] for r in rows}
    assert len(kept) == sum(1 for s in scores if s >= cut)


def test_score_judges_a_slice_of_alpaca_and_recuts_without_the_model(tmp_path, shared_data):
    out = tmp_path / "scored"
    args = ("score", str(shared_data / "alpaca_data.json"), "--output", str(out),
            "--limit", "6", "--chunk-size", "3", "--max-tokens", JUDGE_TOKENS)
    result = selfinstruct(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = rows_of(out)
    assert len(rows) == 6 and len(judging_records(out)) == 6
    assert sorted(p.name for p in (out / "ledger").iterdir()) == ["round-00001", "round-00002"]
    assert all(r[column("overall")] is not None or r["quality_reason"] for r in rows)
    scores = sorted(r[column("overall")] for r in rows if r[column("overall")] is not None)
    print("embedded judge on Alpaca:", [(r["id"], r[column("overall")]) for r in rows])
    cut = scores[-1] if scores else 5.0
    again = selfinstruct(*args, "--min-quality", f"{cut:g}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Loading" not in again.stderr, "re-cutting asks the model nothing"
    kept = rows_of(out)
    assert kept and all(r[column("overall")] >= cut for r in kept)
    assert len(judging_records(out)) == 6
