"""The start-up check of the HTTP backend's endpoints: ``GET /models`` and ``/version``.

Every endpoint is asked, at once, which models it serves (and its vLLM version,
when it has ``/version``): a server that is down, is not OpenAI-compatible,
refuses the key or does not serve the model fails the run in seconds, with one
line naming its URL and no secret. Each endpoint's check takes
:data:`PROBE_TIMEOUT` seconds at most, however slowly the server answers, and
reads :data:`~selfinstruct.engines.http_wire.MODELS_BODY_LIMIT` bytes at most.

:func:`probe_endpoints` runs the check on its own; its :class:`ProbeResult` can be
handed to :class:`~selfinstruct.engines.http.HTTPEngine` (``probe=``), which then
does not ask again. :func:`probe_all` is the same check on a session the caller
owns (the engine's, when it probes itself).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import EngineConfig, display_url, normalize_base_url
from .base import EngineError, EngineUnavailable
from .http_wire import (ERROR_BODY_LIMIT, MODELS_BODY_LIMIT, BodyTooLarge, Redactor, api_key,
                        connection_error, error_text, one_line, read_body, request_headers)

if TYPE_CHECKING:
    import aiohttp

PROBE_TIMEOUT = 10.0
"""Seconds the start-up check of one endpoint may take in all, ``GET /models`` and
``/version`` together, however slowly the server answers (connecting: 5)."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class ServerInfo:
    """What one endpoint said at start-up.

    Attributes:
        url: the base URL (normalized, ``.../v1``).
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
    """The start-up check of all endpoints: the model to ask for and who serves it.

    Attributes:
        model: the served model name every endpoint lists.
        servers: one :class:`ServerInfo` per endpoint, in ``base_urls`` order.
    """

    model: str
    servers: tuple[ServerInfo, ...] = field(default_factory=tuple)

    @property
    def version(self) -> str:
        """The servers' vLLM version(s), comma-separated, or "http" when none reports one."""
        versions = sorted({s.version for s in self.servers if s.version})
        return ",".join(versions) if versions else "http"

    @property
    def urls(self) -> tuple[str, ...]:
        """The base URLs checked, in order."""
        return tuple(s.url for s in self.servers)


def models_text(models: Sequence[str], redact: Callable[[str], str], most: int = 10) -> str:
    """Served model ids for a message: the first ``most``, each on one line of 100
    characters at most (a server's answer, so possibly long or hostile)."""
    if not models:
        return "none"
    shown = ", ".join(one_line(m, 100, redact) for m in models[:most])
    return shown + (f", and {len(models) - most} more" if len(models) > most else "")


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
    value: _T = box["value"]
    return value


