"""Quality scores of a judged run, for ``inspect`` (tables, ``--json``, ``--report``).

A judged run's shards carry the judge's verdict on each example
(:data:`selfinstruct.quality.QUALITY_FIELDS`: Self-Instruct §3.3's three
questions, each scored on ``quality.scale_min`` .. ``quality.scale_max`` with a
rationale, plus an overall score; null where the judge's answer was
unparseable). :func:`quality_statistics` summarizes them:

* per question and overall: count per score value, mean and unparseable count;
* per round: the same for the overall score;
* one example row per overall score value (drawn with a fixed seed), with its
  rationales;
* from the run's candidate ledger (``quality`` / ``quality_kept``, the overall
  score of every judged instance and whether it passed the cuts): how many of
  each overall score were kept and how many dropped (``low_quality`` rows are
  not in the shards, so only the ledger knows them);
* the ``keep_best`` budget's numbers, when ``manifest["stats"]["selection"]``
  records them.

Scores are binned by rounding down (4.5 counts as 4), so a fractional score
(a reward model's, an average) lands on the scale's integer values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..quality import QUESTIONS, REWARD, SCORES, column, rationale_column
from .loading import RunData

SCALE = (1, 5)
"""The default scale (:class:`selfinstruct.config.QualityConfig` ``scale_min``/``scale_max``)."""

SELECTION_KEYS = ("budget", "considered", "selected", "unscored", "skipped_near_duplicate")
"""Keys of ``manifest["stats"]["selection"]`` (a ``keep_best`` budget) shown, in order."""

EXAMPLE_SEED = 0
"""Seed of the per-score example draw (the same rows on every call)."""


def has_quality(frame: pd.DataFrame) -> bool:
    """Whether the rows carry any score column (:func:`selfinstruct.quality.column`)."""
    return any(column(name) in frame.columns for name in SCORES)


def reward_summary(frame: pd.DataFrame) -> dict[str, Any] | None:
    """A reward model's scores (``quality_reward``, no fixed scale): count, missing,
    mean and the quartiles; None when no row has one."""
    values = scores_of(frame, REWARD)
    scored = values.dropna()
    if not len(scored):
        return None
    quantiles = scored.quantile([0.0, 0.25, 0.5, 0.75, 1.0]).tolist()
    return {"count": len(scored), "missing": int(values.isna().sum()),
            "mean": round(float(scored.mean()), 4),
            **{name: round(float(q), 4) for name, q in zip(
                ("min", "p25", "median", "p75", "max"), quantiles, strict=True)}}


def scores_of(frame: pd.DataFrame, name: str) -> pd.Series[float]:
    """Score ``name`` of every row as float, NaN where null, absent, not a number or
    not finite (a hostile file's ``inf`` or text counts as unparseable)."""
    if column(name) not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=np.float64)
    values = pd.to_numeric(frame[column(name)], errors="coerce").astype(np.float64)
    return values.where(np.isfinite(values))


def scale_of(run: RunData) -> tuple[tuple[int, int], str]:
    """The run's score scale from ``manifest["config"]["quality"]`` and a note.

    Returns:
        ``((scale_min, scale_max), note)``: :data:`SCALE` (and a note saying
        so) when the manifest records no valid scale (whole numbers, min < max);
        note ``""`` otherwise, and for plain files (which record none).
    """
    section = run.config.get("quality")
    if not isinstance(section, dict):
        return SCALE, ""
    low, high = section.get("scale_min", SCALE[0]), section.get("scale_max", SCALE[1])
    if all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) and low < high:
        return (low, high), ""
    return SCALE, (f"manifest.json: field 'config.quality.scale_min/scale_max': not a valid "
                   f"scale; scores binned on {SCALE[0]}-{SCALE[1]}")


def score_bins(values: Iterable[float], scale: tuple[int, int]) -> list[int]:
    """The bins scores fall in: every whole number of the scale, plus the rounded-down
    value of any score outside it, ascending."""
    seen = {math.floor(v) for v in values if math.isfinite(v)}
    return sorted(set(range(scale[0], scale[1] + 1)) | seen)


def score_summary(values: pd.Series[float], scale: tuple[int, int]) -> dict[str, Any]:
    """Count per score value, mean and unparseable count of one score.

    Args:
        values: from :func:`scores_of` (NaN: unparseable).
        scale: ``(scale_min, scale_max)``.

    Returns:
        ``{"count", "unparseable", "mean", "distribution": [{"score", "count"}]}``:
        ``count`` scored rows, ``mean`` rounded to 2 places (None when none),
        ``distribution`` over :func:`score_bins` (zeros included).
    """
    scored = values.dropna()
    binned = Counter(math.floor(v) for v in scored.tolist())
    return {"count": len(scored), "unparseable": int(values.isna().sum()),
            "mean": round(float(scored.mean()), 2) if len(scored) else None,
            "distribution": [{"score": b, "count": binned.get(b, 0)}
                             for b in score_bins(scored.tolist(), scale)]}


