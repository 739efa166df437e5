"""What goes over the wire to an OpenAI-compatible server, and what is taken back.

The pieces of the HTTP backend (:mod:`selfinstruct.engines.http`) that touch bytes
and text but hold no connection state:

* **Request bodies.** :func:`completion_request` turns a
  :class:`~selfinstruct.engines.base.Request` into the path and JSON body of
  ``/completions`` or ``/chat/completions``; a JSON schema to hold the output
  to goes in ``response_format`` (:func:`response_format`).
* **Answers.** :func:`parse_completion` reads one completion answer;
  :func:`error_text` the message of an error answer (OpenAI and FastAPI shapes).
* **Bounded reads.** :func:`read_body` reads no answer past a cap; the caps are
  :data:`MODELS_BODY_LIMIT`, :func:`completion_body_limit` and
  :data:`ERROR_BODY_LIMIT`. ``Content-Length`` is checked before reading.
* **Secrets.** :class:`Redactor` hides the API key, whole or in part, in any text
  taken from a server or shown to the user; :func:`one_line` redacts before it
  cuts, so a cut key is still caught.

Nothing here imports aiohttp at module level: the CLI's ``--help`` stays light.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import EngineConfig
from .base import Completion, Request

if TYPE_CHECKING:
    import aiohttp

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
"""4xx statuses worth retrying (besides every 5xx)."""

CONTEXT_LENGTH_ERROR = re.compile(
    r"maximum context length|longer than the maximum model length|max_model_len",
    re.IGNORECASE)
"""How an HTTP 400 says the prompt (with its ``max_tokens``) does not fit the model's
context: the wording of vLLM's OpenAI server (and of OpenAI's API). Such a request is
answered with finish reason :data:`~selfinstruct.engines.base.PROMPT_TOO_LONG`, as the
offline engine does, instead of failing the run."""


def api_key(config: EngineConfig) -> str | None:
    """The API key from ``$<engine.api_key_env>``; None when unset or empty."""
    return os.environ.get(config.api_key_env) or None


def request_headers(key: str | None, json_body: bool) -> dict[str, str]:
    """The headers of every request to a server.

    Args:
        key: the API key, sent as a Bearer token; None sends no Authorization.
        json_body: add ``Content-Type: application/json`` (POSTs).

    Returns:
        A new dict; ``Accept-Encoding: identity`` always, so the caps of
        :func:`read_body` count the bytes the server really sends.
    """
    headers = {"Content-Type": "application/json"} if json_body else {}
    headers["Accept-Encoding"] = "identity"
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


class Redactor:
    """Replaces the API key in text, whole or in part, with ``***``.

    Every run of :data:`SECRET_RUN` characters of the key (of the whole key, when
    shorter) is removed, so a key cut by truncation, split by a proxy or quoted
    in part is caught too; the key as JSON-escaped and URL-quoted text is
    covered the same way. A key shorter than 4 characters is no secret and is
    left alone (redacting it would garble every message).

    Args:
        secret: the API key, or None (then text is returned as is).

    Call it with a ``str``; it returns a ``str`` (the same object when nothing
    matched). Used for every text taken from a server, every error message of
    the HTTP backend, and the log tail of
    :class:`~selfinstruct.testing.local_server.LocalServer`.
    """

    def __init__(self, secret: str | None):
        from urllib.parse import quote

        self._runs: tuple[str, ...] = ()
        if not secret or len(secret) < 4:
            return
        runs: set[str] = set()
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


def one_line(text: str, limit: int = 300, redact: Callable[[str], str] | None = None
             ) -> str:
    """``text`` on one line, redacted (when ``redact`` is given) and then cut to
    ``limit`` characters (``...`` ending a cut line); characters that are not
    printable (terminal escapes) are escaped (``\\x1b``)."""
    line = " ".join(str(text).split())
    if not line.isprintable():
        line = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in line)
    if redact is not None:
        line = redact(line)  # before the cut: a cut key would no longer match
    return line if len(line) <= limit else line[: limit - 3] + "..."


def error_text(body: bytes, redact: Callable[[str], str]) -> str:
    """The server's error message from an error response body (OpenAI
    ``{"error": {"message"}}``, FastAPI ``{"detail"}`` or ``{"message"}`` shapes,
    else the body itself), redacted with ``redact``, then cut to one line of 300
    characters; ``"(empty body)"`` for an empty one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return one_line(body.decode("utf-8", "replace"), redact=redact) or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return one_line(error if isinstance(error, str) else json.dumps(error),
                            redact=redact)
    return one_line(json.dumps(data), redact=redact)


def completion_body_limit(max_tokens: int) -> int:
    """Bytes: the most read of a completion answer for ``max_tokens`` output tokens
    (:data:`COMPLETION_BODY_BASE` + :data:`COMPLETION_BYTES_PER_TOKEN` x ``max_tokens``)."""
    return COMPLETION_BODY_BASE + COMPLETION_BYTES_PER_TOKEN * max(int(max_tokens), 0)