async def _probe_one(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                     key_env: str, has_key: bool, redact: Callable[[str], str]) -> ServerInfo:
    """``GET /models`` (and ``/version``) of one endpoint, :data:`PROBE_TIMEOUT`
    seconds in all; raises EngineUnavailable (one line, redacted)."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    try:
        return await asyncio.wait_for(
            _probe_requests(session, url, headers, key_env, has_key, redact, deadline),
            PROBE_TIMEOUT + 1.0)  # a backstop: the requests' own timeouts end sooner
    except TimeoutError:
        raise EngineUnavailable(f"{display_url(url)}: the start-up check did not finish in "
                                f"{PROBE_TIMEOUT:g} s") from None


async def _probe_requests(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                          key_env: str, has_key: bool, redact: Callable[[str], str],
                          deadline: float) -> ServerInfo:
    import aiohttp

    shown = display_url(url)
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT, sock_connect=min(5.0, PROBE_TIMEOUT))
    status = None
    try:
        async with session.get(f"{url}/models", headers=headers, timeout=timeout) as resp:
            status = resp.status
            body = await read_body(resp, MODELS_BODY_LIMIT if status == 200
                                   else ERROR_BODY_LIMIT, truncate=status != 200)
    except BodyTooLarge as exc:
        raise EngineUnavailable(f"{shown}: GET /models: {exc}, the most read; is this an "
                                "OpenAI-compatible server?") from None
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if status is not None:  # it answered, then stalled or broke off
            why = (f"did not finish in {PROBE_TIMEOUT:g} s"
                   if isinstance(exc, asyncio.TimeoutError)
                   else f"broke off ({connection_error(exc)})")
            raise EngineUnavailable(f"{shown}: GET /models answered HTTP {status}, but the "
                                    f"answer {why}") from None
        reason = connection_error(exc)
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
                                f"HTTP {status}: {error_text(body, redact)})")
    try:
        data = json.loads(body)["data"]
        models = tuple(str(m["id"]) for m in data)
        lengths = {str(m["id"]): m.get("max_model_len") for m in data}
    except (ValueError, KeyError, TypeError, RecursionError):
        raise EngineUnavailable(f"{shown}: not an OpenAI-compatible server (GET /models "
                                "did not list models)") from None
    version = None
    root = url.removesuffix("/v1")
    left = deadline - time.monotonic()
    if left > 0.1:  # optional, within what is left of the check's time
        try:
            async with session.get(f"{root}/version", headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=left)) as resp:
                if resp.status == 200:
                    text = await read_body(resp, MODELS_BODY_LIMIT)
                    reported = json.loads(text).get("version")
                    version = one_line(reported, 60, redact) if reported else None
        except Exception:  # servers other than vLLM have no /version
            version = None
    max_len = next((v for v in lengths.values() if isinstance(v, int)), None)
    return ServerInfo(url, models, version, max_len)


async def probe_all(session: aiohttp.ClientSession, urls: Sequence[str], model: str | None,
                    headers: dict[str, str], key_env: str, has_key: bool,
                    redact: Callable[[str], str]) -> ProbeResult:
    """Check every endpoint of ``urls`` at once on ``session`` (an aiohttp
    ClientSession of the running loop).

    Args:
        urls: normalized base URLs (``.../v1``), at least one.
        model: as in :func:`probe_endpoints`.
        headers: sent with each GET (no Content-Type).
        key_env: the variable the key came from, for messages.
        has_key: whether ``headers`` carry a key (changes the 401/403 message).
        redact: applied to whatever a server says before it is shown.

    Raises:
        EngineUnavailable: as :func:`probe_endpoints`; every failing endpoint is
            named, joined with "; ". The caller redacts the message once more.
    """
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
            listed = models_text(first.models, redact)
            raise EngineUnavailable(f"{display_url(first.url)}: serves {len(first.models)} "
                                    f"models ({listed}); choose one with --model")
        model = first.models[0]
    missing = [s for s in servers if model not in s.models]
    if missing:
        raise EngineUnavailable("; ".join(
            f"{display_url(s.url)}: does not serve model {model!r} (it serves: "
            f"{models_text(s.models, redact)}); pass --model with a served name"
            for s in missing))
    return ProbeResult(model, tuple(servers))


def base_urls(config: EngineConfig) -> list[str]:
    """``config.base_urls`` normalized (``.../v1``), in order.

    Raises:
        EngineUnavailable: there is none ("no base URL given (--base-url)").
    """
    urls = [normalize_base_url(u) for u in config.base_urls]
    if not urls:
        raise EngineUnavailable("no base URL given (--base-url)")
    return urls


def probe_endpoints(config: EngineConfig, model: str | None) -> ProbeResult:
    """Check every endpoint of ``config.base_urls`` at start-up.

    Blocks for at most :data:`PROBE_TIMEOUT` seconds (the endpoints are checked
    at once), on a private event loop in a helper thread, so it may be called
    from a thread that runs a loop.

    Args:
        config: the engine configuration (``base_urls``, ``api_key_env``).
        model: the served model name to require, or None to take the one model
            the first endpoint serves (an error when it serves several).

    Returns:
        The model name to send and each server's models and version; pass it to
        :class:`~selfinstruct.engines.http.HTTPEngine` as ``probe=`` so the
        endpoints are not asked again.

    Raises:
        EngineUnavailable: no base URL; an endpoint is unreachable (connection
            refused, no answer within 10 s), refuses the key, is not
            OpenAI-compatible (its ``/models`` answer over
            :data:`~selfinstruct.engines.http_wire.MODELS_BODY_LIMIT` included), or
            does not serve ``model``. One line naming the URL(s), no secret.
    """
    import aiohttp

    key = api_key(config)
    redact = Redactor(key)
    headers = request_headers(key, json_body=False)
    urls = base_urls(config)

    async def run() -> ProbeResult:
        async with aiohttp.ClientSession() as session:
            return await probe_all(session, urls, model, headers, config.api_key_env,
                                   key is not None, redact)

    try:
        return _run_in_fresh_loop(run())
    except EngineError as exc:
        raise type(exc)(redact(str(exc))) from None
