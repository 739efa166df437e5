"""A run against a reference dataset (``inspect --reference PATH``).

The question this answers is "does my run look like the data set I am trying
to reproduce?", typically the 52,002 examples of Stanford Alpaca (Taori et al.
2023, ``alpaca_data.json``), made with the same Self-Instruct recipe.
:func:`reference_statistics` is a pure function of the two loaded datasets
(:func:`selfinstruct.analysis.loading.load_run` reads both, in any format
``inspect`` reads) and measures each side the way the rest of ``inspect`` does,
so the run's column equals the run's own tables:

* the share of examples (rows) with a non-empty input, with its Wilson 95%
  interval (:func:`selfinstruct.analysis.review.share`);
* lengths in words (whitespace tokens, :func:`selfinstruct.filters.word_count`)
  of instructions (one per task), non-empty inputs and outputs
  (:func:`selfinstruct.analysis.stats.length_statistics`);
* the leading verbs of instructions, one per task
  (:func:`selfinstruct.analysis.verbs.verb_statistics`, Self-Instruct §3.2,
  Figure 3, which counts instructions, not instances).

Each measure has one plain distance: shares differ in percentage points (run
minus reference), lengths and counts are compared by the ratio run / reference (of
the median above all), and the two leading-verb distributions by the overlap of
their top lists and their total variation distance.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..filters import word_count
from ..storage.files import file_digest
from ..storage.manifest import MANIFEST
from .loading import RunData
from .review import share
from .stats import length_statistics, task_instructions
from .verbs import resolve_verb_parser, verb_statistics

REFERENCE_TOP_VERBS = 15
"""Leading verbs taken from each side's top list (the comparison shows their union)."""

LENGTH_FIELDS = ("instruction", "input", "output")
"""The length measures, as :func:`selfinstruct.analysis.stats.length_statistics` names them."""

_LENGTH_KEYS = ("count", "mean", "p50", "p90")


