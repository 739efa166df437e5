"""Inspecting a run: what was generated, how diverse it is, what was thrown away.

``selfinstruct inspect`` and the dataset card of ``selfinstruct export`` both
rest on :func:`collect_statistics`, a pure function of the run's rows (a pandas
DataFrame) and its ``manifest.json``, returning one JSON-ready dict. Everything
the terminal tables (:func:`render_console`), the figures and the HTML page
(:func:`write_report`) show is read from that dict, so ``inspect --json`` holds
every number a figure is drawn from.

What it measures (Self-Instruct, Wang et al., ACL 2023, §3.2 "Diversity" and
Table 1, applied to the user's own run):

* counts per stage (candidates, kept after the instruction filters, tasks with
  instances, tasks and rows written) and rejections by reason code;
* candidates, kept rate and tasks per round (candidates and kept rate from the
  run's ledger, :mod:`selfinstruct.storage.ledger`; runs without one get tasks and rows
  per round from the shards' ``round`` column and rejection totals from the
  manifest);
* the classification share (Table 1);
* lengths of instructions, non-empty inputs and outputs, in words and, when the
  run's tokenizer is on disk, in model tokens (Figure 5);
* each new instruction's ROUGE-L F1 to its most similar seed instruction
  (Figure 4), computed exactly as the dedup filter does;
* the commonest leading verbs and their direct objects (Figure 3): spaCy's
  dependency parse when an English spaCy model is installed, otherwise a
  first-word heuristic; the method used is named in the output.

Inputs: a run directory (``manifest.json`` + ``data/*.parquet``) or a plain
Alpaca-style file (JSON array, JSONL, Parquet or CSV of ``instruction``,
``input``, ``output`` records, or Self-Instruct JSONL with ``instances``),
which is read as a run without a manifest. Every problem with an input raises
:class:`InspectError`, whose message is one line naming the file and field.

pandas, numpy and pyarrow are imported at module level; transformers only
when a tokenizer is loaded, matplotlib only by :func:`write_report`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..filters import word_count
from ..storage.files import atomic_file, write_atomic
from .constants import REPORT_FIGURE_SUFFIX, REPORT_INDEX, REPORT_STATS
from .loading import PLAIN_SUFFIXES, InspectError, RunData, load_run  # noqa: F401 (re-exported)

STATS_FORMAT = "selfinstruct-inspect/1"

TASK_STAGE_REASONS = frozenset({"not_generated", "unparseable_instances", "no_instances",
                                "conflicting_outputs", "near_duplicate", "over_target"})
"""Rejection codes of ``manifest["stats"]["rejections"]`` that drop a task after
its instruction was kept (stage "instances" in the ledger); every other code drops
a candidate instruction (selfinstruct/pipeline.py, ``generate_instances`` and
``write``). Only used when there is no ledger, whose ``stage`` column says it."""

TOP_VERBS = 20
OBJECTS_PER_VERB = 4
"""Self-Instruct Figure 3 shows the 20 commonest root verbs and 4 objects each."""

ROUGE_BIN = 0.05
"""Width of the ROUGE-L histogram bins (Figure 4 uses bins of this order)."""

SAMPLE_COLUMNS = ("id", "task_id", "round", "is_classification", "instruction", "input",
                  "output", "nearest_instruction", "nearest_rouge_l")


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
    instruction: ``stage`` is where it stopped (``instructions``, ``instances``
    or ``written``), ``reason`` why (null when written), ``instance_rejections``
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

    def counts(stage: str) -> dict[str, int]:
        reasons = frame.loc[(frame["stage"] == stage) & frame["reason"].notna(), "reason"]
        return {str(k): int(v) for k, v in sorted(Counter(reasons).items())}

    instance = Counter(code for codes in frame["instance_rejections"] if codes is not None
                       for code in codes)
    unparseable = (manifest_stats or {}).get("instance_rejections", {}).get(
        "classification_unparseable")
    if unparseable:
        instance["classification_unparseable"] = int(unparseable)
    rounds = {int(number): {"candidates": int(len(group)),
                            "kept": int((group["stage"] != "instructions").sum()),
                            "written": int((group["stage"] == "written").sum())}
              for number, group in frame.groupby("round", sort=True)}
    unfinished = sorted(p.name for p in (run_dir / LEDGER_DIR).glob("round-*")
                        if not (p / "commit.json").is_file())
    note = (f"{len(unfinished)} unfinished round(s) in the ledger not counted"
            if unfinished else "")
    return Rejections("ledger", counts("instructions"), counts("instances"),
                      dict(sorted(instance.items())), rounds, note)


# ---------------------------------------------------------------------------
# Statistics (pure functions)
# ---------------------------------------------------------------------------


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


# -- verbs and objects (Self-Instruct Figure 3) --------------------------------

_NOT_VERB = frozenset("""
a an the this that these those what which who whom whose why how when where
is are was were be been am do does did can could would should will shall may might must
i you he she it we they my your our their its his her there here
if in on at for from with by of to as into about after before during while since than
given based using according following below above assuming yes no not hi hello dear
""".split())
_LEAD_FILLERS = frozenset({"please", "kindly", "now", "also", "then", "simply", "just"})
_OBJECT_FILLERS = frozenset("""
a an the this that these those me us him her them it my your our their its his
some any each every all both either neither another other such
one two three four five six seven eight nine ten few several many more most
short brief new simple good creative detailed original interesting funny unique possible
given following above below next first last same different appropriate relevant suitable
best worst main top key correct right whole entire famous popular common potential important
major various specific similar basic current recent effective alternative typical
up out down back
""".split())
_DEGREE = frozenset({"most", "least", "more", "less", "very"})
_OBJECT_STOPS = frozenset("""
of for to in on at with by from about into as than that if whether
how what why which who when where and or but so because while then is are be
""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def heuristic_verb_object(instruction: str) -> tuple[str | None, str | None]:
    """Leading verb and its object by a first-word heuristic (no parser needed).

    The verb is the first word (after "Please"-like fillers), lowercased, unless
    it is a question word, auxiliary, pronoun, article or preposition ("What
    is...", "Given a...": no verb-object structure, as many instructions in the
    paper's Figure 3 analysis); "come up with" counts as one verb. The object
    is the first later word that is not an article, pronoun, number or common
    adjective, scanning at most six words and stopping at a preposition or
    conjunction.

    Returns:
        ``(verb, object)``; either may be None.
    """
    words = instruction.split()
    k = 0
    while k < len(words) and words[k].strip(",.:;!").lower() in _LEAD_FILLERS:
        k += 1
    if k >= len(words):
        return None, None
    match = _WORD.fullmatch(words[k].strip(",.:;!?\"'()"))
    verb = match.group(0).lower() if match else None
    if verb is None or verb in _NOT_VERB or len(verb) < 2 or words[k].endswith((",", ":")):
        return None, None
    if verb == "come" and [w.lower() for w in words[k + 1:k + 3]] == ["up", "with"]:
        verb, k = "come up with", k + 2  # the one phrasal verb common in instructions
    skip_next = False
    for word in words[k + 1:k + 7]:
        token = word.strip(",.:;!?\"'()[]").lower()
        if token.endswith("'s"):
            token = token[:-2]
        if token in _OBJECT_STOPS:
            break
        if skip_next or token in _DEGREE:  # "the most expensive item": skip the adjective
            skip_next = token in _DEGREE
            continue
        if token in _OBJECT_FILLERS or not _WORD.fullmatch(token or "-"):
            continue
        return verb, token
    return verb, None


