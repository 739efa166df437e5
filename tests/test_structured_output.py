"""Structured output: ``Sampling.json_schema`` reaches each backend in the form it reads.

Fast tests: the HTTP bodies (both paths, through the fake server) and the offline
engine's ``SamplingParams`` mapping (against a stand-in for ``vllm.sampling_params``;
the Ray backend's replicas run that engine, and ``tests/test_ray_replicas.py`` checks
that a request reaches them with its schema). Tests
marked ``engine`` check the bodies and parameters against the installed vLLM's own
classes, and generate with a schema on the embedded model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from selfinstruct.config import EngineConfig
from selfinstruct.engines.base import EngineError, Request, Sampling
from selfinstruct.engines.http_wire import completion_request
from selfinstruct.engines.offline import build_sampling_params, vllm_sampling
from selfinstruct.testing.scripted import ScriptedEngine

from .http_fakes import FakeOpenAI

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["answer", "score"],
    "additionalProperties": False,
}
SCHEMA_TEXT = json.dumps(SCHEMA)


def constrained(**kwargs) -> Sampling:
    return Sampling(0.0, 1.0, 64, json_schema=SCHEMA_TEXT, **kwargs)


# -- Sampling and Capabilities ----------------------------------------------------

def test_a_schema_is_hashable_text_and_must_be_a_json_object():
    assert hash(constrained()) == hash(constrained()) and constrained() == constrained()
    assert constrained() != Sampling(0.0, 1.0, 64)
    with pytest.raises(ValueError, match="json_schema is not JSON"):
        Sampling(0.0, 1.0, 8, json_schema="{'type': 'object'}")
    with pytest.raises(ValueError, match=r"must be a JSON object .*not list"):
        Sampling(0.0, 1.0, 8, json_schema="[1, 2]")


def test_engines_declare_whether_they_honour_a_schema():
    from selfinstruct.engines.http import HTTPEngine
    from selfinstruct.engines.offline import VLLMEngine
    from selfinstruct.engines.ray_replicas import RayEngine

    assert VLLMEngine.capabilities.structured_output
    assert HTTPEngine.capabilities.structured_output
    assert RayEngine.capabilities.structured_output
    assert not ScriptedEngine.capabilities.structured_output


# -- HTTP ------------------------------------------------------------------------

@pytest.mark.parametrize("chat, path", [(False, "/completions"), (True, "/chat/completions")])
def test_an_http_body_carries_the_schema_only_when_set(chat, path):
    free = Request("p", Sampling(0.7, 0.5, 16, ("\n",)), seed=4, chat=chat)
    held = Request("p", Sampling(0.7, 0.5, 16, ("\n",), json_schema=SCHEMA_TEXT),
                   seed=4, chat=chat)
    free_path, free_body = completion_request(free, "m")
    held_path, held_body = completion_request(held, "m")
    assert free_path == held_path == path
    assert "response_format" not in free_body
    assert held_body.pop("response_format") == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    assert held_body == free_body  # nothing else differs


def test_the_http_engine_sends_each_request_its_own_schema():
    from selfinstruct.engines.http import HTTPEngine

    other = json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}})
    batch = [Request("plain", Sampling(0.7, 0.5, 16), seed=1),
             Request("plain chat", Sampling(0.7, 0.5, 16), seed=2, chat=True),
             Request("held", constrained(), seed=3),
             Request("held chat", constrained(), seed=4, chat=True),
             Request("other chat", Sampling(0.7, 0.5, 16, json_schema=other), seed=5,
                     chat=True)]
    with FakeOpenAI() as fake:
        engine = HTTPEngine(EngineConfig(base_urls=[fake.url], retry_backoff=0.01,
                                         request_timeout=5.0))
        try:
            out = engine.generate(batch)
        finally:
            engine.close()
        sent = {(b["messages"][0]["content"] if "messages" in b else b["prompt"]):
                b.get("response_format") for b in fake.bodies}
    assert [c.text for c in out] == [f"echo: {r.prompt}" for r in batch]
    assert sent["plain"] is None and sent["plain chat"] is None
    assert sent["held"]["json_schema"]["schema"] == SCHEMA
    assert sent["held chat"]["json_schema"]["schema"] == SCHEMA
    assert sent["other chat"]["json_schema"]["schema"] == json.loads(other)


# -- offline (vLLM SamplingParams) -----------------------------------------------

def test_vllm_sampling_keywords_add_structured_outputs_only_for_a_schema():
    plain = vllm_sampling(Request("p", Sampling(0.3, 0.9, 12, ("\n\n",), 0.5, 0.25), seed=7))
    assert plain == {"temperature": 0.3, "top_p": 0.9, "max_tokens": 12, "stop": ["\n\n"],
                     "seed": 7, "presence_penalty": 0.5, "frequency_penalty": 0.25}
    held = vllm_sampling(Request("p", Sampling(0.3, 0.9, 12, json_schema=SCHEMA_TEXT)))
    assert held.pop("structured_outputs") == {"json": SCHEMA_TEXT}
    assert held == {"temperature": 0.3, "top_p": 0.9, "max_tokens": 12, "stop": None,
                    "seed": None, "presence_penalty": 0.0, "frequency_penalty": 0.0}


@dataclass
class _Params:
    """Stands in for vLLM's parameter classes: keeps the keywords it was given."""

    kwargs: dict


