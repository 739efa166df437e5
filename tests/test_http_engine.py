"""The HTTP backend (selfinstruct.engines.http).

Fast tests run against a fake OpenAI-compatible server in this process
(tests/http_fakes.py): request shape, order, concurrency bound, spreading over
endpoints, retries and what is never retried, dead endpoints, start-up checks,
secrets. The real-server tests (marked ``engine``) are in test_http_serve.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfinstruct.config import EngineConfig, load_config
from selfinstruct.engines.base import EngineRequestError, EngineUnavailable, Request, Sampling
from selfinstruct.engines.http import HTTPEngine, probe_endpoints
from selfinstruct.testing.local_server import free_port

from .http_fakes import FakeOpenAI, by_prompt

BIN = Path(sys.executable).parent / "selfinstruct"


def config(*urls: str, **kwargs) -> EngineConfig:
    kwargs.setdefault("retry_backoff", 0.01)
    kwargs.setdefault("request_timeout", 5.0)
    return EngineConfig(base_urls=list(urls), **kwargs)


def requests(n: int, chat: bool = False, max_tokens: int = 16) -> list[Request]:
    return [Request(f"prompt number {i}", Sampling(0.7, 0.5, max_tokens, ("\n16.",)),
                    seed=1000 + i, chat=chat) for i in range(n)]


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def engines():
    made = []

    def make(*args, **kwargs) -> HTTPEngine:
        engine = HTTPEngine(*args, **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


# -- requests and answers --------------------------------------------------------

def test_completions_in_request_order_with_usage_and_sampling(server, engines):
    engine = engines(config(server.url))
    assert engine.model_name == "fake-model" and engine.version == "0.0-fake"
    batch = requests(20)
    done = []
    out = engine.generate(batch, progress=done.append)
    assert [c.text for c in out] == [f"echo: {r.prompt}" for r in batch]
    assert [c.prompt_tokens for c in out] == [3] * 20
    assert all(c.output_tokens == 3 and c.finish_reason == "stop" for c in out)
    assert sum(done) == 20
    assert set(server.paths) == {"/v1/completions"}
    body = by_prompt(server.bodies)["prompt number 7"][0]
    assert body == {"model": "fake-model", "prompt": "prompt number 7", "max_tokens": 16,
                    "temperature": 0.7, "top_p": 0.5, "n": 1, "stream": False,
                    "stop": ["\n16."], "seed": 1007}


def test_each_answer_is_reported_on_the_callers_thread_as_it_arrives(engines):
    import threading

    # prompt 0 is answered last: it must not hold back the report of the others
    def slow_first(body, attempt):
        return ("delay", 0.5) if body["prompt"].endswith(" 0") else None

    with FakeOpenAI(fault=slow_first) as fake:
        engine = engines(config(fake.url))
        batch = requests(6)
        done = []
        out = engine.generate(batch, on_done=lambda i, c: done.append(
            (i, c, threading.current_thread() is threading.main_thread())))
    assert sorted(i for i, _, _ in done) == list(range(6)) and done[-1][0] == 0
    assert all(out[i] == c and on_main for i, c, on_main in done)


def test_answers_reported_before_a_failure_stay_reported(engines):
    def fail_2(body, attempt):
        return "401" if body["prompt"].endswith(" 2") else None

    with FakeOpenAI(fault=fail_2) as fake:
        engine = engines(config(fake.url, max_in_flight=1))  # one at a time, in order
        done = []
        with pytest.raises(EngineRequestError):
            engine.generate(requests(4), on_done=lambda i, c: done.append(i))
    assert done == [0, 1]  # the answers that came before the 401


def test_chat_requests_use_chat_completions(server, engines):
    out = engines(config(server.url)).generate(requests(3, chat=True, max_tokens=4))
    assert set(server.paths) == {"/v1/chat/completions"}
    assert server.bodies[0]["messages"] == [{"role": "user", "content": server.bodies[0]
                                             ["messages"][0]["content"]}]
    assert [c.finish_reason for c in out] == ["length"] * 3
    assert out[2].text == "echo: prompt number 2"


def test_empty_batch(server, engines):
    assert engines(config(server.url)).generate([]) == []


def test_in_flight_bound_is_reached_and_never_exceeded(engines):
    with FakeOpenAI(delay=0.2) as fake:
        engine = engines(config(fake.url, max_in_flight=5))
        engine.generate(requests(30))
        assert fake.max_concurrent == 5


def test_requests_spread_over_endpoints(engines):
    with FakeOpenAI(delay=0.05) as one, FakeOpenAI(delay=0.05) as two:
        engine = engines(config(one.url, two.url, max_in_flight=4))
        out = engine.generate(requests(40))
        assert len(out) == 40
        assert len(one.bodies) + len(two.bodies) == 40
        assert min(len(one.bodies), len(two.bodies)) >= 12
        assert [s.requests for s in engine.endpoint_stats()] == [len(one.bodies),
                                                                 len(two.bodies)]


# -- retries -----------------------------------------------------------------------

def _first_attempt_fails(kinds):
    def fault(body, attempt):
        n = int(body["prompt"].split()[-1])
        return kinds[n % len(kinds)] if attempt == 1 else None
    return fault


@pytest.mark.parametrize("kind", ["500", "503", "429", "drop", ("delay", 4.0), "malformed"])
def test_transient_failures_are_retried_and_counted_once(kind, engines):
    # The timeout is short only where the fault is a delay: a loaded CI machine can take
    # longer than half a second to answer a retry, which would count as a second failure.
    timeout = 1.0 if isinstance(kind, tuple) else 5.0
    with FakeOpenAI(fault=_first_attempt_fails([kind, None])) as fake:
        engine = engines(config(fake.url, request_timeout=timeout))
        done = []
        out = engine.generate(requests(10), progress=done.append)
        assert [c.text for c in out] == [f"echo: prompt number {i}" for i in range(10)]
        assert sum(done) == 10  # one progress tick per request, retries not counted
        assert [fake.attempts[f"prompt number {i}"] for i in range(10)] == [2, 1] * 5
        assert engine.endpoint_stats()[0].requests == 10
        assert engine.endpoint_stats()[0].failed_attempts == 5


def test_a_request_answered_after_its_timeout_is_not_kept_twice(engines):
    # the server finishes the abandoned first attempt; the engine has moved on
    with FakeOpenAI(fault=_first_attempt_fails([("delay", 2.0)])) as fake:
        engine = engines(config(fake.url, request_timeout=1.0))
        out = engine.generate(requests(4))
        time.sleep(1.5)
        assert len(out) == 4 and all(fake.answered[r.prompt] == 2 for r in requests(4))
        assert engine.endpoint_stats()[0].requests == 4


def test_a_prompt_over_the_context_is_a_prompt_too_long_completion(engines):
    from selfinstruct.engines.base import PROMPT_TOO_LONG

    with FakeOpenAI(fault=lambda body, attempt: "context" if "1" in body["prompt"]
                    else None) as fake:
        engine = engines(config(fake.url))
        out = engine.generate(requests(3))
        assert [c.finish_reason for c in out] == ["stop", PROMPT_TOO_LONG, "stop"]
        assert out[1].text == "" and sum(fake.attempts.values()) == 3  # not retried


@pytest.mark.parametrize("status", ["400", "401"])
def test_other_4xx_fail_at_once_without_retry(status, engines):
    with FakeOpenAI(fault=lambda body, attempt: status) as fake:
        engine = engines(config(fake.url))
        started = time.perf_counter()
        with pytest.raises(EngineRequestError, match=f"HTTP {status}: injected {status}"):
            engine.generate(requests(1))
        assert time.perf_counter() - started < 2
        assert sum(fake.attempts.values()) == 1


def test_retries_exhausted_is_engine_unavailable_naming_the_url(engines):
    with FakeOpenAI(fault=lambda body, attempt: "500") as fake:
        engine = engines(config(fake.url, max_retries=2))
        with pytest.raises(EngineUnavailable) as err:
            engine.generate(requests(1))
        assert fake.url in str(err.value) and "3 times" in str(err.value)
        assert "\n" not in str(err.value)
        assert fake.attempts["prompt number 0"] == 3


def test_retry_after_is_honoured(engines):
    calls = []

    def fault(body, attempt):
        calls.append(time.perf_counter())
        return "429" if attempt == 1 else None

    with FakeOpenAI(fault=fault, retry_after="0.3") as fake:
        engine = engines(config(fake.url, retry_backoff=0.001))
        engine.generate(requests(1))
        assert calls[1] - calls[0] >= 0.3


# -- dead endpoints ------------------------------------------------------------------

def test_a_dead_endpoint_is_dropped_and_the_rest_carry_on(engines):
    with FakeOpenAI(delay=0.05) as one, FakeOpenAI(delay=0.05) as two:
        engine = engines(config(one.url, two.url, endpoint_down_after=0.3, max_retries=20,
                                retry_backoff=0.05))
        engine.generate(requests(4))
        served_before = len(two.bodies)
        two.stop()  # port closed: connection refused from now on
        out = engine.generate(requests(30))
        assert [c.text for c in out] == [f"echo: prompt number {i}" for i in range(30)]
        stats = engine.endpoint_stats()
        assert stats[1].requests == served_before and stats[0].requests == 34 - served_before
        # half the batch went there at once; after those refusals it is passed over
        assert 1 <= stats[1].failed_attempts <= 20
        assert "connection refused" in stats[1].last_error and not stats[0].down


def test_all_endpoints_dead_stops_with_engine_unavailable(engines):
    with FakeOpenAI() as fake:
        engine = engines(config(fake.url, endpoint_down_after=0.3, max_retries=50,
                                retry_backoff=0.05))
        fake.stop()
        started = time.perf_counter()
        with pytest.raises(EngineUnavailable, match="every endpoint stopped answering") as err:
            engine.generate(requests(5))
        assert time.perf_counter() - started < 5
        assert fake.url in str(err.value)


# -- start-up check ----------------------------------------------------------------------

def test_unreachable_url_fails_fast_naming_it():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.perf_counter()
    with pytest.raises(EngineUnavailable) as err:
        HTTPEngine(config(url))
    assert time.perf_counter() - started < 3
    message = str(err.value)
    assert message.startswith(url) and "connection refused" in message and "\n" not in message


def test_model_not_served_names_url_and_models(server):
    with pytest.raises(EngineUnavailable) as err:
        probe_endpoints(config(server.url), "other-model")
    assert str(err.value) == (f"{server.url}: does not serve model 'other-model' (it serves: "
                              "fake-model); pass --model with a served name")


def test_model_defaults_to_the_one_served_and_must_be_chosen_among_several(server):
    assert probe_endpoints(config(server.url), None).model == "fake-model"
    with FakeOpenAI(models=("a", "b")) as several:
        with pytest.raises(EngineUnavailable, match=r"serves 2 models \(a, b\); choose one"):
            probe_endpoints(config(several.url), None)
        assert probe_endpoints(config(several.url), "b").model == "b"


def test_every_endpoint_is_checked(server):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineUnavailable) as err:
        probe_endpoints(config(server.url, dead), None)
    assert dead in str(err.value) and server.url not in str(err.value)


def test_a_probe_passed_in_is_not_repeated(engines):
    # run.py probes to learn the model, then starts the engine: GET /models once each
    with FakeOpenAI(models=("a", "b")) as first, FakeOpenAI(models=("b",)) as second:
        cfg = config(first.url, second.url)
        probe = probe_endpoints(cfg, "b")
        checked = {"/v1/models": 1, "/version": 1}
        assert first.gets == checked and second.gets == checked
        engine = engines(cfg, probe=probe)  # model None: the probe's, though "a" is served too
        assert (engine.model_name, engine.version) == ("b", "0.0-fake")
        assert engine.servers == probe.servers
        assert [s.url for s in engine.servers] == [first.url, second.url]
        out = engine.generate(requests(8))
        assert [c.text for c in out] == [f"echo: prompt number {i}" for i in range(8)]
        assert first.gets == checked and second.gets == checked
        assert {b["model"] for b in first.bodies + second.bodies} == {"b"}
        assert first.bodies and second.bodies


def test_without_a_probe_the_engine_checks_every_endpoint_itself(engines):
    with FakeOpenAI() as first, FakeOpenAI() as second:
        engine = engines(config(first.url, second.url))
        assert first.gets["/v1/models"] == 1 and second.gets["/v1/models"] == 1
        assert engine.model_name == "fake-model"
        assert [s.url for s in engine.servers] == [first.url, second.url]


def test_a_probe_of_other_endpoints_or_another_model_is_refused(server):
    probe = probe_endpoints(config(server.url), None)
    other = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ValueError, match="the probe checked 1 endpoint"):
        HTTPEngine(config(server.url, other), probe=probe)
    with pytest.raises(ValueError, match="the probe checked"):
        HTTPEngine(config(other), probe=probe)
    with pytest.raises(ValueError, match="for model 'fake-model', not 'other-model'"):
        HTTPEngine(config(server.url), "other-model", probe=probe)
    assert server.gets["/v1/models"] == 1 and not server.bodies


def test_not_an_openai_server():
    from .http_fakes import _BackgroundApp
    from aiohttp import web

    class Plain(_BackgroundApp):
        def app(self):
            return web.Application()

    with Plain() as plain, pytest.raises(EngineUnavailable,
                                         match="not an OpenAI-compatible server"):
        probe_endpoints(config(plain.url), None)


# -- secrets -----------------------------------------------------------------------

def test_api_key_from_the_named_variable_is_sent_and_never_shown(monkeypatch, engines):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("MY_KEY", secret)
    with FakeOpenAI(fault=lambda body, attempt: "401", echo_auth_in_errors=True) as fake:
        engine = engines(config(fake.url, api_key_env="MY_KEY"))
        assert set(fake.authorizations) == {f"Bearer {secret}"}
        with pytest.raises(EngineRequestError) as err:
            engine.generate(requests(1))
        assert secret not in str(err.value) and "***" in str(err.value)
        assert "$MY_KEY" in str(err.value)
        assert secret not in json.dumps(engine.describe())


def test_no_key_variable_means_no_authorization(monkeypatch, server, engines):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engines(config(server.url)).generate(requests(1))
    assert set(server.authorizations) == {None}


# -- configuration and CLI ----------------------------------------------------------------

def test_base_url_implies_http_and_is_normalized():
    cfg = load_config(None, {"engine.base_urls": ["http://127.0.0.1:8000/"]})
    assert cfg.engine.backend == "http" and cfg.engine.base_urls == ["http://127.0.0.1:8000/v1"]


def test_cli_wrong_url_and_wrong_model_fail_fast_with_one_line(server, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    for args, expected in (
            (["--base-url", dead], f"Error: {dead}/v1: cannot reach the server"),
            (["--base-url", server.url, "--model", "nope"],
             f"Error: {server.url}: does not serve model 'nope'")):
        started = time.perf_counter()
        result = subprocess.run([str(BIN), "generate", *args, "-o", str(tmp_path / "out")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().startswith(expected), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert time.perf_counter() - started < 20
        assert not (tmp_path / "out").exists()


def test_cli_engine_failure_mid_run_exits_1_with_checkpoint_message(tmp_path):
    # the server lists the model, then drops every completion: retries run out
    secret = "sk-never-shown-4242"
    with FakeOpenAI(fault=lambda body, attempt: "drop") as fake:
        cfg = tmp_path / "run.toml"
        cfg.write_text("[engine]\nmax_retries = 1\nretry_backoff = 0.01\n")
        out = tmp_path / "out"
        result = subprocess.run(
            [str(BIN), "generate", "--config", str(cfg), "--base-url", fake.url,
             "-n", "1", "--prompts-per-round", "2", "-o", str(out)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "OPENAI_API_KEY": secret})
        assert set(fake.authorizations) == {f"Bearer {secret}"}
    assert result.returncode == 1, result.stderr
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("Error:"))
    assert fake.url in line and "checkpoint" in line and "run the same command again" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"
    assert manifest["config"]["engine"]["base_urls"] == [fake.url]
    assert manifest["config"]["engine"]["api_key_env"] == "OPENAI_API_KEY"
    assert secret not in result.stdout + result.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
