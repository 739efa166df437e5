"""The statistics of a run, as one JSON-ready dict.

``selfinstruct inspect`` and the dataset card of ``selfinstruct export`` both
rest on :func:`collect_statistics`, a pure function of the run's rows (a pandas
DataFrame) and its ``manifest.json``. Everything the terminal tables, the
figures and the HTML page show is read from that dict, so ``inspect --json``
holds every number a figure is drawn from.

What it measures (Self-Instruct, Wang et al., ACL 2023, §3.2 "Diversity" and
Table 1, applied to the user's own run):

* counts per stage (candidates, kept after the instruction filters, tasks with
  instances, tasks and rows written) and rejections by reason code;
* candidates, kept rate and tasks per round (candidates and kept rate from the
  run's ledger, :mod:`selfinstruct.storage.ledger`; runs without one get tasks
  and rows per round from the shards' ``round`` column and rejection totals from
  the manifest);
* the classification share (Table 1);
* lengths of instructions, non-empty inputs and outputs, in words and, when the
  run's tokenizer is on disk, in model tokens (Figure 5);
* each new instruction's ROUGE-L F1 to its most similar seed instruction
  (Figure 4), computed exactly as the dedup filter does;
* the commonest leading verbs and their direct objects (Figure 3,
  :mod:`selfinstruct.analysis.verbs`);
* for a judged run, the judge's scores (§3.3's questions;
  :mod:`selfinstruct.analysis.quality`);
* with a reference dataset (``inspect --reference``, e.g. the Alpaca data), the
  same measures on both sides and their differences
  (:mod:`selfinstruct.analysis.reference`);
* for a run checked against evaluation sets, what each set and method flagged
  and a sample of matches (:mod:`selfinstruct.analysis.decontamination`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..filters import word_count
from .decontamination import decontamination_statistics
from .loading import RunData
from .quality import quality_statistics
from .review import review_statistics
from .sources import Rejections, SeedSource, TokenizerSource, rejection_summary
from .verbs import resolve_verb_parser, verb_statistics
from .where import json_ready, sample_rows

STATS_FORMAT = "selfinstruct-inspect/1"

ROUGE_BIN = 0.05
"""Width of the ROUGE-L histogram bins (Figure 4 uses bins of this order)."""


def token_counts(tokenizer: Any, texts: Sequence[str], batch: int = 1024) -> list[int]:
    """Model tokens per text, without special tokens (batched fast tokenization)."""
    counts: list[int] = []
    for start in range(0, len(texts), batch):
        encoded = tokenizer(list(texts[start:start + batch]), add_special_tokens=False,
                            return_attention_mask=False, return_token_type_ids=False)
        counts.extend(len(ids) for ids in encoded["input_ids"])
    return counts


def distribution(values: Sequence[float] | np.ndarray, bins: int = 30,
                 integer: bool = True) -> dict[str, Any]:
    """Summary and histogram of non-negative values.

    Returns:
        ``{"count", "mean", "min", "p50", "p90", "p99", "max", "histogram":
        {"edges", "counts", "over"}}``: the histogram spans 0 to (about) the
        99th percentile in ``bins`` bins; ``over`` counts values beyond its last
        edge. With ``integer`` the bin width is a whole number. Empty input
        gives count 0 and nulls.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {"count": 0, "mean": None, "min": None, "p50": None, "p90": None, "p99": None,
                "max": None, "histogram": {"edges": [], "counts": [], "over": 0}}
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    top = max(float(p99), 1.0)
    if integer:
        width = max(1, math.ceil((top + 1) / bins))
        edges = np.arange(0, top + width + 1, width, dtype=np.float64)
    else:
        edges = np.linspace(0.0, top, bins + 1)
    counts, _ = np.histogram(data[data <= edges[-1]], bins=edges)

    def num(x: float) -> float | int:
        return int(x) if integer and float(x).is_integer() else round(float(x), 4)

    return {"count": int(data.size), "mean": round(float(data.mean()), 2),
            "min": num(data.min()), "p50": num(p50), "p90": num(p90), "p99": num(p99),
            "max": num(data.max()),
            "histogram": {"edges": [num(e) for e in edges], "counts": counts.tolist(),
                          "over": int((data > edges[-1]).sum())}}


