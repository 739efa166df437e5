"""The simulated GPU (selfinstruct.testing.gpu_sim): its batching model, its replay of a
ledger, and the real HTTP backend and pipeline against it. No engine."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from selfinstruct.config import EngineConfig
from selfinstruct.engines.base import Completion, Request, Sampling
from selfinstruct.engines.http import HTTPEngine
from selfinstruct.seeds import default_seeds_dir
from selfinstruct.storage.ledger import RecordedRequest
from selfinstruct.testing.gpu_sim import (H100_LLAMA_8B, SIM_MODEL, Batcher, GPUSim,
                                          GPUSimError, PrefixCache, Replay, StepModel)
from selfinstruct.testing.scripted import ScriptedEngine

from .test_pipeline import make_loop

MODEL = H100_LLAMA_8B


def record(prompt: str, text: str, tokens: int, reason: str = "stop",
           prompt_tokens: int = 4) -> RecordedRequest:
    return RecordedRequest(key="k", seed=0, prompt=prompt, prompt_task_ids=(), text=text,
                           finish_reason=reason, prompt_tokens=prompt_tokens,
                           output_tokens=tokens)


def run_batch(batcher: Batcher, sequences: list[tuple[str, int, int]]) -> list[float]:
    """Submit every (prompt, prompt tokens, output tokens) at once; the simulated clock
    when each finished."""
    async def main() -> list[float]:
        async def one(seq: tuple[str, int, int]) -> float:
            return await batcher.run(*seq)
        return await asyncio.gather(*(one(s) for s in sequences))
    return asyncio.run(main())


# -- the batching model --------------------------------------------------------------


def test_batch_one_decodes_at_one_over_a_plus_b():
    batcher = Batcher(MODEL, max_num_seqs=256, time_scale=50.0)
    started = time.perf_counter()
    run_batch(batcher, [("x", 1, 400)])
    wall = time.perf_counter() - started
    stats = batcher.snapshot()
    assert stats.steps == 400 and stats.output_tokens == 400
    assert stats.output_tokens / stats.busy_s == pytest.approx(1 / (MODEL.a + MODEL.b),
                                                               rel=0.01)
    assert stats.mean_running == pytest.approx(1.0)
    # the time scale paces the steps: 400 x 7.05 ms simulated take ~56 ms of wall time
    assert wall >= 0.9 * stats.busy_s / 50.0


def test_full_batch_throughput_and_queueing_beyond_max_num_seqs():
    n, length = 64, 50
    batcher = Batcher(MODEL, max_num_seqs=n, time_scale=1000.0)
    finished = run_batch(batcher, [(f"p{i}", 1, length) for i in range(2 * n)])
    stats = batcher.snapshot()
    assert stats.max_running == n and stats.max_waiting == 2 * n
    assert stats.steps == 2 * length  # two full waves, one after the other
    assert stats.output_tokens / stats.busy_s == pytest.approx(
        MODEL.decode_tokens_per_second(n), rel=0.01)
    assert stats.occupancy == pytest.approx(1.0)
    wave = length * (MODEL.a + MODEL.b * n)
    first, second = sorted(finished)[:n], sorted(finished)[n:]
    assert min(first) == max(first) and min(second) == max(second)
    # the queued half waits for the first: admitted a step after it finished
    assert second[0] - first[0] == pytest.approx(wave + n * MODEL.c, rel=1e-6)


def test_prefill_is_charged_to_the_admission_step_and_cached_prefixes_are_not():
    model = StepModel(a=0.01, b=0.0, c=0.001)
    shared = "A" * 640  # ten cache blocks
    cold = Batcher(model, time_scale=1000.0, prefix_caching=False)
    run_batch(cold, [(shared + "one", 100, 1)])
    assert cold.snapshot().busy_s == pytest.approx(0.01 + 100 * 0.001)
    warm = Batcher(model, time_scale=1000.0)
    run_batch(warm, [(shared + "one", 100, 1)])
    run_batch(warm, [(shared + "two", 100, 1)])
    stats = warm.snapshot()
    assert stats.prompt_tokens == 200
    assert stats.prefilled_tokens == 100 + 1  # the second prompt: its last 3 characters
    cache = PrefixCache()
    cache.add(shared + "one")
    assert cache.cached_share("B" + shared) == 0.0


def test_prefill_budget_spreads_admissions_over_steps():
    batcher = Batcher(StepModel(0.01, 0.0, 0.0), max_num_seqs=100,
                      max_num_batched_tokens=1000, time_scale=1000.0, prefix_caching=False)
    run_batch(batcher, [(f"p{i}", 400, 10) for i in range(10)])
    # 3 prompts of 400 tokens reach the 1,000-token budget: 4 admission steps in all
    assert batcher.snapshot().steps == 10 + 3


# -- replay ---------------------------------------------------------------------------


def test_max_tokens_is_honoured():
    replay = Replay({"instructions": [record("recorded prompt", "abcdefghij" * 10, 100)]})
    cut = replay.answer("recorded prompt", 10)
    assert (cut.output_tokens, cut.finish_reason, cut.text) == (10, "length", "abcdefghij")
    whole = replay.answer("recorded prompt", 500)
    assert (whole.output_tokens, whole.finish_reason, len(whole.text)) == (100, "stop", 100)


def test_unrecorded_prompts_go_to_their_stage_unserved_records_first():
    template = "Here is a numbered list of tasks that people ask an AI assistant to do. " * 2
    replay = Replay({
        "instructions": [record(template + f"{i}. task", f"list {i}", 5) for i in range(3)],
        "classification": [record("A task is a classification task when... " * 3 + "t",
                                  " Yes", 1)]})
    exact = replay.answer(template + "1. task", 100)
    assert (exact.text, exact.how, exact.stage) == ("list 1", "exact", "instructions")
    new = [replay.answer(template + f"new {i}", 100) for i in range(4)]
    # list 1 was served already: lists 0 and 2 come first, then reuse in ledger order
    assert [r.text for r in new] == ["list 0", "list 2", "list 0", "list 1"]
    assert [r.how for r in new] == ["cycled", "cycled", "reused", "reused"]
    replay.reset()  # a new run is served as the first was
    assert replay.answer(template + "new 0", 100).text == "list 0"
    other = replay.answer("A task is a classification task when... something else", 3)
    assert (other.stage, other.text) == ("classification", " Yes")


def test_replay_reads_a_scripted_run_ledger(tmp_path):
    loop, _, writer = make_loop(tmp_path, n=4)
    loop.run()
    writer.close()
    replay = Replay.from_run(tmp_path)
    assert replay.stages == ["classification", "instances", "instructions"]
    recorded = pq.read_table(tmp_path / "ledger/round-00001/requests-instructions.parquet"
                             ).to_pylist()[0]
    reply = replay.answer(recorded["prompt"], 1024)
    assert (reply.text, reply.output_tokens, reply.how) == (
        recorded["text"], recorded["output_tokens"], "exact")
    # an unrecorded instruction prompt (same template, other pool tasks) is an instruction list
    other = replay.answer(recorded["prompt"][:300] + "\n1. Something new.\n2.", 1024)
    assert other.stage == "instructions" and other.how == "cycled"
    assert other.text.lstrip().startswith("Write a short essay")


def test_bad_ledger_paths_are_one_line_errors(tmp_path):
    with pytest.raises(GPUSimError, match=r"no-such-run: no such run directory"):
        Replay.from_run(tmp_path / "no-such-run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GPUSimError, match=r"empty: not a selfinstruct run directory"):
        Replay.from_run(tmp_path / "empty")
    (tmp_path / "uncommitted" / "ledger" / "round-00001").mkdir(parents=True)
    with pytest.raises(GPUSimError, match="no committed round"):
        Replay.from_run(tmp_path / "uncommitted")
    with pytest.raises(GPUSimError, match="no completed request"):
        Replay({"instructions": [record("p", "", 0, reason="prompt_too_long")]})


# -- over HTTP --------------------------------------------------------------------------


def test_the_http_backend_reads_its_answers_and_its_counters(tmp_path):
    # whichever request comes first, one is answered by its own record, one by the other
    head = "A template's fixed preamble. " * 5
    replay = Replay({"instructions": [record(head + p, "one two three", 30)
                                      for p in ("p", "r")]})
    with GPUSim(replay, time_scale=100.0) as sim:
        engine = HTTPEngine(EngineConfig(backend="http", base_urls=[sim.url]), None)
        try:
            assert engine.model_name == SIM_MODEL and engine.version == "gpu-sim"
            plain, chat = engine.generate([
                Request(head + "p", Sampling(0.0, 1.0, 10)),
                Request(head + "q", Sampling(0.0, 1.0, 100), chat=True)])
        finally:
            engine.close()
        assert (plain.output_tokens, plain.finish_reason) == (10, "length")
        assert (chat.text, chat.output_tokens, chat.finish_reason) == ("one two three", 30,
                                                                       "stop")
        with urllib.request.urlopen(sim.url.removesuffix("/v1") + "/sim/stats") as resp:
            stats = json.load(resp)
        assert stats["requests"] == 2 and stats["output_tokens"] == 40
        assert stats["by_how"] == {"exact": 1, "cycled": 1}
        assert 0 < stats["busy_share"] <= 1
        reset = urllib.request.Request(sim.url.removesuffix("/v1") + "/sim/reset",
                                       method="POST")
        urllib.request.urlopen(reset).close()
        assert sim.stats().requests == 0 and sim.stats().busy_s == 0


def _generate(out: Path, seeds: Path, model: str, **extra: object) -> None:
    """A small ``generate`` run made by GenerateJob (the CLI's job)."""
    from selfinstruct import run as run_module
    from selfinstruct.cli import GENERATE_OPTIONS

    options: dict[str, object] = dict.fromkeys(GENERATE_OPTIONS)
    options.update(seeds=seeds, model=model, output=out, num_instructions=4, seed=3,
                   prompts_per_round=2, **extra)
    run_module.GenerateJob.prepare(None, options, dict(GENERATE_OPTIONS)).execute()


class CountedScripted(ScriptedEngine):
    """The scripted engine with output token counts within ``max_tokens``, as a real
    engine's (its classification answers count 10 tokens against a limit of 3)."""

    def answer(self, request: Request) -> Completion:
        done = super().answer(request)
        return replace(done, output_tokens=min(done.output_tokens, request.sampling.max_tokens))


def test_the_pipeline_over_the_simulator_replays_the_recorded_run(tmp_path, monkeypatch):
    from selfinstruct import run as run_module

    seeds = tmp_path / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    model = tmp_path / "model"  # a local model directory, never loaded
    model.mkdir()
    (model / "config.json").write_text("{}")
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "build_engine", lambda config, prepared: CountedScripted())
        _generate(tmp_path / "recorded", seeds, str(model))
    with GPUSim(Replay.from_run(tmp_path / "recorded"), time_scale=100.0) as sim:
        _generate(tmp_path / "replayed", seeds, SIM_MODEL, backend="http",
                  base_url=[sim.url])
        stats = sim.stats()
    assert stats.by_how == {"exact": stats.requests}  # every prompt was the recorded one

    def rows(run: Path) -> list[dict]:
        found = [row for path in sorted((run / "data").glob("*.parquet"))
                 for row in pq.read_table(path).to_pylist()]
        return [{k: v for k, v in row.items() if k != "model"} for row in found]

    assert rows(tmp_path / "replayed") == rows(tmp_path / "recorded") != []
