"""The HTTP backend: any OpenAI-compatible server (``vllm serve`` first) behind :class:`Engine`.

A stage's whole batch is sent at once, asynchronously, to every endpoint given:

* **Saturation.** Up to ``engine.max_in_flight`` requests are in flight per
  endpoint, each new one going to the live endpoint with the fewest in flight
  (ties in turn), so a server's continuous batch is refilled the moment a
  sequence finishes. The pipeline's batch size (``--prompts-per-round``) is
  what fills them: keep it at least ``max_in_flight`` x endpoints.
* **Prompts.** Plain requests go to ``/completions`` (the paper's prompts are
  list continuations); ``Request.chat`` ones to ``/chat/completions``, where the
  server applies the model's own chat template. A request's JSON schema
  (``Sampling.json_schema``) is sent as OpenAI's ``response_format`` on either
  path; ``vllm serve`` constrains the output to it.
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
  retries). The pipeline has then recorded every finished stage and every answer
  of the stage in progress that arrived: resuming asks only for the rest.
* **Secrets.** The API key is read from the environment variable named by
  ``engine.api_key_env`` and sent as a Bearer token; it is never logged, stored
  or put in an error message: every text taken from a server is redacted
  (the key, and any run of 8 of its characters, become ``***``) before it is
  cut to length, so a server that echoes the Authorization header shows
  nothing of it. URLs are shown only as :func:`~selfinstruct.config.display_url`
  renders them (no user name, password or query, which base URLs cannot hold).
* **Bounded reads.** No answer is read past a cap: 1 MiB for ``GET /models``
  and ``/version`` (:data:`~.http_wire.MODELS_BODY_LIMIT`), 1 MiB + 256 bytes per
  ``max_tokens`` for a completion (:func:`~.http_wire.completion_body_limit`),
  64 KiB of an error answer (the rest is not read). An answer over its cap fails
  with one line naming the URL and the cap; ``Content-Length`` is checked before
  reading.

Start-up lists ``GET /models`` on every endpoint (:func:`probe_endpoints`): a
server that is down, or does not serve the model, fails in seconds with one line
naming its URL. A caller that has run that check already passes its result
(``HTTPEngine(config, model, probe=result)``) and the endpoints are not asked again.

The engine is synchronous outside (``generate`` blocks and returns completions in
request order) and runs an asyncio loop with one aiohttp session in a private
thread; progress and ``on_done`` callbacks are made on the caller's thread, as
each answer arrives, so the ledger records answers while the batch runs.

The backend's modules: this one (the engine: its loop, batches and retries),
:mod:`~selfinstruct.engines.http_endpoints` (spreading, suspect and dead
endpoints, per-endpoint counts), :mod:`~selfinstruct.engines.http_probe` (the
start-up check) and :mod:`~selfinstruct.engines.http_wire` (request bodies,
answers, size caps, the redactor). The names callers use are importable from here.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import EngineConfig, display_url
from .base import (PROMPT_TOO_LONG, Capabilities, Completion, Done, EngineError,
                   EngineRequestError, EngineUnavailable, Progress, Request)
from .http_endpoints import Endpoint, EndpointPool, EndpointStats
from .http_probe import ProbeResult, ServerInfo, base_urls, probe_all, probe_endpoints
from .http_wire import (CONTEXT_LENGTH_ERROR, ERROR_BODY_LIMIT, RETRY_STATUSES, BadCompletion,
                        BodyTooLarge, Redactor, api_key, completion_body_limit,
                        completion_request, connection_error, error_text, parse_completion,
                        parse_retry_after, read_body, request_headers)

if TYPE_CHECKING:
    import aiohttp
    from tenacity import RetryCallState

__all__ = ["EndpointStats", "HTTPEngine", "ProbeResult", "ServerInfo", "api_key",
           "probe_endpoints"]

BACKOFF_CAP = 30.0
"""Seconds: the widest backoff window of a retry."""

_T = TypeVar("_T")


class _Transient(Exception):
    """One attempt failed in a way another attempt may not (internal)."""

    def __init__(self, message: str, retry_after: float | None = None,
                 unreachable: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable


class HTTPEngine:
    """:class:`~selfinstruct.engines.base.Engine` over OpenAI-compatible HTTP endpoints.

    Args:
        config: ``backend``, ``base_urls``, ``api_key_env``, ``max_in_flight`` (per
            endpoint), ``request_timeout`` (s), ``max_retries``, ``retry_backoff``
            (s), ``endpoint_down_after`` (s) are used.
        model: the served model name (``--served-model-name`` of ``vllm serve``), or
            None for the one model the endpoints serve (with ``probe``: the
            probe's model).
        probe: the result of an earlier :func:`probe_endpoints` of the same
            ``config.base_urls``. Given, the endpoints are not checked again (no
            ``GET /models`` or ``/version`` is sent), and the model, versions and
            servers are the probe's. None (the default): the engine checks every
            endpoint itself as it starts.

    Attributes:
        model_name: the served model name sent with every request.
        version: the servers' vLLM version, or "http" when they report none.
        servers: what each endpoint reported at start-up.

    Raises:
        EngineUnavailable: no base URL, or from the start-up check (see
            :func:`probe_endpoints`).
        ValueError: ``probe`` checked other URLs than ``config.base_urls``
            (normalized, in order), or is for another model than ``model``.
    """

    # Batch-invariant when the servers honour each request's ``seed`` (vLLM does).
    # Structured output when the servers read ``response_format`` (vLLM does, on
    # both paths); one that rejects it fails the batch with a 400.
    capabilities = Capabilities(batch_invariant=True, loads_weights=False,
                                finish_reasons=frozenset({"stop", "length", PROMPT_TOO_LONG}),
                                structured_output=True)

    def __init__(self, config: EngineConfig, model: str | None = None,
                 probe: ProbeResult | None = None):
        import aiohttp

        self._aiohttp = aiohttp
        self.config = config
        key = api_key(config)
        self._redact = Redactor(key)
        self._headers = request_headers(key, json_body=True)
        urls = base_urls(config)
        if probe is not None:
            _check_probe(probe, urls, model)
        self._pool = EndpointPool(urls, config.max_in_flight, config.endpoint_down_after,
                                  self._redact)
        self._timeout = aiohttp.ClientTimeout(total=config.request_timeout,
                                              sock_connect=min(10.0, config.request_timeout))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="selfinstruct-http")
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        try:
            probe = self._call(self._open(urls, model, key is not None, probe))
        except BaseException:
            self.close()
            raise
        self.servers = probe.servers
        self.model_name = probe.model
        self.version = probe.version

    # -- the engine interface --------------------------------------------------

    def generate(self, requests: Sequence[Request], progress: Progress | None = None,
                 on_done: Done | None = None) -> list[Completion]:
        """Complete a whole batch over all endpoints (see :class:`~.base.Engine`).

        ``progress`` and ``on_done`` are called on this thread as each answer
        arrives (the private loop hands each one over through a queue).

        Returns:
            One completion per request, in request order; token counts from the
            server's ``usage``.

        Raises:
            EngineUnavailable: every endpoint is down, or a request still fails
                after ``max_retries`` retries (the answers reported to ``on_done``
                before that stay valid).
            EngineRequestError: a request was rejected with a non-retryable 4xx.
            KeyboardInterrupt: the requests in flight are abandoned first.
        """
        if not requests:
            return []
        done: queue.SimpleQueue[tuple[int, Completion] | None] = queue.SimpleQueue()
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
                if on_done is not None:
                    on_done(*item)
                if progress is not None:
                    progress(1)
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
        return self._pool.stats()

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

    async def _open(self, urls: list[str], model: str | None, has_key: bool,
                    probe: ProbeResult | None) -> ProbeResult:
        """Open the session; check the endpoints unless ``probe`` did already."""
        aiohttp = self._aiohttp
        # uvicorn (vllm serve) closes idle connections after 5 s: reuse them for less.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
        self._session = aiohttp.ClientSession(connector=connector)
        if probe is not None:
            return probe
        probe_headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        try:
            return await probe_all(self._session, urls, model, probe_headers,
                                   self.config.api_key_env, has_key, self._redact)
        except EngineError as exc:
            raise type(exc)(self._redact(str(exc))) from None

    async def _generate(self, requests: list[Request],
                        notify: Callable[[tuple[int, Completion]], None]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)

        async def one(index: int) -> None:
            # retries happen inside _complete: one result and one report per request
            completion = await self._complete(requests[index])
            results[index] = completion
            notify((index, completion))

        tasks = [asyncio.create_task(one(i)) for i in range(len(requests))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed:
                errors = [exc for t in failed if (exc := t.exception()) is not None]
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

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            pause = jitter(state)
            if isinstance(exc, _Transient) and exc.retry_after is not None:
                pause = max(pause, min(exc.retry_after, BACKOFF_CAP))
            return pause

        path, body = completion_request(request, self.model_name)
        payload = json.dumps(body).encode()
        limit = completion_body_limit(request.sampling.max_tokens)
        last_url = self._pool.endpoints[0].url
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self.config.max_retries + 1), wait=wait,
                    retry=retry_if_exception_type(_Transient), reraise=True):
                with attempt:
                    endpoint = await self._pool.acquire()
                    last_url = endpoint.url
                    try:
                        return await self._post(endpoint, path, payload, request, limit)
                    finally:
                        await self._pool.release(endpoint)
        except _Transient as exc:
            raise EngineUnavailable(self._redact(
                f"{display_url(last_url)}: request failed {self.config.max_retries + 1} "
                f"times, last: {exc}")) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, endpoint: Endpoint, path: str, payload: bytes, request: Request,
                    limit: int) -> Completion:
        """One attempt at one endpoint; an answer over ``limit`` bytes is a failure."""
        aiohttp = self._aiohttp
        mark = self._pool.mark
        session = self._session
        assert session is not None, "the session is opened in __init__"
        status = None
        try:
            async with session.post(endpoint.url + path, data=payload,
                                          headers=self._headers, timeout=self._timeout) as resp:
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                body = await read_body(resp, limit if status == 200 else ERROR_BODY_LIMIT,
                                       truncate=status != 200)
        except BodyTooLarge as exc:  # a broken or hostile server: maybe another does better
            error = (f"POST {path}: {exc}, the most read for "
                     f"max_tokens={request.sampling.max_tokens}")
            await mark(endpoint, error, unreachable=False)
            raise _Transient(error) from None
        except TimeoutError:
            error = (f"no answer in {self.config.request_timeout:g} s" if status is None else
                     f"HTTP {status}, but the answer did not finish in "
                     f"{self.config.request_timeout:g} s")
            await mark(endpoint, error, unreachable=True)
            raise _Transient(error, unreachable=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            error = connection_error(exc)
            await mark(endpoint, error, unreachable=True)
            raise _Transient(error, unreachable=True) from None
        if status >= 500 or status in RETRY_STATUSES:
            error = f"HTTP {status}: {error_text(body, self._redact)}"
            await mark(endpoint, error, unreachable=False)
            raise _Transient(error, retry_after=retry_after)
        if status == 400 and CONTEXT_LENGTH_ERROR.search(error_text(body, self._redact)):
            return Completion("", 0, 0, PROMPT_TOO_LONG)
        if status != 200:
            await mark(endpoint, f"HTTP {status}", unreachable=False)
            hint = (f" (check ${self.config.api_key_env})" if status in (401, 403) else "")
            raise EngineRequestError(self._redact(
                f"{display_url(endpoint.url + path)}: HTTP {status}: "
                f"{error_text(body, self._redact)}{hint}"))
        try:
            completion = parse_completion(body, request.chat, self._redact)
        except BadCompletion as exc:
            await mark(endpoint, str(exc), unreachable=False)
            raise _Transient(str(exc)) from None
        await mark(endpoint, None, unreachable=False)
        EndpointPool.count(endpoint, completion)
        return completion


def _check_probe(probe: ProbeResult, urls: Sequence[str], model: str | None) -> None:
    """Refuse a probe of other endpoints or of another model than the engine's
    (a caller's mistake, so ValueError, not an engine error)."""
    if list(probe.urls) != list(urls):
        raise ValueError(f"the probe checked {len(probe.urls)} endpoint(s) "
                         f"({', '.join(display_url(u) for u in probe.urls) or 'none'}), not "
                         f"the engine's ({', '.join(display_url(u) for u in urls)})")
    if model is not None and model != probe.model:
        raise ValueError(f"the probe is for model {probe.model!r}, not {model!r}")