def _spacy_parser() -> tuple[Any, str] | None:
    """An installed English spaCy pipeline and its name, or None (never downloads)."""
    try:
        import spacy
    except ImportError:
        return None
    for name in ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf"):
        if spacy.util.is_package(name):
            try:
                return spacy.load(name, disable=["ner"]), name
            except Exception:  # a broken model install: fall back to the heuristic
                return None
    return None


def spacy_verb_object(doc: Any) -> tuple[str | None, str | None]:
    """Root verb lemma and its first direct-object lemma from a spaCy ``Doc``
    (Self-Instruct §3.2 uses a constituency parser for the same pair)."""
    root = next((t for t in doc if t.dep_ == "ROOT"), None)
    if root is None or root.pos_ != "VERB":
        return None, None
    obj = next((c for c in root.children if c.dep_ in ("dobj", "obj")), None)
    return root.lemma_.lower(), (obj.lemma_.lower() if obj is not None else None)


def verb_statistics(instructions: Sequence[str], top: int = TOP_VERBS,
                    per_verb: int = OBJECTS_PER_VERB, parser: Any = "auto") -> dict[str, Any]:
    """Commonest leading verbs and their direct objects (Self-Instruct §3.2, Figure 3).

    Args:
        instructions: one per task.
        top: verbs to list; per_verb: objects per verb.
        parser: ``"auto"`` (spaCy if an English model is installed, else the
            heuristic), None (heuristic), or a ``(callable, name)`` pair where
            ``callable(texts)`` yields spaCy-like Docs.

    Returns:
        ``{"method", "instructions", "with_verb", "with_verb_object", "top":
        [{"verb", "count", "objects": [{"object", "count"}]}]}``.
    """
    if parser == "auto":
        parser = _spacy_parser()
    if parser is not None:
        nlp, name = parser
        pipe = nlp.pipe if hasattr(nlp, "pipe") else nlp
        pairs = [spacy_verb_object(doc) for doc in pipe(list(instructions))]
        method = f"spaCy dependency parse ({name}): root verb and its direct object"
    else:
        pairs = [heuristic_verb_object(t) for t in instructions]
        method = ("first-word heuristic (no English spaCy model installed): leading word as "
                  "verb, next content word as object")
    verbs = Counter(v for v, _ in pairs if v)
    objects: dict[str, Counter] = {}
    for verb, obj in pairs:
        if verb and obj:
            objects.setdefault(verb, Counter())[obj] += 1
    return {
        "method": method,
        "instructions": len(instructions),
        "with_verb": sum(1 for v, _ in pairs if v),
        "with_verb_object": sum(1 for v, o in pairs if v and o),
        "top": [{"verb": verb, "count": count,
                 "objects": [{"object": o, "count": c}
                             for o, c in objects.get(verb, Counter()).most_common(per_verb)]}
                for verb, count in sorted(verbs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]],
    }


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
    counts = {
        "rows": int(len(frame)),
        "tasks": int(len(tasks)),
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
    return counts


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
    numbers = sorted(set(int(r) for r in rounds.dropna()) | set(rejections.rounds))
    out = []
    for number in numbers:
        rows = frame[rounds == number]
        tasks = rows.drop_duplicates("task_id")
        ledger = rejections.rounds.get(number)
        flags = tasks["is_classification"].dropna()
        out.append({
            "round": number,
            "tasks_written": int(len(tasks)),
            "rows": int(len(rows)),
            "classification_tasks": int(flags.astype(bool).sum()) if len(flags) else None,
            "candidates": ledger["candidates"] if ledger else None,
            "kept": ledger["kept"] if ledger else None,
            "kept_rate": round(ledger["kept"] / ledger["candidates"], 4)
            if ledger and ledger["candidates"] else None,
        })
    return out


# -- samples and --where ---------------------------------------------------------

_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|=|>|<|~)\s*(.*?)\s*$", re.S)


