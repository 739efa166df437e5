"""The statistics as tables: plain data (:func:`tables`) and the terminal view.

:func:`tables` turns the dict of :func:`selfinstruct.analysis.stats.collect_statistics`
into :class:`TableData` in display order; the terminal (:func:`render_console`),
the HTML page (:mod:`selfinstruct.analysis.report`) and the dataset card
(:mod:`selfinstruct.analysis.card`) all draw these same tables, so they show the
same numbers. Cells are plain text; each renderer escapes them for its medium.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

QUALITY_SECTION = "quality"
""":attr:`TableData.section` of the quality tables (the report shows them together)."""

REVIEW_SECTION = "review"
""":attr:`TableData.section` of the human review's tables (a section of the report)."""

DECONTAMINATION_SECTION = "decontamination"
""":attr:`TableData.section` of the decontamination tables (a section of the report)."""

REFERENCE_SECTION = "reference"
""":attr:`TableData.section` of the comparison with a reference dataset (a section of
the report)."""

SAMPLE_TITLE = "Sample rows"
QUALITY_EXAMPLES_TITLE = "Quality: an example at each overall score"
DECONTAMINATION_SAMPLE_TITLE = "Decontamination: a sample of matches"
EXAMPLE_TITLES = frozenset({SAMPLE_TITLE, QUALITY_EXAMPLES_TITLE,
                            DECONTAMINATION_SAMPLE_TITLE})
"""Titles of the tables of example rows (which the dataset card leaves out: the
decontamination sample would copy evaluation items into it)."""

QUESTION_LABELS = {"instruction": "instruction (a valid task?)",
                   "input": "input (appropriate?)",
                   "output": "output (correct?)", "overall": "overall"}
"""Row labels of the score table: Self-Instruct §3.3's three questions."""


@dataclass(frozen=True)
class TableData:
    """A table as plain data, drawn by both the terminal and the HTML renderer.

    ``section`` groups tables on the HTML page (``""``: the main statistics,
    :data:`QUALITY_SECTION`: the quality scores, :data:`REVIEW_SECTION`: the
    human review, :data:`DECONTAMINATION_SECTION`: the check against evaluation
    sets, :data:`REFERENCE_SECTION`: the comparison with a reference dataset)."""

    title: str
    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    note: str = ""
    section: str = ""


