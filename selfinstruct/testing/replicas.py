"""Stand-in engines for the Ray backend's replicas, for tests only (no vLLM).

:class:`ScriptedReplicas` is an engine factory for
:class:`~selfinstruct.engines.ray_replicas.RayEngine` (``engine_factory=``): every
replica builds a :class:`ScriptedReplicaEngine`, which answers the pipeline's
stages as :class:`~selfinstruct.testing.scripted.ScriptedEngine` does, and any
other request with a JSON echo of it (prompt, seed, whether it carries a schema,
and the replica's process id), so a test sees which replica answered what. It
can be told to fail while starting, to fail a request, or to die (its process
exits at once, as a crashed engine's would).

The factory is a module-level class, so Ray ships it to the replicas by name:
``selfinstruct`` must be importable there, as for the real engine.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import EngineConfig
from ..engines.base import Completion, EngineRequestError, Progress, Request
from .scripted import ScriptedEngine

DIE = "die now"
"""A prompt at which :class:`ScriptedReplicaEngine` ends its process (``os._exit``)."""

REJECT = "reject this"
"""A prompt that :class:`ScriptedReplicaEngine` rejects (:class:`EngineRequestError`)."""


def echo(request: Request) -> Completion:
    """The JSON echo of a request that is not one of the pipeline's stages."""
    text = json.dumps({"prompt": request.prompt, "seed": request.seed,
                       "schema": request.sampling.json_schema is not None,
                       "pid": os.getpid()})
    return Completion(text, len(request.prompt.split()), request.sampling.max_tokens, "stop")


@dataclass(frozen=True)
class ScriptedReplicas:
    """An engine factory (``(model_path, model_name, config, seed) -> Engine``) of
    :class:`ScriptedReplicaEngine` s.

    Attributes:
        fail_start: a message; every replica raises ``RuntimeError(fail_start)``
            while starting. None: they start.
        seconds_per_request: how long each request takes (so that a call lasts long
            enough for the driver to ask the replicas how far they are).
    """

    fail_start: str | None = None
    seconds_per_request: float = 0.0

    def __call__(self, model_path: str, model_name: str, config: EngineConfig,
                 seed: int) -> ScriptedReplicaEngine:
        if self.fail_start is not None:
            raise RuntimeError(self.fail_start)
        return ScriptedReplicaEngine(model_name, self.seconds_per_request)


class ScriptedReplicaEngine:
    """A replica's engine: :class:`ScriptedEngine` answers, :func:`echo` for other stages.

    Attributes:
        built: engines built in this process (a replica builds one).
    """

    built = 0
    version = "scripted"
    capabilities = ScriptedEngine.capabilities

    def __init__(self, model_name: str, seconds_per_request: float = 0.0):
        type(self).built += 1
        self.model_name = model_name
        self._seconds = seconds_per_request
        self._scripted = ScriptedEngine(other=echo)
        self.closed = False

    def generate(self, requests: Sequence[Request], progress: Progress | None = None
                 ) -> list[Completion]:
        """Answer a batch, ticking ``progress`` once per request.

        Raises:
            EngineRequestError: a request's prompt is :data:`REJECT`.
        """
        out = []
        for request in requests:
            if request.prompt == DIE:
                os._exit(3)
            if request.prompt == REJECT:
                raise EngineRequestError("the scripted replica rejects this request")
            if self._seconds:
                time.sleep(self._seconds)
            out.append(self._scripted.answer(request))
            if progress is not None:
                progress(1)
        return out

    def describe(self) -> dict[str, Any]:
        """The engine for the manifest, with the engines built in this process."""
        return {"backend": "scripted", "version": self.version, "built": type(self).built}

    def close(self) -> None:
        self.closed = True
