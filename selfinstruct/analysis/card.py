"""The dataset card (``README.md``) of an export.

The YAML metadata block is :class:`huggingface_hub.DatasetCardData`, dumped by
huggingface_hub as the Hub's dataset-card conventions expect: license (``other``:
selfinstruct cannot know it), task category, size bucket, tags and ``configs``
whose ``data_files`` point at the split files, so ``load_dataset(DIR)`` and the
Hub viewer find the splits. The Markdown body is ``templates/dataset_card.md.jinja``:
format and how to load it, the splits, how the data was made (model, seeds with
their sha256, filter and sampling settings, run seed, versions; for a judged run
the judge, its scale, the cuts and the budget: :func:`judging_summary`; the rows
left out because human reviewers marked them invalid: :func:`review_summary`; the
evaluation sets the data was checked against, the methods and what they dropped:
:func:`decontamination_summary`) and the statistics tables of ``selfinstruct inspect``
(:func:`selfinstruct.analysis.tables.tables`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import __version__
from .loading import RunData
from .tables import EXAMPLE_TITLES, tables
from .templating import render

if TYPE_CHECKING:
    from huggingface_hub import DatasetCardData

    from .export import ExportResult

SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
                   (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
"""Upper bound (exclusive) and name of the Hub's ``size_categories`` buckets."""


def size_category(rows: int) -> str:
    """Hugging Face ``size_categories`` bucket for a row count (e.g. 9 -> ``"n<1K"``)."""
    for limit, name in SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "n>1T" if rows > 10 ** 12 else "1B<n<10B"


def card_metadata(result: ExportResult, pretty_name: str) -> DatasetCardData:
    """The card's metadata, per the Hub's conventions: license ``other`` (unknown),
    task category ``text-generation``, the size bucket of all splits' rows, tags
    ``self-instruct`` and ``synthetic``, ``pretty_name``, and a ``default`` config
    whose ``data_files`` give each split's path (relative to the export)."""
    from huggingface_hub import DatasetCardData

    return DatasetCardData(
        license="other", task_categories=["text-generation"],
        size_categories=[size_category(sum(result.rows.values()))],
        tags=["self-instruct", "synthetic"], pretty_name=pretty_name,
        configs=[{"config_name": "default",
                  "data_files": [{"split": name, "path": path}
                                 for name, path in result.files.items()]}])


def judging_summary(run: RunData) -> dict[str, Any] | None:
    """How a judged run's examples were scored and chosen, for the card, or None when
    the rows carry no score column.

    Returns:
        ``{"judges": [names from the quality_judge column], "scale": (min, max),
        "rubric": name or None, "cuts": ["overall >= 4", ...], "budget": keep_best
        or None, "diversity": diversity_threshold or None, "selection": the
        budget's numbers or None}``, read from the rows, ``manifest["config"]["quality"]``
        and ``manifest["stats"]["selection"]`` (values of the wrong type are left out).
    """
    import pandas as pd

    from ..quality import SCORES
    from .quality import has_quality, scale_of, selection_numbers

    frame = run.frame
    if not has_quality(frame):
        return None
    section = run.config.get("quality")
    section = section if isinstance(section, dict) else {}

    def number(key: str) -> float | None:
        value = section.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    judges = frame.get("quality_judge", pd.Series(dtype=object)).tolist()
    budget = number("keep_best")
    return {
        "judges": sorted({v for v in judges if isinstance(v, str) and v}),
        "scale": scale_of(run)[0],
        "rubric": section.get("rubric") if isinstance(section.get("rubric"), str) else None,
        "cuts": [f"{name} >= {number(f'min_{name}'):g}" for name in SCORES
                 if number(f"min_{name}") is not None],
        "budget": budget,
        "diversity": number("diversity_threshold") if budget is not None else None,
        "selection": selection_numbers(run.stats),
    }


def review_summary(run: RunData, result: ExportResult) -> list[dict[str, Any]]:
    """What ``--drop-reviewed-invalid`` left out, for the card: of this export
    (``result.reviewed``) and of the ``refilter`` that made the run
    (``manifest["stats"]["review"]``), in that order.

    Returns:
        One dict per drop: ``{"by": "export" or "refilter", "rows": rows dropped,
        "tasks": tasks left with none, "invalid": examples marked invalid,
        "labelled": examples labelled, "reviewers": [names], "source": the
        refiltered run (refilter only) or None}``; a record from the manifest
        with a value of the wrong type is left out.
    """
    found = []
    refiltered = run.stats.get("review") if run.kind == "run" else None
    source = (run.manifest or {}).get("refiltered_from")
    for by, record in (("export", result.reviewed), ("refilter", refiltered)):
        if not isinstance(record, dict) or record.get("drop_reviewed_invalid") is not True:
            continue
        numbers = {name: record.get(key) for name, key in (
            ("rows", "rows_dropped"), ("tasks", "tasks_dropped"),
            ("invalid", "invalid_examples"), ("labelled", "labelled"))}
        reviewers = record.get("reviewers")
        if not (all(isinstance(v, int) and not isinstance(v, bool) for v in numbers.values())
                and isinstance(reviewers, list) and all(isinstance(r, str) for r in reviewers)):
            continue
        found.append({"by": by, **numbers, "reviewers": reviewers,
                      "source": source if by == "refilter" and isinstance(source, str)
                      else None})
    return found


