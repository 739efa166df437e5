"""Near-duplicate examples: rapidfuzz character similarity over whole examples.

The instance stage drops an example (instruction + input) whose
``rapidfuzz.fuzz.ratio`` with an example kept earlier is at least a threshold
(``instances.near_duplicate_threshold`` by default). Self-Instruct's
filtering drops instances that are exactly the same ("Filtering and
Postprocessing"); this also catches the near-verbatim repeats a small model
produces.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from rapidfuzz import fuzz, process, utils

from ..config import InstanceConfig

DEFAULT_NEAR_THRESHOLD: float = InstanceConfig.model_fields["near_duplicate_threshold"].default
"""The rapidfuzz ratio (0-100) at or above which two examples are near-duplicates;
stated in the config model (``instances.near_duplicate_threshold``)."""


_NEAR_MARGIN = 0.01


def _near_process(text: str) -> str:
    """rapidfuzz ``utils.default_process`` (lowercase, non-alphanumerics to
    spaces, trim) with runs of spaces collapsed to one."""
    return " ".join(utils.default_process(text).split())


class NearDuplicateIndex:
    """Incremental near-duplicate filter over whole examples.

    Score: ``rapidfuzz.fuzz.ratio`` (0-100; normalised Indel similarity,
    100 * 2*LCS_chars / (len_a + len_b)) of the texts after
    :func:`_near_process` (lowercase, non-alphanumerics to single spaces).
    A text near-duplicates a kept text when the score is ``>= threshold``.
    Matching is exact with respect to that scorer: only kept texts whose
    length makes the score provably < threshold are skipped (Indel distance
    >= |len_a - len_b|, so ratio <= 200*min/(len_a+len_b)), and
    ``rapidfuzz.process.extract`` with ``score_cutoff`` (0.01 below the
    threshold, because rapidfuzz's internal cutoff conversion is not exact
    at the boundary) finds the rest, each re-scored with ``fuzz.ratio``.
    Cost: one C++ scan over the kept texts of similar length per query.

    Args:
        threshold: 0-100 (default :data:`DEFAULT_NEAR_THRESHOLD`).

    Raises:
        ValueError: threshold outside [0, 100].
    """

    def __init__(self, threshold: float = DEFAULT_NEAR_THRESHOLD) -> None:
        threshold = float(threshold)
        if not (0.0 <= threshold <= 100.0):
            raise ValueError(f"threshold must be in [0, 100], got {threshold!r}")
        self.threshold = threshold
        # processed length -> (processed texts, positions), insertion order
        self._buckets: dict[int, tuple[list[str], list[int]]] = {}
        self._n = 0

    def __len__(self) -> int:
        """Number of texts seen by :meth:`add` (kept or not)."""
        return self._n

    def _window(self, n: int) -> tuple[int, int]:
        """Lengths m with 200*min(n,m)/(n+m) >= threshold (widened a little)."""
        t = self.threshold - _NEAR_MARGIN
        if t <= 0.0:
            return 0, 1 << 62
        lo = math.floor(n * t / (200.0 - t) * (1 - 1e-9))
        hi = math.ceil(n * (200.0 - t) / t * (1 + 1e-9))
        return max(0, lo), hi

    def match(self, text: str) -> tuple[int | None, float]:
        """Best kept text with score >= threshold: ``(position, score)``,
        earliest position on ties; ``(None, 0.0)`` if none."""
        return self._match(_near_process(text))

    def _match(self, p: str) -> tuple[int | None, float]:
        if not self._buckets:
            return None, 0.0
        lo, hi = self._window(len(p))
        strs: list[str] = []
        poss: list[int] = []
        if hi - lo + 1 <= len(self._buckets):
            for n in range(lo, hi + 1):
                b = self._buckets.get(n)
                if b is not None:
                    strs += b[0]
                    poss += b[1]
        else:
            for n, b in self._buckets.items():
                if lo <= n <= hi:
                    strs += b[0]
                    poss += b[1]
        if not strs:
            return None, 0.0
        # rapidfuzz.process applies score_cutoff with an error of ~1e-6 (it
        # can drop a pair scoring exactly the cutoff; 1e-4 below was always
        # enough in tests), so prefilter 0.01 below and decide on
        # fuzz.ratio's own value.
        cutoff = max(0.0, self.threshold - _NEAR_MARGIN)
        hits = process.extract(p, strs, scorer=fuzz.ratio, score_cutoff=cutoff, limit=None)
        best_pos: int | None = None
        best = -1.0
        for s, _, j in hits:
            sc = fuzz.ratio(p, s)
            if sc >= self.threshold and (best_pos is None or sc > best
                                         or (sc == best and poss[j] < best_pos)):
                best_pos, best = poss[j], sc
        if best_pos is None:
            return None, 0.0
        return best_pos, float(best)

    def add(self, text: str) -> int | None:
        """Check ``text`` and keep it unless it near-duplicates a kept text.

        Returns:
            None if kept, else the position (number of texts passed to
            :meth:`add` before it) of the best-scoring kept text it
            near-duplicates (earliest on ties).
        """
        p = _near_process(text)
        pos = self._n
        self._n += 1
        hit, _ = self._match(p)
        if hit is None:
            b = self._buckets.get(len(p))
            if b is None:
                b = self._buckets[len(p)] = ([], [])
            b[0].append(p)
            b[1].append(pos)
        return hit


def near_duplicates(texts: Iterable[str], threshold: float = DEFAULT_NEAR_THRESHOLD
                    ) -> list[int | None]:
    """Sequential near-duplicate detection over whole examples.

    Typical input: ``instruction + "\\n" + input`` per example.  Text i is a
    near-duplicate when ``fuzz.ratio`` (after ``utils.default_process`` and
    whitespace collapsing) with some earlier *kept* text is ``>= threshold``
    (0-100); see :class:`NearDuplicateIndex`.

    Returns:
        For each text in order: None if kept, else the position of the
        best-scoring earlier kept text (earliest on ties).
    """
    idx = NearDuplicateIndex(threshold)
    return [idx.add(t) for t in texts]
