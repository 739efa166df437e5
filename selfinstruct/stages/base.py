"""What every model-calling stage shares: request coordinates, seeds, token accounting.

A stage (instruction generation, classification task identification, instance
generation, and later ones) is a small unit: it builds one request per key, the
:class:`~selfinstruct.engines.recorded.RecordedEngine` answers them (ledger first),
and the stage parses and filters the answers. Adding a stage is a new module
with a :class:`CandidateStage` subclass and one line in the pipeline's loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from ..config import Config
from ..engines.base import PROMPT_TOO_LONG, Request, Sampling
from ..prompts import PromptBuilder
from ..stats import RunStats
from ..storage.ledger import RecordedRequest
from ..tasks import Candidate

Records = Mapping[str, RecordedRequest | None]
"""A stage's answers by request key; None where nothing was recorded or asked."""


def request_seed(run_seed: int, round_number: int, stage: str, key: str | int) -> int:
    """A 31-bit sampling seed for one request, a pure function of its coordinates.

    So a request's completion never depends on batch order or on which other
    requests a resumed run still had to send.
    """
    digest = hashlib.sha256(f"{run_seed}:{round_number}:{stage}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class ModelStage:
    """A stage that asks the model; subclasses set :attr:`name`.

    Args:
        config: the run configuration.
        prompts: the prompt templates.
        stats: the run's counts (updated in place).
    """

    name = ""
    """The stage's name: the ledger's ``requests-{name}.parquet`` and the seeds' salt."""

    def __init__(self, config: Config, prompts: PromptBuilder, stats: RunStats):
        self.config, self.prompts, self.stats = config, prompts, stats

    def request(self, round_number: int, key: str | int, prompt: str,
                sampling: Sampling) -> Request:
        """The request for ``key`` of this stage in ``round_number``, with its seed."""
        return Request(prompt, sampling, request_seed(self.config.seed, round_number,
                                                      self.name, key),
                       self.config.engine.chat_template, self.name, str(key))

    def count_useful(self, record: RecordedRequest, parsed: Sequence[str]) -> None:
        """Add the output tokens of ``record`` that lie inside the ``parsed`` texts.

        Estimated by characters: ``output_tokens * min(1, chars parsed / chars
        generated)``, since the ledger keeps text, not token offsets.
        """
        if record.text and record.output_tokens:
            share = min(1.0, sum(len(p) for p in parsed) / len(record.text))
            self.stats.useful_output_tokens[self.name] += round(record.output_tokens * share)


def failed_completion(key: str, record: RecordedRequest, parsed: Sequence[object]
                      ) -> Candidate | None:
    """The one candidate standing for a whole completion that gave nothing, or None.

    A completion over the context is rejected at stage "instructions" with
    ``prompt_too_long``, one in which ``parsed`` (its items or blocks) is empty with
    ``unparseable``; any other completion gives its parsed candidates instead.
    """
    if record.finish_reason != PROMPT_TOO_LONG and parsed:
        return None
    candidate = Candidate(int(key), None, "", record.prompt_task_ids, record.text)
    candidate.reject("instructions", PROMPT_TOO_LONG if record.finish_reason == PROMPT_TOO_LONG
                     else "unparseable")
    return candidate


class CandidateStage(ModelStage):
    """A stage that asks one question per kept candidate instruction (key: the instruction)."""

    def requests(self, round_number: int, kept: Sequence[Candidate]) -> list[Request]:
        """One request per candidate of ``kept``, keyed by its instruction."""
        raise NotImplementedError

    def apply(self, kept: Sequence[Candidate], records: Records) -> None:
        """Parse and filter the answers into the candidates (reject, or fill fields)."""
        raise NotImplementedError
