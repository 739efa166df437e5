"""The review page's web server: a Starlette app over one reviewer's labels.

Routes (all JSON but ``/`` and ``/static/*``):

- ``GET /``: the page (``static/index.html``; its script and style are files
  beside it, nothing is fetched from the network);
- ``GET /api/session``: the run, the reviewer, the questions, and each sampled
  example's id and whether it is answered;
- ``GET /api/examples/<id>``: one sampled example (instruction, input, output,
  round, nearest pool instruction) with its label, and the judge's verdict only
  once all three questions are answered (so the reviewer is not anchored by it);
- ``PUT /api/labels/<id>``: store the example's answers (body:
  :class:`~selfinstruct.review.labels.Answers`); the file is rewritten before the
  reply.

An unknown id is 404, a body that is not JSON 400, one with a wrong field 422,
another content type 415, a body over 64 KiB 413; each with ``{"error": ...}``
and nothing written. Only requests naming the bound host are served (a guard
against DNS rebinding), and the page may load nothing but its own files
(Content-Security-Policy).
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..quality import QUESTIONS, SCORES, column, rationale_column
from . import REVIEW_QUESTIONS, ReviewError
from .labels import Answers, LabelStore

BODY_LIMIT = 64 * 1024
"""Largest request body accepted, in bytes."""

SHOWN_COLUMNS = ("id", "task_id", "instruction", "input", "output", "round",
                 "is_classification", "nearest_instruction", "nearest_rouge_l")
"""Row columns the page shows (those the run has)."""

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def static_dir() -> Path:
    """The directory of the page's files inside the installed package."""
    return Path(str(resources.files("selfinstruct.review") / "static"))


@dataclass
class ReviewSession:
    """What one review server serves: the sampled examples and the reviewer's labels.

    Attributes:
        run: the run directory's name (shown as the page's title).
        examples: one dict per sampled example, in review order, with the
            columns of :data:`SHOWN_COLUMNS` the run has, ``key`` (its content
            key), ``stratum``, and for a judged run ``judge`` (scores, rationales,
            judge name, reason).
        store: the reviewer's open :class:`~selfinstruct.review.labels.LabelStore`.
        scale: the judge's score scale ``(min, max)``.
    """

    run: str
    examples: list[dict[str, Any]]
    store: LabelStore
    scale: tuple[int, int] = (1, 5)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {str(e["id"]): k for k, e in enumerate(self.examples)}

    @property
    def judged(self) -> bool:
        """Whether the examples carry a judge's verdict."""
        return any(e.get("judge") is not None for e in self.examples)

    def answered(self) -> int:
        """How many sampled examples have all three answers."""
        return sum(1 for e in self.examples if self.complete(e))

    def complete(self, example: dict[str, Any]) -> bool:
        """Whether ``example`` has all three answers."""
        label = self.store.get(example["key"])
        return label is not None and label.answers.complete


def session_examples(frame: pd.DataFrame, positions: list[int], keys: list[str],
                     strata: list[str | None]) -> list[dict[str, Any]]:
    """The display dicts of :class:`ReviewSession` for rows ``positions`` of ``frame``
    (``keys`` and ``strata`` aligned with ``positions``)."""
    shown = [c for c in SHOWN_COLUMNS if c in frame.columns]
    judged = column("overall") in frame.columns
    out = []
    for position, key, stratum in zip(positions, keys, strata, strict=True):
        row = frame.iloc[position]
        example = {c: _plain(row[c]) for c in shown}
        example["id"] = str(example["id"])
        example.update(key=key, stratum=stratum)
        if judged:
            example["judge"] = {
                "scores": {s: _plain(row.get(column(s))) for s in SCORES},
                "rationales": {q: _plain(row.get(rationale_column(q))) or "" for q in QUESTIONS},
                "judge": _plain(row.get("quality_judge")),
                "reason": _plain(row.get("quality_reason")),
            }
        out.append(example)
    return out


def _plain(value: Any) -> Any:
    """A JSON-ready scalar: numpy scalars to Python, NaN/NA to None."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response that does not
    set them itself, so the static files and error answers carry them too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                message["headers"] = headers.raw
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(session: ReviewSession, allowed_hosts: list[str] | None = None) -> Starlette:
    """The review app over ``session``.

    Args:
        allowed_hosts: ``Host`` header values served (default: the loopback
            names); ``["*"]`` serves any.
    """

    def example_json(k: int) -> dict[str, Any]:
        example = session.examples[k]
        label = session.store.get(example["key"])
        done = label is not None and label.answers.complete
        data = {c: example.get(c) for c in (*SHOWN_COLUMNS, "stratum") if c in example}
        data.update(position=k, label=None if label is None else label.as_json(),
                    judge=example.get("judge") if done else None)
        return data

    async def page(request: Request) -> Response:
        return FileResponse(static_dir() / "index.html", headers=SECURITY_HEADERS)

    async def session_info(request: Request) -> Response:
        first_open = next((k for k, e in enumerate(session.examples)
                           if not session.complete(e)), None)
        return JSONResponse({
            "run": session.run,
            "reviewer": session.store.reviewer,
            "labels_file": str(session.store.path),
            "questions": [{"name": q, "text": REVIEW_QUESTIONS[q]} for q in QUESTIONS],
            "size": len(session.examples),
            "answered": session.answered(),
            "judged": session.judged,
            "scale": list(session.scale),
            "first_open": first_open,
            "examples": [{"id": e["id"], "complete": session.complete(e)}
                         for e in session.examples],
        }, headers=SECURITY_HEADERS)

    def lookup(request: Request) -> int | JSONResponse:
        example_id = request.path_params["example_id"]
        k = session.index.get(example_id)
        if k is None:
            return _error(404, f"no sampled example with id {example_id!r}")
        return k

    async def get_example(request: Request) -> Response:
        k = lookup(request)
        if isinstance(k, JSONResponse):
            return k
        return JSONResponse(example_json(k), headers=SECURITY_HEADERS)

    async def put_label(request: Request) -> Response:
        k = lookup(request)
        if isinstance(k, JSONResponse):
            return k
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return _error(415, "send the answers as application/json")
        body = await request.body()
        if len(body) > BODY_LIMIT:
            return _error(413, f"body over {BODY_LIMIT} bytes")
        try:
            answers = Answers.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(body)"
            status = 400 if first["type"] == "json_invalid" else 422
            return _error(status, f"field '{where}': {first['msg']}")
        example = session.examples[k]
        try:
            session.store.put(example["id"], example["key"], answers)
        except OSError as exc:
            return _error(500, f"{session.store.path}: cannot write: {exc.strerror}")
        return JSONResponse({**example_json(k), "answered": session.answered()},
                            headers=SECURITY_HEADERS)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no such page: {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}")

    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]"]
    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/api/session", session_info, methods=["GET"]),
            Route("/api/examples/{example_id}", get_example, methods=["GET"]),
            Route("/api/labels/{example_id}", put_label, methods=["PUT"]),
            Mount("/static", StaticFiles(directory=static_dir()), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders),
                    Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={404: not_found, 405: not_allowed},
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises:
        ReviewError: the port is in use, not allowed, or the host is unknown.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ReviewError(f"--host {host}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        import errno

        if exc.errno == errno.EADDRINUSE:
            raise ReviewError(f"{host}:{port}: the port is in use; choose another --port, or "
                              "leave it out for a free one") from None
        raise ReviewError(f"{host}:{port}: cannot listen: {exc.strerror}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The page's address for a socket from :func:`bind`."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C or SIGTERM (uvicorn, one process)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
