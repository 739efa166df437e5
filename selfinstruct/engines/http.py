"""The HTTP backend: any OpenAI-compatible server (``vllm serve`` first) behind :class:`Engine`.

A stage's whole batch is sent at once, asynchronously, to every endpoint given:

* **Saturation.** Up to ``engine.max_in_flight`` requests are in flight per
  endpoint, each new one going to the live endpoint with the fewest in flight
  (ties in turn), so a server's continuous batch is refilled the moment a
  sequence finishes. The pipeline's batch size (``--prompts-per-round``) is
  what fills them: keep it at least ``max_in_flight`` x endpoints.
* **Prompts.** Plain requests go to ``/completions`` (the paper's prompts are
  list continuations); ``Request.chat`` ones to ``/chat/completions``, where the
  server applies the model's own chat template.
* **Retries.** A connection error, a timeout (``engine.request_timeout``), a 429
  or a 5xx is retried up to ``engine.max_retries`` times after an exponential
  backoff with full jitter (``Retry-After`` is honoured), possibly on another
  endpoint. A 400 saying the prompt does not fit the context is answered as a
  ``prompt_too_long`` completion; any other 4xx fails the batch at once
  (:class:`EngineRequestError`).
  A request has one result slot, filled once: a retried request is never
  counted or kept twice, even when the server finishes the abandoned attempt.
* **Dead servers.** An endpoint that just failed is passed over for a few
  seconds while another has room, so retries go elsewhere. One that answers
  nothing (only connection errors and timeouts) for ``engine.endpoint_down_after``
  seconds gets no more requests; the run goes on with the rest, and stops with
  :class:`EngineUnavailable` when none is left (or when a request has used up its
  retries). The pipeline has then recorded every finished stage: resuming loses
  only the stage in progress.
* **Secrets.** The API key is read from the environment variable named by
  ``engine.api_key_env`` and sent as a Bearer token; it is never logged, stored
  or put in an error message: every text taken from a server is redacted
  (the key, and any run of 8 of its characters, become ``***``) before it is
  cut to length, so a server that echoes the Authorization header shows
  nothing of it. URLs are shown only as :func:`~selfinstruct.config.display_url`
  renders them (no user name, password or query, which base URLs cannot hold).
* **Bounded reads.** No answer is read past a cap: 1 MiB for ``GET /models``
  and ``/version`` (:data:`MODELS_BODY_LIMIT`), 1 MiB + 256 bytes per
  ``max_tokens`` for a completion (:func:`completion_body_limit`), 64 KiB of an
  error answer (the rest is not read). An answer over its cap fails with one
  line naming the URL and the cap; ``Content-Length`` is checked before reading.

Start-up lists ``GET /models`` on every endpoint (:func:`probe_endpoints`): a
server that is down, or does not serve the model, fails in seconds with one line
naming its URL.

The engine is synchronous outside (``generate`` blocks and returns completions in
request order) and runs an asyncio loop with one aiohttp session in a private
thread; progress callbacks are made on the caller's thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..config import EngineConfig, display_url, normalize_base_url
from .base import (PROMPT_TOO_LONG, Capabilities, Completion, EngineError, EngineRequestError,
                   EngineUnavailable, Progress, Request)

log = logging.getLogger(__name__)

BACKOFF_CAP = 30.0
"""Seconds: the widest backoff window of a retry."""

SUSPECT_SECONDS = 5.0
"""Seconds an endpoint that just failed is passed over while another has room."""

PROBE_TIMEOUT = 10.0
"""Seconds the start-up check of one endpoint may take in all, ``GET /models`` and
``/version`` together, however slowly the server answers (connecting: 5)."""

MODELS_BODY_LIMIT = 1024**2
"""Bytes: the most read of a ``GET /models`` or ``/version`` answer (a list of
model ids; vLLM's is a few hundred bytes per model)."""

COMPLETION_BODY_BASE = 1024**2
"""Bytes: the part of a completion answer's cap that does not depend on ``max_tokens``."""

COMPLETION_BYTES_PER_TOKEN = 256
"""Bytes of answer allowed per ``max_tokens``: a token is a few characters, at
most 6 bytes each once JSON-escaped (``\\uXXXX``), with room to spare."""

ERROR_BODY_LIMIT = 64 * 1024
"""Bytes: the most read of an error answer; only its first 300 characters are shown."""

SECRET_RUN = 8
"""Characters: any run this long of the API key is redacted from shown text."""

RETRY_STATUSES = frozenset({408, 429})

CONTEXT_LENGTH_ERROR = re.compile(
    r"maximum context length|longer than the maximum model length|max_model_len",
    re.IGNORECASE)
"""How an HTTP 400 says the prompt (with its ``max_tokens``) does not fit the model's
context: the wording of vLLM's OpenAI server (and of OpenAI's API). Such a request is
answered with finish reason :data:`~selfinstruct.engines.base.PROMPT_TOO_LONG`, as the
offline engine does, instead of failing the run."""
"""4xx statuses worth retrying (besides every 5xx)."""

_T = TypeVar("_T")


class _Transient(Exception):
    """One attempt failed in a way another attempt may not (internal)."""

    def __init__(self, message: str, retry_after: float | None = None,
                 unreachable: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable


@dataclass
class EndpointStats:
    """What happened at one endpoint.

    Attributes:
        url: the base URL (``.../v1``).
        requests: requests it completed (each counted once).
        failed_attempts: attempts that failed there and were retried or given up.
        prompt_tokens, output_tokens: token totals of its completions.
        down: it stopped answering and got no more requests.
        last_error: the last failure seen there (one line), or None.
    """

    url: str
    requests: int = 0
    failed_attempts: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    down: bool = False
    last_error: str | None = None


@dataclass
class _Endpoint:
    stats: EndpointStats
    in_flight: int = 0
    assigned: int = 0
    failing_since: float | None = None  # start of the current run of unanswered attempts
    last_failure: float = 0.0
    suspect_until: float = 0.0  # prefer other endpoints until then (monotonic)

    @property
    def url(self) -> str:
        return self.stats.url


@dataclass(frozen=True)
class ServerInfo:
    """What one endpoint said at start-up.

    Attributes:
        url: the base URL.
        models: the model ids it serves (``GET /models``).
        version: its vLLM version (``GET /version``), or None when it has none.
        max_model_len: the served model's context length when reported, else None.
    """

    url: str
    models: tuple[str, ...]
    version: str | None = None
    max_model_len: int | None = None


@dataclass(frozen=True)
class ProbeResult:
    """The start-up check of all endpoints: the model to ask for and who serves it."""

    model: str
    servers: tuple[ServerInfo, ...] = field(default_factory=tuple)

    @property
    def version(self) -> str:
        """The servers' vLLM version(s), comma-separated, or "http" when none reports one."""
        versions = sorted({s.version for s in self.servers if s.version})
        return ",".join(versions) if versions else "http"


def api_key(config: EngineConfig) -> str | None:
    """The API key from ``$<engine.api_key_env>``; None when unset or empty."""
    return os.environ.get(config.api_key_env) or None


def _one_line(text: str, limit: int = 300, redact: Callable[[str], str] | None = None
              ) -> str:
    """``text`` on one line, redacted (when ``redact`` is given) and then cut to
    ``limit``; characters that are not printable (terminal escapes) are escaped."""
    line = " ".join(str(text).split())
    if not line.isprintable():
        line = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in line)
    if redact is not None:
        line = redact(line)  # before the cut: a cut key would no longer match
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _error_text(body: bytes, redact: Callable[[str], str]) -> str:
    """The server's error message from an error response body (OpenAI / FastAPI
    shapes), redacted with ``redact``, then cut to one line of 300 characters."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _one_line(body.decode("utf-8", "replace"), redact=redact) or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return _one_line(error if isinstance(error, str) else json.dumps(error),
                             redact=redact)
    return _one_line(json.dumps(data), redact=redact)


def completion_body_limit(max_tokens: int) -> int:
    """Bytes: the most read of a completion answer for ``max_tokens`` output tokens
    (:data:`COMPLETION_BODY_BASE` + :data:`COMPLETION_BYTES_PER_TOKEN` x ``max_tokens``)."""
    return COMPLETION_BODY_BASE + COMPLETION_BYTES_PER_TOKEN * max(int(max_tokens), 0)


def _max_tokens(payload: bytes) -> Any:
    """The ``max_tokens`` of a request body we made (for messages)."""
    return json.loads(payload).get("max_tokens")


def _size(n: int) -> str:
    """A byte count for messages: "1 MiB", "1.2 MiB", "64 KiB"."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


class _TooLarge(Exception):
    """An answer longer than its cap (internal); the message says by how much."""


async def _read_body(resp, limit: int, truncate: bool = False) -> bytes:
    """The body of ``resp``, read ``limit`` bytes at most.

    Args:
        resp: an aiohttp ClientResponse whose body has not been read.
        limit: bytes.
        truncate: return the first ``limit`` bytes of a longer body instead of
            failing (error answers: only their start is shown).

    Raises:
        _TooLarge: the body (or its ``Content-Length``) exceeds ``limit``.
        aiohttp.ClientError, asyncio.TimeoutError: as ``resp.content.read``.
    """
    length = resp.content_length
    if not truncate and length is not None and length > limit:
        raise _TooLarge(f"the answer exceeded {_size(limit)} (it announced {_size(length)})")
    body = bytearray()
    while True:
        chunk = await resp.content.read(min(1 << 16, limit + 1 - len(body)))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])  # the rest is never read; the connection closes
            raise _TooLarge(f"the answer exceeded {_size(limit)}")


