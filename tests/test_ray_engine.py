"""The Ray backend (selfinstruct.engines.ray_data): configuration, a missing Ray, and a real
Ray Data LLM job with the CPU vLLM engine on a local Ray instance (marked ``engine``)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from selfinstruct.config import ConfigError, EngineConfig, load_config
from selfinstruct.engines.base import Request, Sampling
from selfinstruct.engines.ray_data import RayEngine, RayUnavailable
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
    with pytest.raises(JobError, match=r"--backend ray needs Ray Data LLM .*selfinstruct\[ray\]"):
        GenerateJob.prepare(None, options, GENERATE_OPTIONS)
    assert not (tmp_path / "out").exists()


def test_completions_are_reported_as_the_jobs_rows_come_back():
    from types import SimpleNamespace

    engine = object.__new__(RayEngine)  # no Ray: the parts generate() uses
    engine.config = EngineConfig(backend="ray")
    engine.jobs = 0
    engine._tokenizer = None
    engine._ray = SimpleNamespace(data=SimpleNamespace(from_items=list))
    seen = []

    def job(rows):  # the processor: rows come back in another order, one duplicated
        def iter_rows():
            for row in [rows[2], rows[0], rows[2], rows[1]]:
                seen.append(row["index"])
                yield {"index": row["index"], "text": row["prompt"].upper(),
                       "prompt_tokens": 2, "output_tokens": 1, "finish_reason": "stop"}
        return SimpleNamespace(iter_rows=iter_rows)

    engine._processor = lambda: job
    batch = [Request(p, Sampling(0.5, 1.0, 8), seed=i) for i, p in enumerate(["a", "b", "c"])]
    done = []
    out = engine.generate(batch, on_done=lambda i, c: done.append((i, len(seen), c)))
    # each as its row arrives (not after the job), once, the completion returned
    assert [(i, arrived) for i, arrived, _ in done] == [(2, 1), (0, 2), (1, 4)]
    assert [c.text for c in out] == ["A", "B", "C"]
    assert all(out[i] == c for i, _, c in done)


def _ray_llm_missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'selfinstruct[ray]')"
    try:
        import ray.data.llm  # noqa: F401
    except ImportError as exc:
        return f"ray.data.llm cannot be imported: {exc}"
    return None


@pytest.mark.engine
def test_a_stage_batch_as_a_ray_data_llm_job_on_cpu():
    missing = _ray_llm_missing()
    if missing:
        pytest.skip(missing)
    from selfinstruct.models import resolve_model

    model = resolve_model(None)
    engine = RayEngine(model.path, model.name,
                       EngineConfig(backend="ray", ray_batch_size=3, max_model_len=2048))
    try:
        assert engine.cpu_replicas and engine.replicas == 1
        requests = [Request(f"Here is a list of {n} fruits:\n1.",
                            Sampling(0.7, 0.9, 24 if n % 2 else 4, ("\n\n",)), seed=n)
                    for n in range(2, 9)]
        ticks = []
        out = engine.generate(requests, progress=ticks.append)
        assert len(out) == len(requests) and sum(ticks) == len(requests)
        assert all(c.prompt_tokens > 5 and c.output_tokens > 0 for c in out)
        assert all(c.output_tokens <= r.sampling.max_tokens
                   for c, r in zip(out, requests, strict=True))
        # every 4-token request is cut at its budget and reported as such
        assert all(c.finish_reason == "length" for c, r in zip(out, requests, strict=True)
                   if r.sampling.max_tokens == 4)
        assert engine.describe()["jobs"] == 1
    finally:
        engine.close()


@pytest.mark.engine
def test_generate_run_with_backend_ray(tmp_path):
    """A whole (one-round) `selfinstruct generate --backend ray` run on a local Ray instance."""
    import json
    import subprocess
    from pathlib import Path

    import pyarrow.parquet as pq

    from selfinstruct.seeds import default_seeds_dir

    missing = _ray_llm_missing()
    if missing:
        pytest.skip(missing)
    seeds = tmp_path / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    out = tmp_path / "run"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "selfinstruct"), "generate", "--backend", "ray",
         "--config", str(engine_test_config(tmp_path)),
         "--seeds", str(seeds), "-n", "2", "--prompts-per-round", "8", "--max-rounds", "1",
         "--seed", "7", "-o", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stats"]["rounds"] == 1
    backend = manifest["backend"]
    # one Ray Data job per stage: instructions, classification, instances
    assert backend["backend"] == "ray" and backend["jobs"] == 3 and backend["cpu_replicas"]
    throughput = manifest["throughput"]
    assert throughput["requests"] == manifest["stats"]["engine"]["requests"] > 8
    assert throughput["output_tokens"] > 0 and throughput["engine_seconds"] > 0
    rows = [r for entry in manifest["files"]
            for r in pq.read_table(out / entry["path"]).to_pylist()]
    assert len(rows) == manifest["rows"] > 0 and len({r["id"] for r in rows}) == len(rows)
