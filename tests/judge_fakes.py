"""Fake judges for the CLI tests of quality scoring: a backend registry entry that hands
out a :class:`~selfinstruct.testing.scripted.ScriptedEngine` (in-process runs), an HTTP
server answering JSON verdicts (subprocess runs), a guard that fails a test if an
in-process vLLM or Ray engine would start, and a judged ``generate`` run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from selfinstruct import engines
from selfinstruct.engines import Backend, Prepared
from selfinstruct.models import ResolvedModel
from selfinstruct.seeds import default_seeds_dir
from selfinstruct.testing.scripted import ScriptedEngine, scripted_verdict

from .http_fakes import FakeOpenAI


def scripted_backend(engine: ScriptedEngine, name: str = "scripted") -> Backend:
    """A ``vllm`` backend whose model resolves to ``name`` and whose engine is ``engine``
    (nothing is loaded)."""
    return Backend("vllm", lambda config: Prepared(ResolvedModel(name, name, "directory")),
                   lambda config, prepared: engine,
                   lambda config, model: f"Scripted judge {model}", lambda config: "scripted")


def use_scripted_judge(monkeypatch: pytest.MonkeyPatch, engine: ScriptedEngine | None = None
                       ) -> ScriptedEngine:
    """Make the ``vllm`` backend (``score``'s default) a scripted engine; return it."""
    engine = engine or ScriptedEngine()
    monkeypatch.setitem(engines.BACKENDS, "vllm", scripted_backend(engine))
    return engine


def forbid_local_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test (a BaseException, past every ``except Exception``) if an in-process
    vLLM or Ray engine would start: a check that should have refused the command did not."""
    def refuse(config: object, prepared: Prepared) -> object:
        pytest.fail(f"an engine was started for {prepared.model.path}")

    for name in ("vllm", "ray"):
        real = engines.BACKENDS[name]
        monkeypatch.setitem(engines.BACKENDS, name, Backend(
            real.name, real.prepare, refuse, real.starting, real.label))


def verdict_for(body: dict) -> str:
    """The answer of :class:`VerdictServer`: a scripted verdict keyed by the prompt's hash."""
    prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
    return scripted_verdict(hashlib.sha256(prompt.encode()).hexdigest()[:16])


class VerdictServer(FakeOpenAI):
    """A fake OpenAI-compatible judge: every completion is a JSON verdict (1-5), or for
    one prompt in 16 a refusal no parser reads (see ``scripted_verdict``)."""

    def __init__(self, models: tuple[str, ...] = ("judge-model",),
                 answer: Callable[[dict], str] = verdict_for):
        super().__init__(models=models, answer=answer)


def make_judged_run(base: Path, **quality: object) -> Path:
    """A complete judged ``generate`` run (12 bundled seeds, 4 tasks) made by GenerateJob
    with the scripted engine, which judges too; ``quality`` sets GENERATE_OPTIONS such as
    ``min_quality:quality.min_overall``."""
    from selfinstruct import run as run_module
    from selfinstruct.cli import GENERATE_OPTIONS

    base.mkdir(parents=True, exist_ok=True)
    seeds = base / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    model = base / "model"  # resolves as a local model directory; never loaded
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    keys = dict(GENERATE_OPTIONS)
    options: dict[str, object] = dict.fromkeys(keys)
    options.update(seeds=seeds, model=str(model), output=base / "run", num_instructions=4,
                   seed=3, prompts_per_round=1, shard_size=3, judge=True)
    for name, value in quality.items():
        options[name] = value
        keys.setdefault(name, name.split(":", 1)[-1])
    job = run_module.GenerateJob.prepare(None, options, keys)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "build_engine", lambda config, prepared: ScriptedEngine())
        job.execute()
    return base / "run"


def read_manifest_json(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text(encoding="utf-8"))
