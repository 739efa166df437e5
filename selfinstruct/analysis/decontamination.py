"""What a decontaminated run was checked against and what it lost, for ``inspect`` and the card.

Two kinds of run record a check against evaluation sets (issue 14;
:mod:`selfinstruct.decontamination`):

* a ``selfinstruct decontaminate`` output: its manifest has
  ``decontaminated_from`` and ``stats.decontamination`` (the evaluation sets
  with their sha256, the methods with their settings, and per evaluation set
  the examples each method flagged); the dropped rows, each with its strongest
  match, are in ``contaminated.parquet`` beside it;
* a ``generate`` or ``refilter`` run with ``[decontamination] against = [...]``:
  instructions matching an item were rejected (reason ``contaminated:<name>``,
  stage "instructions"), examples matching one dropped (``instance_rejections``)
  and a task left with none rejected at stage "decontamination"; the ledger's
  ``candidates.parquet`` lists every match in its ``contamination`` column
  (instance null for the instruction's own). Without a usable ledger the
  manifest's rejection totals give the counts per evaluation set, not per method.

:func:`decontamination_statistics` reads only these records (manifest, ledger,
``contaminated.parquet``): never the evaluation sets themselves. Anything
missing or damaged becomes a note, never an error: ``inspect`` still shows the
rest of the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..decontamination import CONTAMINATED, METHODS
from .loading import RunData

CONTAMINATED_FILE = "contaminated.parquet"
"""The dropped rows of a ``decontaminate`` output (``decontamination.job.CONTAMINATED_FILE``,
named again here so that reading a run never imports the check)."""

SAMPLE_SIZE = 5
"""Matches shown at most."""

SAMPLE_SEED = 0
"""Seed of the sample draw (the same matches on every call)."""

TEXT_LIMIT = 500
"""Characters of an instruction or item text kept in a sample entry (longer texts
are cut, ending in ``…``)."""

PREFIX = CONTAMINATED + ":"


def is_checked(run: RunData) -> bool:
    """Whether the run was checked against evaluation sets: a ``decontaminate``
    output (``decontaminated_from``), a manifest with ``stats.decontamination``, or
    one whose ``config.decontamination.against`` names at least one set."""
    manifest = run.manifest or {}
    if run.kind != "run" or not isinstance(manifest, dict):
        return False
    section = run.config.get("decontamination")
    against = section.get("against") if isinstance(section, dict) else None
    return (isinstance(manifest.get("decontaminated_from"), str)
            or isinstance(run.stats.get("decontamination"), dict)
            or (isinstance(against, list) and bool(against)))


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
        else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _clip(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- what was checked ------------------------------------------------------------


def _spec_parts(spec: str) -> tuple[str | None, str, list[str]]:
    """``[NAME=]PATH[:FIELD,...]`` as (name or None, path, fields), split as
    ``decontaminate`` splits its ``--against`` paths."""
    name = None
    rest = spec
    if "=" in spec.split(":", 1)[0]:
        name, rest = spec.split("=", 1)
    path, _, fields = rest.partition(":")
    return name or None, path, [f for f in fields.split(",") if f]


def _benchmark_entry(entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None
    fields = entry.get("fields")
    return {"name": entry["name"], "path": _str(entry.get("path")),
            "fields": [f for f in fields if isinstance(f, str)]
            if isinstance(fields, list) else None,
            "items": _int(entry.get("items")), "sha256": _str(entry.get("sha256"))}


def checked_benchmarks(run: RunData) -> list[dict[str, Any]]:
    """The evaluation sets the run was checked against, in ``--against`` order.

    Returns:
        ``[{"name", "path", "fields", "items", "sha256"}]`` (None where the run
        does not record it): from ``stats.decontamination.benchmarks`` when the
        manifest has it (``decontaminate``), else from
        ``config.decontamination.against`` with the names and sha256 of
        ``identity.decontamination`` (``generate``: items are not recorded).
        Entries of the wrong shape are left out.
    """
    record = run.stats.get("decontamination")
    if isinstance(record, dict) and isinstance(record.get("benchmarks"), list):
        found = [_benchmark_entry(e) for e in record["benchmarks"]]
        return [e for e in found if e is not None]
    section = run.config.get("decontamination")
    specs = section.get("against") if isinstance(section, dict) else None
    specs = [s for s in specs if isinstance(s, str)] if isinstance(specs, list) else []
    identity = (run.manifest or {}).get("identity")
    known = identity.get("decontamination") if isinstance(identity, dict) else None
    known = [e for e in known if isinstance(e, dict)] if isinstance(known, list) else []
    out = []
    for k, spec in enumerate(specs):
        name, path, fields = _spec_parts(spec)
        recorded = known[k] if k < len(known) else {}
        name = _str(recorded.get("name")) or name or Path(path).name.split(".", 1)[0] or spec
        out.append({"name": name, "path": path, "fields": fields or None, "items": None,
                    "sha256": _str(recorded.get("sha256"))})
    return out


def checked_methods(run: RunData) -> dict[str, dict[str, Any]]:
    """The methods run and their settings, in :data:`~selfinstruct.decontamination.METHODS`
    order: ``{"ngram": {"n", "min_item_tokens"}, "rouge": {"threshold"},
    "embedding": {"model", "threshold"}}`` (only those run), from
    ``stats.decontamination.methods`` or else ``config.decontamination``; setting
    values that are not numbers or text are left out."""
    record = run.stats.get("decontamination")
    methods = record.get("methods") if isinstance(record, dict) else None
    if not isinstance(methods, dict):
        section = run.config.get("decontamination")
        section = section if isinstance(section, dict) else {}
        names = section.get("methods")
        names = names if isinstance(names, list) else []
        settings = {"ngram": {"n": section.get("ngram"),
                              "min_item_tokens": section.get("min_item_tokens")},
                    "rouge": {"threshold": section.get("rouge_threshold")},
                    "embedding": {"model": section.get("embedding_model"),
                                  "threshold": section.get("embedding_threshold")}}
        methods = {name: settings[name] for name in METHODS if name in names}
    out: dict[str, dict[str, Any]] = {}
    for name in METHODS:
        values = methods.get(name)
        if isinstance(values, dict):
            out[name] = {k: v for k, v in values.items() if isinstance(k, str) and (
                isinstance(v, str) or _number(v) is not None)}
    return out


# -- counts ----------------------------------------------------------------------


def _blank(name: str, methods: list[str], zero: int | None = None) -> dict[str, Any]:
    return {"name": name, "instructions": zero, "examples": zero, "tasks": zero,
            "methods": {m: {"instructions": zero, "examples": zero} for m in methods}}


def _add(entry: dict[str, Any], key: str, method: str | None = None, n: int = 1) -> None:
    target = entry if method is None else entry["methods"].setdefault(
        method, {"instructions": 0, "examples": 0})
    target[key] = (target[key] or 0) + n


def job_counts(run: RunData, names: list[str], methods: list[str]
               ) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Counts of a ``decontaminate`` output from ``stats.decontamination``.

    Returns:
        ``(totals, by_benchmark, notes)``: totals ``{"rows_checked",
        "rows_kept", "examples_dropped"}``; per evaluation set ``{"name",
        "examples" (examples flagged; one flagged by two sets counts under
        both), "methods": {method: {"examples"}}}`` (``instructions`` and
        ``tasks`` None: the command checks examples only).
    """
    record = run.stats.get("decontamination")
    record = record if isinstance(record, dict) else {}
    totals = {"rows_checked": _int(record.get("rows_checked")),
              "rows_kept": _int(record.get("rows_kept")),
              "examples_dropped": _int(record.get("rows_dropped"))}
    notes = []
    per = record.get("by_benchmark")
    if not isinstance(per, dict):
        notes.append("manifest.json: field 'stats.decontamination.by_benchmark': missing or "
                     "not an object; counts per evaluation set not shown")
        per = {}
    order = names + [n for n in per if isinstance(n, str) and n not in names]
    rows = []
    for name in order:
        entry = _blank(name, methods)
        counts = per.get(name)
        if isinstance(counts, dict):
            entry["examples"] = _int(counts.get("examples"))
            for method in METHODS:
                value = _int(counts.get(method))
                if method in methods or value:
                    entry["methods"].setdefault(method, {"instructions": None,
                                                         "examples": None})
                    entry["methods"][method]["examples"] = value
        rows.append(entry)
    return totals, rows, notes


