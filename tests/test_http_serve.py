"""The HTTP backend against a real vLLM OpenAI-compatible server (CPU, embedded model).

One server for the module, on a free loopback port
(``python -m vllm.entrypoints.openai.api_server``, see selfinstruct.testing.local_server),
killed with its process group at the end. In front of it, proxies from
tests/http_fakes.py: two plain ones (two endpoints), and one that injects 500s,
429s, delays past the client's timeout and dropped connections into 20% of the
completion requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from selfinstruct.testing.local_server import LocalServer, free_port
from selfinstruct.models import resolve_model
from selfinstruct.seeds import default_seeds_dir

from .http_fakes import FaultProxy
from .engine_sizes import ENGINE_TEST_TOML

pytestmark = pytest.mark.engine

BIN = Path(sys.executable).parent / "selfinstruct"
REQUEST_TIMEOUT = 40.0
"""Client timeout of the runs here: well above a legitimate request (~10-20 s on 2
cores), and what a delay fault waits past."""


@pytest.fixture(scope="module")
def server():
    model = resolve_model(None)
    with LocalServer(model.path, model.name) as running:
        yield running


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("http-inputs")
    seeds = base / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    config = base / "run.toml"
    config.write_text(ENGINE_TEST_TOML + "[engine]\nretry_backoff = 0.5\n")
    return {"seeds": seeds, "config": config}


def generate(inputs, out: Path, *urls: str, extra=()) -> subprocess.CompletedProcess:
    args = [str(BIN), "generate", "--config", str(inputs["config"]), "--seeds",
            str(inputs["seeds"]), "-n", "2", "--prompts-per-round", "8", "--max-tokens", "200",
            "--max-rounds", "3", "--seed", "7", "-o", str(out),
            "--request-timeout", str(REQUEST_TIMEOUT), *extra]
    for url in urls:
        args += ["--base-url", url]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def ledger_counts(run: Path) -> tuple[int, int]:
    """(completions recorded in the ledger, distinct request keys among them)."""
    total = distinct = 0
    for path in sorted(run.glob("ledger/round-*/requests-*.parquet")):
        keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
        total += len(keys)
        distinct += len(set(keys))
    return total, distinct


def rows(run: Path) -> list[dict]:
    manifest = json.loads((run / "manifest.json").read_text())
    return [row for entry in manifest["files"]
            for row in pq.read_table(run / entry["path"]).to_pylist()]


@pytest.fixture(scope="module")
def clean_run(server, inputs, tmp_path_factory):
    """A full small run over two endpoints (two proxies, no faults, one server)."""
    out = tmp_path_factory.mktemp("http-clean") / "run"
    with FaultProxy(server.url[: -len("/v1")]) as one, \
            FaultProxy(server.url[: -len("/v1")]) as two:
        result = generate(inputs, out, one.url, two.url)
        counts = (one.counts, two.counts)
    print(f"two endpoints: {counts}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, counts, result


def test_full_generate_run_over_http(clean_run):
    out, _, result = clean_run
    assert "new tasks written" in result.stdout and "http (2 endpoints)" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["tasks"] == 2
    assert manifest["model"] == {"name": "SmolLM2-135M-Instruct",
                                 "path": "SmolLM2-135M-Instruct", "source": "http",
                                 "gguf_sha256": None}
    assert manifest["backend"]["backend"] == "http"
    assert manifest["backend"]["server_version"]
    engine = manifest["stats"]["engine"]
    assert engine["output_tokens"] > 0 and engine["live_output_tokens_per_second"] > 0
    assert manifest["throughput"]["engine_seconds"] > 0
    assert manifest["throughput"]["requests"] == engine["live_requests"]
    data = rows(out)
    assert data and all(r["model"] == "SmolLM2-135M-Instruct" for r in data)
    assert len({r["id"] for r in data}) == len(data)


def test_two_endpoints_both_receive_work(clean_run):
    out, (one, two), _ = clean_run
    assert one.posts > 0 and two.posts > 0
    manifest = json.loads((out / "manifest.json").read_text())
    endpoints = manifest["backend"]["endpoints"]
    assert [e["requests"] for e in endpoints] == [one.delivered_ok, two.delivered_ok]
    assert sum(e["requests"] for e in endpoints) == manifest["stats"]["engine"]["live_requests"]


def test_faults_change_neither_the_kept_count_nor_add_duplicates(server, inputs, clean_run,
                                                                 tmp_path):
    clean, _, _ = clean_run
    out = tmp_path / "run"
    with FaultProxy(server.url[: -len("/v1")], rate=0.2, seed=3,
                    delay=REQUEST_TIMEOUT + 1) as proxy:
        result = generate(inputs, out, proxy.url)
        counts = proxy.counts
    print(f"fault proxy: {counts}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(counts.faults.values()) >= 3, counts  # faults did happen
    before = json.loads((clean / "manifest.json").read_text())
    after = json.loads((out / "manifest.json").read_text())
    assert after["tasks"] == before["tasks"] == 2
    data = rows(out)
    assert len({r["id"] for r in data}) == len(data)
    assert len({r["task_id"] for r in data}) == after["tasks"]
    # every request answered exactly once, however often it was tried
    recorded, distinct = ledger_counts(out)
    assert recorded == distinct == after["stats"]["engine"]["live_requests"]
    assert counts.delivered_ok == recorded
    endpoint = after["backend"]["endpoints"][0]
    assert endpoint["requests"] == recorded
    assert endpoint["failed_attempts"] >= sum(counts.faults.values())


def test_wrong_url_and_wrong_model_fail_fast(server, inputs, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    for urls, extra, expected in (
            ([dead], (), f"Error: {dead}: cannot reach the server (connection refused)"),
            ([server.url], ("--model", "no-such-model"),
             (f"Error: {server.url}: does not serve model 'no-such-model' (it serves: "
              "SmolLM2-135M-Instruct)"))):
        started = time.perf_counter()
        result = generate(inputs, tmp_path / "out", *urls, extra=extra)
        assert time.perf_counter() - started < 20
        assert result.returncode == 2
        assert result.stderr.strip().startswith(expected), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


def test_server_dying_mid_run_leaves_a_checkpoint_that_resumes_elsewhere(server, inputs,
                                                                        tmp_path):
    # The endpoint answers round 1's 8 instruction requests, then dies (every later
    # connection is closed unanswered); the run must stop with one clear line and
    # the answered stage in its ledger, and resume on another endpoint without
    # asking for those 8 again.
    out = tmp_path / "run"
    config = tmp_path / "fast-fail.toml"
    config.write_text(inputs["config"].read_text() + "endpoint_down_after = 3.0\n"
                      "max_retries = 4\n")
    dying_inputs = dict(inputs, config=config)
    upstream = server.url[: -len("/v1")]
    with FaultProxy(upstream, die_after=8) as dying:
        started = time.perf_counter()
        result = generate(dying_inputs, out, dying.url)
        elapsed = time.perf_counter() - started
        dead_counts = dying.counts
    assert result.returncode == 1, result.stderr[-3000:]
    assert dead_counts.delivered_ok == 8 and dead_counts.refused > 0
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and dying.url in errors[0], result.stderr[-3000:]
    assert "checkpoint" in errors[0] and "run the same command again" in errors[0]
    assert "Traceback" not in result.stderr
    assert elapsed < 240  # stops in seconds once the endpoint is gone, not after hours
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    stage = out / "ledger" / "round-00001" / "requests-instructions.parquet"
    assert pq.read_table(stage).num_rows == 8
    before = stage.read_bytes()

    with FaultProxy(upstream) as healthy:
        resumed = generate(dying_inputs, out, healthy.url)
        counts = healthy.counts
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert stage.read_bytes() == before  # the answered stage was kept, not asked again
    after = json.loads((out / "manifest.json").read_text())
    assert after["status"] == "complete" and after["tasks"] == 2
    recorded, distinct = ledger_counts(out)
    assert recorded == distinct
    # the resumed run sent everything but the 8 it found in the ledger
    assert counts.delivered_ok == after["stats"]["engine"]["live_requests"] == recorded - 8
    data = rows(out)
    assert data and len({r["id"] for r in data}) == len(data)