def task_instructions(frame: pd.DataFrame) -> list[str]:
    """One instruction per task (first row of each ``task_id``), in row order."""
    return frame.drop_duplicates("task_id")["instruction"].tolist()


def length_statistics(frame: pd.DataFrame, count: Callable[[Sequence[str]], list[int]]
                      ) -> dict[str, Any]:
    """Length distributions (Self-Instruct Figure 5) in the unit ``count`` measures.

    Instructions are counted once per task; inputs only where non-empty (the
    paper's "non-empty inputs"); outputs once per row.
    """
    inputs = [t for t in frame["input"].tolist() if t]
    return {"instruction": distribution(count(task_instructions(frame))),
            "input": distribution(count(inputs)),
            "output": distribution(count(frame["output"].tolist()))}


def rouge_to_seeds(instructions: Sequence[str], seeds: Sequence[str], threshold: float = 0.7,
                   tokenizer: str = "rouge", closest: int = 5) -> dict[str, Any]:
    """ROUGE-L F1 of each instruction to its most similar seed (Self-Instruct Figure 4).

    Scores are exactly those of the dedup filter (``rouge_score``'s tokenizer
    and F1; :class:`selfinstruct.dedup.RougeIndex`).

    Args:
        instructions: the new instructions, one per task.
        seeds: seed instructions.
        threshold: the run's dedup threshold, for the share above it.
        tokenizer: ``"rouge"`` or ``"unicode"``, as the run used.
        closest: how many highest-overlap pairs to list.

    Returns:
        ``distribution`` fields over the scores, with a fixed histogram of
        :data:`ROUGE_BIN`-wide bins over [0, 1], ``above_threshold``, and
        ``closest``: ``[{"instruction", "seed", "rouge_l"}]``, highest first.
    """
    from ..dedup import RougeIndex

    index = RougeIndex(threshold=threshold, tokenizer=tokenizer)
    index.extend(seeds)
    scores = np.zeros(len(instructions))
    nearest: list[int | None] = []
    for k, text in enumerate(instructions):
        hit, score = index.nearest(text)
        nearest.append(hit)
        scores[k] = score
    summary = distribution(scores, integer=False)
    edges = np.round(np.arange(0.0, 1.0 + ROUGE_BIN / 2, ROUGE_BIN), 4)
    counts, _ = np.histogram(scores, bins=edges)
    summary["histogram"] = {"edges": edges.tolist(), "counts": counts.tolist(), "over": 0}
    order = np.argsort(-scores, kind="stable")[:closest]
    summary.update({
        "threshold": threshold, "tokenizer": tokenizer, "seeds": len(seeds),
        "above_threshold": int((scores > threshold).sum()),
        "closest": [{"instruction": instructions[i], "seed": index[nearest[i]],
                     "rouge_l": round(float(scores[i]), 4)}
                    for i in order if nearest[i] is not None],
    })
    return summary


# -- counts, stages, rounds ------------------------------------------------------


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def count_statistics(run: RunData) -> dict[str, Any]:
    """Headline counts: rows, tasks, rounds, candidates, kept, classification share.

    Manifest totals where there is a manifest; counts from the rows otherwise
    (``None`` where a plain file cannot say).
    """
    frame = run.frame
    tasks = frame.drop_duplicates("task_id")
    flags = tasks["is_classification"]
    known = flags.notna() & flags.map(lambda v: isinstance(v, (bool, np.bool_)))
    cls_tasks = int(flags[known].astype(bool).sum()) if bool(known.any()) else None
    stats = run.stats
    rounds = pd.to_numeric(frame["round"], errors="coerce").dropna()
    return {
        "rows": len(frame),
        "tasks": len(tasks),
        "rounds": _int_or_none(stats.get("rounds")) if stats else
        (int(rounds.nunique()) if len(rounds) else None),
        "candidates": _int_or_none(stats.get("candidates")),
        "kept_instructions": _int_or_none(stats.get("kept_instructions")),
        "tasks_written": _int_or_none(stats.get("tasks_written")),
        "rows_written": _int_or_none(stats.get("rows_written")),
        "classification_tasks": cls_tasks,
        "classification_share": round(cls_tasks / len(tasks), 4)
        if cls_tasks is not None and len(tasks) else None,
        "empty_inputs": int((frame["input"] == "").sum()),
        "duplicate_rows": int(frame.duplicated(["instruction", "input", "output"]).sum()),
    }


