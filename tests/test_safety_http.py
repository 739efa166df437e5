"""Hostile and broken HTTP servers, and secrets in URLs (issue 10, classes 9 and 10).

* The API key never reaches a message, log or file, not even in part: a server
  that echoes the Authorization header in an error body cannot make any run of
  8 characters of the key appear, wherever the body is cut.
* A URL's user name, password, query and fragment are never echoed: such URLs
  are refused with a message that shows the URL without them.
* Every response body is read up to a cap: an endless or huge answer fails in
  seconds with one line naming the URL and the cap; a trickling answer cannot
  hold the start-up check past its deadline.

Fake servers run on 127.0.0.1 (tests/http_fakes.py); every test bounds its time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfinstruct.config import ConfigError, EngineConfig, display_url, load_config
from selfinstruct.engines import http_probe, http_wire
from selfinstruct.engines.base import EngineRequestError, EngineUnavailable, Request, Sampling
from selfinstruct.engines.http import HTTPEngine, probe_endpoints

from .http_fakes import FakeOpenAI, HostileOpenAI

BIN = Path(sys.executable).parent / "selfinstruct"
KEY = "sk-proj-Q7vX2mLp9RtZ4wYc8NbF3hJk6DsA1eGu"  # 40 characters
RUN = 8  # no run of this many characters of the key may be shown


def leaks(text: str, key: str = KEY) -> list[str]:
    """The runs of RUN characters of ``key`` found in ``text``."""
    return sorted({key[i:i + RUN] for i in range(len(key) - RUN + 1)
                   if key[i:i + RUN] in text})


def config(*urls: str, **kwargs) -> EngineConfig:
    kwargs.setdefault("retry_backoff", 0.01)
    kwargs.setdefault("request_timeout", 5.0)
    kwargs.setdefault("max_retries", 0)
    return EngineConfig(base_urls=list(urls), **kwargs)


def requests(n: int = 1, max_tokens: int = 16) -> list[Request]:
    return [Request(f"prompt number {i}", Sampling(0.7, 0.5, max_tokens, ()), seed=i)
            for i in range(n)]


def run_cli(*args: str, env: dict | None = None, timeout: float = 90
            ) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def written(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


# -- the key echoed in an error body ------------------------------------------------

# "Bearer " + key starts at `padding` in the message; an error message is cut near
# 300 characters: these put the cut before, inside and after the key.
PADDINGS = [0, 240, 255, 262, 270, 280, 285, 290, 295, 300, 320]


@pytest.mark.parametrize("padding", PADDINGS)
def test_a_5xx_body_echoing_the_key_never_shows_part_of_it(padding, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with HostileOpenAI({"/v1/completions": "echo_auth"}, status=500, padding=padding) as fake:
        engine = HTTPEngine(config(fake.url))
        try:
            with pytest.raises(EngineUnavailable) as err:
                engine.generate(requests())
            described = json.dumps(engine.describe())
        finally:
            engine.close()
        assert fake.authorizations[-1] == f"Bearer {KEY}"
    message = str(err.value)
    assert fake.url in message and "HTTP 500" in message and "\n" not in message
    assert leaks(message) == [] and leaks(described) == [], (message, described)


@pytest.mark.parametrize("padding", PADDINGS)
def test_a_4xx_body_echoing_the_key_never_shows_part_of_it(padding, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with HostileOpenAI({"/v1/completions": "echo_auth"}, status=401, padding=padding) as fake:
        engine = HTTPEngine(config(fake.url))
        try:
            with pytest.raises(EngineRequestError) as err:
                engine.generate(requests())
        finally:
            engine.close()
    assert leaks(str(err.value)) == [], str(err.value)


@pytest.mark.parametrize("padding", PADDINGS)
def test_a_models_error_echoing_the_key_never_shows_part_of_it(padding, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with (HostileOpenAI({"/v1/models": "echo_auth"}, status=404, padding=padding) as fake,
          pytest.raises(EngineUnavailable) as err):
        probe_endpoints(config(fake.url), None)
    message = str(err.value)
    assert "not an OpenAI-compatible server" in message and leaks(message) == [], message


@pytest.mark.parametrize("shown", [
    KEY[:20], KEY[12:], KEY[5:13], json.dumps({"k": KEY + "\u00e9"}), f"key={KEY[:-4]}...",
])
def test_the_redactor_removes_every_run_of_8_key_characters(shown):
    redact = http_wire.Redactor(KEY)
    out = redact(f"the server said: {shown} (end)")
    assert leaks(out) == [] and out.startswith("the server said: ") and "(end)" in out


def test_the_redactor_leaves_text_without_the_key_alone():
    text = "HTTP 500: sk-proj is not a key, nor are Q7vX2mL and zzzzzzzz (7 of its characters)"
    assert http_wire.Redactor(KEY)(text) == text
    assert http_wire.Redactor(None)(text) == text


def test_cli_a_server_echoing_the_key_leaves_no_part_of_it_anywhere(tmp_path):
    with HostileOpenAI({"/v1/completions": "echo_auth"}, status=500, padding=262) as fake:
        cfg = tmp_path / "run.toml"
        cfg.write_text("[engine]\nmax_retries = 1\nretry_backoff = 0.01\n")
        out = tmp_path / "out"
        result = run_cli("generate", "--config", str(cfg), "--base-url", fake.url, "-n", "1",
                         "--prompts-per-round", "2", "-o", str(out),
                         env={"OPENAI_API_KEY": KEY})
        assert f"Bearer {KEY}" in fake.authorizations
    assert result.returncode == 1, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and fake.url in errors[0] and "HTTP 500" in errors[0]
    assert "Traceback" not in result.stderr
    assert leaks(result.stdout + result.stderr) == [], result.stderr
    assert leaks(written(out).decode("utf-8", "replace")) == []


def test_cli_the_manifest_keeps_no_part_of_an_echoed_key(tmp_path):
    # every prompt's first attempt gets a 500 echoing the header; the retry succeeds
    first_fails = lambda body, attempt: "500" if attempt == 1 else None  # noqa: E731
    with FakeOpenAI(fault=first_fails, echo_auth_in_errors=True) as fake:
        cfg = tmp_path / "run.toml"
        cfg.write_text("[generation]\nmax_rounds = 1\n[engine]\nretry_backoff = 0.01\n")
        out = tmp_path / "out"
        result = run_cli("generate", "--config", str(cfg), "--base-url", fake.url, "-n", "1",
                         "--prompts-per-round", "2", "-o", str(out),
                         env={"OPENAI_API_KEY": KEY})
        assert f"Bearer {KEY}" in fake.authorizations
        assert fake.gets["/v1/models"] == 1  # the start-up check is not repeated by the engine
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"]["capabilities"]["batch_invariant"] is True
    endpoint = manifest["backend"]["endpoints"][0]
    assert endpoint["url"] == fake.url and endpoint["failed_attempts"] >= 2
    assert endpoint["last_error"] == "HTTP 500: injected 500 for Bearer ***"
    assert leaks(result.stdout + result.stderr) == [], result.stderr
    assert leaks(written(out).decode("utf-8", "replace")) == []


# -- secrets in URLs -----------------------------------------------------------------

SECRET = "hunter2-Zq81xWv"
SECRET_URLS = [
    f"http://user:{SECRET}@127.0.0.1:8000/v1",
    f"http://{SECRET}@127.0.0.1:8000/v1",
    f"http://:{SECRET}@127.0.0.1:8000",
    f"http://127.0.0.1:8000/v1?api_key={SECRET}",
    f"http://127.0.0.1:8000/v1?{SECRET}",
    f"http://127.0.0.1:8000/v1#{SECRET}",
    f"ftp://user:{SECRET}@127.0.0.1/v1",
    f"user:{SECRET}@127.0.0.1:8000",
    f"127.0.0.1:8000/v1?key={SECRET}",
    f"http://user:{SECRET}@[::1/v1",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_a_url_with_a_secret_is_refused_without_echoing_it(url):
    with pytest.raises(ConfigError) as err:
        load_config(None, {"engine.base_urls": [url]}, {"engine.base_urls": "--base-url"})
    message = str(err.value)
    assert message.startswith("option --base-url: ") and "\n" not in message
    assert SECRET not in message and SECRET[:RUN] not in message, message


def test_a_url_with_a_secret_in_a_config_file_names_the_line_not_the_secret(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[engine]\nbase_urls = ["http://127.0.0.1:8000/v1?api_key={SECRET}"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    message = str(err.value)
    assert message.startswith(f"{cfg}:2: field 'engine.base_urls'"), message
    assert "http://127.0.0.1:8000/v1: a base URL takes no query" in message
    assert SECRET not in message


@pytest.mark.parametrize("url", [SECRET_URLS[0], SECRET_URLS[3]])
def test_cli_a_url_with_a_secret_exits_2_with_one_line_and_writes_nothing(url, tmp_path):
    out = tmp_path / "out"
    result = run_cli("generate", "--base-url", url, "-o", str(out), timeout=60)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "http://127.0.0.1:8000/v1" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert not out.exists()


@pytest.mark.parametrize("url, shown", [
    ("http://user:pw@Example.COM:8000/v1?api_key=k#frag", "http://example.com:8000/v1"),
    ("https://host/llm/v1/", "https://host/llm/v1/"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ("http://host:99999/v1", "http://host/v1"),
    ("http://ho\x1bst/v1\x07", "http://ho%1Bst/v1%07"),
    ("user:secret@host:8000", "(not a URL)"),
    ("not a url", "(not a URL)"),
    ("http://[::1/v1", "(not a URL)"),
])
def test_display_url_shows_scheme_host_port_and_path_only(url, shown):
    assert display_url(url) == shown


@pytest.mark.parametrize("url, normalized", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("HTTP://LocalHost:8000/", "http://localhost:8000/v1"),
    ("https://proxy.example/llm/v1/", "https://proxy.example/llm/v1"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
])
def test_a_normalized_url_is_its_own_display_form(url, normalized):
    assert load_config(None, {"engine.base_urls": [url]}).engine.base_urls == [normalized]
    assert display_url(normalized) == normalized


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1", "http://127.0.0.1:0/v1",
                                 "http://127.0.0.1:port/v1", "http://127.0.0.1:/v1",
                                 "http://127.0.0.1:8000/v 1", "http://127.0.0.1:8000/v1\x1b[2J"])
def test_a_bad_port_or_a_control_character_is_refused(url):
    with pytest.raises(ConfigError, match=r"port must be a number|no space or control"):
        load_config(None, {"engine.base_urls": [url]})


def test_the_starting_message_shows_display_urls():
    from selfinstruct.engines import backend

    cfg = load_config(None, {"engine.base_urls": ["http://127.0.0.1:8000/", "http://h:1/x/"]})
    assert backend("http").starting(cfg, "m").endswith(
        "2 endpoint(s): http://127.0.0.1:8000/v1, http://h:1/x")


# -- unbounded and slow answers ------------------------------------------------------

def unavailable_after(behaviours: dict[str, str], batch=None, **settings) -> tuple[float, str]:
    """Generate ``batch`` against a hostile fake; return (seconds, message) of the
    EngineUnavailable it must end in."""
    with HostileOpenAI(behaviours) as fake:
        engine = HTTPEngine(config(fake.url, **settings))
        try:
            started = time.perf_counter()
            with pytest.raises(EngineUnavailable) as err:
                engine.generate(batch or requests())
            return time.perf_counter() - started, str(err.value)
        finally:
            engine.close()


def test_an_endless_models_answer_fails_fast_naming_url_and_cap():
    with HostileOpenAI({"/v1/models": "endless"}) as fake:
        started = time.perf_counter()
        with pytest.raises(EngineUnavailable) as err:
            probe_endpoints(config(fake.url), None)
        elapsed = time.perf_counter() - started
        sent = fake.sent["/v1/models"]
    message = str(err.value)
    assert elapsed < 5, elapsed
    assert message.startswith(f"{fake.url}: ") and "\n" not in message
    assert "exceeded 1 MiB" in message and "GET /models" in message, message
    assert "no answer" not in message and "cannot reach" not in message
    # the client stopped reading: the server got no further than the socket buffers
    assert sent < 64 * 1024**2, sent


def test_a_models_answer_announcing_10_gib_fails_at_once():
    with HostileOpenAI({"/v1/models": "huge_length"}) as fake:
        started = time.perf_counter()
        with pytest.raises(EngineUnavailable, match="exceeded 1 MiB") as err:
            probe_endpoints(config(fake.url), None)
    assert time.perf_counter() - started < 3
    assert "no answer" not in str(err.value)


@pytest.mark.parametrize("path", ["/v1/models", "/version"])
def test_a_trickling_answer_cannot_hold_the_probe_past_its_deadline(path, monkeypatch):
    monkeypatch.setattr(http_probe, "PROBE_TIMEOUT", 2.0)
    with HostileOpenAI({path: "trickle"}) as fake:
        started = time.perf_counter()
        if path == "/version":  # optional: the probe goes on without a version
            assert probe_endpoints(config(fake.url), None).version == "http"
        else:
            with pytest.raises(EngineUnavailable) as err:
                probe_endpoints(config(fake.url), None)
            message = str(err.value)
            assert message.startswith(f"{fake.url}: ") and "2 s" in message, message
            assert "did not finish" in message and "cannot reach" not in message, message
        elapsed = time.perf_counter() - started
    assert elapsed < 2.0 + 1.0, elapsed


def test_cli_an_endless_models_answer_exits_2_with_one_line(tmp_path):
    with HostileOpenAI({"/v1/models": "endless"}) as fake:
        out = tmp_path / "out"
        started = time.perf_counter()
        result = run_cli("generate", "--base-url", fake.url, "-o", str(out), timeout=60)
        elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {fake.url}: "), result.stderr
    assert "exceeded 1 MiB" in lines[0] and "no answer" not in lines[0]
    assert elapsed < 30 and not out.exists()


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_an_endless_completion_answer_fails_naming_url_and_cap(path):
    with HostileOpenAI({path: "endless"}) as fake:
        engine = HTTPEngine(config(fake.url, max_retries=1, request_timeout=30.0))
        try:
            batch = [Request("p", Sampling(0.7, 0.5, 16, ()),
                             chat=path.endswith("chat/completions"))]
            started = time.perf_counter()
            with pytest.raises(EngineUnavailable) as err:
                engine.generate(batch)
            elapsed = time.perf_counter() - started
        finally:
            engine.close()
    message = str(err.value)
    assert elapsed < 10, elapsed
    assert message.startswith(f"{fake.url}: request failed 2 times") and "\n" not in message
    assert f"POST {path.removeprefix('/v1')}" in message and "exceeded" in message, message
    assert "no answer" not in message


def test_the_completion_cap_grows_with_max_tokens():
    small = http_wire.completion_body_limit(16)
    large = http_wire.completion_body_limit(100_000)
    assert http_wire.COMPLETION_BODY_BASE <= small < large
    assert large >= 100_000 * http_wire.COMPLETION_BYTES_PER_TOKEN


def test_an_endless_error_body_is_cut_and_the_status_reported():
    elapsed, message = unavailable_after({"/v1/completions": "endless_error"},
                                         request_timeout=30.0)
    assert elapsed < 10, elapsed
    assert "HTTP 500" in message and "no answer" not in message and len(message) < 600, message


def test_normal_answers_still_work_through_the_caps():
    with FakeOpenAI() as fake:
        engine = HTTPEngine(config(fake.url))
        try:
            out = engine.generate(requests(3))
        finally:
            engine.close()
    assert [c.text for c in out] == [f"echo: prompt number {i}" for i in range(3)]


def test_a_trickling_completion_fails_at_its_timeout_saying_so():
    elapsed, message = unavailable_after({"/v1/completions": "trickle"}, request_timeout=1.5)
    assert elapsed < 1.5 + 2.0, elapsed
    assert "HTTP 200, but the answer did not finish in 1.5 s" in message, message


# -- what a server says is shown bounded, redacted and escaped -------------------------

class _ModelsServer(FakeOpenAI):
    """Lists ``models`` and answers ``/version`` with ``version``."""

    def __init__(self, models, version):
        super().__init__(models=models)
        self.version = version

    async def _version(self, request):
        from aiohttp import web

        return web.json_response({"version": self.version})


def test_hostile_model_ids_and_version_are_cut_redacted_and_escaped(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    models = ["\x1b]0;pwned\x07" + "m" * 500, f"id-{KEY}", *(f"model-{i}" for i in range(200))]
    with _ModelsServer(models, f"\x1b[2J{KEY}" + "9" * 10_000) as fake:
        with pytest.raises(EngineUnavailable) as err:
            probe_endpoints(config(fake.url), None)
        message = str(err.value)
        version = probe_endpoints(config(fake.url), "model-3").version
    assert "\x1b" not in message and "\\x1b]0;pwned\\x07" in message
    assert leaks(message) == [] and "and 192 more" in message and len(message) < 1500, message
    assert "\x1b" not in version and leaks(version) == [] and len(version) <= 60, version


def test_a_local_server_key_is_sent_while_starting_and_redacted_from_its_log(tmp_path):
    from selfinstruct.testing.local_server import LocalServer

    log = tmp_path / "server.log"
    log.write_text(f"INFO non-default args: {{'api_key': ['{KEY}']}}\nERROR it failed\n")
    server = LocalServer("model-dir", "served", port=1, log_path=log,
                         extra_args=("--api-key", KEY))
    assert server.api_key() == KEY
    assert server._models_request().get_header("Authorization") == f"Bearer {KEY}"
    tail = server.log_tail()
    assert "ERROR it failed" in tail and leaks(tail) == [], tail