def round_quality(frame: pd.DataFrame, scale: tuple[int, int]) -> list[dict[str, Any]]:
    """Per round (the shards' ``round`` column): :func:`score_summary` of the overall
    score, with ``"round"`` added; ``[]`` when no row has a round."""
    rounds = pd.to_numeric(frame["round"], errors="coerce")
    overall = scores_of(frame, "overall")
    return [{"round": int(number), **score_summary(overall[rounds == number], scale)}
            for number in sorted({int(r) for r in rounds.dropna()})]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def score_examples(frame: pd.DataFrame, seed: int = EXAMPLE_SEED) -> list[dict[str, Any]]:
    """One row per overall score value present (rounded down), drawn with ``seed``.

    Returns:
        ``[{"score", "id", "round", "instruction", "input", "output", "scores":
        {name: value}, "rationales": {question: text}}]``, lowest score first;
        ``scores`` has the score columns the rows have, None where unparseable;
        a missing rationale is ``""``.
    """
    names = [name for name in SCORES if column(name) in frame.columns]
    scores = {name: scores_of(frame, name).tolist() for name in names}
    members: dict[int, list[int]] = {}
    for position, value in enumerate(scores.get("overall", [])):
        if not math.isnan(value):
            members.setdefault(math.floor(value), []).append(position)
    rng = np.random.default_rng(seed)
    rounds = pd.to_numeric(frame["round"], errors="coerce").tolist()
    out = []
    for value in sorted(members):
        pick = members[value][int(rng.integers(len(members[value])))]
        row = frame.iloc[pick]
        out.append({
            "score": value, "id": str(row["id"]),
            "round": None if math.isnan(rounds[pick]) else int(rounds[pick]),
            "instruction": row["instruction"], "input": row["input"], "output": row["output"],
            "scores": {name: None if math.isnan(scores[name][pick]) else scores[name][pick]
                       for name in names},
            "rationales": {q: _text(row.get(rationale_column(q))) for q in QUESTIONS}})
    return out


def ledger_quality(run_dir: Path) -> tuple[list[tuple[float | None, bool]] | None, str]:
    """The overall score and cut decision of every judged instance, from the ledger.

    Reads the ``quality`` and ``quality_kept`` list columns of
    ``ledger/round-NNNNN/candidates.parquet`` of every committed round (see
    :mod:`selfinstruct.storage.ledger`), each file checked against the sha256 its
    ``commit.json`` records. Candidates without those lists (not judged) give
    nothing; a candidate whose two lists differ in length is skipped.

    Returns:
        ``(pairs, note)``: ``pairs`` is ``[(score or None, kept)]`` (None:
        unparseable), or None with a note saying why when the run has no
        usable ledger or its ledger records no scores (made before scoring).
    """
    import pyarrow.parquet as pq

    from ..storage.files import file_digest
    from ..storage.ledger import LedgerError, RunDirectory

    ledger = RunDirectory(run_dir)
    if not ledger.has_ledger():
        return None, "quality kept/dropped by score: the run has no ledger"
    committed = ledger.committed_rounds()
    pairs: list[tuple[float | None, bool]] = []
    recorded = False
    for number in range(1, committed + 1):
        path = ledger.round_dir(number) / "candidates.parquet"
        try:
            commit = ledger.read_commit(number) or {}
        except LedgerError as exc:
            return None, f"quality kept/dropped by score not shown: {exc}"
        expected = (commit.get("files") or {}).get("candidates.parquet")
        if expected is None or not path.is_file() or file_digest(path) != expected:
            return None, (f"{path}: missing or does not match its commit.json (damaged "
                          "ledger); quality kept/dropped by score not shown")
        try:
            names = pq.read_schema(path).names
            if "quality" not in names or "quality_kept" not in names:
                continue
            table = pq.read_table(path, columns=["quality", "quality_kept"])
        except Exception as exc:  # pyarrow raises several types for unreadable files
            return None, f"{path}: unreadable ({exc}); quality kept/dropped not shown" \
                .splitlines()[0]
        recorded = True
        for scores, kept in zip(table.column("quality").to_pylist(),
                                table.column("quality_kept").to_pylist(), strict=True):
            if scores is None or kept is None or len(scores) != len(kept):
                continue
            for score, passed in zip(scores, kept, strict=True):
                finite = score is not None and math.isfinite(score)
                pairs.append((float(score) if finite else None, bool(passed)))
    if not recorded:
        return None, ("quality kept/dropped by score: the ledger records no scores "
                      "(written before quality scoring)" if committed else
                      "quality kept/dropped by score: the ledger has no committed round")
    if not pairs:  # a `score` run: its cuts choose shards, not ledger candidates
        return None, ""
    return pairs, ""


