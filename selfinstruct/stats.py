"""The counts of a run: candidates, kept instructions, tasks, rows, reasons, tokens.

Filled by the pipeline and its stages, shown by the progress display and the
summary, and written into the manifest (``stats``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .engines.base import EngineStats
from .engines.recorded import LiveStats


@dataclass
class RunStats:
    """Counts of a run so far (replayed rounds included).

    Attributes:
        rounds: rounds committed.
        replayed_rounds: of which replayed from the ledger in this process.
        candidates: instructions parsed (or unparseable completions) in total.
        kept_instructions: instructions that passed every instruction filter.
        tasks_written: new tasks written (with >= 1 instance).
        rows_written: instances written (one row each).
        classification_tasks: of the written tasks, classification ones.
        rejections: reason code -> count, over candidates.
        instance_rejections: reason code -> count of dropped instances.
        judged: examples judged (judged runs).
        judge_failures: "ok", or the reason an example has no verdict
            (``judge_unparseable``, ``prompt_too_long``, ``not_judged``) -> count.
        selection: the ``keep_best`` selection's counts (budgeted runs), else None.
        engine: token totals of every request the run used (recorded or live),
            by stage.
        useful_output_tokens: stage -> output tokens inside what the stage's
            parser took (list items, instances, a yes/no answer), estimated per
            completion as its output tokens times the parsed share of its
            characters; the rest went into repeats, truncated items, chatter.
        live: the requests this process sent to the live engine (shared with
            the :class:`~selfinstruct.engines.recorded.RecordedEngine`).
        seconds: wall time of the loop in this process.
    """

    rounds: int = 0
    replayed_rounds: int = 0
    candidates: int = 0
    kept_instructions: int = 0
    tasks_written: int = 0
    rows_written: int = 0
    classification_tasks: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    instance_rejections: Counter[str] = field(default_factory=Counter)
    judged: int = 0
    judge_failures: Counter[str] = field(default_factory=Counter)
    selection: dict[str, Any] | None = None
    engine: EngineStats = field(default_factory=EngineStats)
    useful_output_tokens: Counter[str] = field(default_factory=Counter)
    live: LiveStats = field(default_factory=LiveStats)
    seconds: float = 0.0

    @property
    def live_requests(self) -> int:
        """Requests sent to the live engine by this process."""
        return self.live.requests

    @property
    def live_output_tokens(self) -> int:
        """Their output tokens."""
        return self.live.output_tokens

    @property
    def live_seconds(self) -> float:
        """Wall time spent inside the live engine's ``generate`` in this process."""
        return self.live.seconds

    @property
    def live_tokens_per_second(self) -> float:
        """Output tokens per second of engine time in this process."""
        return self.live.output_tokens / self.live.seconds if self.live.seconds else 0.0

    @property
    def useful_token_share(self) -> float:
        """Useful output tokens over all output tokens of the requests used (0 when none)."""
        total = self.engine.output_tokens
        return sum(self.useful_output_tokens.values()) / total if total else 0.0

    def by_stage(self) -> dict[str, dict[str, int]]:
        """Requests, prompt, output and useful output tokens of each stage."""
        return {stage: {**row, "useful_output_tokens": self.useful_output_tokens[stage]}
                for stage, row in self.engine.by_stage.items()}

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready counts (for the manifest)."""
        return {
            "rounds": self.rounds,
            "candidates": self.candidates,
            "kept_instructions": self.kept_instructions,
            "tasks_written": self.tasks_written,
            "rows_written": self.rows_written,
            "classification_tasks": self.classification_tasks,
            "rejections": dict(sorted(self.rejections.items())),
            "instance_rejections": dict(sorted(self.instance_rejections.items())),
            **({"quality": {"judged": self.judged,
                            "verdicts": dict(sorted(self.judge_failures.items()))}}
               if self.judged else {}),
            **({"selection": self.selection} if self.selection is not None else {}),
            "engine": {
                "requests": self.engine.requests,
                "prompt_tokens": self.engine.prompt_tokens,
                "output_tokens": self.engine.output_tokens,
                "live_requests": self.live_requests,
                "live_output_tokens": self.live_output_tokens,
                "live_seconds": round(self.live_seconds, 3),
                "live_output_tokens_per_second": round(self.live_tokens_per_second, 2),
                "useful_output_tokens": sum(self.useful_output_tokens.values()),
                "useful_token_share": round(self.useful_token_share, 4),
                "by_stage": self.by_stage(),
            },
            "seconds": round(self.seconds, 3),
        }
