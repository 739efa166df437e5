"""The engines package: the registry, declared capabilities, dtype choice, the recorded engine."""

from __future__ import annotations

from typing import get_args

import pytest

from selfinstruct.config import Config, EngineConfig
from selfinstruct.engines import BACKENDS, EngineError, Request, Sampling, backend
from selfinstruct.engines.offline import cpu_flags, resolve_dtype, vllm_engine_args
from selfinstruct.engines.recorded import LazyEngine, RecordedEngine
from selfinstruct.storage.ledger import RunDirectory
from selfinstruct.testing.scripted import ScriptedEngine


def test_the_registry_has_exactly_the_backends_the_config_allows():
    allowed = get_args(EngineConfig.model_fields["backend"].annotation)
    assert tuple(BACKENDS) == allowed
    with pytest.raises(EngineError, match="unknown engine backend 'gpu'; one of vllm, http, ray"):
        backend("gpu")


def test_labels_and_starting_lines_name_the_backend():
    cfg = Config.model_validate({"engine": {"base_urls": ["http://a:1/v1", "http://b:2/v1"]}})
    assert backend("http").label(cfg) == "http (2 endpoints)"
    assert backend("vllm").starting(cfg, "M") == "Loading M with vLLM ..."
    assert backend("ray").starting(cfg, "M") == "Starting the Ray replicas of M ..."


def test_every_engine_class_declares_its_capabilities():
    from selfinstruct.engines.http import HTTPEngine
    from selfinstruct.engines.offline import VLLMEngine
    from selfinstruct.engines.ray_replicas import RayEngine

    for cls in (VLLMEngine, HTTPEngine, RayEngine, ScriptedEngine):
        caps = cls.capabilities
        assert {"stop", "length"} <= caps.finish_reasons
    assert "prompt_too_long" in VLLMEngine.capabilities.finish_reasons
    assert VLLMEngine.capabilities.loads_weights and not HTTPEngine.capabilities.loads_weights


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f"}, "float32"),           # AVX-512 without BF16: emulated
    ({"avx2"}, "float32"),                      # AVX2-only (AMD EPYC)
    ({"avx512f", "avx512_bf16"}, "auto"),      # native BF16: the model's own dtype
])
def test_auto_dtype_on_a_cpu_follows_its_bf16_support(flags, expected):
    assert resolve_dtype("auto", cpu=True, flags=frozenset(flags)) == expected


def test_an_explicit_dtype_or_a_gpu_is_left_alone():
    assert resolve_dtype("bfloat16", cpu=True, flags=frozenset()) == "bfloat16"
    assert resolve_dtype("auto", cpu=False, flags=frozenset()) == "auto"