def kept_by_score(pairs: list[tuple[float | None, bool]], scale: tuple[int, int]
                  ) -> dict[str, Any]:
    """Per overall score value (rounded down): judged, kept (passed the cuts) and dropped.

    Returns:
        ``{"source": "ledger", "judged", "kept", "dropped", "rows": [{"score",
        "judged", "kept", "dropped"}], "unparseable": {"judged", "kept",
        "dropped"}}``; rows over :func:`score_bins`.
    """
    def counts(group: list[bool]) -> dict[str, int]:
        kept = sum(group)
        return {"judged": len(group), "kept": kept, "dropped": len(group) - kept}

    by_bin: dict[int, list[bool]] = {}
    for score, kept in pairs:
        if score is not None:
            by_bin.setdefault(math.floor(score), []).append(kept)
    bins = score_bins([s for s, _ in pairs if s is not None], scale)
    return {"source": "ledger", **counts([k for _, k in pairs]),
            "rows": [{"score": b, **counts(by_bin.get(b, []))} for b in bins],
            "unparseable": counts([k for s, k in pairs if s is None])}


def selection_numbers(stats: dict[str, Any]) -> dict[str, Any] | None:
    """The ``keep_best`` budget's numbers (:data:`SELECTION_KEYS`) from
    ``manifest["stats"]["selection"]``, numbers only; None when absent."""
    selection = stats.get("selection")
    if not isinstance(selection, dict):
        return None
    out = {key: selection[key] for key in SELECTION_KEYS
           if isinstance(selection.get(key), (int, float))
           and not isinstance(selection.get(key), bool)}
    return out or None


def quality_statistics(run: RunData) -> tuple[dict[str, Any] | None, list[str]]:
    """Every quality statistic of a run, JSON-ready, or None for an unjudged one.

    Args:
        run: from :func:`selfinstruct.analysis.loading.load_run`.

    Returns:
        ``(quality, notes)``. ``quality`` is None when the rows carry no score
        column (:func:`has_quality`); otherwise ``{"scale": {"min", "max"},
        "judges": [names], "rows", "reasons": {quality_reason: count},
        "reward": reward_summary or None,
        "scores": {name: score_summary}`` (names of
        :data:`selfinstruct.quality.SCORES` whose column the rows have)
        ``, "rounds": [round_quality],
        "examples": [score_examples], "kept_by_score": kept_by_score or None,
        "cuts": {name: lowest kept} or None, "selection": selection_numbers or
        None}``. ``notes`` say what could not be shown and why.
    """
    frame = run.frame
    if not has_quality(frame):
        return None, []
    notes: list[str] = []
    scale, note = scale_of(run)
    if note:
        notes.append(note)
    judges = sorted({v for v in frame.get("quality_judge", pd.Series(dtype=object)).tolist()
                     if isinstance(v, str) and v})
    reasons = Counter(v for v in frame.get("quality_reason", pd.Series(dtype=object)).tolist()
                      if isinstance(v, str) and v)
    kept = None
    if run.kind == "run":
        pairs, note = ledger_quality(run.path)
        if note:
            notes.append(note)
        if pairs is not None:
            kept = kept_by_score(pairs, scale)
    section = run.config.get("quality")
    cuts = None
    if isinstance(section, dict):
        cuts = {name: section[f"min_{name}"] for name in SCORES
                if isinstance(section.get(f"min_{name}"), (int, float))
                and not isinstance(section.get(f"min_{name}"), bool)} or None
    return {
        "scale": {"min": scale[0], "max": scale[1]},
        "judges": judges,
        "rows": len(frame),
        "reasons": dict(sorted(reasons.items())),
        "scores": {name: score_summary(scores_of(frame, name), scale) for name in SCORES
                   if column(name) in frame.columns},
        "reward": reward_summary(frame),
        "rounds": round_quality(frame, scale),
        "examples": score_examples(frame),
        "kept_by_score": kept,
        "cuts": cuts,
        "selection": selection_numbers(run.stats),
    }, notes