def ledger_candidates(run_dir: Path) -> tuple[list[dict[str, Any]] | None, str]:
    """The ledger's candidates (``round``, ``instruction``, ``stage``, ``reason``,
    ``instance_rejections``, ``contamination``) of every committed round, as plain
    Python rows, each file checked against its ``commit.json``
    (:mod:`selfinstruct.storage.ledger`).

    Returns:
        ``(rows, "")``, or ``(None, why)`` when the run has no ledger, nothing
        committed, a damaged or unreadable file, or a ledger written before
        decontamination (no ``contamination`` column).
    """
    import pyarrow.parquet as pq

    from ..storage.files import file_digest
    from ..storage.ledger import LedgerError, RunDirectory

    ledger = RunDirectory(run_dir)
    if not ledger.has_ledger():
        return None, "the run has no ledger"
    committed = ledger.committed_rounds()
    if not committed:
        return None, "the ledger has no committed round"
    rows: list[dict[str, Any]] = []
    for number in range(1, committed + 1):
        path = ledger.round_dir(number) / "candidates.parquet"
        try:
            commit = ledger.read_commit(number) or {}
        except LedgerError as exc:
            return None, str(exc)
        expected = (commit.get("files") or {}).get("candidates.parquet")
        if expected is None or not path.is_file() or file_digest(path) != expected:
            return None, f"{path}: missing or does not match its commit.json (damaged ledger)"
        try:
            if "contamination" not in pq.read_schema(path).names:
                return None, "the ledger records no matches (written before decontamination)"
            rows += pq.read_table(path, columns=[
                "round", "instruction", "stage", "reason", "instance_rejections",
                "contamination"]).to_pylist()
        except Exception as exc:  # pyarrow raises several types for unreadable files
            return None, f"{path}: unreadable ({exc})".splitlines()[0]
    return rows, ""


