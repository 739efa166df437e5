"""The engine interface: a batch of prompts and sampling settings in, texts and token counts out.

Every backend (in-process vLLM in :mod:`.offline`, OpenAI-compatible servers in
:mod:`.http`, a Ray cluster in :mod:`.ray_replicas`, the ledger in :mod:`.recorded`)
implements :class:`Engine`, so the pipeline never knows which one runs. A whole
batch is handed over at once: vLLM's continuous batching schedules it, and the
pipeline never sends one request at a time. Completions come back one by one as
they finish (``on_done``, :data:`Done`), so the ledger records them while the
batch runs. Nothing here imports vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request.

    Attributes:
        temperature: 0 = greedy.
        top_p: nucleus mass, (0, 1].
        max_tokens: output token limit.
        stop: strings that end the completion (not included in the text).
        presence_penalty: subtracted once from the logit of every token already
            generated, in [-2, 2] (OpenAI's and vLLM's definition); > 0 discourages
            the repetition loops small models fall into.
        frequency_penalty: subtracted per earlier occurrence, in [-2, 2].
        json_schema: a JSON Schema as JSON text (the keywords vLLM's grammar
            backends support: xgrammar's, else guidance's), or None. Set, an engine whose
            :attr:`Capabilities.structured_output` is True constrains decoding so
            that the text is one JSON document valid against it (vLLM's
            "structured outputs": offline and Ray through
            ``SamplingParams(structured_outputs=...)``, HTTP through the request's
            ``response_format``); other engines ignore it and the text is free.
            Text rather than a dict, so the settings stay hashable. ``stop``
            strings and ``max_tokens`` still apply and can cut the document.

    Raises:
        ValueError: ``json_schema`` is not the JSON text of an object.
    """

    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    json_schema: str | None = None

    def __post_init__(self) -> None:
        if self.json_schema is not None:
            try:
                schema = json.loads(self.json_schema)
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"Sampling.json_schema is not JSON: {exc}") from None
            if not isinstance(schema, dict):
                raise ValueError("Sampling.json_schema must be a JSON object (a schema), "
                                 f"not {type(schema).__name__}")


@dataclass(frozen=True)
class Request:
    """One prompt to complete.

    Attributes:
        prompt: the text; with ``chat=True`` it becomes the user turn of the
            model's chat template, otherwise it is continued as is.
        sampling: the settings.
        seed: per-request sampling seed, so a request's completion does not
            depend on what else is in the batch (where the engine allows it).
        chat: wrap the prompt in the chat template.
        stage: the pipeline stage that asks ("instructions", "classification",
            "instances", ...) and ``key`` the request's key within it (a slot
            number, an instruction): the ledger's coordinates of the request.
            Engines send neither; they are for recording and accounting.
    """

    prompt: str
    sampling: Sampling
    seed: int | None = None
    chat: bool = False
    stage: str = ""
    key: str = ""


@dataclass(frozen=True)
class Completion:
    """The engine's answer to one :class:`Request`.

    Attributes:
        text: the generated text, stop string excluded.
        prompt_tokens: tokens in the prompt as the engine saw it.
        output_tokens: tokens generated.
        finish_reason: "stop" (a stop string or end of sequence), "length"
            (cut at ``max_tokens``) or :data:`PROMPT_TOO_LONG` (not sent: the
            prompt alone fills the model's context; ``text`` is empty).
    """

    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str


PROMPT_TOO_LONG = "prompt_too_long"
"""Finish reason (and the pipeline's reason code) of a request whose prompt has at
least as many tokens as the model's context (``max_model_len``): it is not sent."""


class Counted(Protocol):
    """What :meth:`EngineStats.count` reads: a :class:`Completion`, or a ledger record."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...


@dataclass
class EngineStats:
    """Token totals by stage.

    Attributes:
        requests, prompt_tokens, output_tokens: totals over all stages.
        by_stage: stage name -> {"requests", "prompt_tokens", "output_tokens"}.
    """

    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    by_stage: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, stage: str, completions: Sequence[Counted]) -> None:
        """Add a stage's completions (or the ledger's records of them) to the totals."""
        prompt = sum(c.prompt_tokens for c in completions)
        output = sum(c.output_tokens for c in completions)
        self.requests += len(completions)
        self.prompt_tokens += prompt
        self.output_tokens += output
        row = self.by_stage.setdefault(
            stage, {"requests": 0, "prompt_tokens": 0, "output_tokens": 0})
        row["requests"] += len(completions)
        row["prompt_tokens"] += prompt
        row["output_tokens"] += output


Progress = Callable[[int], None]
"""Called with the number of requests just finished, as they finish."""

Done = Callable[[int, Completion], None]
"""Called with a request's index in the batch and its completion, as each completion
is available (see :meth:`Engine.generate`); the ledger records completions through
it as they arrive (:class:`~.recorded.ChunkRecorder`)."""


class EngineError(RuntimeError):
    """A backend failed in a way the run cannot get past by itself.

    The message is one line, names the endpoint(s) concerned and never holds an
    API key. Whatever the engine finished before is in the run's ledger, so the
    run can be resumed once the cause is fixed.
    """


class EngineUnavailable(EngineError):
    """No endpoint can serve: unreachable, not serving the model, or still failing
    (connection errors, timeouts, 429, 5xx) after every retry."""


class EngineRequestError(EngineError):
    """The server rejected a request for good (a 4xx other than 408 and 429, e.g. a
    prompt longer than the context); retrying would fail again."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend promises, declared by each engine class (no probing).

    Attributes:
        batch_invariant: a request's completion depends only on the request (its
            prompt, sampling and seed), not on what else is in the batch; a resumed
            run then gives byte-equal shards. True for vLLM, which seeds each
            request's sampler; over HTTP it holds when the server honours ``seed``.
        finish_reasons: the finish reasons its completions can carry
            ("stop", "length", :data:`PROMPT_TOO_LONG`).
        loads_weights: the engine loads the model itself (offline, Ray), so
            ``--model`` is a path or hub id; otherwise it is a served model name.
        structured_output: the engine honours :attr:`Sampling.json_schema` (its
            texts are JSON valid against the schema unless cut by ``max_tokens``
            or a stop string). True for vLLM offline, the Ray replicas and HTTP (a
            server that reads OpenAI's ``response_format``: ``vllm serve`` does);
            where False the schema is ignored and a caller must parse free text.
    """

    batch_invariant: bool
    finish_reasons: frozenset[str]
    loads_weights: bool
    structured_output: bool


class Engine(Protocol):
    """What the pipeline needs of a model server.

    ``generate`` returns one :class:`Completion` per request, in request order.
    Implementations must accept the whole batch at once and raise
    :class:`EngineError` (one line) when the backend fails for good.

    ``on_done``, when given, is called once per request, on the caller's thread,
    with ``(index in requests, completion)`` as soon as that completion is
    available (in the order requests finish, not request order), and before
    ``generate`` returns; the completion is the one returned in the list. An
    exception it raises ends the batch (requests still running are abandoned)
    and propagates. What was reported before a failure of the backend stays
    reported: the caller may keep it.

    Attributes:
        model_name: the model as rows and the manifest name it.
        version: the serving software's version (vLLM's, a server's).
        capabilities: what the backend promises (:class:`Capabilities`).
    """

    model_name: str
    version: str
    capabilities: Capabilities

    def generate(self, requests: Sequence[Request], progress: Progress | None = None,
                 on_done: Done | None = None) -> list[Completion]: ...

    def describe(self) -> dict[str, Any]:
        """How the engine is hosted, for the manifest (JSON-ready; never a secret)."""
        ...

    def close(self) -> None: ...