def stage_statistics(counts: dict[str, Any], rejections: Rejections) -> list[dict[str, Any]]:
    """The funnel: ``[{"stage", "count", "kept_of_previous"}]`` from candidates to rows.

    "tasks with valid instances" is kept instructions minus the task-stage
    rejections other than ``over_target``; it exceeds "tasks written" by the
    tasks the last round made beyond the target.
    """
    stages: list[tuple[str, int | None]] = []
    if counts["candidates"] is not None:
        kept = counts["kept_instructions"]
        failed = sum(v for k, v in rejections.task.items() if k != "over_target")
        with_instances = kept - failed if kept is not None else None
        stages += [("candidate instructions", counts["candidates"]),
                   ("kept after instruction filters and ROUGE-L", kept),
                   ("tasks with valid instances", with_instances)]
    stages += [("tasks written", counts["tasks"]), ("instances written (rows)", counts["rows"])]
    out = []
    previous: int | None = None
    for k, (name, count) in enumerate(stages):
        ratio = (round(count / previous, 4) if k and previous and count is not None
                 and not name.startswith("instances") else None)
        out.append({"stage": name, "count": count, "kept_of_previous": ratio})
        previous = count
    return out


def round_statistics(frame: pd.DataFrame, rejections: Rejections) -> list[dict[str, Any]]:
    """Per round: tasks and rows written (shards), classification tasks, and
    candidates / kept / kept rate where the ledger provides them (else None)."""
    rounds = pd.to_numeric(frame["round"], errors="coerce")
    if rounds.isna().all() and not rejections.rounds:
        return []
    numbers = sorted({int(r) for r in rounds.dropna()} | set(rejections.rounds))
    out = []
    for number in numbers:
        rows = frame[rounds == number]
        tasks = rows.drop_duplicates("task_id")
        ledger = rejections.rounds.get(number)
        flags = tasks["is_classification"].dropna()
        out.append({
            "round": number,
            "tasks_written": len(tasks),
            "rows": len(rows),
            "classification_tasks": int(flags.astype(bool).sum()) if len(flags) else None,
            "candidates": ledger["candidates"] if ledger else None,
            "kept": ledger["kept"] if ledger else None,
            "kept_rate": round(ledger["kept"] / ledger["candidates"], 4)
            if ledger and ledger["candidates"] else None,
        })
    return out


# -- everything together ---------------------------------------------------------


