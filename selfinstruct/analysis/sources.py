"""What a run's statistics are measured against, found without trusting its manifest.

* the seed tasks (:func:`resolve_seeds`) for the ROUGE-L overlap of Self-Instruct
  Figure 4: a path the manifest records is followed only when the files there have
  the sha256 it records;
* a tokenizer (:func:`resolve_tokenizer`) for lengths in model tokens, loaded from
  local files only, from where :func:`trusted_model_path` says the run's model is;
* what the filters threw away (:func:`rejection_summary`), from the run's
  candidate ledger (:mod:`selfinstruct.storage.ledger`, each file checked against
  its round's ``commit.json``) or else from the manifest's totals.

Every problem with a path the user gave raises
:class:`~selfinstruct.analysis.loading.InspectError` (one line); problems with
what the manifest names become notes.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .loading import InspectError, RunData

TASK_STAGE_REASONS = frozenset({"not_generated", "unparseable_instances", "no_instances",
                                "conflicting_outputs", "near_duplicate", "over_target"})
"""Rejection codes of ``manifest["stats"]["rejections"]`` that drop a task after
its instruction was kept (stage "instances" in the ledger); every other code drops
a candidate instruction (selfinstruct/pipeline.py, ``generate_instances`` and
``write``). Only used when there is no ledger, whose ``stage`` column says it."""

@dataclass(frozen=True)
class SeedSource:
    """Seed instructions to measure overlap against.

    Attributes:
        instructions: seed instruction texts (empty when unavailable).
        path: where they came from, or None.
        note: why they are unavailable, or "".
    """

    instructions: tuple[str, ...]
    path: str | None
    note: str = ""


def resolve_seeds(run: RunData, override: Path | str | None = None) -> SeedSource:
    """The seed tasks of a run: ``override`` when given, else ``manifest["seeds"]["path"]``.

    A relative manifest path is tried against the current directory (where
    ``generate`` ran, usually), then the run directory and its parents. A path
    from the manifest is untrusted: its files are used only when their sha256
    equal the manifest's ``seeds.files`` record (otherwise a note says why).

    Raises:
        InspectError: ``override`` is given but cannot be loaded (a missing
            manifest seed file is a note, not an error).
    """
    from ..seeds import SeedError, load_seed_tasks, seed_files
    from ..storage.files import file_digest

    if override is not None:
        try:
            tasks = load_seed_tasks(override)
        except SeedError as exc:
            raise InspectError(str(exc)) from None
        return SeedSource(tuple(t.instruction for t in tasks), str(override))
    recorded = ((run.manifest or {}).get("seeds") or {}).get("path")
    if not recorded:
        why = "a plain dataset file" if run.kind == "file" else "none recorded in the manifest"
        return SeedSource((), None, f"no seeds ({why}); pass --seeds PATH")
    candidates = [Path(recorded)]
    if not Path(recorded).is_absolute():
        base = run.path if run.path.is_dir() else run.path.parent
        candidates += [base / recorded, base.parent / recorded, base.parent.parent / recorded]
    digests = [f.get("sha256") for f in ((run.manifest or {}).get("seeds") or {}).get("files") or []
               if isinstance(f, dict)]
    if not digests:
        return SeedSource((), recorded, "the manifest records no seed file hashes, so its seed "
                          "path is not followed; pass --seeds PATH")
    for candidate in candidates:
        if candidate.exists():
            try:
                if [file_digest(p) for p in seed_files(candidate)] != digests:
                    return SeedSource((), str(candidate), f"seeds at {candidate} differ from "
                                      "the ones the run recorded; pass --seeds PATH")
                tasks = load_seed_tasks(candidate)
            except SeedError as exc:
                return SeedSource((), str(candidate), f"seeds unreadable: {exc}")
            return SeedSource(tuple(t.instruction for t in tasks), str(candidate))
    return SeedSource((), recorded, f"seeds not found at {recorded}; pass --seeds PATH")


@dataclass(frozen=True)
class TokenizerSource:
    """A tokenizer for model-token lengths, or the reason there is none.

    Attributes:
        tokenizer: a transformers tokenizer (fast when available), or None.
        name: the directory or id it was loaded from, or None.
        note: why there is none, or "".
        label: a short name to show (the model's name), or None for ``name``.
    """

    tokenizer: Any
    name: str | None
    note: str = ""
    label: str | None = None


def load_tokenizer(name: str) -> Any:
    """``AutoTokenizer.from_pretrained(name, local_files_only=True)``: never downloads.

    Raises:
        InspectError: transformers is missing or cannot load ``name`` offline.
    """
    local = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not local.exists():
        raise InspectError(f"{name}: tokenizer directory does not exist")
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise InspectError("model-token lengths need transformers (pip install transformers)") \
            from None
    hf_logging.set_verbosity_error()  # no "sequence longer than model_max_length" noise
    try:
        return AutoTokenizer.from_pretrained(str(local) if local.exists() else name,
                                             local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/... for missing files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InspectError(f"{name}: cannot load tokenizer offline: {first}") from None


def resolve_tokenizer(run: RunData, override: str | None = None) -> TokenizerSource:
    """The tokenizer for token lengths.

    Args:
        override: a local model/tokenizer directory, or ``"none"`` for words
            only; when None, the run's model if :func:`trusted_model_path`
            finds it and it loads from local files.

    Raises:
        InspectError: ``override`` names a tokenizer that cannot be loaded (a
            run's own model that is not on disk is a note, not an error).
    """
    if override is not None:
        if override.lower() == "none":
            return TokenizerSource(None, None, "word lengths only (--tokenizer none)")
        return TokenizerSource(load_tokenizer(override), override)
    model = (run.manifest or {}).get("model") or {}
    name = trusted_model_path(model)
    if name is None:
        why = ("no model recorded" if not model.get("path") else
               "the run's model path comes from manifest.json and is not followed")
        return TokenizerSource(None, None, f"word lengths only: {why}; pass --tokenizer DIR")
    try:
        return TokenizerSource(load_tokenizer(name), name, label=model.get("name"))
    except InspectError as exc:
        return TokenizerSource(None, None, f"word lengths only: {exc}")


def trusted_model_path(model: dict[str, Any]) -> str | None:
    """Where to load a run's tokenizer from without following a path its manifest names.

    A manifest is untrusted (issue 10): its ``model.path`` is not opened as it
    is. A GGUF model (the embedded one included) is found where ``generate``
    converts it, a cache path derived from the recorded ``gguf_sha256``; a Hub
    model by its id, from the local Hub cache only; any other (a local model
    directory, an HTTP endpoint's served name) gives None: the user passes
    ``--tokenizer DIR``.
    """
    from ..models import cache_dir

    source, path, sha = model.get("source"), model.get("path"), model.get("gguf_sha256")
    if source in ("embedded", "gguf") and isinstance(sha, str) \
            and re.fullmatch(r"[0-9a-f]{64}", sha):
        return str(cache_dir() / "models" / sha[:16])
    if source == "hub" and isinstance(path, str) and re.fullmatch(
            r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) and ".." not in path:
        return path
    return None


@dataclass(frozen=True)
class Rejections:
    """What was thrown away, from the best source available.

    Attributes:
        source: ``"ledger"``, ``"manifest"`` or ``"none"`` (plain files).
        instruction: reason -> candidate instructions rejected.
        task: reason -> kept instructions dropped at the instance stage.
        instance: reason -> instances dropped.
        rounds: round -> ``{"candidates": n, "kept": n}`` (ledger only).
        note: what is missing, or "".
    """

    source: str
    instruction: dict[str, int]
    task: dict[str, int]
    instance: dict[str, int]
    rounds: dict[int, dict[str, int]]
    note: str = ""


def rejection_summary(run: RunData) -> Rejections:
    """Rejection counts by reason and per-round candidate counts.

    The run's candidate ledger (:func:`ledger_rejections`) is preferred; without
    one (runs made before it existed) the totals of ``manifest["stats"]`` are
    used, split by :data:`TASK_STAGE_REASONS`, with no per-round breakdown.
    """
    if run.kind != "run":
        return Rejections("none", {}, {}, {}, {}, "no rejection records: a plain dataset file")
    ledger = ledger_rejections(run.path, run.stats)
    if isinstance(ledger, Rejections):
        return ledger
    stats = run.stats
    reasons = {str(k): int(v) for k, v in (stats.get("rejections") or {}).items()}
    note = ledger or ("ledger not available: per-round kept rate unknown "
                      "(rejection totals from manifest.json)")
    return Rejections(
        "manifest",
        {k: v for k, v in reasons.items() if k not in TASK_STAGE_REASONS},
        {k: v for k, v in reasons.items() if k in TASK_STAGE_REASONS},
        {str(k): int(v) for k, v in (stats.get("instance_rejections") or {}).items()},
        {}, note)


def ledger_rejections(run_dir: Path, manifest_stats: dict[str, Any] | None = None
                      ) -> Rejections | str | None:
    """Rejections and per-round counts from the run's candidate ledger.

    Reads ``ledger/round-NNNNN/candidates.parquet`` of every committed round
    (one with a ``commit.json``; see :mod:`selfinstruct.storage.ledger`), each checked
    against the sha256 its ``commit.json`` records. One row per candidate
    instruction: ``stage`` is where it stopped (``instructions``; ``instances``,
    ``judging``, ``decontamination`` or ``review``, counted as task rejections; or
    ``written``), ``reason`` why (null when written), ``instance_rejections``
    the codes of its dropped instances. ``classification_unparseable`` is not a
    ledger field; it is taken from ``manifest_stats`` when given.

    Returns:
        :class:`Rejections` (``rounds``: round -> ``{"candidates", "kept",
        "written"}``, kept = past the instruction filters); a note (str) when
        the ledger exists but cannot be used (damaged, nothing committed yet);
        None when the run has no ledger.
    """
    import pyarrow.parquet as pq

    from ..storage.ledger import LEDGER_DIR, LedgerError, RunDirectory
    from ..storage.files import file_digest

    ledger = RunDirectory(run_dir)
    if not ledger.has_ledger():
        return None
    committed = ledger.committed_rounds()
    if not committed:
        return "ledger has no committed round yet: totals from manifest.json"
    frames = []
    for number in range(1, committed + 1):
        path = ledger.round_dir(number) / "candidates.parquet"
        try:
            commit = ledger.read_commit(number) or {}
        except LedgerError as exc:
            return f"{exc}; totals from manifest.json"
        expected = (commit.get("files") or {}).get("candidates.parquet")
        if expected is None or not path.is_file() or file_digest(path) != expected:
            return (f"{path}: missing or does not match its commit.json (damaged ledger); "
                    "totals from manifest.json")
        try:
            frames.append(pq.read_table(path, columns=["round", "stage", "reason",
                                                       "instance_rejections"]).to_pandas())
        except Exception as exc:  # pyarrow raises several types for unreadable files
            return f"{path}: unreadable ({exc}); totals from manifest.json".splitlines()[0]
    frame = pd.concat(frames, ignore_index=True)

    def counts(instruction_stage: bool) -> dict[str, int]:
        # a task stops after its instruction passed at any later stage: instances,
        # judging, decontamination, review
        at = (frame["stage"] == "instructions") if instruction_stage else \
            ~frame["stage"].isin(("instructions", "written"))
        reasons = frame.loc[at & frame["reason"].notna(), "reason"]
        return {str(k): int(v) for k, v in sorted(Counter(reasons).items())}

    instance = Counter(code for codes in frame["instance_rejections"] if codes is not None
                       for code in codes)
    unparseable = (manifest_stats or {}).get("instance_rejections", {}).get(
        "classification_unparseable")
    if unparseable:
        instance["classification_unparseable"] = int(unparseable)
    rounds = {int(number): {"candidates": len(group),
                            "kept": int((group["stage"] != "instructions").sum()),
                            "written": int((group["stage"] == "written").sum())}
              for number, group in frame.groupby("round", sort=True)}
    unfinished = sorted(p.name for p in (run_dir / LEDGER_DIR).glob("round-*")
                        if not (p / "commit.json").is_file())
    note = (f"{len(unfinished)} unfinished round(s) in the ledger not counted"
            if unfinished else "")
    return Rejections("ledger", counts(True), counts(False),
                      dict(sorted(instance.items())), rounds, note)