def _fmt(value: Any, share: bool = False) -> str:
    if value is None:
        return "—"
    if share:
        return f"{value:.1%}"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def tables(stats: dict[str, Any]) -> list[TableData]:
    """The statistics as a list of :class:`TableData`, in display order."""
    out: list[TableData] = []
    counts = stats["counts"]
    model = stats.get("model") or {}
    overview = [("source", f"{stats['source']['path']} ({stats['source']['kind']})")]
    if stats["source"].get("status"):
        overview.append(("status", stats["source"]["status"]))
    if model:
        overview.append(("model", f"{model.get('name')} ({model.get('source')})"))
    if stats["seeds"]["path"]:
        overview.append(("seeds", f"{stats['seeds']['path']} ({stats['seeds']['tasks']} tasks)"))
    overview += [("rows (instances)", _fmt(counts["rows"])), ("tasks", _fmt(counts["tasks"])),
                 ("rounds", _fmt(counts["rounds"])),
                 ("classification tasks",
                  f"{_fmt(counts['classification_tasks'])} "
                  f"({_fmt(counts['classification_share'], share=True)})"
                  if counts["classification_tasks"] is not None else "unknown"),
                 ("rows with empty input", _fmt(counts["empty_inputs"])),
                 ("duplicate rows (instruction, input, output)", _fmt(counts["duplicate_rows"]))]
    out.append(TableData("Overview", ("measure", "value"), overview))

    out.append(TableData("Counts per stage", ("stage", "count", "kept of previous"),
                         [(s["stage"], _fmt(s["count"]), _fmt(s["kept_of_previous"], share=True)
                           if s["kept_of_previous"] is not None else "")
                          for s in stats["stages"]]))

    rej = stats["rejections"]
    candidates = counts["candidates"]
    rows: list[tuple[str, ...]] = []
    for stage, key in (("instruction", "instruction"), ("task (instance stage)", "task"),
                       ("instance", "instance")):
        for reason, count in sorted(rej[key].items(), key=lambda kv: (-kv[1], kv[0])):
            share = (_fmt(count / candidates, share=True)
                     if candidates and key != "instance" else "")
            rows.append((stage, reason, str(count), share))
    if rows or rej["source"] != "none":
        out.append(TableData(f"Rejections by reason (from {rej['source']})",
                             ("stage", "reason", "count", "of candidates"), rows))

    rounds = stats["rounds"]["rows"]
    if rounds:
        ledger = stats["rounds"]["source"] == "ledger"
        out.append(TableData(
            "Per round", ("round", "candidates", "kept", "kept rate", "tasks written", "rows",
                          "classification"),
            [(str(r["round"]), _fmt(r["candidates"]), _fmt(r["kept"]),
              _fmt(r["kept_rate"], share=True) if r["kept_rate"] is not None else "—",
              str(r["tasks_written"]), str(r["rows"]), _fmt(r["classification_tasks"]))
             for r in rounds],
            "" if ledger else "candidates and kept rate per round: ledger not available"))

    length_rows = []
    for unit in ("words", "tokens"):
        block = stats["lengths"].get(unit)
        if not block:
            continue
        label = unit if unit == "words" else f"tokens ({stats['lengths'].get('tokenizer_label')})"
        for name, title in (("instruction", "instruction (per task)"),
                            ("input", "input (non-empty)"), ("output", "output")):
            d = block[name]
            length_rows.append((title, label, str(d["count"]), _fmt(d["mean"]), _fmt(d["p50"]),
                                _fmt(d["p90"]), _fmt(d["max"])))
    out.append(TableData("Lengths", ("field", "unit", "n", "mean", "median", "p90", "max"),
                         length_rows))

    overlap = stats.get("rouge_to_seeds")
    if overlap:
        hist = overlap["histogram"]
        rows = []
        for k, count in enumerate(hist["counts"]):
            if k % 2:  # show 0.1-wide bins: pairs of 0.05 bins
                continue
            pair = count + (hist["counts"][k + 1] if k + 1 < len(hist["counts"]) else 0)
            upper = hist["edges"][min(k + 2, len(hist["edges"]) - 1)]
            rows.append((f"{hist['edges'][k]:.1f}\N{EN DASH}{upper:.1f}", str(pair),
                         _fmt(pair / overlap["count"], share=True) if overlap["count"] else ""))
        out.append(TableData(
            "ROUGE-L to the most similar seed (Self-Instruct Figure 4)",
            ("ROUGE-L", "instructions", "share"), rows,
            f"{overlap['count']} instructions vs {overlap['seeds']} seeds: mean "
            f"{_fmt(overlap['mean'])}, median {_fmt(overlap['p50'])}, max {_fmt(overlap['max'])}; "
            f"{overlap['above_threshold']} above the {overlap['threshold']} threshold"))
        if overlap["closest"]:
            out.append(TableData("Closest to a seed", ("ROUGE-L", "instruction", "seed"),
                                 [(f"{c['rouge_l']:.3f}", c["instruction"], c["seed"])
                                  for c in overlap["closest"]]))

    verbs = stats["verbs"]
    verb_share = verbs["with_verb"] / verbs["instructions"] if verbs["instructions"] else 0.0
    out.append(TableData(
        "Leading verbs and their objects (Self-Instruct Figure 3)",
        ("verb", "instructions", "commonest objects"),
        [(v["verb"], str(v["count"]), ", ".join(f"{o['object']} ({o['count']})"
                                                for o in v["objects"]))
         for v in verbs["top"]],
        f"method: {verbs['method']}; {verbs['with_verb']} of {verbs['instructions']} "
        f"instructions ({verb_share:.0%}) start with a verb, "
        f"{verbs['with_verb_object']} with an object"))

    if stats.get("reference"):
        out += reference_tables(stats["reference"])

    samples = stats.get("samples")
    if samples:
        rows = []
        judged = any("quality_overall" in row for row in samples["rows"])
        for row in samples["rows"]:
            rows.append((str(row.get("id")), _clip(row.get("instruction")), _clip(row.get("input")),
                         _clip(row.get("output")),
                         *([_sample_score(row.get("quality_overall"))] if judged else [])))
        where = " and ".join(samples["where"]) or "all rows"
        out.append(TableData(SAMPLE_TITLE, ("id", "instruction", "input", "output",
                                            *(["overall"] if judged else [])), rows,
                             f"{len(rows)} of {samples['matched']} matching ({where})"))
    if stats.get("quality"):
        out += quality_tables(stats["quality"])
    if stats.get("review"):
        out += review_tables(stats["review"])
    if stats.get("decontamination"):
        out += decontamination_tables(stats["decontamination"])
    return out