def parse_where(expression: str, columns: Iterable[str]) -> tuple[str, str, str]:
    """Split ``COLUMN OP VALUE`` (OP: ``= != < <= > >= ~``) into its parts.

    Raises:
        InspectError: malformed expression or unknown column.
    """
    match = _WHERE.match(expression)
    if not match:
        raise InspectError(f"--where '{expression}': expected COLUMN OP VALUE with OP one of "
                           "= != < <= > >= ~")
    column, op, value = match.groups()
    columns = list(columns)
    if column not in columns:
        raise InspectError(f"--where '{expression}': unknown column '{column}' "
                           f"(columns: {', '.join(columns)})")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return column, op, value


def filter_rows(frame: pd.DataFrame, expressions: Sequence[str]) -> pd.DataFrame:
    """Rows satisfying every ``--where`` expression.

    ``~`` is a case-insensitive regular-expression search; ``=``/``!=`` on text
    compare exactly; on numeric and boolean columns values are converted
    (``true``/``false`` for booleans). Null values match only ``!=``.

    Raises:
        InspectError: bad expression, unknown column, bad regex or a value that
            does not convert to the column's type.
    """
    mask = pd.Series(True, index=frame.index)
    for expression in expressions:
        column, op, raw = parse_where(expression, frame.columns)
        series = frame[column]
        if op == "~":
            try:
                pattern = re.compile(raw, re.IGNORECASE)
            except re.error as exc:
                raise InspectError(f"--where '{expression}': bad regular expression: {exc}") \
                    from None
            hit = series.map(lambda v: isinstance(v, str) and pattern.search(v) is not None)
        else:
            value: Any = raw
            numeric = pd.to_numeric(series, errors="coerce")
            is_bool = series.dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all() and \
                series.notna().any()
            if is_bool:
                if raw.lower() not in ("true", "false"):
                    raise InspectError(f"--where '{expression}': '{column}' is true or false")
                value, series = raw.lower() == "true", series.map(
                    lambda v: None if v is None or v is pd.NA else bool(v))
            elif numeric.notna().any() and series.map(lambda v: not isinstance(v, str)).all():
                try:
                    value = float(raw)
                except ValueError:
                    raise InspectError(f"--where '{expression}': '{column}' is numeric") from None
                series = numeric
            ops: dict[str, Callable[[Any], bool]] = {
                "=": lambda v: v == value, "!=": lambda v: v != value,
                ">": lambda v: v > value, ">=": lambda v: v >= value,
                "<": lambda v: v < value, "<=": lambda v: v <= value}
            compare = ops[op]

            def test(v: Any, compare=compare, op=op) -> bool:
                if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                    return op == "!="
                try:
                    return bool(compare(v))
                except TypeError:
                    return False

            hit = series.map(test)
        mask &= hit.astype(bool)
    return frame[mask]