def content_digest(run: RunData) -> str:
    """Hex SHA-256 of a dataset's examples, whatever file format holds them.

    The hashed bytes are one line per row, in row order: the JSON array
    ``[instruction, input, output]`` (``json.dumps`` with ``ensure_ascii=False``
    and separators ``(",", ":")``), UTF-8, each line ending in ``"\\n"``. A
    missing input counts as ``""`` (as :func:`load_run` reads it), so the same
    examples as JSON, JSON Lines or Parquet give the same digest.
    """
    digest = hashlib.sha256()
    frame = run.frame
    for triple in zip(frame["instruction"].tolist(), frame["input"].tolist(),
                      frame["output"].tolist(), strict=True):
        digest.update(json.dumps(list(triple), ensure_ascii=False, separators=(",", ":"))
                      .encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _source(reference: RunData) -> dict[str, Any]:
    """Where the reference came from: path as given, sha256 and size of its file."""
    path = Path(reference.path)
    digest: str | None = None
    size: int | None = None
    if path.is_file():
        digest, size = file_digest(path), path.stat().st_size
    elif reference.kind == "run" and (path / MANIFEST).is_file():
        # The manifest records every shard's sha256, so its own digest pins the rows.
        digest, size = file_digest(path / MANIFEST), None
    return {"path": str(reference.path), "name": path.name or str(path), "kind": reference.kind,
            "sha256": digest, "sha256_of": ("file" if path.is_file() else
                                            MANIFEST if digest is not None else None),
            "bytes": size, "rows": len(reference.frame),
            # hashing the rows costs ~0.4 s on Alpaca: only where no file pins them
            "content_sha256": content_digest(reference) if digest is None else None}


def _ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to 4 significant digits; None when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return float(f"{a / b:.4g}")


def _fraction(count: int, n: int) -> float | None:
    return count / n if n else None


def _points(a: float | None, b: float | None) -> float | None:
    """``a - b`` for two shares in [0, 1], in percentage points, to 4 places (from
    the unrounded shares, so a display to 1 place rounds once)."""
    if a is None or b is None:
        return None
    return round((a - b) * 100, 4)


def _lengths(run: RunData) -> dict[str, dict[str, Any]]:
    block = length_statistics(run.frame, lambda texts: [word_count(t) for t in texts])
    return {name: {key: block[name][key] for key in _LENGTH_KEYS} for name in LENGTH_FIELDS}


def _verbs(run: RunData, parser: Any) -> dict[str, Any]:
    """Every leading verb of a dataset's instructions (one per task), with its count."""
    instructions = task_instructions(run.frame)
    stats = verb_statistics(instructions, top=max(len(instructions), 1), per_verb=0,
                            parser=parser)
    return {"method": stats["method"], "instructions": stats["instructions"],
            "with_verb": stats["with_verb"],
            "counts": {v["verb"]: v["count"] for v in stats["top"]}}


def _verb_side(verbs: dict[str, Any], top: int) -> dict[str, Any]:
    n = verbs["instructions"]
    return {"instructions": n, "with_verb": share(verbs["with_verb"], n),
            "top": [{"verb": verb, "count": count, "share": round(count / n, 4)}
                    for verb, count in list(verbs["counts"].items())[:top]]}


def _total_variation(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Half the L1 distance between the two distributions of leading verbs, with
    "no verb" as one more outcome: 0 for equal distributions, 1 for disjoint."""
    if not a["instructions"] or not b["instructions"]:
        return None
    outcomes = set(a["counts"]) | set(b["counts"])

    def p(side: dict[str, Any], verb: str | None) -> float:
        count = (side["instructions"] - side["with_verb"] if verb is None
                 else side["counts"].get(verb, 0))
        return float(count / side["instructions"])

    return round(0.5 * sum(abs(p(a, v) - p(b, v)) for v in [*outcomes, None]), 4)


def reference_statistics(run: RunData, reference: RunData, *, top: int = REFERENCE_TOP_VERBS,
                         verb_parser: Any = "auto") -> dict[str, Any]:
    """Compare a run's examples with a reference dataset's (see the module docstring).

    Args:
        run: the inspected run, from :func:`selfinstruct.analysis.loading.load_run`.
        reference: the reference dataset, loaded the same way (e.g. the Alpaca JSON).
        top: leading verbs taken from the top of each side's list.
        verb_parser: as for :func:`selfinstruct.analysis.verbs.verb_statistics`;
            resolved once and used on both sides, so both use the same method.

    Returns:
        A JSON-ready dict (the ``"reference"`` key of ``inspect --json``); every
        share is in [0, 1], rounded to 4 places; every difference is run minus
        reference in percentage points, to 4 places; every ratio is run /
        reference, to 4 significant digits::

            {"source": {"path": as given, "name": its last part, "kind": "file"|"run",
                        "sha256": of the file (or of a run's manifest.json; None for
                                  a directory of records),
                        "sha256_of": "file"|"manifest.json"|None,
                        "bytes": the file's size or None, "rows": int,
                        "content_sha256": content_digest(reference) where
                                          "sha256" is None, else None},
             "identical": the two datasets hold the same (instruction, input,
                          output) examples in the same order,
             "examples": {"run", "reference", "ratio"},      # rows
             "tasks": {"run", "reference", "ratio"},         # distinct tasks
             "with_input": {"run": S, "reference": S, "difference_points"},
             "lengths": {"unit": "words",
                         "instruction"|"input"|"output": {
                             "run": {"count", "mean", "p50", "p90"}, "reference": same,
                             "ratio": {"mean", "p50", "p90"}}},
             "verbs": {"method", "top",
                       "run": V, "reference": V,
                       "with_verb_difference_points",
                       "rows": [{"verb", "run_share", "reference_share",
                                 "difference_points", "run_rank", "reference_rank"}],
                       "overlap": {"shared": [verb], "count", "of", "jaccard"},
                       "total_variation"}}

        where ``S`` is :func:`selfinstruct.analysis.review.share`'s
        ``{"yes", "n", "share", "low", "high"}`` (Wilson 95% interval), and ``V``
        is ``{"instructions", "with_verb": S, "top": [{"verb", "count", "share"}]}``
        with shares of that side's instructions (one per task). ``rows`` is the
        union of both top lists, ordered by the reference's share, then the
        run's, then the verb; a rank is the verb's place in that side's whole
        list (1-based; None when the side never uses it). ``overlap.of`` is
        ``top``; ``jaccard`` is shared / union of the two top lists. Ratios are
        None where the reference's value is 0 or missing (an empty side), and so
        are shares and differences of an empty side. Differences are computed
        from the unrounded shares; length ratios from the summaries shown (mean
        to 2 places, percentiles to 4).
    """
    parser = resolve_verb_parser(verb_parser)
    run_tasks = run.frame["task_id"].nunique()
    ref_tasks = reference.frame["task_id"].nunique()
    n_run, n_ref = len(run.frame), len(reference.frame)
    inputs_run = share(int((run.frame["input"] != "").sum()), n_run)
    inputs_ref = share(int((reference.frame["input"] != "").sum()), n_ref)

    lengths: dict[str, Any] = {"unit": "words"}
    run_lengths, ref_lengths = _lengths(run), _lengths(reference)
    for name in LENGTH_FIELDS:
        a, b = run_lengths[name], ref_lengths[name]
        lengths[name] = {"run": a, "reference": b,
                         "ratio": {key: _ratio(a[key], b[key]) for key in ("mean", "p50", "p90")}}

    run_verbs, ref_verbs = _verbs(run, parser), _verbs(reference, parser)
    run_side, ref_side = _verb_side(run_verbs, top), _verb_side(ref_verbs, top)
    run_top = [v["verb"] for v in run_side["top"]]
    ref_top = [v["verb"] for v in ref_side["top"]]
    ranks = {side: {verb: k for k, verb in enumerate(verbs["counts"], start=1)}
             for side, verbs in (("run", run_verbs), ("reference", ref_verbs))}

    def verb_share(verbs: dict[str, Any], verb: str) -> float | None:
        return _fraction(verbs["counts"].get(verb, 0), verbs["instructions"])

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    rows = []
    for verb in set(run_top) | set(ref_top):
        mine, theirs = verb_share(run_verbs, verb), verb_share(ref_verbs, verb)
        rows.append({"verb": verb, "run_share": rounded(mine), "reference_share": rounded(theirs),
                     "difference_points": _points(mine, theirs),
                     "run_rank": ranks["run"].get(verb),
                     "reference_rank": ranks["reference"].get(verb)})
    rows.sort(key=lambda r: (-(r["reference_share"] or 0), -(r["run_share"] or 0), r["verb"]))
    shared = [verb for verb in ref_top if verb in set(run_top)]
    union = len(set(run_top) | set(ref_top))

    fields = ["instruction", "input", "output"]
    identical = n_run == n_ref and bool(
        (run.frame[fields].to_numpy() == reference.frame[fields].to_numpy()).all())
    return {
        "source": _source(reference),
        "identical": identical,
        "examples": {"run": n_run, "reference": n_ref, "ratio": _ratio(n_run, n_ref)},
        "tasks": {"run": run_tasks, "reference": ref_tasks, "ratio": _ratio(run_tasks, ref_tasks)},
        "with_input": {"run": inputs_run, "reference": inputs_ref,
                       "difference_points": _points(_fraction(inputs_run["yes"], n_run),
                                                    _fraction(inputs_ref["yes"], n_ref))},
        "lengths": lengths,
        "verbs": {
            "method": run_verbs["method"], "top": top, "run": run_side, "reference": ref_side,
            "with_verb_difference_points": _points(
                _fraction(run_verbs["with_verb"], run_verbs["instructions"]),
                _fraction(ref_verbs["with_verb"], ref_verbs["instructions"])),
            "rows": rows,
            "overlap": {"shared": shared, "count": len(shared), "of": top,
                        "jaccard": round(len(shared) / union, 4) if union else None},
            "total_variation": _total_variation(run_verbs, ref_verbs),
        },
    }
