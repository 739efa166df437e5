"""The engines: one interface (:mod:`.base`), one module per backend, a registry by name.

========== ============================ ===========================================
backend    module                       what runs the model
========== ============================ ===========================================
``vllm``   :mod:`.offline`              ``vllm.LLM`` in this process (the default)
``http``   :mod:`.http`                 OpenAI-compatible servers (``vllm serve``)
``ray``    :mod:`.ray_replicas`         long-lived vLLM replicas (Ray actors)
(ledger)   :mod:`.recorded`             a run's ledger, in front of one of the above
========== ============================ ===========================================

A backend is chosen by ``engine.backend`` through :func:`backend`; its module is
imported only when it is prepared or started, so ``selfinstruct --help`` and the
commands that need no engine never import aiohttp, Ray or vLLM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import (PROMPT_TOO_LONG, Capabilities, Completion, Done, Engine, EngineError,
                   EngineRequestError, EngineStats, EngineUnavailable, Progress, Request,
                   Sampling)

if TYPE_CHECKING:
    from ..config import Config
    from ..models import ResolvedModel

__all__ = ["BACKENDS", "PROMPT_TOO_LONG", "Backend", "Capabilities", "Completion", "Done",
           "Engine", "EngineError", "EngineRequestError", "EngineStats", "EngineUnavailable",
           "Prepared", "Progress", "Request", "Sampling", "backend"]


@dataclass(frozen=True)
class Prepared:
    """A backend checked and its model resolved, before any engine starts.

    Attributes:
        model: the model the run records (path or hub id, or a served name).
        probe: what checking the backend found (the HTTP endpoints' answers), handed
            to the engine so that nothing is asked twice; None for other backends.
    """

    model: ResolvedModel
    probe: Any = None


@dataclass(frozen=True)
class Backend:
    """One way of running the model.

    Attributes:
        name: the ``engine.backend`` value.
        prepare: resolves the model and checks the backend (seconds: endpoints are
            asked ``GET /models``); raises ``ModelError`` or :class:`EngineError`.
        start: starts the engine (``(config, prepared) -> Engine``); for vLLM and
            Ray this loads the model (~30 s for the embedded one on 2 CPU cores).
        starting: the line printed when the engine starts, from the config and
            the model name.
        label: how the run's summary names the backend.
    """

    name: str
    prepare: Callable[[Config], Prepared]
    start: Callable[[Config, Prepared], Engine]
    starting: Callable[[Config, str], str]
    label: Callable[[Config], str]


def _prepare_vllm(config: Config) -> Prepared:
    from ..models import resolve_model

    return Prepared(resolve_model(config.model))


def _start_vllm(config: Config, prepared: Prepared) -> Engine:
    from .offline import VLLMEngine

    return VLLMEngine(prepared.model.path, prepared.model.name, config.engine, config.seed)


def _prepare_http(config: Config) -> Prepared:
    from ..models import ResolvedModel
    from .http import probe_endpoints

    probe = probe_endpoints(config.engine, config.model)
    return Prepared(ResolvedModel(path=probe.model, name=probe.model, source="http"), probe)


def _start_http(config: Config, prepared: Prepared) -> Engine:
    from .http import HTTPEngine

    return HTTPEngine(config.engine, prepared.model.name, probe=prepared.probe)


def _http_starting(config: Config, model_name: str) -> str:
    from ..config import display_url  # the one renderer of URLs: never a secret

    urls = config.engine.base_urls
    return (f"Sending requests for {model_name} to {len(urls)} endpoint(s): "
            f"{', '.join(display_url(u) for u in urls)}")


def _http_label(config: Config) -> str:
    n = len(config.engine.base_urls)
    return f"http ({n} endpoint{'s' * (n > 1)})"


def _prepare_ray(config: Config) -> Prepared:
    from .ray_replicas import check_ray_installed

    check_ray_installed()
    return _prepare_vllm(config)


def _start_ray(config: Config, prepared: Prepared) -> Engine:
    from .ray_replicas import RayEngine

    return RayEngine(prepared.model.path, prepared.model.name, config.engine, config.seed)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("vllm", _prepare_vllm, _start_vllm,
            lambda config, name: f"Loading {name} with vLLM ...", lambda config: "vllm"),
    Backend("http", _prepare_http, _start_http, _http_starting, _http_label),
    Backend("ray", _prepare_ray, _start_ray,
            lambda config, name: f"Starting the Ray replicas of {name} ...",
            lambda config: "ray"),
)}
"""Every backend by name; ``engine.backend`` takes exactly these values."""


def backend(name: str) -> Backend:
    """The backend called ``name``.

    Raises:
        EngineError: no such backend (the config model allows only the names of
            :data:`BACKENDS`, so this means a caller's mistake).
    """
    try:
        return BACKENDS[name]
    except KeyError:
        raise EngineError(f"unknown engine backend {name!r}; one of "
                          f"{', '.join(BACKENDS)}") from None
