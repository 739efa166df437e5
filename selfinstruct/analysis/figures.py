"""The figures of ``inspect --report``: matplotlib, drawn from the statistics dict.

The paper's diversity figures (Self-Instruct §3.2: Figure 3 verbs and objects,
Figure 4 ROUGE-L to seeds, Figure 5 lengths) plus rejections by reason and
counts per round. matplotlib is imported only when a figure is drawn (its
object-oriented API: no pyplot, no global state, no display needed).
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REFERENCE_FIGURE = "reference_verbs"
"""Stem of the figure comparing the leading verbs with a reference dataset."""


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _bars(ax: Axes, hist: dict[str, Any], color: str) -> None:
    edges = hist["edges"]
    if not edges:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    widths = [b - a for a, b in pairwise(edges)]
    ax.bar(edges[:-1], hist["counts"], width=widths, align="edge", color=color,
           edgecolor="white", linewidth=0.4)
    if hist.get("over"):
        ax.annotate(f"+{hist['over']} beyond", xy=(1, 1), xycoords="axes fraction",
                    ha="right", va="top", fontsize=8, color="#555")


def figures(stats: dict[str, Any]) -> dict[str, Figure]:
    """matplotlib Figures drawn from the statistics dict, by file stem.

    ``lengths_words`` (and ``lengths_tokens``): Figure 5; ``rouge_seeds``:
    Figure 4; ``verbs``: Figure 3 as two rings (verbs inside, their objects
    outside); ``rejections``: reasons by count; ``rounds``: tasks per round;
    ``quality``: a judged run's count per score value of each question and
    the overall score (Self-Instruct §3.3); ``reference_verbs``
    (:data:`REFERENCE_FIGURE`): the leading verbs' shares in the run and in a
    reference dataset (:func:`reference_figure`). A figure is left out when
    its data is absent.
    """
    out: dict[str, Figure] = {}
    titles = {"instruction": "instructions", "input": "non-empty inputs", "output": "outputs"}
    for unit in ("words", "tokens"):
        block = stats["lengths"].get(unit)
        if not block:
            continue
        fig = _figure(11, 3.2)
        axes = fig.subplots(1, 3)
        for ax, (name, title) in zip(axes, titles.items(), strict=True):
            _bars(ax, block[name]["histogram"], "#4c72b0")
            ax.set_title(f"{title} (n={block[name]['count']})", fontsize=10)
            ax.set_xlabel(f"length ({unit})")
            ax.set_ylabel("count")
        fig.suptitle(f"Length distribution in {unit}", fontsize=11)
        out[f"lengths_{unit}"] = fig

    overlap = stats.get("rouge_to_seeds")
    if overlap and overlap["count"]:
        fig = _figure(6.5, 3.6)
        ax = fig.subplots()
        _bars(ax, overlap["histogram"], "#55a868")
        ax.axvline(overlap["threshold"], color="#c44e52", linestyle="--", linewidth=1)
        ax.text(overlap["threshold"], ax.get_ylim()[1] * 0.95, f" threshold {overlap['threshold']}",
                color="#c44e52", fontsize=8, va="top")
        ax.set_xlim(0, 1)
        ax.set_xlabel("ROUGE-L F1 with the most similar seed instruction")
        ax.set_ylabel("# instructions")
        ax.set_title(f"Overlap with seeds (n={overlap['count']}, mean {overlap['mean']:.2f})",
                     fontsize=10)
        out["rouge_seeds"] = fig

    verbs = stats["verbs"]["top"]
    if verbs:
        # As the paper's Figure 3: each verb's sector is shared by its top objects in
        # proportion to their counts; wedges too thin to read carry no label.
        fig = _figure(7.5, 7.5)
        ax = fig.subplots()
        cmap = _colormap(len(verbs))
        total = sum(v["count"] for v in verbs)

        def label(text: str, size: float, minimum: float) -> str:
            return text if size / total >= minimum else ""

        ax.pie([v["count"] for v in verbs],
               labels=[label(v["verb"], v["count"], 0.012) for v in verbs],
               radius=0.62, labeldistance=0.62, colors=cmap,
               wedgeprops={"width": 0.32, "edgecolor": "white"},
               textprops={"fontsize": 7, "ha": "center"}, startangle=90, counterclock=False)
        outer_sizes: list[float] = []
        outer_labels: list[str] = []
        outer_colors: list[tuple[float, float, float, float]] = []
        for color, v in zip(cmap, verbs, strict=True):
            named = sum(o["count"] for o in v["objects"])
            if not named:
                outer_sizes.append(v["count"])
                outer_labels.append("")
                outer_colors.append((1, 1, 1, 0))
                continue
            for o in v["objects"]:
                size = v["count"] * o["count"] / named
                outer_sizes.append(size)
                outer_labels.append(label(o["object"], size, 0.008))
                outer_colors.append((*color[:3], 0.6))
        ax.pie(outer_sizes, labels=outer_labels, radius=1.0, labeldistance=0.83,
               colors=outer_colors, wedgeprops={"width": 0.36, "edgecolor": "white"},
               textprops={"fontsize": 6, "ha": "center"}, startangle=90, counterclock=False)
        ax.set_title("Top leading verbs (inner) and their top objects (outer)", fontsize=10)
        out["verbs"] = fig

    rej = stats["rejections"]
    reasons = [(f"{k}", v, "#c44e52") for k, v in rej["instruction"].items()] + \
              [(f"{k} (task)", v, "#dd8452") for k, v in rej["task"].items()] + \
              [(f"{k} (instance)", v, "#8c8c8c") for k, v in rej["instance"].items()]
    if reasons:
        reasons.sort(key=lambda r: r[1])
        fig = _figure(7, 0.35 * len(reasons) + 1.2)
        ax = fig.subplots()
        ax.barh([r[0] for r in reasons], [r[1] for r in reasons], color=[r[2] for r in reasons])
        ax.set_xlabel("count")
        ax.set_title(f"Rejections by reason (from {rej['source']})", fontsize=10)
        out["rejections"] = fig

    rounds = stats["rounds"]["rows"]
    if rounds:
        fig = _figure(6.5, 3.4)
        ax = fig.subplots()
        numbers = [r["round"] for r in rounds]
        ax.bar(numbers, [r["tasks_written"] for r in rounds], color="#4c72b0",
               label="tasks written")
        if any(r["candidates"] is not None for r in rounds):
            ax.bar(numbers, [r["candidates"] or 0 for r in rounds], color="#cccccc", zorder=0,
                   label="candidates")
        ax.set_xlabel("round")
        ax.set_ylabel("count")
        ax.set_xticks(numbers)
        ax.legend(fontsize=8)
        ax.set_title("Per round", fontsize=10)
        out["rounds"] = fig

    quality = stats.get("quality")
    if quality and quality["scores"]:
        out["quality"] = quality_figure(quality)
    reference = stats.get("reference")
    if reference and reference["verbs"]["rows"]:
        out[REFERENCE_FIGURE] = reference_figure(reference)
    return out


def _plain(text: str) -> str:
    """Text from data for a matplotlib label: ``$`` escaped, so it is never mathtext."""
    return text.replace("$", r"\$")


def reference_figure(reference: dict[str, Any]) -> Figure:
    """Grouped horizontal bars: the share of instructions starting with each verb
    of ``stats["reference"]["verbs"]["rows"]`` (both sides' top lists, from
    :func:`selfinstruct.analysis.reference.reference_statistics`), run and
    reference side by side, the reference's commonest verb at the top."""
    rows = reference["verbs"]["rows"]
    fig = _figure(7.5, 0.28 * len(rows) + 1.4)
    ax = fig.subplots()
    height = 0.4
    places = list(range(len(rows)))
    ax.barh([p - height / 2 for p in places], [100 * (r["run_share"] or 0) for r in rows],
            height=height, color="#4c72b0", label="run")
    ax.barh([p + height / 2 for p in places], [100 * (r["reference_share"] or 0) for r in rows],
            height=height, color="#dd8452", label=_plain(reference["source"]["name"]))
    ax.set_yticks(places, [_plain(r["verb"]) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of instructions (one per task)")
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Leading verbs: run and reference dataset", fontsize=10)
    return fig


QUALITY_TITLES = {"instruction": "instruction: a valid task?",
                  "input": "input: appropriate?", "output": "output: correct?",
                  "overall": "overall"}


def quality_figure(quality: dict[str, Any]) -> Figure:
    """Count per score value of each question and the overall score, one panel each
    (``stats["quality"]["scores"]``, from
    :func:`selfinstruct.analysis.quality.quality_statistics`; a score the rows
    lack has no panel); the unparseable count is written under each panel."""
    from matplotlib.ticker import MaxNLocator

    shown = [name for name in QUALITY_TITLES if name in quality["scores"]]
    fig = _figure(2.75 * len(shown) + 0.5, 3.2)
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    colors = {"instruction": "#4c72b0", "input": "#55a868", "output": "#dd8452",
              "overall": "#8172b3"}
    for ax, name in zip(axes, shown, strict=True):
        title = QUALITY_TITLES[name]
        summary = quality["scores"][name]
        values = [d["score"] for d in summary["distribution"]]
        ax.bar(values, [d["count"] for d in summary["distribution"]], width=0.8,
               color=colors[name])
        if len(values) <= 20:  # out-of-scale scores may spread far: then matplotlib's ticks
            ax.set_xticks(values)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        mean = "" if summary["mean"] is None else f", mean {summary['mean']:.2f}"
        ax.set_title(f"{title} (n={summary['count']}{mean})", fontsize=9)
        bad = summary["unparseable"]
        ax.set_xlabel(f"score ({bad} unparseable)" if bad else "score")
    axes[0].set_ylabel("examples")
    # No data in the title: matplotlib would read a '$' in a judge's name as mathtext.
    fig.suptitle("Quality scores by question (Self-Instruct §3.3)", fontsize=11)
    return fig


def _colormap(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(k % 20) for k in range(n)]