def _models_text(models: Sequence[str], redact: Callable[[str], str], most: int = 10) -> str:
    """Served model ids for a message: the first ``most``, each on one line of 100
    characters at most (a server's answer, so possibly long or hostile)."""
    if not models:
        return "none"
    shown = ", ".join(_one_line(m, 100, redact) for m in models[:most])
    return shown + (f", and {len(models) - most} more" if len(models) > most else "")


def _connection_error(exc: BaseException) -> str:
    """A short reason for a failed connection: "connection refused", not aiohttp's repr."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


def _run_in_fresh_loop(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to its end on a new event loop in a helper thread, so it
    works whether or not the caller's thread already runs a loop."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="selfinstruct-http-probe", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Redactor:
    """Replaces the API key in text, whole or in part, with ``***``.

    Every run of :data:`SECRET_RUN` characters of the key (of the whole key, when
    shorter) is removed, so a key cut by truncation, split by a proxy or quoted
    in part is caught too; the key as JSON-escaped and URL-quoted text is
    covered the same way. A key shorter than 4 characters is no secret and is
    left alone (redacting it would garble every message).
    """

    def __init__(self, secret: str | None):
        from urllib.parse import quote

        self._runs: tuple[str, ...] = ()
        if not secret or len(secret) < 4:
            return
        runs = set()
        for form in {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}:
            n = min(SECRET_RUN, len(form))
            runs.update(form[i:i + n] for i in range(len(form) - n + 1))
        self._runs = tuple(runs)

    def __call__(self, text: str) -> str:
        if not self._runs or not text:
            return text
        hidden = bytearray(len(text))  # 1 where a character belongs to a run of the key
        for run in self._runs:
            start = text.find(run)
            while start >= 0:
                hidden[start:start + len(run)] = b"\x01" * len(run)
                start = text.find(run, start + 1)
        if not any(hidden):
            return text
        out, i = [], 0
        while i < len(text):
            if hidden[i]:
                while i < len(text) and hidden[i]:
                    i += 1
                out.append("***")
            else:
                out.append(text[i])
                i += 1
        return "".join(out)


async def _probe_one(session, url: str, headers: dict[str, str], key_env: str,
                     has_key: bool, redact: Callable[[str], str]) -> ServerInfo:
    """``GET /models`` (and ``/version``) of one endpoint, :data:`PROBE_TIMEOUT`
    seconds in all; raises EngineUnavailable (one line, redacted)."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    try:
        return await asyncio.wait_for(
            _probe_requests(session, url, headers, key_env, has_key, redact, deadline),
            PROBE_TIMEOUT + 1.0)  # a backstop: the requests' own timeouts end sooner
    except asyncio.TimeoutError:
        raise EngineUnavailable(f"{display_url(url)}: the start-up check did not finish in "
                                f"{PROBE_TIMEOUT:g} s") from None