def _score(value: Any) -> str:
    """A score as text: whole numbers without a decimal point, others to 2 places."""
    if value is None:
        return "—"
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:.2f}"


def _sample_score(value: Any) -> str:
    """A sample row's score: :func:`_score` for a number, else the value clipped (a
    plain file's score column may hold anything)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                         and math.isfinite(value)):
        return _score(value)
    return _clip(value, 20)


def _bins(summaries: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({d["score"] for s in summaries for d in s["distribution"]})


def _by_bin(summary: dict[str, Any], bins: Sequence[int]) -> list[str]:
    counts = {d["score"]: d["count"] for d in summary["distribution"]}
    return [str(counts.get(b, 0)) for b in bins]


def quality_tables(quality: dict[str, Any]) -> list[TableData]:
    """The tables of a judged run's scores (``stats["quality"]``, from
    :func:`selfinstruct.analysis.quality.quality_statistics`), in display order:
    scores per question, per round, an example at each overall score, kept and
    dropped by score (when the ledger has them) and the budget's selection (when
    the manifest has it). Each has :attr:`TableData.section` :data:`QUALITY_SECTION`."""
    out: list[TableData] = []
    scale = quality["scale"]
    scores = quality["scores"]
    bins = _bins(list(scores.values()))
    reasons = ", ".join(f"{k} {v}" for k, v in quality["reasons"].items())
    judges = ", ".join(quality["judges"]) or "unknown"
    out.append(TableData(
        "Quality scores (Self-Instruct §3.3 questions)",
        ("question", "n", "mean", "unparseable", *map(str, bins)),
        [(QUESTION_LABELS.get(name, name), str(s["count"]), _score(s["mean"]),
          str(s["unparseable"]), *_by_bin(s, bins)) for name, s in scores.items()],
        f"judge: {judges}; scale {scale['min']}-{scale['max']}, fractional scores counted "
        f"at the whole number below; {quality['rows']} rows"
        + (f"; unscored by reason: {reasons}" if reasons else ""),
        QUALITY_SECTION))

    reward = quality.get("reward")
    if reward:
        out.append(TableData(
            "Quality: reward model scores (quality_reward)",
            ("n", "missing", "mean", "min", "p25", "median", "p75", "max"),
            [tuple(str(reward[k]) for k in ("count", "missing", "mean", "min", "p25",
                                            "median", "p75", "max"))],
            "a reward model's raw output: higher is better, no fixed scale", QUALITY_SECTION))

    rounds = quality["rounds"]
    if rounds:
        round_bins = _bins(rounds)
        out.append(TableData(
            "Quality per round (overall score)",
            ("round", "n", "mean", "unparseable", *map(str, round_bins)),
            [(str(r["round"]), str(r["count"]), _score(r["mean"]), str(r["unparseable"]),
              *_by_bin(r, round_bins)) for r in rounds], "", QUALITY_SECTION))

    examples = quality["examples"]
    if examples:
        example_rows: list[tuple[str, ...]] = []
        for example in examples:
            reasons_text = "\n".join(
                f"{q} ({_score(example['scores'].get(q))}): "
                f"{_clip(example['rationales'].get(q) or '—', 120)}"
                for q in ("instruction", "input", "output"))
            example_rows.append((_score(example["score"]), str(example["id"]),
                                 _clip(example["instruction"]), _clip(example["input"]),
                                 _clip(example["output"]), _clip(reasons_text, 400)))
        out.append(TableData(
            QUALITY_EXAMPLES_TITLE,
            ("overall", "id", "instruction", "input", "output", "judge's rationales"),
            example_rows,
            "one row drawn at each overall score value (fixed seed)", QUALITY_SECTION))

    kept = quality.get("kept_by_score")
    if kept:
        rows: list[tuple[str, ...]] = [
            (str(r["score"]), str(r["judged"]), str(r["kept"]), str(r["dropped"]),
             _fmt(r["kept"] / r["judged"], share=True) if r["judged"] else "—")
            for r in kept["rows"]]
        bad = kept["unparseable"]
        if bad["judged"]:
            rows.append(("unparseable", str(bad["judged"]), str(bad["kept"]),
                         str(bad["dropped"]), _fmt(bad["kept"] / bad["judged"], share=True)))
        cuts = quality.get("cuts") or {}
        cut_text = (", ".join(f"{name} >= {_score(v)}" for name, v in cuts.items())
                    if cuts else "none recorded")
        out.append(TableData(
            "Quality: kept and dropped by overall score (from the ledger)",
            ("overall", "judged", "kept", "dropped", "kept rate"), rows,
            f"{kept['judged']} judged examples: {kept['kept']} passed the cuts, "
            f"{kept['dropped']} dropped (not in the shards); cuts: {cut_text}",
            QUALITY_SECTION))

    selection = quality.get("selection")
    if selection:
        out.append(TableData(
            "Quality: selection (keep_best budget)", ("measure", "value"),
            [(key.replace("_", " "), _fmt(value)) for key, value in selection.items()],
            "examples not selected are not in the shards", QUALITY_SECTION))
    return out


REVIEW_LABELS = {**{q: QUESTION_LABELS[q] for q in ("instruction", "input", "output")},
                 "all": "all three"}
"""Row labels of the review tables: Self-Instruct §3.3's questions and all three."""


