"""HTTP stand-ins for the HTTP backend tests, on 127.0.0.1 in a background thread.

* :class:`FakeOpenAI`: a tiny OpenAI-compatible server (``/v1/models``,
  ``/v1/completions``, ``/v1/chat/completions``, ``/version``) whose answers are
  derived from the prompt, with scripted faults per request and attempt.
* :class:`FaultProxy`: a reverse proxy in front of a real server that injects
  500s, 429s, delays past the client's timeout and dropped connections into a
  set share of the POST requests, and counts what it delivered.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web


class _BackgroundApp:
    """An aiohttp application served on 127.0.0.1:<free port> from its own thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        raise NotImplementedError

    def _submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                                     shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port or 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def start(self):
        if not self._thread.is_alive():
            self._thread.start()
        self._submit(self._start())
        return self

    def stop(self) -> None:
        """Stop listening (the port refuses connections afterwards)."""
        if self._runner is not None:
            self._submit(self._runner.cleanup())
            self._runner = None

    def close(self) -> None:
        self.stop()
        self._submit(self._aclose())
        self._submit(self._cancel_pending())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    async def _cancel_pending(self) -> None:
        """Cancel handlers still sleeping (delay faults), so none is left pending."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _aclose(self) -> None:
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


Fault = Callable[[dict, int], "str | tuple[str, float] | None"]
"""(request body, attempt number of this prompt, 1-based) -> None (answer), "500",
"429", "400", "401", ("delay", seconds), "drop" or "malformed"."""


class FakeOpenAI(_BackgroundApp):
    """A fake OpenAI-compatible server.

    Answers ``text = "echo: " + prompt`` (chat: the user message), or ``answer(body)``
    when ``answer`` is given, with usage
    ``prompt_tokens = len(prompt.split())``, ``completion_tokens = 3``, and
    ``finish_reason = "length"`` when ``max_tokens < 8``.

    Attributes:
        bodies: every completion request body received, in arrival order.
        attempts: prompt -> attempts received.
        answered: prompt -> 200 answers sent.
        max_concurrent: the most completion requests handled at once.
        authorizations: Authorization headers received.
        gets: path -> GET requests received (``/v1/models``, ``/version``).
    """

    def __init__(self, models=("fake-model",), fault: Fault | None = None,
                 delay: float = 0.0, echo_auth_in_errors: bool = False,
                 retry_after: str = "0", answer: Callable[[dict], str] | None = None):
        super().__init__()
        self.answer = answer
        self.retry_after = retry_after
        self.models = list(models)
        self.fault = fault
        self.delay = delay
        self.echo_auth_in_errors = echo_auth_in_errors
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.attempts: Counter = Counter()
        self.answered: Counter = Counter()
        self.authorizations: list[str | None] = []
        self.gets: Counter = Counter()
        self.concurrent = 0
        self.max_concurrent = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/version", self._version)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        self.gets[request.path] += 1
        self.authorizations.append(request.headers.get("Authorization"))
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "max_model_len": 2048} for m in self.models]})

    async def _version(self, request: web.Request) -> web.Response:
        self.gets[request.path] += 1
        return web.json_response({"version": "0.0-fake"})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        self.bodies.append(body)
        self.paths.append(request.path)
        self.authorizations.append(request.headers.get("Authorization"))
        self.attempts[prompt] += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            action = self.fault(body, self.attempts[prompt]) if self.fault else None
            if self.delay:
                await asyncio.sleep(self.delay)
            if isinstance(action, tuple) and action[0] == "delay":
                await asyncio.sleep(action[1])
                action = None
            if action == "drop":
                request.transport.close()
                raise asyncio.CancelledError
            if action in ("500", "429", "400", "401", "503"):
                status = int(action)
                message = f"injected {status}"
                if self.echo_auth_in_errors:
                    message += f" for {request.headers.get('Authorization')}"
                headers = {"Retry-After": self.retry_after} if status == 429 else None
                return web.json_response({"error": {"message": message, "code": status}},
                                         status=status, headers=headers)
            if action == "context":  # the wording of vLLM's OpenAI server
                return web.json_response({"error": {
                    "message": "This model's maximum context length is 2048 tokens. However, "
                               "you requested 4000 tokens (3900 in the messages, 100 in the "
                               "completion). Please reduce the length of the messages or "
                               "completion.", "type": "BadRequestError", "code": 400}},
                    status=400)
            if action == "malformed":
                return web.Response(text="{not json", content_type="application/json")
            if (model := body.get("model")) and model not in self.models:
                return web.json_response(
                    {"error": {"message": f"The model `{model}` does not exist."}},
                    status=404)
            text = self.answer(body) if self.answer else "echo: " + prompt
            finish = "length" if body.get("max_tokens", 16) < 8 else "stop"
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": finish} if chat else
                      {"index": 0, "text": text, "finish_reason": finish})
            self.answered[prompt] += 1
            return web.json_response({
                "id": "x", "object": "chat.completion" if chat else "text_completion",
                "model": body.get("model"), "choices": [choice],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 3,
                          "total_tokens": len(prompt.split()) + 3}})
        finally:
            self.concurrent -= 1


@dataclass
class ProxyCounts:
    """What a :class:`FaultProxy` saw and did."""

    posts: int = 0
    delivered_ok: int = 0
    slowest: float = 0.0  # seconds of the slowest upstream answer to a POST
    refused: int = 0  # requests closed unanswered after ``die_after``
    faults: Counter = field(default_factory=Counter)
    by_path: Counter = field(default_factory=Counter)


class FaultProxy(_BackgroundApp):
    """A reverse proxy to ``upstream`` (``http://host:port``) injecting faults.

    Each POST is, with probability ``rate`` (from a seeded RNG), answered by one
    fault chosen evenly from ``kinds``:

    * ``500`` / ``429``: an error response, the upstream never asked;
    * ``delay``: the proxy waits ``delay`` seconds (past the client's timeout)
      and closes the connection, the upstream never asked;
    * ``drop``: the connection is closed without an answer; half of the drops
      happen after the upstream has answered (its work is thrown away).

    GETs (``/v1/models``, ``/version``) pass through untouched. With ``die_after``
    set, the proxy plays a server that died: once it has delivered that many
    successful POSTs, it closes every later connection (GETs too) unanswered.
    """

    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 0,
                 kinds=("500", "429", "delay", "drop"), delay: float = 5.0,
                 die_after: int | None = None):
        super().__init__()
        self.die_after = die_after
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.rng = random.Random(seed)
        self.kinds = tuple(kinds)
        self.delay = delay
        self.counts = ProxyCounts()
        self._session: ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request, data: bytes) -> tuple[int, bytes, str]:
        if self._session is None:
            self._session = ClientSession(connector=TCPConnector(limit=0),
                                          timeout=ClientTimeout(total=None))
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "authorization")}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         data=data or None, headers=headers) as resp:
            return resp.status, await resp.read(), resp.content_type

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        data = await request.read()
        if self.die_after is not None and self.counts.delivered_ok >= self.die_after:
            self.counts.refused += 1
            request.transport.close()
            raise asyncio.CancelledError
        kind = None
        if request.method == "POST":
            self.counts.posts += 1
            self.counts.by_path[request.path] += 1
            if self.rng.random() < self.rate:
                kind = self.rng.choice(self.kinds)
                self.counts.faults[kind] += 1
        if kind in ("500", "429"):
            return web.json_response({"error": {"message": f"injected {kind}"}},
                                     status=int(kind))
        if kind == "delay":
            await asyncio.sleep(self.delay)
            request.transport.close()
            raise asyncio.CancelledError
        if kind == "drop" and self.rng.random() < 0.5:
            request.transport.close()
            raise asyncio.CancelledError
        started = time.perf_counter()
        status, body, content_type = await self._forward(request, data)
        if request.method == "POST":
            self.counts.slowest = max(self.counts.slowest, time.perf_counter() - started)
        if kind == "drop":  # the upstream did the work; the client never hears of it
            request.transport.close()
            raise asyncio.CancelledError
        response = web.Response(status=status, body=body, content_type=content_type)
        await response.prepare(request)
        await response.write_eof()
        if request.method == "POST" and status == 200:
            self.counts.delivered_ok += 1
        return response


def by_prompt(bodies: list[dict]) -> dict[str, list[dict]]:
    """Request bodies grouped by prompt (chat: the user message)."""
    out: dict[str, list[dict]] = defaultdict(list)
    for body in bodies:
        prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        out[prompt].append(body)
    return out


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)


class HostileOpenAI(FakeOpenAI):
    """A :class:`FakeOpenAI` that answers chosen paths as a hostile or broken server.

    Args:
        behaviours: path (``/v1/models``, ``/version``, ``/v1/completions``,
            ``/v1/chat/completions``) -> one of

            * ``"endless"``: HTTP 200, a chunked body that never ends, written as
              fast as the client reads it;
            * ``"endless_error"``: the same with HTTP 500;
            * ``"trickle"``: HTTP 200, then one byte a second, never ending;
            * ``"huge_length"``: HTTP 200 announcing a 10 GiB body
              (``Content-Length``), then a few bytes and silence;
            * ``"echo_auth"``: HTTP ``status`` with an OpenAI-shaped error whose
              message is ``padding`` x's, then the request's Authorization header
              (a server that echoes what it got, as some proxies do).
        status: the status of ``echo_auth`` answers.
        padding: characters before the echoed header (to place the key across
            the point where an error message is cut).
        **kwargs: passed to :class:`FakeOpenAI` (paths without a behaviour answer
            as it does).

    Attributes:
        sent: path -> body bytes written to clients so far.
    """

    def __init__(self, behaviours: dict[str, str], status: int = 500, padding: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.behaviours = dict(behaviours)
        self.status = status
        self.padding = padding
        self.sent: Counter = Counter()

    def app(self) -> web.Application:
        app = web.Application()
        normal = {"/v1/models": ("GET", self._models), "/version": ("GET", self._version),
                  "/v1/completions": ("POST", self._complete),
                  "/v1/chat/completions": ("POST", self._complete)}
        for path, (method, handler) in normal.items():
            if path in self.behaviours:
                handler = self._hostile
            app.router.add_route(method, path, handler)
        return app

    async def _hostile(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            await request.read()
        self.authorizations.append(request.headers.get("Authorization"))
        behaviour = self.behaviours[request.path]
        if behaviour == "echo_auth":
            message = "x" * self.padding + f"{request.headers.get('Authorization')}"
            return web.json_response({"error": {"message": message, "code": self.status}},
                                     status=self.status)
        response = web.StreamResponse(
            status=500 if behaviour == "endless_error" else 200,
            headers={"Content-Type": "application/json"})
        if behaviour == "huge_length":
            response.content_length = 10 * 1024**3
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b'{"data": [' + b" " * (64 * 1024 - 10)
        try:
            if behaviour == "huge_length":
                await response.write(b'{"data": [')
                await asyncio.sleep(3600)
            while True:
                if behaviour == "trickle":
                    await asyncio.sleep(1.0)
                    data = b" "
                else:
                    data = chunk
                await response.write(data)
                self.sent[request.path] += len(data)
        except (ConnectionError, RuntimeError):  # the client hung up
            pass
        return response
