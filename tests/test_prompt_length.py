"""Prompts longer than the model's context are not sent (issue 10, item 11).

A seed instruction of thousands of words makes every prompt showing it overflow the
context. The offline engine measures each prompt with the model's tokenizer and
answers such a request with finish reason ``prompt_too_long`` instead of sending it
(vLLM would fail the whole batch); the pipeline records the reason code.
"""

from __future__ import annotations

import pytest

from selfinstruct.engines.base import PROMPT_TOO_LONG, Completion

from .test_pipeline import ScriptedEngine, make_loop


class OverflowingEngine(ScriptedEngine):
    """The scripted engine, except that prompts showing the word "enormous" overflow."""

    def generate(self, requests, progress=None, on_done=None):
        answers = super().generate(requests, progress)
        answers = [Completion("", 5000, 0, PROMPT_TOO_LONG) if "enormous" in r.prompt else a
                   for r, a in zip(requests, answers, strict=True)]
        for index, answer in enumerate(answers if on_done else ()):
            on_done(index, answer)
        return answers


def test_requests_over_the_context_are_rejected_with_a_reason_code(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from . import test_pipeline

    seeds = list(test_pipeline.SEEDS)
    seeds[0] = type(seeds[0])("big", "", "Describe an enormous " + "very " * 50 + "old tree.",
                              seeds[0].instances, False)
    monkeypatch.setattr(test_pipeline, "SEEDS", seeds)
    loop, _, _ = make_loop(tmp_path, engine=OverflowingEngine(), n=4, generation={
        "prompts_per_round": 4, "prompt_tasks": 4, "prompt_human_tasks": 4, "max_rounds": 20})
    stats = loop.run()
    assert stats.rejections[PROMPT_TOO_LONG] > 0
    assert stats.tasks_written == 4  # prompts without the long seed still produce tasks
    reasons = pq.read_table(tmp_path / "ledger" / "round-00001" / "candidates.parquet"
                            ).column("reason").to_pylist()
    assert PROMPT_TOO_LONG in reasons


@pytest.mark.engine
def test_the_offline_engine_does_not_send_a_prompt_over_its_context():
    from selfinstruct.config import EngineConfig
    from selfinstruct.engines.base import Request, Sampling
    from selfinstruct.engines.offline import VLLMEngine
    from selfinstruct.models import resolve_model

    model = resolve_model(None)
    engine = VLLMEngine(model.path, model.name, EngineConfig(max_model_len=256), seed=0)
    try:
        sampling = Sampling(0.0, 1.0, 8)
        long_prompt = "Describe the old tree. " * 120  # ~600 tokens
        done = []
        out = engine.generate([Request("Name a colour:", sampling, seed=1),
                               Request(long_prompt, sampling, seed=2)], progress=done.append)
    finally:
        engine.close()
    assert out[0].finish_reason in ("stop", "length") and out[0].output_tokens > 0
    assert out[1].finish_reason == PROMPT_TOO_LONG and out[1].text == ""
    assert out[1].prompt_tokens >= 256
    assert sum(done) == 2
