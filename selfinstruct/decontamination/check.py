"""The decontamination check: every method against every evaluation set, per example.

:class:`Decontaminator` is built once over the evaluation sets
(:class:`~selfinstruct.decontamination.benchmarks.Benchmark`) and asked about
batches of examples (instruction, input, output) or of bare instructions (the
instruction filter inside ``generate``). Each example gets the list of its
:class:`Match` es, at most one per (benchmark, method): an empty list is clean.

What each method reads:

- ``ngram``: instruction, input and output together (a leak may sit anywhere
  in the example), against the item's whole text; flagged when they share an
  n-gram of normalized words (:mod:`.ngrams`);
- ``rouge``: instruction and input, against the item's text, flagged when the
  ROUGE-L F1 is above ``rouge_threshold`` (exact, the dedup stage's index);
- ``embedding``: instruction and input, cosine similarity of their embeddings
  above ``embedding_threshold`` (:mod:`.embedding`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import DecontaminationConfig
from . import METHODS, reason
from .benchmarks import Benchmark


@dataclass(frozen=True)
class Match:
    """One example's match with one evaluation item by one method.

    Attributes:
        benchmark: the evaluation set's name.
        item: the item's 0-based index in that set; ``item_id`` its id
            (``task_id``/``id`` field, else the index as text); ``item_text``
            the text checked.
        method: ``ngram``, ``rouge`` or ``embedding``.
        score: the method's score: the longest shared span in words (ngram),
            ROUGE-L F1 (rouge), cosine similarity (embedding).
        coverage: ngram only: share of the item's words inside shared n-grams.
        shared: ngram only: distinct n-grams shared.
    """

    benchmark: str
    item: int
    item_id: str
    item_text: str
    method: str
    score: float
    coverage: float | None = None
    shared: int | None = None

    @property
    def reason(self) -> str:
        """``contaminated:<benchmark>``."""
        return reason(self.benchmark)

    def to_json_dict(self) -> dict[str, Any]:
        """The match as a ledger or output row value (the item text left out)."""
        return {"benchmark": self.benchmark, "item": self.item, "item_id": self.item_id,
                "method": self.method, "score": self.score, "coverage": self.coverage,
                "shared": self.shared}


def strongest(matches: Sequence[Match]) -> Match | None:
    """The match that names an example's reason: the first method in
    :data:`~selfinstruct.decontamination.METHODS` order, then the highest score,
    then the first benchmark given."""
    if not matches:
        return None
    return min(matches, key=lambda m: (METHODS.index(m.method), -m.score))


@dataclass
class Decontaminator:
    """The check over a fixed list of evaluation sets.

    Build it with :meth:`build`; :meth:`check` and :meth:`check_instructions` are
    pure functions of their input afterwards.

    Attributes:
        benchmarks: the evaluation sets, in ``--against`` order.
        config: the ``[decontamination]`` settings.
        notes: remarks made while building (items skipped, the cache used).
    """

    benchmarks: list[Benchmark]
    config: DecontaminationConfig
    notes: list[str] = field(default_factory=list)
    _ngrams: Any = None
    _rouge: list[Any] = field(default_factory=list)
    _embed: Any = None
    _owner: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def build(cls, benchmarks: list[Benchmark], config: DecontaminationConfig,
              embedder: Callable[[], Any] | None = None) -> Decontaminator:
        """Index every evaluation set for the configured methods.

        Args:
            benchmarks: from :func:`~selfinstruct.decontamination.benchmarks.load_benchmark`.
            config: methods and thresholds.
            embedder: makes the embedding model (only called when ``embedding``
                is among the methods).

        The n-gram index over all sets is loaded from the cache when the same
        items were indexed before (:mod:`.cache`).
        """
        from ..dedup.index import RougeIndex
        from .cache import load_or_build

        self = cls(benchmarks, config)
        for benchmark in benchmarks:
            self.notes.extend(f"{benchmark.name}: {note}" for note in benchmark.notes)
        items = [text for b in benchmarks for text in b.texts]
        self._owner = [(k, i) for k, b in enumerate(benchmarks) for i in range(len(b.texts))]
        if "ngram" in config.methods:
            groups = [k for k, _ in self._owner]
            self._ngrams, hit = load_or_build(items, config.ngram, config.min_item_tokens,
                                              groups, config.cache_dir,
                                              on_warning=self.notes.append)
            skipped = getattr(self._ngrams, "skipped_items", 0)
            if skipped:
                self.notes.append(f"{skipped} evaluation items have fewer than "
                                  f"{config.min_item_tokens} words: the n-gram check "
                                  "skips them")
            self.notes.append("n-gram index " + ("from the cache" if hit else "built"))
        if "rouge" in config.methods:
            for benchmark in benchmarks:
                index = RougeIndex(config.rouge_threshold)
                index.extend(benchmark.texts)
                self._rouge.append(index)
        if "embedding" in config.methods:
            from .embedding import EmbeddingCheck

            model = embedder() if embedder is not None else None
            self._embed = EmbeddingCheck.build(benchmarks, config, model)
        return self

    def _match(self, benchmark: int, item: int, method: str, score: float,
               coverage: float | None = None, shared: int | None = None) -> Match:
        b = self.benchmarks[benchmark]
        return Match(b.name, item, b.ids[item], b.texts[item], method, float(score),
                     coverage, shared)

    def check(self, instructions: Sequence[str], inputs: Sequence[str],
              outputs: Sequence[str]) -> list[list[Match]]:
        """The matches of each example (three aligned sequences of equal length).

        Returns:
            Per example, its matches (at most one per benchmark and method), in
            method order, then benchmark order; ``[]`` when clean.
        """
        whole = [_joined(i, x, o) for i, x, o in zip(instructions, inputs, outputs, strict=True)]
        prompts = [_joined(i, x) for i, x in zip(instructions, inputs, strict=True)]
        return self._run(whole, prompts)

    def check_instructions(self, instructions: Sequence[str]) -> list[list[Match]]:
        """The matches of bare instructions (``generate``'s instruction filter): each
        method reads the instruction alone."""
        return self._run(list(instructions), list(instructions))

    def _run(self, whole: list[str], prompts: list[str]) -> list[list[Match]]:
        found: list[list[Match]] = [[] for _ in whole]
        if self._ngrams is not None:
            for k, matches in enumerate(self._ngrams.match(whole)):
                for m in matches:
                    benchmark, item = self._owner[m.item]
                    found[k].append(self._match(benchmark, item, "ngram", m.longest,
                                                m.coverage, m.shared))
        for benchmark, index in enumerate(self._rouge):
            for k, hit in enumerate(index.above_threshold(prompts)):
                if hit is not None:
                    found[k].append(self._match(benchmark, hit[0], "rouge", hit[1]))
        if self._embed is not None:
            for k, hits in enumerate(self._embed.match(prompts)):
                for benchmark, item, score in hits:
                    found[k].append(self._match(benchmark, item, "embedding", score))
        return found

    def close(self) -> None:
        """Stop the embedding model if this check started one (nothing else holds
        resources)."""
        if self._embed is not None:
            self._embed.close()

    def describe(self) -> dict[str, Any]:
        """What the check was, for a manifest or a dataset card: each evaluation set
        (name, path, fields, items, content sha256) and the methods with their
        settings."""
        c = self.config
        methods: dict[str, Any] = {}
        if "ngram" in c.methods:
            methods["ngram"] = {"n": c.ngram, "min_item_tokens": c.min_item_tokens}
        if "rouge" in c.methods:
            methods["rouge"] = {"threshold": c.rouge_threshold}
        if "embedding" in c.methods:
            methods["embedding"] = {"model": c.embedding_model,
                                    "threshold": c.embedding_threshold}
        return {"benchmarks": [{"name": b.name, "path": str(b.path), "fields": list(b.fields),
                                "items": len(b.texts), "sha256": b.digest}
                               for b in self.benchmarks],
                "methods": methods}


def _joined(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def load_benchmarks(specs: Sequence[str]) -> list[Benchmark]:
    """Read every ``--against`` evaluation set.

    Args:
        specs: ``[NAME=]PATH[:FIELD,...]`` strings.

    Raises:
        DecontaminationError: see
            :func:`~selfinstruct.decontamination.benchmarks.load_benchmark`, and
            two sets with the same name.
    """
    from .benchmarks import check_names, load_benchmark, parse_against

    parsed = [parse_against(spec) for spec in specs]
    check_names(parsed)
    return [load_benchmark(spec) for spec in parsed]
