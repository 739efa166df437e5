"""Statistics of a human review, for ``inspect`` (tables, ``--json``, ``--report``).

``selfinstruct review RUN_DIR`` keeps a sample of the run's examples
(``review/sample.json``) and each reviewer's yes/no answers to Self-Instruct
§3.3's three questions (``review/labels-<reviewer>.parquet``; see
:mod:`selfinstruct.review`). :func:`review_statistics` turns them into:

* the paper's quality table (§3.3, Table 2): per reviewer, and pooled when
  there are two or more, the share of reviewed examples valid on each question
  and on all three, each with a Wilson score 95% interval
  (:func:`wilson_interval`), next to the paper's own shares
  (:data:`selfinstruct.review.PAPER_QUALITY`);
* agreement between reviewers: Cohen's kappa (:func:`cohen_kappa`) per question
  for every pair, over the examples both completed;
* for a judged run, the judge against the reviewers: per question, the judge's
  score read as yes/no at a threshold, its accuracy and kappa; and for the
  overall score, the precision and recall of every whole cut.

Rules used throughout:

* an example counts as *reviewed* by a reviewer when they answered all three
  questions; partial answers are counted (``partial``) but not used;
* only labels of examples in the review sample that are still rows of the run
  count (labels are matched by :func:`selfinstruct.quality.example_key`);
* the *pooled* label of an example on a question is yes when every reviewer who
  completed the example said yes (a single "no" makes it invalid, as a strict
  reading of the paper's "valid" does); it is the human label the judge is
  compared with (with one reviewer, simply theirs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from ..quality import QUESTIONS, SCORES
from ..review import PAPER_QUALITY, REVIEW_DIR, ReviewError
from .loading import RunData
from .quality import scale_of, scores_of

ALL = "all"
"""Key of "valid on all three questions", beside the keys of
:data:`selfinstruct.quality.QUESTIONS`."""

ITEMS = (*QUESTIONS, ALL)
"""The rows of the quality table: the three questions, then all three."""

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95% interval."""

PRECISION_TARGET = 0.9
"""The precision the cut table names the lowest cut for ("cut for 90% precision")."""