SHA_PREFIX = 12
"""Hex digits of an evaluation set's sha256 shown on the card."""


def decontamination_summary(run: RunData) -> dict[str, Any] | None:
    """What the data was checked against and how, for the card, or None when it was
    not checked (:func:`selfinstruct.analysis.decontamination.is_checked`).

    Returns:
        ``{"by": "decontaminate" or "generation", "from": the decontaminated
        input or None, "sets": [{"name", "items", "sha256"}] (sha256 cut to
        :data:`SHA_PREFIX` digits; None where unrecorded), "methods": [each
        method and its settings in words], "checked", "kept", "instructions",
        "examples", "tasks": totals or None, "per_set": [{"name",
        "instructions", "examples"}], "strongest_only": whether each row is
        counted under its strongest match's set only}``, from the manifest and
        the ledger (:func:`~selfinstruct.analysis.decontamination.decontamination_statistics`,
        without its sample).
    """
    from .decontamination import decontamination_statistics, describe_method

    decon, _ = decontamination_statistics(run, sample=False)
    if decon is None:
        return None
    return {
        "by": "decontaminate" if decon["source"] == "decontaminate" else "generation",
        "from": decon["from"],
        "sets": [{"name": b["name"], "items": b["items"],
                  "sha256": b["sha256"][:SHA_PREFIX] if b["sha256"] else None}
                 for b in decon["benchmarks"]],
        "methods": [describe_method(name, settings)
                    for name, settings in decon["methods"].items()],
        "checked": decon["rows_checked"], "kept": decon["rows_kept"],
        "instructions": decon["instructions_rejected"],
        "examples": decon["examples_dropped"], "tasks": decon["tasks_rejected"],
        "per_set": [{"name": r["name"], "instructions": r["instructions"],
                     "examples": r["examples"]} for r in decon["by_benchmark"]],
        "strongest_only": decon["source"] == "manifest",
    }


def dataset_card(run: RunData, result: ExportResult, stats: dict[str, Any] | None, *,
                 system_prompt: str | None = None, train_split: float | None = None) -> str:
    """The ``README.md`` of an export: YAML metadata, then format, splits, how the
    data was made (model, seeds, filter and sampling settings) and the statistics
    tables of ``selfinstruct inspect``.

    Args:
        run: the exported run or file (:func:`selfinstruct.analysis.loading.load_run`).
        result: what the export wrote (its format, rows, tasks and files per split).
        stats: :func:`selfinstruct.analysis.stats.collect_statistics` output, or
            None for a card without statistics.
        system_prompt, train_split: as given to the export.

    Returns:
        The card's text: ``---``, the YAML block, ``---``, the Markdown body.
    """
    from huggingface_hub import DatasetCard

    name = run.path.name if run.kind == "run" else run.path.stem
    manifest = run.manifest or {}
    body = render(
        "dataset_card.md.jinja", name=name, version=__version__, kind=run.kind,
        source=run.path, format=result.format, files=result.files, rows=result.rows,
        tasks=result.tasks, system_prompt=system_prompt, train_split=train_split,
        model=manifest.get("model") or {}, seeds=manifest.get("seeds") or {},
        config=manifest.get("config") or {}, versions=manifest.get("versions") or {},
        created=manifest.get("created"), judging=judging_summary(run),
        reviewed=review_summary(run, result), decontamination=decontamination_summary(run),
        decontaminated_from=manifest.get("decontaminated_from")
        if isinstance(manifest.get("decontaminated_from"), str) else None,
        human_review=bool((stats or {}).get("review")),
        scored_from=manifest.get("scored_from") if isinstance(manifest.get("scored_from"), str)
        else None,
        tables=None if stats is None else [t for t in tables(stats)
                                           if t.title not in EXAMPLE_TITLES],
        notes=(stats or {}).get("notes") or [])
    metadata = card_metadata(result, f"{name} (self-instruct)")
    return str(DatasetCard(f"---\n{metadata.to_yaml()}\n---\n{body}"))
