"""Terminal output of a run: live progress bars and the closing summary table (rich).

Text from data (rejection reasons built from config words, paths, model
names) is printed through :func:`~selfinstruct.terminal.rich_safe`, and both
consoles escape control characters in whatever else they render
(:func:`~selfinstruct.terminal.safe_console`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table

from .stats import RunStats
from .terminal import rich_safe, safe_console

console = safe_console(stderr=True)
"""Progress, warnings and errors go to stderr; the summary table to stdout."""

_STAGE_NAMES = {
    "instructions": "generating instructions",
    "classification": "identifying classification tasks",
    "instances": "generating instances",
    "judging": "judging examples",
}


def _top_reasons(stats: RunStats, n: int = 3) -> str:
    common = stats.rejections.most_common(n)
    return rich_safe(", ".join(f"{reason} {count}" for reason, count in common) or "none",
                     newlines=False)


class RichReporter:
    """A :class:`~selfinstruct.pipeline.Reporter` drawing two bars and a status line.

    The first bar counts tasks written against the target (with kept/generated,
    the commonest rejection reasons and output tokens/s); the second follows the
    engine requests of the current stage. Use as a context manager.

    Args:
        target: what the first bar counts up to.
        unit: its label.
        status: the text beside it after each round (default: the kept share,
            the commonest rejections and the output tokens/s).
    """

    def __init__(self, target: int, unit: str = "tasks written",
                 status: Callable[[RunStats], str] | None = None):
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False,
        )
        self._overall = self._progress.add_task(unit, total=target, info="")
        self._status = status
        self._stage = self._progress.add_task("starting", total=1, info="", visible=False)
        self._round = 1
        self._started = time.perf_counter()

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def stage(self, name: str, total: int) -> None:
        """Show the new stage's request bar (``name``: a stage, or stages joined by
        "+" when overlapped rounds share the engine call)."""
        stages = " + ".join(_STAGE_NAMES.get(part, part) for part in name.split("+"))
        label = f"round {self._round}: {stages}"
        self._progress.reset(self._stage, total=max(total, 1), completed=0, description=label,
                             visible=True)

    def advance(self, n: int) -> None:
        """Move the request bar."""
        self._progress.advance(self._stage, n)

    def round_done(self, stats: RunStats) -> None:
        """Update the overall bar and its status text."""
        self._round = stats.rounds + 1
        if self._status is not None:
            self._progress.update(self._overall, completed=stats.tasks_written,
                                  info=rich_safe(self._status(stats)))
            return
        info = (f"kept {stats.kept_instructions}/{stats.candidates} instructions · "
                f"rejected: {_top_reasons(stats)} · "
                f"{stats.live_tokens_per_second:.0f} output tok/s")
        self._progress.update(self._overall, completed=stats.tasks_written, info=info)


def print_summary(stats: RunStats, output: Path, startup_seconds: float,
                  backend: str | None = None) -> None:
    """Print the closing table: counts, rejections by reason, tokens, time, where the shards are.

    ``backend`` (e.g. "http: 2 endpoints") is shown when given.
    """
    out = safe_console()
    table = Table(title="selfinstruct generate", show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    kept_rate = stats.kept_instructions / stats.candidates if stats.candidates else 0.0
    cls_share = stats.classification_tasks / stats.tasks_written if stats.tasks_written else 0.0
    loop = stats.seconds - startup_seconds  # the engine starts lazily, inside the loop
    rows = [
        ("rounds (replayed from the ledger)", f"{stats.rounds} ({stats.replayed_rounds})"),
        ("candidate instructions", f"{stats.candidates}"),
        ("kept after instruction filters", f"{stats.kept_instructions} ({kept_rate:.1%})"),
        ("new tasks written", f"{stats.tasks_written}"),
        ("instances written (rows)", f"{stats.rows_written}"),
        ("classification tasks", f"{stats.classification_tasks} ({cls_share:.1%})"),
        ("requests (sent now)", f"{stats.engine.requests} ({stats.live_requests})"),
        ("prompt / output tokens", f"{stats.engine.prompt_tokens} / {stats.engine.output_tokens}"),
        ("useful share of output tokens", f"{stats.useful_token_share:.1%}"),
        ("output tokens/s (engine time)", f"{stats.live_tokens_per_second:.1f}"),
        ("engine start-up", f"{startup_seconds:.1f} s" if startup_seconds else "not started"),
        ("loop wall time, start-up excluded (engine share)",
         f"{loop:.1f} s ({stats.live_seconds / loop:.0%})" if loop > 0 else "0 s"),
        ("time in the engine / in our own code",
         f"{stats.live_seconds:.1f} s / {max(loop - stats.live_seconds, 0.0):.1f} s"),
    ]
    if backend:
        rows.insert(6, ("engine backend", backend))
    for name, value in rows:
        table.add_row(name, rich_safe(value))
    for reason, count in stats.rejections.most_common():
        table.add_row(f"rejected: {rich_safe(reason)}", f"{count}")
    for reason, count in stats.instance_rejections.most_common():
        table.add_row(f"instances dropped: {rich_safe(reason)}", f"{count}")
    out.print(table)
    out.print(f"Shards and manifest in {rich_safe(output)}/")