def collect_statistics(run: RunData, seeds: SeedSource | None = None,
                       tokenizer: TokenizerSource | None = None, *, sample: int = 0,
                       where: Sequence[str] = (), verb_parser: Any = "auto",
                       reference: RunData | None = None) -> dict[str, Any]:
    """Every statistic of a run, as one JSON-ready dict (format :data:`STATS_FORMAT`).

    Args:
        run: from :func:`selfinstruct.analysis.loading.load_run`.
        seeds: for the ROUGE-L overlap (None: skipped with a note).
        tokenizer: for model-token lengths (None: words only).
        sample: rows to include under ``"samples"``; where: their filters.
        verb_parser: see :func:`selfinstruct.analysis.verbs.verb_statistics`.
        reference: a dataset to compare the run with (``inspect --reference``),
            loaded by :func:`selfinstruct.analysis.loading.load_run`.

    Returns:
        ``{"format", "source", "model", "seeds", "counts", "stages",
        "rejections", "rounds", "lengths", "rouge_to_seeds", "pool_rouge",
        "verbs", "samples", "notes"}``; absent measurements are None with a note.
        A judged run (shards with quality columns) adds ``"quality"``
        (:func:`selfinstruct.analysis.quality.quality_statistics`); other runs
        and plain files have no such key. A run directory with review labels
        (``review/labels-*.parquet``) adds ``"review"``
        (:func:`selfinstruct.analysis.review.review_statistics`). A run checked
        against evaluation sets (a ``decontaminate`` output, or ``generate`` /
        ``refilter`` with ``[decontamination]``) adds ``"decontamination"``
        (:func:`selfinstruct.analysis.decontamination.decontamination_statistics`).
        With ``reference``, ``"reference"`` holds the comparison
        (:func:`selfinstruct.analysis.reference.reference_statistics`).

    Raises:
        InspectError: a bad ``where`` expression.
    """
    frame = run.frame
    notes = list(run.notes)
    verb_parser = resolve_verb_parser(verb_parser)  # once, for the run and the reference
    from .reference import reference_statistics  # it builds on this module's functions
    rejections = rejection_summary(run)
    if rejections.note:
        notes.append(rejections.note)
    counts = count_statistics(run)
    instructions = task_instructions(frame)
    status = (run.manifest or {}).get("status")
    if status and status != "complete":
        notes.append(f"run status '{status}': the counts cover its committed rounds only")

    lengths: dict[str, Any] = {
        "words": length_statistics(frame, lambda texts: [word_count(t) for t in texts]),
        "tokens": None, "tokenizer": None}
    if tokenizer is not None and tokenizer.tokenizer is not None:
        lengths["tokens"] = length_statistics(
            frame, lambda texts: token_counts(tokenizer.tokenizer, texts))
        lengths["tokenizer"] = tokenizer.name
        lengths["tokenizer_label"] = tokenizer.label or Path(str(tokenizer.name)).name
    elif tokenizer is not None and tokenizer.note:
        notes.append(tokenizer.note)

    filters = run.config.get("filters") or {}
    threshold = float(filters.get("rouge_threshold", 0.7))
    rouge_tok = filters.get("rouge_tokenizer", "rouge")
    overlap = None
    if seeds is not None and seeds.instructions:
        overlap = rouge_to_seeds(instructions, seeds.instructions, threshold, rouge_tok)
    else:
        notes.append((seeds.note if seeds is not None and seeds.note else "no seeds given")
                     + ": ROUGE-L overlap with seeds not computed")

    pool = None
    if "nearest_rouge_l" in frame.columns:
        tasks = frame.drop_duplicates("task_id")
        values = pd.to_numeric(tasks["nearest_rouge_l"], errors="coerce")
        pool = distribution(values.fillna(0.0).to_numpy(), integer=False)
        pool["without_overlap"] = int(values.isna().sum())

    quality, quality_notes = quality_statistics(run)
    notes.extend(quality_notes)
    review, review_notes = review_statistics(run)
    notes.extend(review_notes)
    decontamination, decontamination_notes = decontamination_statistics(run)
    notes.extend(decontamination_notes)

    stats_json: dict[str, Any] = {
        "format": STATS_FORMAT,
        "source": {"path": str(run.path), "kind": run.kind, "status": status},
        "model": (run.manifest or {}).get("model"),
        "seeds": {"path": seeds.path if seeds else None,
                  "tasks": len(seeds.instructions) if seeds else 0,
                  "manifest_tasks": ((run.manifest or {}).get("seeds") or {}).get("tasks")},
        "config": {"filters": filters or None,
                   "generation": run.config.get("generation"),
                   "instances": run.config.get("instances")},
        "counts": counts,
        "stages": stage_statistics(counts, rejections),
        "rejections": {"source": rejections.source, "instruction": rejections.instruction,
                       "task": rejections.task, "instance": rejections.instance},
        "rounds": {"source": "ledger" if rejections.rounds else "shards",
                   "rows": round_statistics(frame, rejections)},
        "lengths": lengths,
        "rouge_to_seeds": overlap,
        "pool_rouge": pool,
        "verbs": verb_statistics(instructions, parser=verb_parser),
        **({"reference": reference_statistics(run, reference, verb_parser=verb_parser)}
           if reference is not None else {}),
        **({"quality": quality} if quality is not None else {}),
        **({"review": review} if review is not None else {}),
        **({"decontamination": decontamination} if decontamination is not None else {}),
        "samples": sample_rows(frame, sample, where) if sample or where else None,
        "notes": notes,
    }
    return {key: json_ready(value) for key, value in stats_json.items()}