async def _probe_requests(session, url: str, headers: dict[str, str], key_env: str,
                          has_key: bool, redact: Callable[[str], str],
                          deadline: float) -> ServerInfo:
    import aiohttp

    shown = display_url(url)
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT, sock_connect=min(5.0, PROBE_TIMEOUT))
    status = None
    try:
        async with session.get(f"{url}/models", headers=headers, timeout=timeout) as resp:
            status = resp.status
            body = await _read_body(resp, MODELS_BODY_LIMIT if status == 200
                                    else ERROR_BODY_LIMIT, truncate=status != 200)
    except _TooLarge as exc:
        raise EngineUnavailable(f"{shown}: GET /models: {exc}, the most read; is this an "
                                "OpenAI-compatible server?") from None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        if status is not None:  # it answered, then stalled or broke off
            why = (f"did not finish in {PROBE_TIMEOUT:g} s"
                   if isinstance(exc, asyncio.TimeoutError)
                   else f"broke off ({_connection_error(exc)})")
            raise EngineUnavailable(f"{shown}: GET /models answered HTTP {status}, but the "
                                    f"answer {why}") from None
        reason = _connection_error(exc)
        if isinstance(exc, asyncio.TimeoutError):
            reason = f"no answer in {PROBE_TIMEOUT:g} s"
        raise EngineUnavailable(f"{shown}: cannot reach the server ({reason}); is it running "
                                "and is the URL right?") from None
    if status in (401, 403):
        why = (f"the API key in ${key_env} was refused" if has_key
               else f"it needs an API key (set ${key_env})")
        raise EngineUnavailable(f"{shown}: HTTP {status} from GET /models: {why}")
    if status != 200:
        raise EngineUnavailable(f"{shown}: not an OpenAI-compatible server (GET /models: "
                                f"HTTP {status}: {_error_text(body, redact)})")
    try:
        data = json.loads(body)["data"]
        models = tuple(str(m["id"]) for m in data)
        lengths = {str(m["id"]): m.get("max_model_len") for m in data}
    except (ValueError, KeyError, TypeError, RecursionError):
        raise EngineUnavailable(f"{shown}: not an OpenAI-compatible server (GET /models "
                                "did not list models)") from None
    version = None
    root = url[: -len("/v1")] if url.endswith("/v1") else url
    left = deadline - time.monotonic()
    if left > 0.1:  # optional, within what is left of the check's time
        try:
            async with session.get(f"{root}/version", headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=left)) as resp:
                if resp.status == 200:
                    text = await _read_body(resp, MODELS_BODY_LIMIT)
                    reported = json.loads(text).get("version")
                    version = _one_line(reported, 60, redact) if reported else None
        except Exception:  # servers other than vLLM have no /version
            version = None
    max_len = next((v for v in lengths.values() if isinstance(v, int)), None)
    return ServerInfo(url, models, version, max_len)