def _maker(name: str):
    return lambda **kwargs: (name, _Params(kwargs))


def _module(*names: str) -> SimpleNamespace:
    """A stand-in for ``vllm.sampling_params`` with the constraint classes ``names``."""
    return SimpleNamespace(SamplingParams=lambda **kwargs: _Params(kwargs),
                           **{name: _maker(name) for name in names})


def test_offline_sampling_params_carry_the_schema_as_structured_outputs():
    params = build_sampling_params(Request("p", constrained(), seed=2),
                                   _module("StructuredOutputsParams", "GuidedDecodingParams"))
    assert params.kwargs["structured_outputs"] == ("StructuredOutputsParams",
                                                   _Params({"json": SCHEMA_TEXT}))
    assert "guided_decoding" not in params.kwargs
    assert params.kwargs["seed"] == 2 and params.kwargs["max_tokens"] == 64
    plain = build_sampling_params(Request("p", Sampling(0.0, 1.0, 8)),
                                  _module("StructuredOutputsParams"))
    assert "structured_outputs" not in plain.kwargs


def test_an_older_vllm_gets_guided_decoding_and_one_without_either_fails():
    params = build_sampling_params(Request("p", constrained()), _module("GuidedDecodingParams"))
    assert params.kwargs["guided_decoding"] == ("GuidedDecodingParams",
                                                _Params({"json": SCHEMA_TEXT}))
    with pytest.raises(EngineError, match="cannot constrain output to a JSON schema"):
        build_sampling_params(Request("p", constrained()), _module())
    plain = build_sampling_params(Request("p", Sampling(0.0, 1.0, 8)), _module())
    assert plain.kwargs["max_tokens"] == 8 and "guided_decoding" not in plain.kwargs


# -- the installed vLLM (marked engine) ------------------------------------------

@pytest.mark.engine
@pytest.mark.parametrize("chat", [False, True])
def test_vllm_servers_read_the_schema_from_the_body(chat):
    if chat:
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionRequest as Model,
        )
    else:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest as Model

    _, body = completion_request(Request("p", constrained(), seed=1, chat=chat), "m")
    assert Model.model_validate(body).extract_structured_outputs().json == SCHEMA
    _, body = completion_request(Request("p", Sampling(0.0, 1.0, 8), chat=chat), "m")
    assert Model.model_validate(body).extract_structured_outputs() is None


@pytest.mark.engine
def test_offline_sampling_params_are_valid_vllm_parameters():
    from vllm import sampling_params

    params = build_sampling_params(Request("p", constrained(), seed=5), sampling_params)
    assert isinstance(params, sampling_params.SamplingParams)
    assert params.structured_outputs.json == SCHEMA_TEXT and params.seed == 5
    assert build_sampling_params(Request("p", Sampling(0.0, 1.0, 8)),
                                 sampling_params).structured_outputs is None


def _valid(text: str) -> bool:
    value = json.loads(text)
    return (isinstance(value, dict) and set(value) == {"answer", "score"}
            and value["answer"] in ("yes", "no")
            and type(value["score"]) is int and 1 <= value["score"] <= 5)


@pytest.mark.engine
def test_the_offline_engine_generates_json_valid_against_the_schema():
    from selfinstruct.engines.offline import VLLMEngine
    from selfinstruct.models import resolve_model

    model = resolve_model(None)
    engine = VLLMEngine(model.path, model.name, EngineConfig(max_model_len=512), seed=0)
    ask = ("Answer in JSON with the fields answer (yes or no) and score (1 to 5, how "
           "sure you are). Question: ")
    try:
        out = engine.generate([
            Request(ask + "Is Paris the capital of France?", constrained(), seed=1, chat=True),
            Request(ask + "Is the sea made of sand?", constrained(), seed=2)])
    finally:
        engine.close()
    for completion in out:
        assert completion.finish_reason == "stop", completion
        assert _valid(completion.text), completion.text