def _plain(value: Any) -> Any:
    """numpy/pandas scalars and arrays to JSON-ready Python values."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def sample_rows(frame: pd.DataFrame, n: int, where: Sequence[str] = (), seed: int = 0
                ) -> dict[str, Any]:
    """Up to ``n`` rows matching ``where``, drawn with a fixed seed, in row order.

    Returns:
        ``{"where", "matched", "rows": [{column: value}]}`` with the columns of
        :data:`SAMPLE_COLUMNS` that the frame has.
    """
    matched = filter_rows(frame, where)
    picked = matched.sample(n=min(n, len(matched)), random_state=seed).sort_index() \
        if n > 0 and len(matched) else matched.iloc[:0]
    columns = [c for c in SAMPLE_COLUMNS if c in frame.columns]
    return {"where": list(where), "matched": int(len(matched)),
            "rows": [{c: _plain(row[c]) for c in columns}
                     for row in picked.to_dict("records")]}


# -- everything together ---------------------------------------------------------


def collect_statistics(run: RunData, seeds: SeedSource | None = None,
                       tokenizer: TokenizerSource | None = None, *, sample: int = 0,
                       where: Sequence[str] = (), verb_parser: Any = "auto") -> dict[str, Any]:
    """Every statistic of a run, as one JSON-ready dict (format :data:`STATS_FORMAT`).

    Args:
        run: from :func:`load_run`.
        seeds: for the ROUGE-L overlap (None: skipped with a note).
        tokenizer: for model-token lengths (None: words only).
        sample: rows to include under ``"samples"``; where: their filters.
        verb_parser: see :func:`verb_statistics`.

    Returns:
        ``{"format", "source", "model", "seeds", "counts", "stages",
        "rejections", "rounds", "lengths", "rouge_to_seeds", "pool_rouge",
        "verbs", "samples", "notes"}``; absent measurements are None with a note.

    Raises:
        InspectError: a bad ``where`` expression.
    """
    frame = run.frame
    notes = list(run.notes)
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

    stats_json = {
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
        "samples": sample_rows(frame, sample, where) if sample or where else None,
        "notes": notes,
    }
    return _plain(stats_json)


# ---------------------------------------------------------------------------
# Rendering: terminal tables, figures, HTML
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TableData:
    """A table as plain data, drawn by both the terminal and the HTML renderer."""

    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    note: str = ""


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
    rows = []
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
            rows.append((f"{hist['edges'][k]:.1f}–{upper:.1f}", str(pair),
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
    share = verbs["with_verb"] / verbs["instructions"] if verbs["instructions"] else 0.0
    out.append(TableData(
        "Leading verbs and their objects (Self-Instruct Figure 3)",
        ("verb", "instructions", "commonest objects"),
        [(v["verb"], str(v["count"]), ", ".join(f"{o['object']} ({o['count']})"
                                                for o in v["objects"]))
         for v in verbs["top"]],
        f"method: {verbs['method']}; {verbs['with_verb']} of {verbs['instructions']} "
        f"instructions ({share:.0%}) start with a verb, "
        f"{verbs['with_verb_object']} with an object"))

    samples = stats.get("samples")
    if samples:
        rows = []
        for row in samples["rows"]:
            rows.append((str(row.get("id")), _clip(row.get("instruction")), _clip(row.get("input")),
                         _clip(row.get("output"))))
        where = " and ".join(samples["where"]) or "all rows"
        out.append(TableData("Sample rows", ("id", "instruction", "input", "output"), rows,
                             f"{len(rows)} of {samples['matched']} matching ({where})"))
    return out


def _clip(text: Any, limit: int = 300) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
                                 "kept rate", "of candidates", "kept of previous")
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


# -- figures ---------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _bars(ax, hist: dict[str, Any], color: str) -> None:
    edges = hist["edges"]
    if not edges:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], hist["counts"], width=widths, align="edge", color=color,
           edgecolor="white", linewidth=0.4)
    if hist.get("over"):
        ax.annotate(f"+{hist['over']} beyond", xy=(1, 1), xycoords="axes fraction",
                    ha="right", va="top", fontsize=8, color="#555")


def figures(stats: dict[str, Any]) -> dict[str, Any]:
    """matplotlib Figures drawn from the statistics dict, by file stem.

    ``lengths_words`` (and ``lengths_tokens``): Figure 5; ``rouge_seeds``:
    Figure 4; ``verbs``: Figure 3 as two rings (verbs inside, their objects
    outside); ``rejections``: reasons by count; ``rounds``: tasks per round.
    A figure is left out when its data is absent.
    """
    out: dict[str, Any] = {}
    titles = {"instruction": "instructions", "input": "non-empty inputs", "output": "outputs"}
    for unit in ("words", "tokens"):
        block = stats["lengths"].get(unit)
        if not block:
            continue
        fig = _figure(11, 3.2)
        axes = fig.subplots(1, 3)
        for ax, (name, title) in zip(axes, titles.items()):
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
        outer_sizes, outer_labels, outer_colors = [], [], []
        for color, v in zip(cmap, verbs):
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
    return out


def _colormap(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(k % 20) for k in range(n)]


def write_report(stats: dict[str, Any], directory: Path | str) -> dict[str, Path]:
    """Write the figures as PNG and ``index.html`` (self-contained) into ``directory``.

    The page inlines every figure as a base64 ``data:`` URI and the tables as
    HTML; a small script sets ``data-figures-loaded="k/n"`` on ``<body>`` once
    the page has loaded (``k`` images decoded with a non-zero width), which the
    headless-browser test reads. Also writes ``stats.json``. Files are written
    atomically; existing files of the same names are replaced.

    Returns:
        ``{stem: path}`` for every file written (``index`` and ``stats`` included).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    for stem, fig in figures(stats).items():
        path = directory / f"{stem}{REPORT_FIGURE_SUFFIX}"
        write_atomic(path, lambda handle, fig=fig: fig.savefig(handle, format="png"))
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