async def _probe_all(session, urls: Sequence[str], model: str | None, headers: dict[str, str],
                     key_env: str, has_key: bool, redact: Callable[[str], str]) -> ProbeResult:
    results = await asyncio.gather(
        *(_probe_one(session, u, headers, key_env, has_key, redact) for u in urls),
        return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures:
        if not isinstance(failure, EngineError):
            raise failure
    if failures:
        raise EngineUnavailable("; ".join(str(f) for f in failures))
    servers: list[ServerInfo] = list(results)  # type: ignore[arg-type]
    if model is None:
        first = servers[0]
        if len(first.models) != 1:
            listed = _models_text(first.models, redact)
            raise EngineUnavailable(f"{display_url(first.url)}: serves {len(first.models)} "
                                    f"models ({listed}); choose one with --model")
        model = first.models[0]
    missing = [s for s in servers if model not in s.models]
    if missing:
        raise EngineUnavailable("; ".join(
            f"{display_url(s.url)}: does not serve model {model!r} (it serves: "
            f"{_models_text(s.models, redact)}); pass --model with a served name"
            for s in missing))
    return ProbeResult(model, tuple(servers))


def probe_endpoints(config: EngineConfig, model: str | None) -> ProbeResult:
    """Check every endpoint of ``config.base_urls`` at start-up.

    Args:
        config: the engine configuration (``base_urls``, ``api_key_env``).
        model: the served model name to require, or None to take the one model
            the first endpoint serves (an error when it serves several).

    Returns:
        The model name to send and each server's models and version.

    Raises:
        EngineUnavailable: an endpoint is unreachable (connection refused, no
            answer within 10 s), refuses the key, is not OpenAI-compatible (its
            ``/models`` answer over :data:`MODELS_BODY_LIMIT` included), or does
            not serve ``model``. One line naming the URL(s), no secret.
    """
    import aiohttp

    key = api_key(config)
    redact = _Redactor(key)
    headers = {"Accept-Encoding": "identity"}  # uncompressed: the caps count real bytes
    if key:
        headers["Authorization"] = f"Bearer {key}"
    urls = [normalize_base_url(u) for u in config.base_urls]
    if not urls:
        raise EngineUnavailable("no base URL given (--base-url)")

    async def run() -> ProbeResult:
        async with aiohttp.ClientSession() as session:
            return await _probe_all(session, urls, model, headers, config.api_key_env,
                                    key is not None, redact)

    try:
        return _run_in_fresh_loop(run())
    except EngineError as exc:
        raise type(exc)(redact(str(exc))) from None


class HTTPEngine:
    """:class:`~selfinstruct.engines.base.Engine` over OpenAI-compatible HTTP endpoints.

    Args:
        config: ``backend``, ``base_urls``, ``api_key_env``, ``max_in_flight`` (per
            endpoint), ``request_timeout`` (s), ``max_retries``, ``retry_backoff``
            (s), ``endpoint_down_after`` (s) are used.
        model: the served model name (``--served-model-name`` of ``vllm serve``), or
            None for the one model the endpoints serve.

    Attributes:
        model_name: the served model name sent with every request.
        version: the servers' vLLM version, or "http" when they report none.
        servers: what each endpoint reported at start-up.

    Raises:
        EngineUnavailable: from the start-up check (see :func:`probe_endpoints`).
    """

    # Batch-invariant when the servers honour each request's ``seed`` (vLLM does).
    capabilities = Capabilities(batch_invariant=True, loads_weights=False,
                                finish_reasons=frozenset({"stop", "length", PROMPT_TOO_LONG}))

    def __init__(self, config: EngineConfig, model: str | None = None):
        import aiohttp

        self._aiohttp = aiohttp
        self.config = config
        key = api_key(config)
        self._redact = _Redactor(key)
        self._headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        urls = [normalize_base_url(u) for u in config.base_urls]
        if not urls:
            raise EngineUnavailable("no base URL given (--base-url)")
        self._endpoints = [_Endpoint(EndpointStats(u)) for u in urls]
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout,
                                              sock_connect=min(10.0, config.request_timeout))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="selfinstruct-http")
        self._thread.start()
        self._session = None
        self._slots: asyncio.Condition | None = None
        try:
            probe = self._call(self._open(urls, model, key is not None))
        except BaseException:
            self.close()
            raise
        self.servers = probe.servers
        self.model_name = probe.model
        self.version = probe.version

    # -- the engine interface --------------------------------------------------

    def generate(self, requests: Sequence[Request], progress: Progress | None = None
                 ) -> list[Completion]:
        """Complete a whole batch over all endpoints; see :class:`~selfinstruct.engines.base.Engine`.

        Returns:
            One completion per request, in request order; token counts from the
            server's ``usage``.

        Raises:
            EngineUnavailable: every endpoint is down, or a request still fails
                after ``max_retries`` retries.
            EngineRequestError: a request was rejected with a non-retryable 4xx.
            KeyboardInterrupt: the requests in flight are abandoned first.
        """
        if not requests:
            return []
        done: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        future = asyncio.run_coroutine_threadsafe(
            self._generate(list(requests), done.put), self._loop)
        future.add_done_callback(lambda _: done.put(None))
        try:
            while True:
                try:
                    item = done.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is None:
                    break
                if progress is not None:
                    progress(item)
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        """Close the connections and stop the private event loop (idempotent)."""
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed():
            return
        if self._session is not None and loop.is_running():
            try:
                self._call(self._session.close())
            except Exception:
                pass
            self._session = None
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            loop.close()

    def endpoint_stats(self) -> list[EndpointStats]:
        """Per-endpoint counts so far (copies)."""
        return [EndpointStats(**vars(e.stats)) for e in self._endpoints]

    def describe(self) -> dict[str, Any]:
        """The backend for the manifest: endpoints, server versions, counts; no secret."""
        return {
            "backend": "http",
            "model": self.model_name,
            "server_version": self.version,
            "max_in_flight_per_endpoint": self.config.max_in_flight,
            "endpoints": [{**vars(s), "url": display_url(s.url)} for s in self.endpoint_stats()],
        }

    # -- internals (run on the private loop) ----------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _open(self, urls: list[str], model: str | None, has_key: bool) -> ProbeResult:
        aiohttp = self._aiohttp
        self._slots = asyncio.Condition()
        # uvicorn (vllm serve) closes idle connections after 5 s: reuse them for less.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
        self._session = aiohttp.ClientSession(connector=connector)
        probe_headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        try:
            return await _probe_all(self._session, urls, model, probe_headers,
                                    self.config.api_key_env, has_key, self._redact)
        except EngineError as exc:
            raise type(exc)(self._redact(str(exc))) from None

    async def _generate(self, requests: list[Request], notify: Callable[[int], None]
                        ) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)

        async def one(index: int) -> None:
            # retries happen inside _complete: one result and one count per request
            results[index] = await self._complete(requests[index])
            notify(1)

        tasks = [asyncio.create_task(one(i)) for i in range(len(requests))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed:
                errors = [t.exception() for t in failed]
                raise next((e for e in errors if isinstance(e, EngineUnavailable)), errors[0])
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return results  # type: ignore[return-value]

    async def _complete(self, request: Request) -> Completion:
        """One request, with retries; raises EngineUnavailable / EngineRequestError."""
        from tenacity import (AsyncRetrying, retry_if_exception_type, stop_after_attempt,
                              wait_random_exponential)

        jitter = wait_random_exponential(multiplier=self.config.retry_backoff, max=BACKOFF_CAP)

        def wait(state) -> float:
            exc = state.outcome.exception() if state.outcome else None
            pause = jitter(state)
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                pause = max(pause, min(exc.retry_after, BACKOFF_CAP))
            return pause

        path, body = self._body(request)
        payload = json.dumps(body).encode()
        limit = completion_body_limit(request.sampling.max_tokens)
        last_url = self._endpoints[0].url
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.config.max_retries + 1), wait=wait,
                    retry=retry_if_exception_type(_Transient), reraise=True):
                with attempt:
                    endpoint = await self._acquire()
                    last_url = endpoint.url
                    try:
                        return await self._post(endpoint, path, payload, request.chat, limit)
                    finally:
                        await self._release(endpoint)
        except _Transient as exc:
            raise EngineUnavailable(self._redact(
                f"{display_url(last_url)}: request failed {self.config.max_retries + 1} "
                f"times, last: {exc}")) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _body(self, request: Request) -> tuple[str, dict[str, Any]]:
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "n": 1,
            "stream": False,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        for name in ("presence_penalty", "frequency_penalty"):  # sent only when set
            if getattr(sampling, name):
                body[name] = getattr(sampling, name)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.chat:
            body["messages"] = [{"role": "user", "content": request.prompt}]
            return "/chat/completions", body
        body["prompt"] = request.prompt
        return "/completions", body

    async def _acquire(self) -> _Endpoint:
        """A live endpoint with a free slot (the least loaded; ties in turn)."""
        assert self._slots is not None
        async with self._slots:
            while True:
                live = [e for e in self._endpoints if not e.stats.down]
                if not live:
                    raise EngineUnavailable(self._redact(
                        "every endpoint stopped answering: " + "; ".join(
                            f"{display_url(e.url)} ({e.stats.last_error})"
                            for e in self._endpoints)))
                free = [e for e in live if e.in_flight < self.config.max_in_flight]
                if free:
                    # an endpoint that just failed gets work only when the others are full
                    now = time.monotonic()
                    endpoint = min(free, key=lambda e: (e.suspect_until > now, e.in_flight,
                                                        e.assigned))
                    endpoint.in_flight += 1
                    endpoint.assigned += 1
                    return endpoint
                await self._slots.wait()

    async def _release(self, endpoint: _Endpoint) -> None:
        assert self._slots is not None
        async with self._slots:
            endpoint.in_flight -= 1
            self._slots.notify()

    async def _mark(self, endpoint: _Endpoint, error: str | None, unreachable: bool) -> None:
        """Record an attempt's outcome.

        A failure makes the endpoint "suspect" for a few seconds (others get the
        next requests). Unanswered attempts (connection errors, timeouts) with no
        answer in between and no pause longer than ``endpoint_down_after`` form a
        run; when a run has lasted ``endpoint_down_after`` the endpoint is down.
        """
        now = time.monotonic()
        if error is None:
            endpoint.failing_since = None
            endpoint.suspect_until = 0.0
            return
        endpoint.stats.failed_attempts += 1
        endpoint.stats.last_error = error
        down_after = self.config.endpoint_down_after
        endpoint.suspect_until = now + min(SUSPECT_SECONDS, down_after)
        if not unreachable:
            endpoint.failing_since = None  # it answered: alive, if unhappy
            return
        if endpoint.failing_since is None or now - endpoint.last_failure > down_after:
            endpoint.failing_since = now  # a new run (an old, isolated failure is forgotten)
        endpoint.last_failure = now
        if now - endpoint.failing_since >= down_after and not endpoint.stats.down:
            endpoint.stats.down = True
            left = sum(not e.stats.down for e in self._endpoints)
            then = (f"continuing on {left} other endpoint(s)" if left
                    else "no endpoint left")
            log.warning("%s", self._redact(
                f"{display_url(endpoint.url)} answered nothing for "
                f"{now - endpoint.failing_since:.0f} s ({error}); {then}"))
            assert self._slots is not None
            async with self._slots:
                self._slots.notify_all()

    async def _post(self, endpoint: _Endpoint, path: str, payload: bytes, chat: bool,
                    limit: int) -> Completion:
        """One attempt at one endpoint; an answer over ``limit`` bytes is a failure."""
        aiohttp = self._aiohttp
        status = None
        try:
            async with self._session.post(endpoint.url + path, data=payload,
                                          headers=self._headers, timeout=self._timeout) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                body = await _read_body(resp, limit if status == 200 else ERROR_BODY_LIMIT,
                                        truncate=status != 200)
        except _TooLarge as exc:  # a broken or hostile server: maybe another does better
            error = f"POST {path}: {exc}, the most read for max_tokens={_max_tokens(payload)}"
            await self._mark(endpoint, error, unreachable=False)
            raise _Transient(error) from None
        except asyncio.TimeoutError:
            error = (f"no answer in {self.config.request_timeout:g} s" if status is None else
                     f"HTTP {status}, but the answer did not finish in "
                     f"{self.config.request_timeout:g} s")
            await self._mark(endpoint, error, unreachable=True)
            raise _Transient(error, unreachable=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            error = _connection_error(exc)
            await self._mark(endpoint, error, unreachable=True)
            raise _Transient(error, unreachable=True) from None
        if status >= 500 or status in RETRY_STATUSES:
            error = f"HTTP {status}: {_error_text(body, self._redact)}"
            await self._mark(endpoint, error, unreachable=False)
            raise _Transient(error, retry_after=retry_after)
        if status == 400 and CONTEXT_LENGTH_ERROR.search(_error_text(body, self._redact)):
            return Completion("", 0, 0, PROMPT_TOO_LONG)
        if status != 200:
            await self._mark(endpoint, f"HTTP {status}", unreachable=False)
            hint = (f" (check ${self.config.api_key_env})" if status in (401, 403) else "")
            raise EngineRequestError(self._redact(
                f"{display_url(endpoint.url + path)}: HTTP {status}: "
                f"{_error_text(body, self._redact)}{hint}"))
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            reason = choice.get("finish_reason")
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            error = "malformed response: " + _one_line(body.decode("utf-8", "replace"), 120,
                                                       self._redact)
            await self._mark(endpoint, error, unreachable=False)
            raise _Transient(error) from None
        if reason not in ("stop", "length", None):  # "abort", "error": the server gave up
            error = f"finish_reason {reason!r}"
            await self._mark(endpoint, error, unreachable=False)
            raise _Transient(error)
        await self._mark(endpoint, None, unreachable=False)
        completion = Completion(
            text=text or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason="length" if reason == "length" else "stop",
        )
        endpoint.stats.requests += 1
        endpoint.stats.prompt_tokens += completion.prompt_tokens
        endpoint.stats.output_tokens += completion.output_tokens
        return completion