def _percent(value: Any) -> str:
    return "—" if value is None else f"{value:.0%}"


def _interval(item: dict[str, Any]) -> str:
    """A share with its 95% interval, ``84% (77-89%)`` (with an en dash); ``—`` when
    nothing was counted."""
    if item["share"] is None:
        return "—"
    return (f"{item['share']:.0%} ({item['low'] * 100:.0f}\N{EN DASH}"
            f"{item['high'] * 100:.0f}%)")


def _kappa(value: Any) -> str:
    return "—" if value is None else f"{value:.2f}"


def review_tables(review: dict[str, Any]) -> list[TableData]:
    """The tables of a human review (``stats["review"]``, from
    :func:`selfinstruct.analysis.review.review_statistics`), in display order: the
    share valid per question per reviewer (and pooled) beside the paper's,
    agreement between reviewers (two or more), and for a judged run the judge
    against the reviewers and the overall-score cuts. Each has
    :attr:`TableData.section` :data:`REVIEW_SECTION`."""
    out: list[TableData] = []
    reviewers = review["reviewers"]
    pooled = review.get("pooled")
    columns = [(r["name"], r) for r in reviewers] + ([("pooled", pooled)] if pooled else [])
    paper = review["paper"]
    rows: list[tuple[str, ...]] = [
        ("examples reviewed", *(str(c["reviewed"]) for _, c in columns), "200")]
    for item, label in REVIEW_LABELS.items():
        rows.append((label, *(_interval(c["questions"][item]) for _, c in columns),
                     _percent(paper.get(item))))
    reviewed = pooled["reviewed"] if pooled else (reviewers[0]["reviewed"] if reviewers else 0)
    sample = review.get("sample")
    parts = ["share answered yes, Wilson 95% interval in brackets"]
    if sample:
        drawn = f"--sample {sample['requested']} --seed {sample['seed']}" + (
            f" --stratify {sample['stratify']}" if sample["stratify"] else "")
        parts.append(f"sample of {sample['size']} ({drawn}), {sample['in_run']} still in the run")
    partial = sum(r["partial"] for r in reviewers)
    if partial:
        parts.append(f"{partial} example{'' if partial == 1 else 's'} answered in part "
                     "left out")
    if pooled:
        parts.append("pooled: an example is valid on a question only when every reviewer "
                     "who completed it said yes")
    parts.append("paper: Self-Instruct §3.3, 200 examples")
    out.append(TableData(
        f"Review: quality of {reviewed} reviewed examples (Self-Instruct §3.3)",
        ("question", *(name for name, _ in columns), "paper"), rows, "; ".join(parts),
        REVIEW_SECTION))

    if review.get("agreement"):
        out.append(TableData(
            "Review: agreement between reviewers (Cohen's kappa)",
            ("reviewers", "n", *REVIEW_LABELS.values()),
            [(f"{pair['a']} / {pair['b']}", str(pair["n"]),
              *(f"{_kappa(pair['kappa'][item])} ({_percent(pair['agree'][item])})"
                for item in REVIEW_LABELS)) for pair in review["agreement"]],
            "kappa over the examples both reviewers completed, the share they answered alike "
            "in brackets; —: undefined (no examples in common, or both gave one same answer "
            "to all)", REVIEW_SECTION))

    judge = review.get("judge")
    if judge:
        human = ("pooled labels (valid when every reviewer said yes)" if pooled else
                 f"{reviewers[0]['name']}'s labels" if reviewers else "no reviewer")
        origin = [f"{q}: the run's cut min_{q}" for q, o in judge["threshold_from"].items()
                  if o != "scale"]
        rows = []
        for item, numbers in judge["questions"].items():
            at = ("each question at its threshold" if item == "all"
                  else f"score >= {_score(judge['thresholds'][item])}")
            rows.append((REVIEW_LABELS.get(item, item), at, str(numbers["n"]),
                         str(numbers["unscored"]), _percent(numbers["accuracy"]),
                         _kappa(numbers["kappa"])))
        scale = judge["scale"]
        out.append(TableData(
            "Review: the judge against the reviewers", ("question", "judge says yes at", "n",
                                                        "unscored", "accuracy", "kappa"),
            rows,
            f"human label: {human}; threshold: the lowest whole score above the midpoint of "
            f"the {scale['min']}-{scale['max']} scale"
            + (f", except {', '.join(origin)}" if origin else "")
            + "; examples the judge gave no score are left out (unscored)", REVIEW_SECTION))
        if judge["cuts"]:
            best = judge["cut_for_precision_90"]
            text = (f"{judge['n']} reviewed examples with an overall score, {judge['valid']} of "
                    f"them valid on all three; {judge['unscored']} without a score left out; "
                    + (f"cut for 90% precision: overall >= {best}" if best is not None
                       else "no cut reaches 90% precision"))
            if judge.get("run_cut") is not None:
                text += (f"; the run already dropped examples below overall "
                         f"{_score(judge['run_cut'])}: the review never saw them")
            out.append(TableData(
                "Review: overall-score cuts against the reviewers",
                ("overall >=", "kept", "valid kept", "precision", "recall"),
                [(str(c["cut"]), str(c["kept"]), str(c["kept_valid"]),
                  _interval({"share": c["precision"], "low": c["low"], "high": c["high"]}),
                  _percent(c["recall"])) for c in judge["cuts"]],
                text, REVIEW_SECTION))
    return out