LABELS_GLOB = "labels-*.parquet"
"""The reviewers' label files inside ``RUN_DIR/review/``."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion ``successes / n``.

    With ``p = successes / n`` the interval is
    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` (Wilson 1927); unlike
    the normal approximation it stays inside [0, 1] and is not empty at 0 or n
    successes. The default ``z`` gives a two-sided 95% interval.

    Args:
        successes: count of successes, ``0 <= successes <= n``.
        n: trials.
        z: the normal quantile of the interval's coverage.

    Returns:
        ``(low, high)``, both in [0, 1]; None when ``n`` is 0.

    Raises:
        ValueError: ``successes`` outside ``0..n`` or a negative ``n``.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return None
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact at the ends: the interval reaches 0 (or 1) when no (or every) trial succeeds
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' yes/no answers on the same items (Cohen 1960).

    ``kappa = (p_o - p_e) / (1 - p_e)``: ``p_o`` the share of items they agree on,
    ``p_e`` the agreement expected by chance from each rater's own share of yes
    (``p_a·p_b + (1-p_a)(1-p_b)``). Computed from counts, so it is exact.

    Args:
        a, b: the two raters' answers, item by item (equal length).

    Returns:
        kappa in [-1, 1]; None when undefined: no items, or ``p_e = 1`` (both
        raters gave one and the same answer to every item).

    Raises:
        ValueError: the sequences differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} answers against {len(b)}")
    n = len(a)
    if n == 0:
        return None
    agree = sum(1 for x, y in zip(a, b, strict=True) if bool(x) == bool(y))
    yes_a, yes_b = sum(map(bool, a)), sum(map(bool, b))
    chance = yes_a * yes_b + (n - yes_a) * (n - yes_b)  # p_e · n²
    if chance == n * n:
        return None
    return (agree * n - chance) / (n * n - chance)


def share(yes: int, n: int) -> dict[str, Any]:
    """``{"yes", "n", "share", "low", "high"}``: a proportion and its Wilson 95%
    interval (:func:`wilson_interval`), rounded to 4 places; ``share``, ``low`` and
    ``high`` are None when ``n`` is 0."""
    interval = wilson_interval(yes, n)
    if interval is None:
        return {"yes": yes, "n": n, "share": None, "low": None, "high": None}
    return {"yes": yes, "n": n, "share": round(yes / n, 4),
            "low": round(interval[0], 4), "high": round(interval[1], 4)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# -- reading the review ----------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    """A regular file whose real path lies inside ``root`` (a run directory may come
    from someone else: a link out of it is not followed)."""
    try:
        resolved = path.resolve()
        return root.resolve() in resolved.parents and resolved.is_file()
    except OSError:
        return False


def has_review(run: RunData) -> bool:
    """Whether ``run`` is a directory whose ``review/`` holds any labels file."""
    directory = run.path / REVIEW_DIR
    try:
        return run.path.is_dir() and directory.is_dir() and any(directory.glob(LABELS_GLOB))
    except OSError:
        return False


def read_review(run: RunData) -> tuple[Any, dict[str, pd.DataFrame], list[str]]:
    """The run's review sample and every readable labels file.

    Returns:
        ``(sample, labels, notes)``: the :class:`selfinstruct.review.sample.Sample`
        or None (none drawn, or unreadable: with a note); ``{reviewer: frame}``
        with the columns of :data:`selfinstruct.review.labels.LABEL_SCHEMA`, the
        reviewer named by the file (``labels-<reviewer>.parquet``), in name order;
        a note for each file left out (damaged, not a regular file, or a link
        leading outside the run). Never raises for a bad file.
    """
    from ..review.labels import read_label_file
    from ..review.sample import read_sample, sample_path

    notes: list[str] = []
    sample = None
    path = sample_path(run.path)
    if path.exists() or path.is_symlink():
        if not _inside(path, run.path):
            notes.append(f"{path}: not a regular file inside the run; review sample not read")
        else:
            try:
                sample = read_sample(run.path)
            except ReviewError as exc:
                notes.append(f"{exc}; review sample not read")
    labels: dict[str, pd.DataFrame] = {}
    for file in sorted((run.path / REVIEW_DIR).glob(LABELS_GLOB)):
        name = file.name[len("labels-"):-len(".parquet")]
        if not _inside(file, run.path):
            notes.append(f"{file}: not a regular file inside the run; {name}'s labels not "
                         "counted")
            continue
        try:
            labels[name] = read_label_file(file)
        except ReviewError as exc:
            notes.append(f"{exc}; {name}'s labels not counted")
    return sample, labels, notes


# -- the statistics --------------------------------------------------------------


def _answers(frame: pd.DataFrame, keys: set[str]) -> tuple[dict[str, dict[str, bool]], int]:
    """A reviewer's complete answers on ``keys`` (``{key: {question: answer}}``) and
    the count of those keys answered only in part."""
    complete: dict[str, dict[str, bool]] = {}
    partial = 0
    for row in frame.to_dict("records"):
        if row["example_key"] not in keys:
            continue
        given = {q: row[q] for q in QUESTIONS if not pd.isna(row[q])}
        if len(given) == len(QUESTIONS):
            complete[row["example_key"]] = {q: bool(v) for q, v in given.items()}
        elif given:
            partial += 1
    return complete, partial


def _with_all(answers: dict[str, bool]) -> dict[str, bool]:
    return {**answers, ALL: all(answers[q] for q in QUESTIONS)}


def quality_shares(answers: dict[str, dict[str, bool]]) -> dict[str, dict[str, Any]]:
    """The share valid on each question and on all three (:data:`ITEMS`), with Wilson
    95% intervals (:func:`share`), over complete answers ``{key: {question: bool}}``."""
    rows = [_with_all(a) for a in answers.values()]
    return {item: share(sum(r[item] for r in rows), len(rows)) for item in ITEMS}


def pooled_labels(answers: dict[str, dict[str, dict[str, bool]]]) -> dict[str, dict[str, bool]]:
    """Each example's pooled label: valid on a question when every reviewer who
    completed it said yes.

    Args:
        answers: ``{reviewer: {key: {question: bool}}}`` (complete answers only).

    Returns:
        ``{key: {question: bool, "all": bool}}`` for every key some reviewer
        completed; ``"all"`` is yes when the pooled label is yes on all three.
    """
    pooled: dict[str, dict[str, bool]] = {}
    for given in answers.values():
        for key, labels in given.items():
            have = pooled.setdefault(key, dict.fromkeys(QUESTIONS, True))
            for q in QUESTIONS:
                have[q] = have[q] and labels[q]
    return {key: _with_all(labels) for key, labels in pooled.items()}


def agreement(answers: dict[str, dict[str, dict[str, bool]]]) -> list[dict[str, Any]]:
    """Cohen's kappa between every pair of reviewers (name order), over the examples
    both completed.

    Returns:
        ``[{"a", "b", "n", "kappa": {item: kappa or None}, "agree": {item: share
        of examples they answered alike, or None}}]`` over :data:`ITEMS`, values
        rounded to 4 places.
    """
    out = []
    for a, b in combinations(sorted(answers), 2):
        both = [k for k in answers[a] if k in answers[b]]
        first = [_with_all(answers[a][k]) for k in both]
        second = [_with_all(answers[b][k]) for k in both]
        kappa, agree = {}, {}
        for item in ITEMS:
            x, y = [r[item] for r in first], [r[item] for r in second]
            kappa[item] = _round(cohen_kappa(x, y))
            agree[item] = (round(sum(p == q for p, q in zip(x, y, strict=True)) / len(both), 4)
                           if both else None)
        out.append({"a": a, "b": b, "n": len(both), "kappa": kappa, "agree": agree})
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def judge_thresholds(run: RunData, scale: tuple[int, int]) -> tuple[dict[str, float],
                                                                    dict[str, str]]:
    """The score at or above which the judge's answer to a question reads as "yes".

    The run's own cut for the question (``manifest["config"]["quality"]
    ["min_<question>"]``) when set, else the lowest whole score above the scale's
    midpoint (4 on 1-5, 6 on 1-10).

    Returns:
        ``(thresholds, origin)``: ``{question: score}`` and ``{question:
        "min_<question>" or "scale"}``.
    """
    section = run.config.get("quality")
    section = section if isinstance(section, dict) else {}
    default = float(math.floor((scale[0] + scale[1]) / 2) + 1)
    thresholds, origin = {}, {}
    for q in QUESTIONS:
        cut = _number(section.get(f"min_{q}"))
        thresholds[q] = default if cut is None else cut
        origin[q] = "scale" if cut is None else f"min_{q}"
    return thresholds, origin


def judge_agreement(labels: dict[str, dict[str, bool]], scores: dict[str, dict[str, float]],
                    thresholds: dict[str, float], scale: tuple[int, int],
                    present: Sequence[str]) -> dict[str, Any]:
    """The judge's scores against the human labels.

    Args:
        labels: ``{key: {question: bool, "all": bool}}`` (:func:`pooled_labels`).
        scores: ``{key: {score name: value}}`` of the labelled examples; a name
            absent or NaN is unscored (the judge's answer was unparseable).
        thresholds: ``{question: score}`` (:func:`judge_thresholds`).
        scale: ``(scale_min, scale_max)``: the cuts tried on the overall score.
        present: the score names the run has a column for.

    Returns:
        ``{"questions": {item: {"n", "unscored", "accuracy", "kappa"}}`` over the
        questions the run has scores for, and ``"all"`` when it has all three
        (judge yes: every question at or above its threshold; human yes: valid on
        all three); ``"n"``, ``"valid"``, ``"unscored"``: labelled examples with an
        overall score, how many of them the reviewers marked valid on all three,
        and those without one (left out); ``"cuts": [{"cut", "kept", "kept_valid",
        "precision", "low", "high", "recall"}]`` for every whole cut from
        scale_min to scale_max (kept: overall >= cut; precision: share of kept
        valid on all three, with its Wilson 95% interval; recall: share of the
        valid examples kept; None where undefined); ``"cut_for_precision_90"``: the
        lowest cut with precision >= :data:`PRECISION_TARGET`, or None.
        ``"n"`` is 0, ``"cuts"`` empty and ``"unscored"`` None without an overall
        column.
    """
    def scored(key: str, name: str) -> float | None:
        value = scores[key].get(name)
        return None if value is None or math.isnan(value) else value

    questions: dict[str, dict[str, Any]] = {}
    items = [q for q in QUESTIONS if q in present]
    if len(items) == len(QUESTIONS):
        items.append(ALL)
    for item in items:
        human, judge = [], []
        unscored = 0
        for key, label in labels.items():
            names = QUESTIONS if item == ALL else (item,)
            values = {name: scored(key, name) for name in names}
            known = {name: v for name, v in values.items() if v is not None}
            if len(known) < len(names):
                unscored += 1
                continue
            human.append(label[item])
            judge.append(all(v >= thresholds[name] for name, v in known.items()))
        right = sum(h == j for h, j in zip(human, judge, strict=True))
        questions[item] = {"n": len(human), "unscored": unscored,
                           "accuracy": round(right / len(human), 4) if human else None,
                           "kappa": _round(cohen_kappa(human, judge))}
    out: dict[str, Any] = {"questions": questions, "n": 0, "valid": 0, "unscored": None,
                           "cuts": [], "cut_for_precision_90": None}
    if "overall" not in present:
        return out
    pairs = [(scored(key, "overall"), label[ALL]) for key, label in labels.items()]
    rated = [(s, v) for s, v in pairs if s is not None]
    valid = sum(v for _, v in rated)
    cuts = []
    for cut in range(scale[0], scale[1] + 1):
        kept = [v for s, v in rated if s >= cut]
        good = sum(kept)
        precision = share(good, len(kept))
        cuts.append({"cut": cut, "kept": len(kept), "kept_valid": good,
                     "precision": precision["share"], "low": precision["low"],
                     "high": precision["high"],
                     "recall": round(good / valid, 4) if valid else None})
    target = next((c["cut"] for c in cuts
                   if c["precision"] is not None and c["precision"] >= PRECISION_TARGET), None)
    out.update({"n": len(rated), "valid": valid, "unscored": len(pairs) - len(rated),
                "cuts": cuts, "cut_for_precision_90": target})
    return out


def review_statistics(run: RunData) -> tuple[dict[str, Any] | None, list[str]]:
    """Every statistic of a run's human review, JSON-ready, or None without one.

    Args:
        run: from :func:`selfinstruct.analysis.loading.load_run`; its directory's
            ``review/`` is read (:func:`read_review`).

    Returns:
        ``(review, notes)``. ``review`` is None when the run has no labels file
        (:func:`has_review`), else::

            {"sample": {"size", "requested", "seed", "stratify", "in_run"} or None,
             "reviewers": [{"name", "labelled", "reviewed", "partial",
                            "questions": {item: share}}],
             "pooled": {"reviewers", "reviewed", "questions": {item: share}} or None,
             "paper": PAPER_QUALITY,
             "agreement": [agreement],
             "judge": {"thresholds": {question: score},
                       "threshold_from": {question: "min_<question>" or "scale"},
                       "scale": {"min", "max"}, "run_cut": min_overall or None,
                       **judge_agreement} or None}

        ``item`` ranges over :data:`ITEMS`, ``share`` is :func:`share`'s dict;
        ``labelled`` counts the reviewer's label rows, ``reviewed`` the examples
        of the sample (still in the run) they answered all three questions of,
        ``partial`` those answered in part. ``pooled`` (two or more reviewers;
        :func:`pooled_labels`) covers every example some reviewer completed;
        ``agreement`` is :func:`agreement`'s list (empty with one reviewer).
        ``judge`` is present when the rows carry judge scores (any non-null
        score column), comparing them with the pooled labels. Without a
        readable sample every labelled example of the run counts, with a note.
        ``notes`` also name unreadable files and count labels of examples no
        longer in the run (or outside the sample); those are not counted.
    """
    if not has_review(run):
        return None, []
    from ..review.sample import keys_of

    sample, files, notes = read_review(run)
    frame = run.frame
    row_keys = keys_of(frame)
    position: dict[str, int] = {}
    for k, key in enumerate(row_keys):
        position.setdefault(key, k)
    if sample is not None:
        in_sample = [e.key for e in sample.examples]
        counted = {key for key in in_sample if key in position}
        if len(counted) < len(set(in_sample)):
            notes.append(f"review: {len(set(in_sample)) - len(counted)} of the sample's "
                         f"{len(set(in_sample))} examples are no longer in the run")
    else:
        counted = set(position)
        notes.append("review: no readable review/sample.json: every labelled example of the "
                      "run is counted")

    gone: set[str] = set()
    outside: set[str] = set()
    gone_rows = 0
    answers: dict[str, dict[str, dict[str, bool]]] = {}
    reviewers = []
    for name, labels in files.items():
        keys = labels["example_key"].tolist()
        gone_here = {k for k in keys if k not in position}
        gone |= gone_here
        gone_rows += len(gone_here)
        outside |= {k for k in keys if k in position and k not in counted}
        complete, partial = _answers(labels, counted)
        answers[name] = complete
        reviewers.append({"name": name, "labelled": len(labels), "reviewed": len(complete),
                          "partial": partial, "questions": quality_shares(complete)})
    if gone:
        notes.append(f"review: {gone_rows} labels ({len(gone)} examples) are of examples no "
                     "longer in the run; not counted")
    if outside:
        notes.append(f"review: {len(outside)} labelled examples are not in the current "
                     "review sample (drawn again?); not counted")

    labels_pooled = pooled_labels(answers)
    pooled = None
    if len(answers) >= 2:
        pooled = {"reviewers": len(answers), "reviewed": len(labels_pooled),
                  "questions": quality_shares(labels_pooled)}

    judge = None
    present = [name for name in SCORES if f"quality_{name}" in frame.columns]
    columns = {name: scores_of(frame, name) for name in present}
    if any(values.notna().any() for values in columns.values()):
        scale, _ = scale_of(run)  # quality_statistics notes a bad scale
        thresholds, origin = judge_thresholds(run, scale)
        scores = {key: {name: float(columns[name].iloc[position[key]]) for name in present}
                  for key in labels_pooled}
        section = run.config.get("quality")
        judge = {"thresholds": thresholds, "threshold_from": origin,
                 "scale": {"min": scale[0], "max": scale[1]},
                 "run_cut": _number(section.get("min_overall"))
                 if isinstance(section, dict) else None,
                 **judge_agreement(labels_pooled, scores, thresholds, scale, present)}

    return {
        "sample": None if sample is None else {
            "size": len(sample.examples), "requested": sample.requested, "seed": sample.seed,
            "stratify": sample.stratify, "in_run": len(counted)},
        "reviewers": reviewers,
        "pooled": pooled,
        "paper": dict(PAPER_QUALITY),
        "agreement": agreement(answers),
        "judge": judge,
    }, notes
