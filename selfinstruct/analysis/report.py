"""``inspect --report DIR``: PNG figures, a self-contained ``index.html`` and ``stats.json``.

The page comes from ``templates/report.html.jinja``, autoescaped: every table
cell, title, note and the run's path are model output or user data and are shown
as text, never as markup. Figures are inlined as base64 ``data:`` URIs, so the
page opens anywhere without its directory and fetches nothing.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from pathlib import Path
from typing import Any

from ..storage.files import atomic_file, write_atomic
from .constants import REPORT_FIGURE_SUFFIX, REPORT_INDEX, REPORT_STATS
from .figures import REFERENCE_FIGURE, figures
from .tables import (DECONTAMINATION_SECTION, QUALITY_SECTION, REFERENCE_SECTION,
                     REVIEW_SECTION, tables)
from .templating import render

CAPTIONS = {
    "lengths_words": "Length distribution of instructions (one per task), non-empty inputs and "
                     "outputs, in words (Self-Instruct Figure 5).",
    "lengths_tokens": "The same in model tokens.",
    "rouge_seeds": "ROUGE-L F1 between each new instruction and its most similar seed "
                   "instruction (Self-Instruct Figure 4).",
    "verbs": "Commonest leading verbs and their direct objects (Self-Instruct Figure 3).",
    "rejections": "What the filters threw away, by reason code.",
    "rounds": "Tasks written per round.",
    "quality": "The judge's scores: examples per score value for each of Self-Instruct "
               "§3.3's questions (is the instruction a valid task, is the input appropriate, "
               "is the output correct) and the overall score.",
    "reference_verbs": "Share of instructions (one per task) starting with each verb of either "
                       "side's top list, in the run and in the reference dataset.",
}
"""Caption of each figure (by file stem) on the page."""

_NUMERIC = re.compile(r"[\d.,%—+-]+")


def write_report(stats: dict[str, Any], directory: Path | str) -> dict[str, Path]:
    """Write the figures as PNG and ``index.html`` (self-contained) into ``directory``.

    The page inlines every figure as a base64 ``data:`` URI and the tables as
    HTML; a small script sets ``data-figures-loaded="k/n"`` on ``<body>`` once
    the page has loaded (``k`` images decoded with a non-zero width), which the
    headless-browser test reads. Also writes ``stats.json``. Files are written
    atomically; existing files of the same names are replaced.

    Returns:
        ``{stem: path}`` for every file written (``index`` and ``stats`` included).

    Raises:
        ImportError: matplotlib is not installed.
        OSError: ``directory`` cannot be created or written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    for stem, fig in figures(stats).items():
        path = directory / f"{stem}{REPORT_FIGURE_SUFFIX}"
        write_atomic(path, functools.partial(fig.savefig, format="png"))
        images[stem] = path.read_bytes()
        written[stem] = path
    page = render_html(stats, images)
    with atomic_file(directory / REPORT_INDEX) as handle:
        handle.write(page.encode("utf-8"))
    written["index"] = directory / REPORT_INDEX
    with atomic_file(directory / REPORT_STATS) as handle:
        handle.write((json.dumps(stats, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    written["stats"] = directory / REPORT_STATS
    return written


def render_html(stats: dict[str, Any], images: dict[str, bytes]) -> str:
    """One self-contained HTML page: tables, figures (PNG as data URIs), notes.

    Args:
        stats: from :func:`selfinstruct.analysis.stats.collect_statistics`.
        images: PNG bytes by figure stem, in display order.

    Returns:
        The page (``templates/report.html.jinja``, autoescaped). A cell that
        looks like a number (digits, ``.,%—+-``) is right-aligned. A judged
        run's quality tables and its ``quality`` figure form a section of their
        own (``<section id="quality">``) after the other figures, preceded by
        the comparison with a reference dataset, its tables and
        ``reference_verbs`` figure (``<section id="reference">``); a human
        review's tables another (``<section id="review">``) after that, and the
        tables of a check against evaluation sets a third
        (``<section id="decontamination">``) last.
    """
    shown: dict[str, list[dict[str, Any]]] = {"": [], QUALITY_SECTION: [], REVIEW_SECTION: [],
                                              DECONTAMINATION_SECTION: [],
                                              REFERENCE_SECTION: []}
    for data in tables(stats):
        shown[data.section if data.section in shown else ""].append(
            {"title": data.title, "headers": data.headers, "note": data.note,
             "rows": [[("num" if _NUMERIC.fullmatch(cell or "-") else "cell", cell)
                       for cell in row] for row in data.rows]})
    figures_shown: dict[str, list[dict[str, str]]] = {"": [], QUALITY_SECTION: [],
                                                      REFERENCE_SECTION: []}
    sections = {QUALITY_SECTION: QUALITY_SECTION, REFERENCE_FIGURE: REFERENCE_SECTION}
    for stem, png in images.items():
        figures_shown[sections.get(stem, "")].append(
            {"stem": stem, "caption": CAPTIONS.get(stem, stem),
             "uri": "data:image/png;base64," + base64.b64encode(png).decode("ascii")})
    path = stats["source"]["path"]
    return render("report.html.jinja", path=path, name=Path(path).name, tables=shown[""],
                  figures=figures_shown[""], quality_tables=shown[QUALITY_SECTION],
                  quality_figures=figures_shown[QUALITY_SECTION],
                  reference_tables=shown[REFERENCE_SECTION],
                  reference_figures=figures_shown[REFERENCE_SECTION],
                  review_tables=shown[REVIEW_SECTION],
                  decontamination_tables=shown[DECONTAMINATION_SECTION], notes=stats["notes"])