LENGTH_LABELS = {"instruction": "instruction (per task)", "input": "input (non-empty)",
                 "output": "output"}
"""Row labels of the length measures, as in the Lengths table."""


def _points_text(value: Any) -> str:
    """A difference of shares in percentage points, signed: ``+17.0 pts``."""
    return "—" if value is None else f"{value:+.1f} pts"


def _ratio_text(value: Any) -> str:
    """A ratio run / reference: ``\N{MULTIPLICATION SIGN}0.58``."""
    return "—" if value is None else f"\N{MULTIPLICATION SIGN}{value:.3g}"


def _share_interval(item: dict[str, Any]) -> str:
    """A share with its Wilson 95% interval to one decimal: ``38.6% (38.2-39.0%)``
    (with an en dash)."""
    if item["share"] is None:
        return "—"
    return (f"{item['share']:.1%} ({item['low'] * 100:.1f}\N{EN DASH}"
            f"{item['high'] * 100:.1f}%)")


def reference_tables(ref: dict[str, Any]) -> list[TableData]:
    """The comparison with a reference dataset (``stats["reference"]``, from
    :func:`selfinstruct.analysis.reference.reference_statistics`): a table of every
    measure on both sides with its difference, titled "Compared with <name>", and
    the leading verbs of both top lists. Each has :attr:`TableData.section`
    :data:`REFERENCE_SECTION`."""
    source = ref["source"]
    name = source["name"]
    verbs = ref["verbs"]
    rows: list[tuple[str, ...]] = [
        ("examples (rows)", _fmt(ref["examples"]["run"]), _fmt(ref["examples"]["reference"]),
         _ratio_text(ref["examples"]["ratio"])),
        ("tasks", _fmt(ref["tasks"]["run"]), _fmt(ref["tasks"]["reference"]),
         _ratio_text(ref["tasks"]["ratio"])),
        ("examples with a non-empty input", _share_interval(ref["with_input"]["run"]),
         _share_interval(ref["with_input"]["reference"]),
         _points_text(ref["with_input"]["difference_points"])),
        ("instructions starting with a verb", _share_interval(verbs["run"]["with_verb"]),
         _share_interval(verbs["reference"]["with_verb"]),
         _points_text(verbs["with_verb_difference_points"]))]
    for field, label in LENGTH_LABELS.items():
        block = ref["lengths"][field]
        for key, stat in (("mean", "mean"), ("p50", "median"), ("p90", "p90")):
            rows.append((f"{label}, words: {stat}", _fmt(block["run"][key]),
                         _fmt(block["reference"][key]), _ratio_text(block["ratio"][key])))
    overlap = verbs["overlap"]
    jaccard = "—" if overlap["jaccard"] is None else f"{overlap['jaccard']:.2f}"
    rows += [
        (f"leading verbs in the top {verbs['top']}", str(len(verbs["run"]["top"])),
         str(len(verbs["reference"]["top"])), f"{overlap['count']} shared, Jaccard {jaccard}"),
        ("leading verbs: total variation distance", "", "",
         "—" if verbs["total_variation"] is None else f"{verbs['total_variation']:.3f}")]
    digest = source["sha256"]
    traced = (f"sha256 {digest[:12]} of its {source['sha256_of']}" if digest
              else f"content sha256 {source['content_sha256'][:12]}")
    parts = [f"reference: {source['path']} ({source['kind']}, {source['rows']} rows, {traced})"]
    if ref["identical"]:
        parts.append("it holds the same examples as the run")
    parts += [("difference: run minus reference in percentage points for shares, "
               "run / reference for counts and lengths"),
              ("shares with a Wilson 95% interval in brackets; lengths in words (whitespace "
               "tokens); instructions and verbs counted once per task"),
              ("total variation: half the summed absolute differences of the two leading-verb "
               "distributions (no verb counted as one outcome); 0 alike, 1 disjoint")]
    out = [TableData(f"Compared with {name}", ("measure", "run", "reference", "difference"),
                     rows, "; ".join(parts), REFERENCE_SECTION)]

    def rank(value: Any) -> str:
        return "—" if value is None else str(value)

    out.append(TableData(
        f"Compared with {name}: leading verbs",
        ("verb", "run", "reference", "difference", "run rank", "reference rank"),
        [(r["verb"], _fmt(r["run_share"], share=True), _fmt(r["reference_share"], share=True),
          _points_text(r["difference_points"]), rank(r["run_rank"]), rank(r["reference_rank"]))
         for r in verbs["rows"]],
        f"share of instructions (one per task) starting with each verb; the verbs of both "
        f"top-{verbs['top']} lists, by the reference's share; method: {verbs['method']}",
        REFERENCE_SECTION))
    return out