def test_cpu_flags_read_the_flags_lines(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n"
                    "flags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_engine_args_carry_the_resolved_dtype(monkeypatch):
    from selfinstruct.engines import offline

    monkeypatch.setattr(offline, "cpu_flags", lambda: frozenset({"avx2"}))
    assert vllm_engine_args(EngineConfig(), 0, cpu=True)["dtype"] == "float32"
    assert vllm_engine_args(EngineConfig(), 0, cpu=False)["dtype"] == "auto"


def requests(stage: str, keys: list[str]) -> list[Request]:
    return [Request(f"prompt {k}", Sampling(0.0, 1.0, 8), seed=i, stage=stage, key=k)
            for i, k in enumerate(keys)]


def test_recorded_engine_records_asks_only_what_is_missing_and_replays(tmp_path):
    live = ScriptedEngine()
    first = RecordedEngine(RunDirectory(tmp_path), LazyEngine(lambda: live))
    out = first.answer(1, requests("classification", ["Decide a", "b"]))
    assert [r.text for r in out.values()] == [" Yes", " No"] and len(live.batches) == 1
    again = RecordedEngine(RunDirectory(tmp_path), LazyEngine(lambda: live))
    out = again.answer(1, requests("classification", ["Decide a", "b", "Decide c"]))
    assert [r.key for r in live.batches[1]] == ["Decide c"]  # only the unrecorded one
    assert [r.text for r in out.values()] == [" Yes", " No", " Yes"]
    assert again.stats.requests == 1


def test_without_a_live_engine_only_recorded_rounds_are_answered(tmp_path):
    source = RunDirectory(tmp_path / "a")
    RecordedEngine(source, LazyEngine(ScriptedEngine)).answer(
        1, requests("classification", ["x"]))
    source.commit_round(1, [], [])
    copy = RecordedEngine(RunDirectory(tmp_path / "b"), LazyEngine(None), source=source)
    assert copy.can_answer(1) and not copy.can_answer(2)
    out = copy.answer(1, requests("classification", ["x", "never asked"]))
    assert out["x"].text == " No" and out["never asked"] is None
    # the copy's own ledger now holds what it used
    assert [r.key for r in RunDirectory(tmp_path / "b").load_stage(
        1, "classification", None)] == ["x"]


def test_a_committed_round_is_checked_not_rewritten(tmp_path):
    from selfinstruct.storage.ledger import LedgerError

    ledger = RunDirectory(tmp_path)
    row = {"id": "r1-0", "task_id": "r1", "instruction": "i", "input": "", "output": "o",
           "messages": [], "is_classification": False, "model": "m", "round": 1,
           "prompt_task_ids": [], "nearest_instruction": None, "nearest_rouge_l": None}
    assert ledger.commit_round(1, [], [row]) is True
    assert ledger.commit_round(1, [], [row]) is False
    with pytest.raises(LedgerError, match="does not give the examples it recorded"):
        ledger.commit_round(1, [], [{**row, "output": "other"}])


# -- the offline engine reports completions as vLLM finishes them -------------------------

class _FakeVLLMEngine:
    """``LLM.llm_engine`` of vLLM 0.32 as the offline engine steps it: outputs carry the
    external request id, requests finish last-added first, one per step, and every step
    also reports an unfinished request."""

    def __init__(self):
        self.waiting: list[tuple[str, str]] = []  # (internal id, prompt)
        self.aborted: list[str] = []

    def has_unfinished_requests(self):
        return bool(self.waiting)

    def step(self):
        from types import SimpleNamespace

        internal, prompt = self.waiting.pop()
        choice = SimpleNamespace(text=f"re: {prompt}", token_ids=[1, 2], finish_reason="length")
        done = SimpleNamespace(request_id=internal.split("-")[0], finished=True, outputs=[choice],
                  prompt_token_ids=[0] * len(prompt.split()))
        running = SimpleNamespace(request_id="x", finished=False, outputs=[], prompt_token_ids=[])
        return [running, done]

    def abort_request(self, ids, internal=False):
        assert internal
        self.aborted += ids


class _FakeLLM:
    def __init__(self):
        self.llm_engine = _FakeVLLMEngine()
        self.counter = 0
        self.params = []

    def enqueue(self, prompts, params, use_tqdm=True):
        assert use_tqdm is False
        ids = []
        for prompt in prompts:
            ids.append(f"{self.counter}-abcd{self.counter:04d}")  # vLLM's internal id
            self.llm_engine.waiting.append((ids[-1], prompt))
            self.counter += 1
        self.params += params
        return ids


def _offline_engine():
    from types import SimpleNamespace

    from selfinstruct.engines.offline import VLLMEngine

    engine = object.__new__(VLLMEngine)  # no vLLM: the parts generate() uses
    engine._llm = _FakeLLM()
    engine._tokenizer = lambda texts: {"input_ids": [t.split() for t in texts]}
    engine._max_model_len = 4
    engine._sampling_module = SimpleNamespace(SamplingParams=dict)
    return engine


def test_the_offline_engine_reports_each_completion_as_it_finishes():
    engine = _offline_engine()
    batch = [Request(p, Sampling(0.5, 1.0, 8), seed=10 + i)
             for i, p in enumerate(["one", "far too long a prompt", "two", "three"])]
    done, ticks = [], []
    out = engine.generate(batch, progress=ticks.append, on_done=lambda i, c: done.append((i, c)))
    # not sent: reported first; then in the order vLLM finished them (last added first)
    assert [i for i, _ in done] == [1, 3, 2, 0]
    assert all(out[i] == c for i, c in done)
    assert out[1].finish_reason == "prompt_too_long" and out[1].prompt_tokens == 5
    assert [c.text for c in out] == ["re: one", "", "re: two", "re: three"]
    assert out[0].finish_reason == "length" and out[0].output_tokens == 2
    assert sum(ticks) == 4
    assert [p["seed"] for p in engine._llm.params] == [10, 12, 13]  # per-request seeds kept


def test_an_error_while_reporting_aborts_what_is_still_running():
    engine = _offline_engine()
    batch = [Request(p, Sampling(0.5, 1.0, 8)) for p in ["a", "b", "c"]]

    def fail(index, completion):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        engine.generate(batch, on_done=fail)
    assert engine._llm.llm_engine.aborted == ["0-abcd0000", "1-abcd0001"]  # c had finished


def test_an_output_of_another_batch_is_an_engine_error():
    engine = _offline_engine()
    llm, enqueue = engine._llm, engine._llm.enqueue

    def enqueue_behind_a_stray(*args, **kwargs):
        ids = enqueue(*args, **kwargs)
        llm.llm_engine.waiting.append(("99-zzzzzzzz", "left over"))  # finishes first
        return ids

    llm.enqueue = enqueue_behind_a_stray
    with pytest.raises(EngineError, match="'99', which this batch did not send"):
        engine.generate([Request("a", Sampling(0.5, 1.0, 8))])
    assert llm.llm_engine.aborted == ["0-abcd0000"]


@pytest.mark.engine
def test_the_offline_engine_calls_on_done_once_per_request_before_returning():
    from selfinstruct.engines.offline import VLLMEngine
    from selfinstruct.models import resolve_model

    model = resolve_model(None)
    engine = VLLMEngine(model.path, model.name, EngineConfig(max_model_len=256), seed=0)
    try:
        sampling = Sampling(0.8, 0.95, 8)
        batch = [Request(f"Name a {thing}:", sampling, seed=7 + i)
                 for i, thing in enumerate(["colour", "fruit", "river"])]
        done, ticks = [], []
        out = engine.generate(batch, progress=ticks.append,
                              on_done=lambda i, c: done.append((i, c)))
        second = engine.generate(batch[:1], on_done=lambda i, c: done.append((i, c)))
    finally:
        engine.close()
    assert sorted(i for i, _ in done[:3]) == [0, 1, 2] and sum(ticks) == 3
    assert all(out[i] == c for i, c in done[:3])
    assert all(0 < c.output_tokens <= 8 and c.finish_reason in ("stop", "length") for c in out)
    assert done[3:] == [(0, second[0])]  # a second batch: its own ids, nothing left over