def _match(entry: Any) -> dict[str, Any] | None:
    """A ledger ``contamination`` entry, checked: None when it names no benchmark
    or method."""
    if not isinstance(entry, dict) or not isinstance(entry.get("benchmark"), str) \
            or not isinstance(entry.get("method"), str):
        return None
    return {"instance": _int(entry.get("instance")), "benchmark": entry["benchmark"],
            "item_index": _int(entry.get("item_index")), "item_id": _str(entry.get("item_id")),
            "method": entry["method"], "score": _number(entry.get("score")),
            "coverage": _number(entry.get("coverage"))}


def strongest(matches: list[dict[str, Any]]) -> dict[str, Any]:
    """The match that names an example's reason, as
    :func:`selfinstruct.decontamination.check.strongest` picks it: the first method
    in :data:`~selfinstruct.decontamination.METHODS` order, then the highest
    score, then the first listed."""
    def rank(m: dict[str, Any]) -> tuple[int, float]:
        order = METHODS.index(m["method"]) if m["method"] in METHODS else len(METHODS)
        return order, -(m["score"] if m["score"] is not None else -math.inf)

    return min(matches, key=rank)


def ledger_counts(candidates: list[dict[str, Any]], names: list[str], methods: list[str]
                  ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Counts and flagged records of a ``generate``/``refilter`` run from its ledger.

    Args:
        candidates: from :func:`ledger_candidates`.
        names: the evaluation sets in order; methods: the methods run.

    Returns:
        ``(totals, by_benchmark, flagged)``: totals ``{"instructions_rejected"
        (stage "instructions", reason ``contaminated:*``), "examples_dropped"
        (``contaminated:*`` codes among ``instance_rejections``),
        "tasks_rejected" (stage "decontamination")}``; per evaluation set
        ``{"name", "instructions", "examples", "tasks", "methods": {method:
        {"instructions", "examples"}}}``: instructions and examples with a match
        to the set (one matching two sets counts under both), by each method,
        and tasks rejected under its name; ``flagged``: one entry per flagged
        instruction or example (its strongest match, the round and instruction).
    """
    per = {name: _blank(name, methods, 0) for name in names}
    flagged: list[dict[str, Any]] = []
    totals = {"instructions_rejected": 0, "examples_dropped": 0, "tasks_rejected": 0}

    def entry_of(name: str) -> dict[str, Any]:
        if name not in per:  # a set the manifest does not list
            per[name] = _blank(name, methods, 0)
        return per[name]

    for row in candidates:
        reason, stage = row.get("reason"), row.get("stage")
        if isinstance(reason, str) and reason.startswith(PREFIX):
            if stage == "instructions":
                totals["instructions_rejected"] += 1
            elif stage == "decontamination":
                totals["tasks_rejected"] += 1
                _add(entry_of(reason[len(PREFIX):]), "tasks")
        codes = row.get("instance_rejections")
        if codes is not None:
            totals["examples_dropped"] += sum(1 for c in codes
                                              if isinstance(c, str) and c.startswith(PREFIX))
        entries = row.get("contamination")
        matches = [m for m in (_match(e) for e in (entries if entries is not None else []))
                   if m is not None]
        groups: dict[int | None, list[dict[str, Any]]] = {}
        for m in matches:
            groups.setdefault(m["instance"], []).append(m)
        for instance, group in groups.items():
            key = "instructions" if instance is None else "examples"
            for name in dict.fromkeys(m["benchmark"] for m in group):
                _add(entry_of(name), key)
            for m in group:
                _add(entry_of(m["benchmark"]), key, m["method"])
            best = strongest(group)
            flagged.append({"where": "instruction" if instance is None
                            else f"example {instance}",
                            "id": None, "round": _int(row.get("round")),
                            "instruction": row.get("instruction"), **best})
    return totals, list(per.values()), flagged


def manifest_counts(run: RunData, names: list[str]
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Counts per evaluation set from the manifest's rejection totals (no usable ledger).

    ``stats.rejections`` counts instructions and tasks together under
    ``contaminated:<name>`` (instructions rejected at the filter and tasks left
    with no example), ``stats.instance_rejections`` the examples dropped; each
    under the strongest match's set only, methods unknown.

    Returns:
        ``(totals, by_benchmark)`` shaped as :func:`ledger_counts`' (``tasks``
        and the per-method counts None; ``instructions`` includes the tasks).
    """
    def reasons(key: str) -> dict[str, int]:
        values = run.stats.get(key)
        values = values if isinstance(values, dict) else {}
        return {k[len(PREFIX):]: v for k, v in values.items()
                if isinstance(k, str) and k.startswith(PREFIX) and _int(v) is not None}

    rejected, dropped = reasons("rejections"), reasons("instance_rejections")
    order = list(dict.fromkeys([*names, *rejected, *dropped]))
    rows = []
    for name in order:
        entry = _blank(name, [])
        entry["instructions"] = rejected.get(name, 0)
        entry["examples"] = dropped.get(name, 0)
        rows.append(entry)
    totals = {"instructions_rejected": sum(rejected.values()),
              "examples_dropped": sum(dropped.values()), "tasks_rejected": None}
    return totals, rows


# -- the sample ------------------------------------------------------------------


def _draw(n: int, k: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> list[int]:
    """Up to ``k`` of ``range(n)`` drawn with ``seed``, ascending."""
    if n <= k:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


def _sample_entry(record: dict[str, Any]) -> dict[str, Any]:
    return {"where": _str(record.get("where")) or "example",
            "id": _clip(record.get("id"), 100), "round": _int(record.get("round")),
            "instruction": _clip(record.get("instruction")) or "",
            "benchmark": _clip(record.get("benchmark"), 200) or "",
            "item_index": _int(record.get("item_index")),
            "item_id": _clip(record.get("item_id"), 200),
            "item_text": _clip(record.get("item_text")),
            "method": _clip(record.get("method"), 40) or "",
            "score": _number(record.get("score")),
            "coverage": _number(record.get("coverage"))}


def dropped_sample(path: Path) -> tuple[list[dict[str, Any]] | None, int | None, str]:
    """Up to :data:`SAMPLE_SIZE` rows of a ``decontaminate`` output's
    ``contaminated.parquet``, drawn with :data:`SAMPLE_SEED`, in file order.

    Returns:
        ``(sample, rows, note)``: sample entries (see
        :func:`decontamination_statistics`) and the file's row count, or
        ``(None, None, why)`` when the file is absent, unreadable or lacks the
        columns ``instruction``, ``benchmark`` and ``method``.
    """
    import pyarrow.parquet as pq

    if not path.is_file():
        return None, None, f"{path}: missing; no sample of matches"
    try:
        names = pq.read_schema(path).names
        missing = [c for c in ("instruction", "benchmark", "method") if c not in names]
        if missing:
            return None, None, (f"{path}: field '{missing[0]}': missing column; no sample "
                                "of matches")
        wanted = [c for c in ("id", "instruction", "benchmark", "item_index", "item_id",
                              "item_text", "method", "score", "coverage") if c in names]
        table = pq.read_table(path, columns=wanted)
        picked = table.take(_draw(table.num_rows)).to_pylist()
    except Exception as exc:  # pyarrow raises several types for damaged files
        return None, None, f"{path}: unreadable ({exc}); no sample of matches".splitlines()[0]
    return [_sample_entry(row) for row in picked], table.num_rows, ""


# -- everything together ---------------------------------------------------------


def decontamination_statistics(run: RunData, *, sample: bool = True
                               ) -> tuple[dict[str, Any] | None, list[str]]:
    """What a run was checked against, what each method flagged, and a sample of matches.

    Args:
        run: from :func:`selfinstruct.analysis.loading.load_run`.
        sample: draw the sample of matches (the dataset card does not need it).

    Returns:
        ``(decontamination, notes)``; ``decontamination`` is None for a run
        that was not checked (:func:`is_checked`) and for plain files, else::

            {"source": "decontaminate" | "ledger" | "manifest",
             "from": the decontaminated input (decontaminate) or None,
             "benchmarks": checked_benchmarks, "methods": checked_methods,
             "rows_checked", "rows_kept": (decontaminate) or None,
             "instructions_rejected", "examples_dropped", "tasks_rejected": or None,
             "by_benchmark": [{"name", "instructions", "examples", "tasks",
                               "methods": {method: {"instructions", "examples"}}}],
             "check_notes": [the check's own notes, from the manifest],
             "sample": [{"where", "id", "round", "instruction", "benchmark",
                         "item_index", "item_id", "item_text", "method", "score",
                         "coverage"}] or None,
             "sample_of": rows the sample was drawn from, or None}

        Counts are None where the source does not record them. ``score`` is
        the method's (longest shared span in words for ``ngram``, ROUGE-L F1,
        cosine similarity), ``coverage`` the share of the item inside shared
        n-grams; texts are cut at :data:`TEXT_LIMIT` characters; the ledger
        keeps no item text (``item_text`` None). ``notes`` say what is missing
        or damaged.
    """
    if not is_checked(run):
        return None, []
    manifest = run.manifest or {}
    benchmarks = checked_benchmarks(run)
    methods = checked_methods(run)
    names = list(dict.fromkeys(b["name"] for b in benchmarks))
    notes: list[str] = []
    totals: dict[str, Any] = {"rows_checked": None, "rows_kept": None,
                              "instructions_rejected": None, "examples_dropped": None,
                              "tasks_rejected": None}
    picked: list[dict[str, Any]] | None = None
    sample_of: int | None = None
    source_from = _str(manifest.get("decontaminated_from"))
    if source_from is not None:
        source = "decontaminate"
        found, rows, job_notes = job_counts(run, names, list(methods))
        totals.update(found)
        notes += job_notes
        if sample:
            picked, sample_of, note = dropped_sample(run.path / CONTAMINATED_FILE)
            if note:
                notes.append(note)
    else:
        candidates, why = ledger_candidates(run.path)
        if candidates is not None:
            source = "ledger"
            found, rows, flagged = ledger_counts(candidates, names, list(methods))
            totals.update(found)
            if sample:
                picked = [_sample_entry(flagged[i]) for i in _draw(len(flagged))]
                sample_of = len(flagged)
        else:
            source = "manifest"
            found, rows = manifest_counts(run, names)
            totals.update(found)
            notes.append(f"decontamination: {why}; counts per evaluation set from "
                         "manifest.json (under the strongest match's set only, methods "
                         "unknown), no sample of matches")
    record = run.stats.get("decontamination")
    check_notes = record.get("notes") if isinstance(record, dict) else None
    return {
        "source": source, "from": source_from, "benchmarks": benchmarks, "methods": methods,
        **totals, "by_benchmark": rows,
        "check_notes": [_clip(n, 300) for n in check_notes if isinstance(n, str)]
        if isinstance(check_notes, list) else [],
        "sample": picked, "sample_of": sample_of,
    }, notes



# -- words -----------------------------------------------------------------------

METHOD_LABELS = {"ngram": "n-gram overlap", "rouge": "ROUGE-L F1",
                 "embedding": "embedding similarity"}
"""How each method is named in tables and the dataset card."""


def describe_method(name: str, settings: dict[str, Any]) -> str:
    """One method and its settings in words, e.g. ``n-gram overlap (13-word n-grams
    of normalized text over instruction, input and output; items shorter matched
    whole from 8 words)``; settings the run does not record are left out."""
    def fmt(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    if name == "ngram":
        n, low = settings.get("n"), settings.get("min_item_tokens")
        what = (f"{fmt(n)}-word n-grams" if n is not None else "n-grams") + \
            " of normalized text over instruction, input and output"
        if low is not None:
            what += f"; shorter items matched whole from {fmt(low)} words"
        return f"n-gram overlap ({what})"
    if name == "rouge":
        threshold = settings.get("threshold")
        return "ROUGE-L F1 of instruction + input to an item" + (
            f" above {fmt(threshold)}" if threshold is not None else "")
    if name == "embedding":
        threshold, model = settings.get("threshold"), settings.get("model")
        return ("embedding cosine similarity of instruction + input" +
                (f" above {fmt(threshold)}" if threshold is not None else "") +
                (f" (model {model})" if model else ""))
    return name + (" (" + ", ".join(f"{k}={fmt(v)}" for k, v in settings.items()) + ")"
                   if settings else "")