def size_text(n: int) -> str:
    """A byte count for messages: "1 MiB", "1.2 MiB", "64 KiB", "12 bytes"."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


class BodyTooLarge(Exception):
    """An answer longer than its cap; the message says by how much (no URL: the
    caller adds it)."""


async def read_body(resp: aiohttp.ClientResponse, limit: int, truncate: bool = False) -> bytes:
    """The body of ``resp``, read ``limit`` bytes at most.

    Args:
        resp: an aiohttp ClientResponse whose body has not been read.
        limit: bytes.
        truncate: return the first ``limit`` bytes of a longer body instead of
            failing (error answers: only their start is shown).

    Raises:
        BodyTooLarge: the body (or its ``Content-Length``) exceeds ``limit``.
        aiohttp.ClientError, asyncio.TimeoutError: as ``resp.content.read``.
    """
    length = resp.content_length
    if not truncate and length is not None and length > limit:
        raise BodyTooLarge(f"the answer exceeded {size_text(limit)} "
                           f"(it announced {size_text(length)})")
    body = bytearray()
    while True:
        chunk = await resp.content.read(min(1 << 16, limit + 1 - len(body)))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])  # the rest is never read; the connection closes
            raise BodyTooLarge(f"the answer exceeded {size_text(limit)}")


def connection_error(exc: BaseException) -> str:
    """A short reason for a failed connection: "connection refused", not aiohttp's repr."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (RFC 9110 §10.2.3), at least 0; None when
    absent or an HTTP date (the caller's backoff applies then)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


RESPONSE_FORMAT_NAME = "output"
"""The ``name`` of every ``response_format`` sent (OpenAI requires one; vLLM ignores it)."""


def response_format(json_schema: str) -> dict[str, Any]:
    """The ``response_format`` of a request whose output must match ``json_schema``
    (JSON text of a schema): ``{"type": "json_schema", "json_schema": {"name":
    "output", "schema": <the schema as an object>}}``.

    OpenAI's shape for chat completions; vLLM 0.32's server reads it on
    ``/v1/completions`` and ``/v1/chat/completions`` alike and turns it into
    ``StructuredOutputsParams(json=<schema>)``, as the offline engine does. (Its
    own ``structured_outputs: {"json": ...}`` field means the same there, but
    servers other than vLLM do not know it; the older ``guided_json`` is ignored
    by vLLM 0.32 with only a warning in its log, leaving the output unconstrained.) ``strict``
    is not sent: OpenAI's strict mode restricts the schemas it accepts.
    """
    return {"type": "json_schema",
            "json_schema": {"name": RESPONSE_FORMAT_NAME, "schema": json.loads(json_schema)}}


def completion_request(request: Request, model: str) -> tuple[str, dict[str, Any]]:
    """The path (``/completions``, or ``/chat/completions`` for ``request.chat``)
    and JSON body asking ``model`` for one completion of ``request``.

    The body carries ``max_tokens``, ``temperature``, ``top_p``, ``n=1``, no
    streaming; ``stop``, ``presence_penalty``, ``frequency_penalty`` and ``seed``
    only when set, and ``response_format`` (:func:`response_format`) only when
    ``request.sampling.json_schema`` is. A chat request is one user message (the
    server applies the model's chat template).
    """
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
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
    if sampling.json_schema is not None:
        body["response_format"] = response_format(sampling.json_schema)
    if request.chat:
        body["messages"] = [{"role": "user", "content": request.prompt}]
        return "/chat/completions", body
    body["prompt"] = request.prompt
    return "/completions", body


class BadCompletion(Exception):
    """A 200 answer that is not a usable completion; the message is one line,
    redacted (worth retrying: another attempt or server may do better)."""


def parse_completion(body: bytes, chat: bool, redact: Callable[[str], str]) -> Completion:
    """The completion in a 200 answer of ``/completions`` (``chat`` False) or
    ``/chat/completions``.

    Returns:
        Its first choice's text; token counts from ``usage`` (0 when absent);
        finish reason "length" or "stop" (a missing one counts as "stop").

    Raises:
        BadCompletion: not JSON, no choice or text ("malformed response: <the
            first 120 characters>"), or a finish reason other than stop, length
            or none (the server aborted or failed the sequence).
    """
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        reason = choice.get("finish_reason")
        usage = data.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        raise BadCompletion("malformed response: " + one_line(
            body.decode("utf-8", "replace"), 120, redact)) from None
    if reason not in ("stop", "length", None):  # "abort", "error": the server gave up
        raise BadCompletion(f"finish_reason {reason!r}")
    return Completion(
        text=text or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason="length" if reason == "length" else "stop",
    )