def _match_score(method: str, value: Any) -> str:
    """A match's score: the longest shared span in words for ``ngram``, else 3 places."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—"
    return f"{value:g} words" if method == "ngram" else f"{value:.3f}"


def decontamination_tables(decon: dict[str, Any]) -> list[TableData]:
    """The tables of a run checked against evaluation sets (``stats["decontamination"]``,
    from :func:`selfinstruct.analysis.decontamination.decontamination_statistics`),
    in display order: what each set flagged, what each method flagged (when the
    source records methods), and a sample of matches. Each has
    :attr:`TableData.section` :data:`DECONTAMINATION_SECTION`."""
    from .decontamination import METHOD_LABELS, describe_method

    out: list[TableData] = []
    source = decon["source"]
    sets = {b["name"]: b for b in decon["benchmarks"]}
    rows = decon["by_benchmark"]
    columns = [("instructions", "instructions or tasks rejected" if source == "manifest"
                else "instructions rejected"), ("examples", "examples dropped"),
               ("tasks", "tasks left with none")]
    columns = [(key, label) for key, label in columns
               if any(r[key] is not None for r in rows)]
    table_rows = []
    for r in rows:
        known = sets.get(r["name"], {})
        digest = known.get("sha256")
        table_rows.append((r["name"], _fmt(known.get("items")),
                           digest[:12] if isinstance(digest, str) else "—",
                           *(_fmt(r[key]) for key, _ in columns)))
    parts = []
    if source == "decontaminate":
        parts.append(f"selfinstruct decontaminate of {decon['from']}: "
                     f"{_fmt(decon['rows_checked'])} rows checked, {_fmt(decon['rows_kept'])} "
                     f"kept, {_fmt(decon['examples_dropped'])} dropped "
                     "(contaminated.parquet)")
    else:
        parts.append(f"checked during generation (from the {source}): "
                     f"{_fmt(decon['instructions_rejected'])} instructions rejected "
                     f"at the filter, {_fmt(decon['examples_dropped'])} examples dropped"
                     + (f", {decon['tasks_rejected']} task"
                        f"{'' if decon['tasks_rejected'] == 1 else 's'} left with none"
                        if decon["tasks_rejected"] is not None else ""))
    parts.append("methods: " + ("; ".join(describe_method(name, settings)
                                          for name, settings in decon["methods"].items())
                                or "not recorded"))
    parts.append("counted under the strongest match's set only" if source == "manifest"
                 else "a row matching two sets counts under each")
    parts += decon["check_notes"]
    out.append(TableData("Decontamination: flagged per evaluation set",
                         ("evaluation set", "items", "sha256", *(label for _, label in columns)),
                         table_rows, "; ".join(parts), DECONTAMINATION_SECTION))

    method_rows = []
    keys = [(key, label) for key, label in columns if key != "tasks"]
    for r in rows:
        for method, counts in r["methods"].items():
            if any(counts.get(key) is not None for key, _ in keys):
                method_rows.append((r["name"], METHOD_LABELS.get(method, method),
                                    *(_fmt(counts.get(key)) for key, _ in keys)))
    if method_rows:
        out.append(TableData(
            "Decontamination: flagged per evaluation set and method",
            ("evaluation set", "method", *(label for _, label in keys)), method_rows,
            "a row flagged by two methods counts under each", DECONTAMINATION_SECTION))

    sample = decon.get("sample")
    if sample:
        sample_rows_ = []
        for m in sample:
            where = (str(m["id"]) if m.get("id") is not None else
                     f"round {_fmt(m.get('round'))}, {m['where']}")
            item = m["item_id"] if m.get("item_id") is not None else _fmt(m.get("item_index"))
            coverage = m.get("coverage")
            sample_rows_.append((
                where, _clip(m["instruction"], 160), m["benchmark"], str(item),
                METHOD_LABELS.get(m["method"], m["method"]), _match_score(m["method"],
                                                                          m.get("score")),
                _fmt(coverage, share=True) if isinstance(coverage, (int, float)) else "—",
                _clip(m["item_text"], 200) if m.get("item_text") is not None
                else "— (not in the ledger)" if source == "ledger" else "—"))
        drawn = "contaminated.parquet" if source == "decontaminate" else "the ledger"
        out.append(TableData(
            DECONTAMINATION_SAMPLE_TITLE,
            ("where", "instruction", "evaluation set", "item", "method", "score", "coverage",
             "item text"), sample_rows_,
            f"{len(sample)} of {_fmt(decon.get('sample_of'))} flagged rows drawn with a fixed "
            f"seed from {drawn}, each with its strongest match; score: the longest shared "
            "span (n-gram), ROUGE-L F1 or cosine similarity; coverage: the share of the "
            "item's words inside shared n-grams", DECONTAMINATION_SECTION))
    return out


def _clip(value: Any, limit: int = 300) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_NUMBER = re.compile(r"-?\d+")


def render_console(stats: dict[str, Any], console: Any = None) -> None:
    """Print the statistics as rich tables, then the notes.

    Every title, cell and note is passed through
    :func:`~selfinstruct.terminal.rich_safe`: control characters and bidi
    overrides in the data are shown as escapes and rich markup in it as text.
    """
    from rich.table import Table

    from ..terminal import rich_safe, safe_console

    console = console or safe_console()
    for data in tables(stats):
        # Title and note as lines of their own: rich would wrap them to the table's width.
        console.print(f"[bold]{rich_safe(data.title)}[/bold]")
        table = Table(header_style="bold")
        for k, header in enumerate(data.headers):
            numeric = header in ("count", "n", "mean", "median", "p90", "max", "instructions",
                                 "share", "rows", "kept", "candidates", "tasks written",
                                 "kept rate", "of candidates", "kept of previous",
                                 "unparseable", "judged", "dropped", "unscored",
                                 "accuracy", "kappa", "valid kept", "recall",
                                 "overall >=", "items", "instructions rejected",
                                 "examples dropped", "tasks left with none",
                                 "instructions or tasks rejected", "score", "coverage",
                                 "run", "reference", "difference", "run rank",
                                 "reference rank") \
                or _NUMBER.fullmatch(header) is not None
            table.add_column(header, justify="right" if numeric else "left",
                             overflow="fold", max_width=None if k < 1 else 70)
        for row in data.rows:
            table.add_row(*(rich_safe(cell) for cell in row))
        console.print(table)
        if data.note:
            console.print(rich_safe(data.note), style="dim")
        console.print()
    for note in stats["notes"]:
        console.print(f"note: {rich_safe(note)}", style="dim")