_CAPTIONS = {
    "lengths_words": "Length distribution of instructions (one per task), non-empty inputs and "
                     "outputs, in words (Self-Instruct Figure 5).",
    "lengths_tokens": "The same in model tokens.",
    "rouge_seeds": "ROUGE-L F1 between each new instruction and its most similar seed "
                   "instruction (Self-Instruct Figure 4).",
    "verbs": "Commonest leading verbs and their direct objects (Self-Instruct Figure 3).",
    "rejections": "What the filters threw away, by reason code.",
    "rounds": "Tasks written per round.",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1.5rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption,.note{color:#555;font-size:.85rem}.cell{white-space:pre-wrap;max-width:40rem}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-figures-loaded', ok + '/' + imgs.length);
});
"""


def render_html(stats: dict[str, Any], images: dict[str, bytes]) -> str:
    """One self-contained HTML page: tables, figures (PNG as data URIs), notes."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>selfinstruct inspect: {esc(Path(stats['source']['path']).name)}</title>",
             f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>",
             f"<h1>selfinstruct inspect: {esc(stats['source']['path'])}</h1>"]
    for data in tables(stats):
        parts.append(f"<h2>{esc(data.title)}</h2><table><thead><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in data.headers]
        parts.append("</tr></thead><tbody>")
        for row in data.rows:
            cells = []
            for cell in row:
                cls = "num" if re.fullmatch(r"[\d.,%—+-]+", cell or "-") else "cell"
                cells.append(f"<td class=\"{cls}\">{esc(cell)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
        if data.note:
            parts.append(f"<p class=\"note\">{esc(data.note)}</p>")
    if images:
        parts.append("<h2>Figures</h2>")
    for stem, png in images.items():
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(f"<figure id=\"fig-{esc(stem)}\"><img src=\"{uri}\" alt=\"{esc(stem)}\">"
                     f"<figcaption>{esc(_CAPTIONS.get(stem, stem))}</figcaption></figure>")
    if stats["notes"]:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{esc(n)}</li>" for n in stats["notes"]]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

