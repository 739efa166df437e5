"""The HTTP backend's endpoints while a run goes on: who gets the next request, who is down.

:class:`EndpointPool` holds one :class:`Endpoint` per base URL and hands out
request slots on the engine's event loop:

* **Spreading.** Up to ``max_in_flight`` requests are in flight per endpoint;
  each new one goes to the live endpoint with the fewest in flight (ties: the one
  given fewest so far, so in turn).
* **Suspects.** An endpoint that just failed is passed over for
  :data:`SUSPECT_SECONDS` (at most ``down_after``) while another has room, so a
  retry goes elsewhere.
* **Down.** One that answers nothing (only connection errors and timeouts) for
  ``down_after`` seconds gets no more requests; when none is left,
  :meth:`EndpointPool.acquire` raises
  :class:`~selfinstruct.engines.base.EngineUnavailable`.

:class:`EndpointStats` is what the manifest records of each endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import display_url
from .base import Completion, EngineUnavailable

log = logging.getLogger("selfinstruct.engines.http")  # the backend's one logger

SUSPECT_SECONDS = 5.0
"""Seconds an endpoint that just failed is passed over while another has room."""


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
class Endpoint:
    """One endpoint's live state (changed only on the engine's loop, by the pool).

    Attributes:
        stats: its counts (see :class:`EndpointStats`).
        in_flight: requests sent and not yet answered.
        assigned: requests (attempts) given to it so far.
        failing_since: monotonic start of the current run of unanswered
            attempts, or None.
        last_failure: monotonic time of the last unanswered attempt.
        suspect_until: monotonic time until which other endpoints are preferred.
    """

    stats: EndpointStats
    in_flight: int = 0
    assigned: int = 0
    failing_since: float | None = None
    last_failure: float = 0.0
    suspect_until: float = 0.0

    @property
    def url(self) -> str:
        """The base URL (``.../v1``)."""
        return self.stats.url


class EndpointPool:
    """The endpoints of one engine and their request slots.

    Args:
        urls: normalized base URLs, at least one.
        max_in_flight: requests in flight per endpoint (``engine.max_in_flight``).
        down_after: seconds of unanswered attempts after which an endpoint is
            down (``engine.endpoint_down_after``).
        redact: applied to every message made here (a server's error text is in it).

    The ``async`` methods must run on one event loop (the engine's).
    """

    def __init__(self, urls: Sequence[str], max_in_flight: int, down_after: float,
                 redact: Callable[[str], str]):
        self.endpoints = [Endpoint(EndpointStats(u)) for u in urls]
        self.max_in_flight = max_in_flight
        self.down_after = down_after
        self._redact = redact
        self._slots = asyncio.Condition()  # binds to the loop of its first use

    def stats(self) -> list[EndpointStats]:
        """Per-endpoint counts so far (copies), in ``urls`` order."""
        return [EndpointStats(**vars(e.stats)) for e in self.endpoints]

    async def acquire(self) -> Endpoint:
        """A live endpoint with a free slot (the least loaded; ties in turn); waits
        while all are full.

        Raises:
            EngineUnavailable: every endpoint is down (each named with its last error).
        """
        async with self._slots:
            while True:
                live = [e for e in self.endpoints if not e.stats.down]
                if not live:
                    raise EngineUnavailable(self._redact(
                        "every endpoint stopped answering: " + "; ".join(
                            f"{display_url(e.url)} ({e.stats.last_error})"
                            for e in self.endpoints)))
                free = [e for e in live if e.in_flight < self.max_in_flight]
                if free:
                    # an endpoint that just failed gets work only when the others are full
                    now = time.monotonic()
                    endpoint = min(free, key=lambda e: (e.suspect_until > now, e.in_flight,
                                                        e.assigned))
                    endpoint.in_flight += 1
                    endpoint.assigned += 1
                    return endpoint
                await self._slots.wait()

    async def release(self, endpoint: Endpoint) -> None:
        """Give back the slot :meth:`acquire` gave (after every attempt)."""
        async with self._slots:
            endpoint.in_flight -= 1
            self._slots.notify()

    async def mark(self, endpoint: Endpoint, error: str | None, unreachable: bool) -> None:
        """Record an attempt's outcome: ``error`` None for an answer, else one line.

        A failure makes the endpoint "suspect" for a few seconds (others get the
        next requests). Unanswered attempts (``unreachable``: connection errors,
        timeouts) with no answer in between and no pause longer than
        ``down_after`` form a run; when a run has lasted ``down_after`` the
        endpoint is down (logged once, as a warning) and waiting requests are woken.
        """
        now = time.monotonic()
        if error is None:
            endpoint.failing_since = None
            endpoint.suspect_until = 0.0
            return
        endpoint.stats.failed_attempts += 1
        endpoint.stats.last_error = error
        down_after = self.down_after
        endpoint.suspect_until = now + min(SUSPECT_SECONDS, down_after)
        if not unreachable:
            endpoint.failing_since = None  # it answered: alive, if unhappy
            return
        if endpoint.failing_since is None or now - endpoint.last_failure > down_after:
            endpoint.failing_since = now  # a new run (an old, isolated failure is forgotten)
        endpoint.last_failure = now
        if now - endpoint.failing_since >= down_after and not endpoint.stats.down:
            endpoint.stats.down = True
            left = sum(not e.stats.down for e in self.endpoints)
            then = (f"continuing on {left} other endpoint(s)" if left
                    else "no endpoint left")
            log.warning("%s", self._redact(
                f"{display_url(endpoint.url)} answered nothing for "
                f"{now - endpoint.failing_since:.0f} s ({error}); {then}"))
            async with self._slots:
                self._slots.notify_all()

    @staticmethod
    def count(endpoint: Endpoint, completion: Completion) -> None:
        """Count a completed request and its tokens at ``endpoint`` (once per request)."""
        endpoint.stats.requests += 1
        endpoint.stats.prompt_tokens += completion.prompt_tokens
        endpoint.stats.output_tokens += completion.output_tokens
