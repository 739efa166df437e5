"""Exact ROUGE-L deduplication of instructions at pool scale.

Self-Instruct (Wang et al., ACL 2023; method section, paragraph "Filtering
and Postprocessing") adds a generated instruction to the task pool only if
its ROUGE-L similarity with every instruction already there is below 0.7.
The reference code (yizhongw/self-instruct, and Stanford Alpaca which copies
it) scores each candidate against the whole pool with Google's
``rouge_score`` package, ``rouge_scorer.RougeScorer(["rougeL"])`` ->
``fmeasure``, and drops the candidate when the maximum is ``> 0.7`` (so
exactly 0.7 is kept); this module follows the code.

This module reproduces those decisions *exactly* (same tokenizer, same LCS,
same floating-point F1 formula, same ``>`` comparison, same sequential
"compare with everything kept so far" semantics) but replaces the quadratic
scan with a similarity join:

* every text becomes a string of token characters (one code point per
  distinct token), so LCS lengths come from ``rapidfuzz.distance.LCSseq``;
* candidates are generated with *prefix filtering* (AllPairs / PPJoin, Bayardo
  et al. 2007, Xiao et al. 2008) over token occurrences ``(token, k)`` so
  multisets become sets, with a length filter and a positional filter;
* survivors are verified with the exact LCS and the decision is taken on the
  reference floating-point F1.

Public API: :func:`rouge_tokenize`, :func:`rouge_l`, :func:`empty_fraction`,
:class:`RougeIndex` (incremental pool index) and :class:`Decision`,
:func:`near_duplicates` / :class:`NearDuplicateIndex` (rapidfuzz character
similarity over whole examples), :func:`dedup_records`, :func:`dedup_file`
(with :func:`dropped_path`, :func:`output_format`) and :class:`DedupInputError`.

Importing this module is cheap: numpy and rapidfuzz are imported at module
level; pandas / pyarrow only inside :func:`dedup_file`.  It never imports
vLLM or torch.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rapidfuzz import fuzz, process, utils
from rapidfuzz.distance import LCSseq

__all__ = [
    "DEFAULT_THRESHOLD",
    "INPUT_SUFFIXES",
    "OUTPUT_FORMATS",
    "TOKENIZERS",
    "Decision",
    "DedupInputError",
    "DroppedRecord",
    "NearDuplicateIndex",
    "RougeIndex",
    "dedup_file",
    "dropped_path",
    "dedup_records",
    "empty_fraction",
    "near_duplicates",
    "output_format",
    "rouge_l",
    "rouge_tokenize",
]

#: Self-Instruct ("Filtering and Postprocessing") and its code, as copied by
#: Alpaca: a candidate whose ROUGE-L F1 with any pool instruction is ``> 0.7``
#: is dropped (exactly 0.7 is kept).
DEFAULT_THRESHOLD = 0.7

#: Names accepted by the ``tokenizer`` arguments.
TOKENIZERS = ("rouge", "unicode")

# Safety margin (absolute, on the F1 scale) for every pruning bound.  Float
# F1 values differ from the exact rational F1 by a few ulps (~1e-16), so
# pruning only what is at least 1e-9 below the decision value can never
# remove a pair that the reference float computation would keep or select.
_EPS = 1e-9


class DedupInputError(ValueError):
    """Bad input for :func:`dedup_file` / :func:`dedup_records`.

    Raised for a missing or unreadable file, an unknown format, a missing
    field, or a non-string value in the field.  The message is one line and
    names the file (when there is one) and the field.
    """


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------

# rouge_score.tokenize.tokenize (no stemmer, the RougeScorer default):
#   text.lower(); every char outside [a-z0-9] -> space; split on whitespace;
#   keep tokens matching ^[a-z0-9]+$.
# The result is exactly the maximal runs of [a-z0-9] in text.lower().
_ROUGE_WORD = re.compile(r"[a-z0-9]+")

# CJK ideographs, kana, hangul (and iteration marks / radicals): one token
# per character in the "unicode" tokenizer.
_CJK = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u2e80-\u2fdf"  # CJK radicals, Kangxi radicals
    "\u3005-\u3007"  # 々 〆 〇
    "\u3021-\u3029\u3038-\u303b"  # Hangzhou numerals, more iteration marks
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK Ext A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\ua960-\ua97f"  # Hangul Jamo Ext A
    "\uac00-\ud7af"  # Hangul syllables
    "\ud7b0-\ud7ff"  # Hangul Jamo Ext B
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # halfwidth Katakana
    "\U0001b000-\U0001b16f"  # Kana supplement / extended
    "\U00020000-\U0003134f"  # CJK Ext B..G
)


@lru_cache(maxsize=1)
def _unicode_word_re() -> re.Pattern[str]:
    """Compile the "unicode" tokenizer regex (built lazily: it scans the
    Unicode database once, ~0.2 s, to collect combining marks)."""
    ranges: list[str] = []
    start = prev = -2
    for cp in range(0x110000):
        if unicodedata.category(chr(cp))[0] == "M":
            if cp != prev + 1:
                if start >= 0:
                    ranges.append(_range(start, prev))
                start = cp
            prev = cp
    if start >= 0:
        ranges.append(_range(start, prev))
    marks = "".join(ranges)
    # A CJK/kana/hangul character alone, or a word: a letter/digit (\w
    # without "_", not CJK) followed by letters, digits and combining marks
    # (so Devanagari, Thai, ... words are not split at vowel signs).
    pattern = f"[{_CJK}]|[^\\W_{_CJK}](?:[^\\W_{_CJK}]|[{marks}])*"
    return re.compile(pattern)


def _range(a: int, b: int) -> str:
    return re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"


def _check_tokenizer(tokenizer: str) -> None:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")


def rouge_tokenize(text: str, tokenizer: str = "rouge") -> list[str]:
    """Tokenize ``text`` the way ROUGE-L deduplication sees it.

    Args:
        text: any string.
        tokenizer: ``"rouge"`` (default) is exactly the default tokenizer of
            Google's ``rouge_score`` (``RougeScorer(["rougeL"])``, no
            stemming): ``text.lower()``, every character outside ``[a-z0-9]``
            becomes a separator, empty pieces are dropped.  Non-Latin text
            therefore yields no tokens.  ``"unicode"`` is Unicode-aware:
            NFKC normalisation then ``str.casefold``; every CJK ideograph,
            kana and hangul character is its own token (Chinese splits per
            character); other tokens are maximal runs of Unicode letters and
            digits (``\\w`` without ``_``), combining marks included.

    Returns:
        The list of tokens (possibly empty), in text order.

    Raises:
        ValueError: unknown ``tokenizer``.
    """
    if tokenizer == "rouge":
        return _ROUGE_WORD.findall(text.lower())
    _check_tokenizer(tokenizer)
    return _unicode_word_re().findall(unicodedata.normalize("NFKC", text).casefold())


def _f1(lcs: int, len_target: int, len_prediction: int) -> float:
    """ROUGE-L F1 in rouge_score's own floating-point form.

    ``rouge_scorer._score_lcs``: precision = lcs / len(prediction), recall =
    lcs / len(target), ``scoring.fmeasure``: 2*P*R/(P+R) if P+R > 0 else 0;
    0 when either side has no tokens.  (Algebraically 2*lcs/(la+lb), but that
    differs in the last bit on many pairs, which matters at exact ties.)
    """
    if len_target == 0 or len_prediction == 0:
        return 0.0
    p = lcs / len_prediction
    r = lcs / len_target
    if p + r > 0:
        return 2 * p * r / (p + r)
    return 0.0


def _f1_array(lcs: np.ndarray, len_target: int, len_prediction: np.ndarray) -> np.ndarray:
    """Vectorised :func:`_f1` (bit-identical: same IEEE operations, same order)."""
    lcs = lcs.astype(np.float64)
    p = lcs / len_prediction
    r = lcs / len_target
    s = p + r
    with np.errstate(invalid="ignore", divide="ignore"):
        f = 2 * p * r / s
    return np.where(s > 0, f, 0.0)


def _char(i: int) -> str:
    """Token id -> a single code point (skipping the surrogate block)."""
    return chr(i if i < 0xD800 else i + 0x800)


_MAX_TOKENS = 0x110000 - 0x800


def rouge_l(a: str, b: str, tokenizer: str = "rouge") -> float:
    """ROUGE-L F1 between two texts, identical to ``rouge_score``.

    Equals ``RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure``
    (target ``a``, prediction ``b``) bit for bit when ``tokenizer="rouge"``:
    same tokens, LCS length over tokens, F1 = 2PR/(P+R) with P = lcs/len(b),
    R = lcs/len(a).  The value is symmetric in ``a`` and ``b``.

    Returns:
        A float in [0, 1]; 0.0 if either text has no tokens.

    Raises:
        ValueError: unknown ``tokenizer``.
    """
    ta = rouge_tokenize(a, tokenizer)
    tb = rouge_tokenize(b, tokenizer)
    if not ta or not tb:
        return 0.0
    ids: dict[str, str] = {}
    sa = "".join([ids.setdefault(t, _char(len(ids))) for t in ta])
    sb = "".join([ids.setdefault(t, _char(len(ids))) for t in tb])
    return _f1(LCSseq.similarity(sa, sb), len(ta), len(tb))


def empty_fraction(texts: Iterable[str], tokenizer: str = "rouge") -> float:
    """Fraction (0.0-1.0) of ``texts`` that tokenize to nothing.

    Such texts have ROUGE-L 0 with everything, so they are never dropped as
    duplicates; with the ``"rouge"`` tokenizer that is the case for any text
    without ASCII letters or digits (e.g. Chinese).  ``generate`` uses this
    to warn when more than a few percent of a pool is invisible to dedup.
    Returns 0.0 for an empty iterable.

    Raises:
        ValueError: unknown ``tokenizer``.
    """
    _check_tokenizer(tokenizer)
    n = empty = 0
    for text in texts:
        n += 1
        if not rouge_tokenize(text, tokenizer):
            empty += 1
    return empty / n if n else 0.0


# ---------------------------------------------------------------------------
# Incremental ROUGE-L index
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome for one candidate of :meth:`RougeIndex.dedup_batch`.

    Attributes:
        keep: True iff the candidate's maximum ROUGE-L F1 against the pool
            (and against candidates kept earlier in the same batch) is
            ``<= threshold`` (Self-Instruct filtering: ``> 0.7`` is dropped).
        nearest_index: pool index of the most similar pool text (ties: the
            lowest index); for a neighbour kept earlier in the same batch,
            the pool index it received (or would have received when
            ``add=False``).  None if the pool shares no token with the
            candidate, and None for kept candidates when the nearest
            neighbour was not requested (``exact_nearest_for_kept=False``).
        nearest_text: that pool text, or None.
        score: its ROUGE-L F1 (rouge_score float, in [0, 1]); 0.0 when
            ``nearest_index`` is None because nothing shares a token (or the
            candidate has no tokens, or the pool is empty); NaN for other
            kept candidates when the nearest neighbour was not requested.
    """

    keep: bool
    nearest_index: int | None
    nearest_text: str | None
    score: float


class _Grow:
    """Append-only int32 matrix with amortised doubling."""

    __slots__ = ("a", "n")

    def __init__(self, width: int) -> None:
        self.a = np.empty((4, width), dtype=np.int32)
        self.n = 0

    def append(self, row: tuple[int, ...]) -> None:
        if self.n == self.a.shape[0]:
            b = np.empty((2 * self.n, self.a.shape[1]), dtype=np.int32)
            b[: self.n] = self.a
            self.a = b
        self.a[self.n] = row
        self.n += 1

    def view(self) -> np.ndarray:
        return self.a[: self.n]


class _TextsView(Sequence[str]):
    """Read-only, copy-free view of the pool texts."""

    __slots__ = ("_data",)

    def __init__(self, data: list[str]) -> None:
        self._data = data

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, i):  # type: ignore[override]
        return self._data[i]

    def __repr__(self) -> str:
        return f"<{len(self._data)} pool texts>"


# Candidates verified up front to bootstrap the exact nearest-neighbour search.
_BOOTSTRAP = 32


class RougeIndex:
    """Incremental pool of texts with exact ROUGE-L F1 duplicate search.

    Implements the Self-Instruct diversity filter (drop a candidate whose
    ROUGE-L F1 with any pool instruction is ``> threshold``, default 0.7) with
    exactly the decisions of the reference loop ("keep item i iff its max
    ``rouge_score`` ROUGE-L against all earlier kept items is <= threshold"),
    using prefix filtering instead of a full scan.

    Algorithm (all bounds exact, with a 1e-9 safety margin; decisions and
    reported scores always use the reference float F1 of the exact LCS):

    * A text with ``l`` tokens is the set of its token occurrences
      ``(token, k)`` ("the" twice -> (the,0), (the,1)), so multiset overlap
      is set overlap, and LCS <= overlap.
    * F1 = 2*lcs/(la+lb) > t needs overlap > t*(la+lb)/2; over all partner
      lengths this is overlap >= a(l) = floor(t*l/(2-t)) + 1, hence (prefix
      filter) the pair shares an occurrence among the first
      ``l - a(l) + 1`` occurrences of each side in one global order
      (rarest first).  For t = 0.7, a(l) = floor(7l/13) + 1.
    * Positional filter: if that first shared occurrence is at position i of
      the query and has ``rem`` occurrences after it in the pool text,
      overlap <= 1 + min(lq-1-i, rem).  Length filter is implied.
    * Survivors are verified with ``rapidfuzz.distance.LCSseq`` on token
      strings.

    The global order is document frequency (rarest first) computed over the
    pool plus the batch being processed; it is recomputed (and the posting
    lists rebuilt) whenever the pool size doubles, which keeps it close to the
    true frequency order at amortised O(1) cost per item.  Any fixed order is
    correct; a good one only prunes more.

    The exact nearest neighbour of texts that are *kept* (no threshold to
    prune with) is found best-first: a lower bound from the best of ~32
    prefix-filter candidates, then posting lists of *all* occurrences (built
    lazily on first use) scanned only as deep as the bound allows (items
    sharing none of the query's first I occurrences have F1 <=
    2r/(lq+r), r = lq - I), with a per-item overlap bound from the shared
    occurrences counted there; candidates are verified in decreasing bound
    order until the bound drops below the best score found.

    Args:
        threshold: drop when F1 > threshold; must be in [0, 1].
        tokenizer: ``"rouge"`` or ``"unicode"`` (see :func:`rouge_tokenize`).

    Raises:
        ValueError: threshold outside [0, 1] or unknown tokenizer.
        OverflowError: more than 1,112,064 distinct tokens in one index.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, tokenizer: str = "rouge") -> None:
        threshold = float(threshold)
        if not (0.0 <= threshold <= 1.0):
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        _check_tokenizer(tokenizer)
        self.threshold = threshold
        self.tokenizer = tokenizer
        self._tp = threshold - _EPS  # pruning threshold (conservative)
        self._texts: list[str] = []
        self._seqs: list[str] = []  # token-character strings
        self._seqarr = np.empty(16, dtype=object)  # same, for fancy indexing
        self._lens = np.zeros(16, dtype=np.int64)
        self._stamp = np.zeros(16, dtype=np.int64)
        self._qid = 0
        self._tokchar: dict[str, str] = {}
        self._rank: dict[int, int] = {}
        self._order_basis = 0
        self._plen_cache: list[int] = [0]
        self._ppost: dict[int, _Grow] = {}
        self._fpost: dict[int, _Grow] | None = None

    # -- basic container protocol ------------------------------------------------

    def __len__(self) -> int:
        return len(self._texts)

    def __getitem__(self, i: int) -> str:
        return self._texts[i]

    @property
    def texts(self) -> Sequence[str]:
        """Read-only view of the pool texts, in pool-index order."""
        return _TextsView(self._texts)

    def __repr__(self) -> str:
        return (
            f"RougeIndex(n={len(self)}, threshold={self.threshold}, "
            f"tokenizer={self.tokenizer!r})"
        )

    # -- encoding -----------------------------------------------------------------

    def _encode(self, text: str) -> str:
        """Text -> string with one code point per token (ids are index-local)."""
        tc = self._tokchar
        out = []
        for t in rouge_tokenize(text, self.tokenizer):
            c = tc.get(t)
            if c is None:
                n = len(tc)
                if n >= _MAX_TOKENS:
                    raise OverflowError("RougeIndex supports at most 1,112,064 distinct tokens")
                c = tc[t] = _char(n)
            out.append(c)
        return "".join(out)

    @staticmethod
    def _keys(seq: str) -> list[int]:
        """Token occurrences (token, k) as ints ``k << 21 | codepoint``."""
        if len(set(seq)) == len(seq):
            return list(map(ord, seq))
        seen: dict[str, int] = {}
        out = []
        for c in seq:
            k = seen.get(c, 0)
            seen[c] = k + 1
            out.append((k << 21) | ord(c))
        return out

    def _sorted_keys(self, seq: str) -> list[int]:
        """Occurrences in the global order (rarest first, then by key)."""
        rank = self._rank.get
        return sorted(self._keys(seq), key=lambda k: rank(k, -k))

    def _plen(self, n: int) -> int:
        """Prefix length ``n - a(n) + 1`` for a text of ``n`` occurrences."""
        cache = self._plen_cache
        tp = self._tp
        while len(cache) <= n:
            m = len(cache)
            # a(m) = floor(tp*m/(2-tp)) + 1, rounded down (more conservative)
            # by 1e-7 against floating-point error in tp*m/(2-tp).
            alpha = max(1, math.floor(tp * m / (2.0 - tp) - 1e-7) + 1)
            cache.append(max(1, m - alpha + 1))
        return cache[n]

    # -- order maintenance ----------------------------------------------------------

    def _maybe_reorder(self, upcoming: Sequence[str]) -> None:
        total = len(self._seqs) + len(upcoming)
        if total == 0 or (self._order_basis and total < 2 * self._order_basis):
            return
        df: Counter[int] = Counter()
        for seq in self._seqs:
            df.update(self._keys(seq))
        for seq in upcoming:
            df.update(self._keys(seq))
        # Rarest first; seen keys rank >= 2**64 > unseen keys (rank -key).
        self._rank = {k: (c << 64) | k for k, c in df.items()}
        self._order_basis = total
        self._rebuild()

    def _rebuild(self) -> None:
        self._ppost = {}
        full = self._fpost is not None
        if full:
            self._fpost = {}
        for i, seq in enumerate(self._seqs):
            if seq:
                ks = self._sorted_keys(seq)
                self._post_prefix(i, ks)
                if full:
                    self._post_full(i, ks)

    def _post_prefix(self, i: int, ks: list[int]) -> None:
        """Index the first ``_plen(n)`` occurrences: rows (item, rem, n)."""
        n = len(ks)
        pp = self._ppost
        for j in range(self._plen(n)):
            g = pp.get(ks[j])
            if g is None:
                g = pp[ks[j]] = _Grow(3)
            g.append((i, n - 1 - j, n))

    def _post_full(self, i: int, ks: list[int]) -> None:
        """Index every occurrence: rows (item, rem, n), rem = occurrences after it."""
        n = len(ks)
        fp = self._fpost
        assert fp is not None
        for j, k in enumerate(ks):
            g = fp.get(k)
            if g is None:
                g = fp[k] = _Grow(3)
            g.append((i, n - 1 - j, n))

    def _ensure_full(self) -> None:
        if self._fpost is None:
            self._fpost = {}
            for i, seq in enumerate(self._seqs):
                if seq:
                    self._post_full(i, self._sorted_keys(seq))

    def _append(self, text: str, seq: str, ks: list[int] | None) -> int:
        i = len(self._texts)
        self._texts.append(text)
        self._seqs.append(seq)
        if i >= len(self._lens):
            self._lens = np.concatenate([self._lens, np.zeros_like(self._lens)])
            self._stamp = np.concatenate([self._stamp, np.zeros_like(self._stamp)])
            self._seqarr = np.concatenate([self._seqarr, np.empty(i, dtype=object)])
        self._lens[i] = len(seq)
        self._seqarr[i] = seq
        if seq:
            if ks is None:
                ks = self._sorted_keys(seq)
            self._post_prefix(i, ks)
            if self._fpost is not None:
                self._post_full(i, ks)
        return i

    def _truncate(self, n: int) -> None:
        """Remove pool items ``n..`` (they are the last entries of every list)."""
        full = self._fpost is not None
        while len(self._texts) > n:
            i = len(self._texts) - 1
            seq = self._seqs.pop()
            self._texts.pop()
            if not seq:
                continue
            ks = self._sorted_keys(seq)
            m = len(ks)
            for j in range(self._plen(m)):
                g = self._ppost[ks[j]]
                assert g.a[g.n - 1, 0] == i
                g.n -= 1
            if full:
                assert self._fpost is not None
                for k in ks:
                    g = self._fpost[k]
                    assert g.a[g.n - 1, 0] == i
                    g.n -= 1

    # -- public mutation ------------------------------------------------------------

    def add(self, text: str) -> int:
        """Append ``text`` to the pool unconditionally (e.g. a seed task).

        Returns:
            Its pool index (``len(self) - 1`` afterwards).
        """
        seq = self._encode(text)
        self._maybe_reorder([seq])
        return self._append(text, seq, None)

    def extend(self, texts: Iterable[str]) -> list[int]:
        """Append all ``texts`` unconditionally; returns their pool indices."""
        texts = list(texts)
        seqs = [self._encode(t) for t in texts]
        self._maybe_reorder(seqs)
        return [self._append(t, s, None) for t, s in zip(texts, seqs, strict=True)]

    # -- search ---------------------------------------------------------------------

    def _lcs(self, sq: str, cands: np.ndarray) -> np.ndarray:
        """Exact token LCS lengths of the query with pool items ``cands``."""
        if len(cands) <= 8:
            seqs = self._seqs
            sim = LCSseq.similarity
            return np.array([sim(sq, seqs[c]) for c in cands.tolist()], dtype=np.int64)
        return process.cdist([sq], self._seqarr[cands], scorer=LCSseq.similarity, dtype=np.int32)[0]

    def _verify(self, sq: str, lq: int, cands: np.ndarray) -> np.ndarray:
        """Reference-form F1 of the query against pool items ``cands``."""
        # target = new text (length lq), prediction = pool text, as in Alpaca.
        return _f1_array(self._lcs(sq, cands), lq, self._lens[cands])

    def _prefix_candidates(
        self, ks: list[int], lq: int, top: int | None = None
    ) -> np.ndarray | None:
        """Pool items that may have F1 > threshold - eps with the query
        (sorted, unique); with ``top``, only about the ``top`` of them with
        the largest positional bound (a bootstrap sample, not complete)."""
        pp = self._ppost
        views = []
        avals = []
        counts = []
        for i in range(self._plen(lq)):
            g = pp.get(ks[i])
            if g is not None and g.n:
                views.append(g.a[: g.n])
                avals.append(lq - 1 - i)
                counts.append(g.n)
        if not views:
            return None
        if len(views) == 1:
            e = views[0]
            ub = np.minimum(e[:, 1], avals[0])
        else:
            e = np.concatenate(views)
            ub = np.minimum(e[:, 1], np.repeat(np.array(avals), counts))
        # F1 <= 2*(1+ub)/(lq+ly); keep where that bound exceeds tp.
        ok = 2.0 * (ub + 1) > self._tp * (e[:, 2] + lq)
        if not ok.any():
            return None
        items = e[ok, 0]
        if top is not None and len(items) > top:
            score = (ub[ok] + 1) / (e[ok, 2] + lq)
            items = items[np.argpartition(-score, top)[:top]]
        # Monotone bound: passing at any shared prefix occurrence implies
        # passing at the first one, so this set is exactly the PPJoin set.
        return np.unique(items)

    def _full_search(
        self, ks: list[int], lq: int, sq: str, best_i: int | None, best_f: float
    ) -> tuple[int | None, float]:
        """Exact max-F1 pool item (lowest index on ties), best-first.

        ``best_i``/``best_f`` is an already-verified lower bound (or None,
        0.0); pool items stamped with the current query id are verified.

        Bounds (F1 <= 2*overlap/(lq+ly), overlap = shared occurrences):

        * items sharing none of the query's first I occurrences (global
          order) have overlap <= r = lq - I, so F1 <= 2r/(lq+r); scanning
          stops at the first I where that is below the best score;
        * for an item seen in the scanned posting lists: with c shared
          occurrences among the first I, ``rem_last`` occurrences after the
          last of them in the item, ``i1``/``rem1`` the query position and
          item remainder of the first one: overlap <= min(c + min(I'..),
          1 + min(lq-1-i1, rem1)) where I'.. = min(lq - I, rem_last).

        Candidates are verified in decreasing bound order until the bound
        falls below the best verified score.
        """
        assert self._fpost is not None
        fp = self._fpost
        stamp = self._stamp
        qid = self._qid
        if best_i is None:
            # Bootstrap a lower bound from the rarest shared occurrence.
            for k in ks:
                g = fp.get(k)
                if g is not None and g.n:
                    c = g.a[: min(g.n, 32), 0]
                    f = self._verify(sq, lq, c)
                    j = int(np.argmax(f))
                    best_i, best_f = int(c[j]), float(f[j])
                    stamp[c] = qid
                    break
            else:
                return None, 0.0
        floor = best_f - _EPS
        views = []
        qpos = []
        counts = []
        scanned = 0
        while scanned < lq:
            rest = lq - scanned
            if 2.0 * rest / (lq + rest) < floor:
                break
            g = fp.get(ks[scanned])
            if g is not None and g.n:
                views.append(g.a[: g.n])
                qpos.append(scanned)
                counts.append(g.n)
            scanned += 1
        if not views:
            return best_i, best_f
        tail = lq - scanned
        if len(views) == 1:
            e = views[0]
            items = e[:, 0]
            ub = 1 + np.minimum(e[:, 1], min(lq - 1 - qpos[0], tail))
            ly = e[:, 2]
        else:
            e = np.concatenate(views)
            qp = np.repeat(np.array(qpos), counts)
            # Each posting list is sorted by item, so this is a merge of runs.
            order = np.argsort(e[:, 0], kind="stable")
            si = e[order, 0]
            brk = np.flatnonzero(si[1:] != si[:-1]) + 1
            starts = np.concatenate(([0], brk))
            ends = np.concatenate((brk, [len(si)]))
            first = order[starts]
            last = order[ends - 1]
            items = si[starts]
            ub1 = 1 + np.minimum(lq - 1 - qp[first], e[first, 1])
            ub2 = (ends - starts) + np.minimum(e[last, 1], tail)
            ub = np.minimum(ub1, ub2)
            ly = e[first, 2]
        bound = 2.0 * ub / (ly + lq)
        ok = bound >= floor
        items = items[ok]
        if not len(items):
            return best_i, best_f
        bound = bound[ok]
        fresh = stamp[items] != qid
        items = items[fresh]
        bound = bound[fresh]
        if len(items) > 32:
            order = np.argsort(-bound, kind="stable")
            items = items[order]
            bound = bound[order]
        pos, step, n = 0, 32, len(items)
        while pos < n and bound[pos] >= best_f - _EPS:
            c = items[pos : pos + step]
            c = c[bound[pos : pos + step] >= best_f - _EPS]
            pos += step
            step *= 4
            f = self._verify(sq, lq, c)
            m = float(f.max())
            if m >= best_f:
                j = int(c[f == m].min())  # lowest index among ties
                if m > best_f or best_i is None or j < best_i:
                    best_i, best_f = j, m
        return best_i, best_f

    def _query(
        self, seq: str, ks: list[int], exact_nearest: bool
    ) -> tuple[bool, int | None, float]:
        """Decision ``(keep, nearest_index, score)`` for one encoded query."""
        lq = len(seq)
        if lq == 0 or not self._texts:
            return True, None, 0.0
        self._qid += 1
        if exact_nearest:
            self._ensure_full()
            best_i: int | None = None
            best_f = 0.0
            boot = self._prefix_candidates(ks, lq, top=_BOOTSTRAP)
            if boot is not None:
                # A good lower bound first: it sets how deep the scan goes.
                f = self._verify(seq, lq, boot)
                j = int(np.argmax(f))  # boot ascending: lowest index on ties
                best_i, best_f = int(boot[j]), float(f[j])
                self._stamp[boot] = self._qid
            best_i, best_f = self._full_search(ks, lq, seq, best_i, best_f)
            return best_f <= self.threshold, best_i, best_f
        cands = self._prefix_candidates(ks, lq)
        if cands is None:
            return True, None, math.nan
        lcs = self._lcs(seq, cands)
        lens = self._lens[cands]
        # Real F1 = 2*lcs/(lq+ly) <= tp  =>  float F1 < threshold.
        hot = 2.0 * lcs > self._tp * (lens + lq)
        if not hot.any():
            return True, None, math.nan
        cands = cands[hot]
        f = _f1_array(lcs[hot], lq, lens[hot])
        j = int(np.argmax(f))  # cands ascending: first max = lowest index
        if f[j] > self.threshold:
            return False, int(cands[j]), float(f[j])
        return True, None, math.nan

    def nearest(self, text: str) -> tuple[int | None, float]:
        """Most similar pool text by ROUGE-L F1.

        Returns:
            ``(pool_index, score)``; among equal scores the lowest index.
            ``(None, 0.0)`` if the pool is empty, the text has no tokens, or
            no pool text shares a token with it.
        """
        seq = self._encode(text)
        if not seq or not self._texts:
            return None, 0.0
        self._ensure_full()
        self._qid += 1
        return self._full_search(self._sorted_keys(seq), len(seq), seq, None, 0.0)

    def dedup_batch(
        self,
        candidates: Sequence[str],
        add: bool = True,
        exact_nearest_for_kept: bool = True,
    ) -> list[Decision]:
        """Filter ``candidates`` in order against the pool (Self-Instruct filter).

        Each candidate is compared with the whole pool and with the
        candidates kept earlier in this batch; it is kept iff its maximum
        ROUGE-L F1 is ``<= threshold`` (so exactly 0.7 is kept), which is
        exactly the sequential reference algorithm.  Kept candidates are
        appended to the pool in order.

        Args:
            candidates: texts, processed in order.
            add: if False the pool is left unchanged afterwards (kept
                candidates still shadow later ones within the batch; their
                ``nearest_index`` is the pool index they would have had).
            exact_nearest_for_kept: if True (default) kept candidates also get
                their exact nearest pool text and score; if False they get
                ``nearest_index=None``, ``score=nan`` (faster).  Dropped
                candidates always get the exact nearest neighbour (max F1,
                lowest index on ties, score > threshold).

        Returns:
            One :class:`Decision` per candidate, in order.
        """
        candidates = list(candidates)
        seqs = [self._encode(t) for t in candidates]
        n0 = len(self._texts)
        self._maybe_reorder(seqs)
        out: list[Decision] = []
        texts = self._texts
        try:
            for text, seq in zip(candidates, seqs, strict=True):
                ks = self._sorted_keys(seq) if seq else []
                keep, ni, score = self._query(seq, ks, exact_nearest_for_kept)
                out.append(Decision(keep, ni, texts[ni] if ni is not None else None, score))
                if keep:
                    self._append(text, seq, ks)
        finally:
            if not add:
                self._truncate(n0)
        return out


# ---------------------------------------------------------------------------
# Near-duplicate examples (rapidfuzz)
# ---------------------------------------------------------------------------


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
        threshold: 0-100 (default 90).

    Raises:
        ValueError: threshold outside [0, 100].
    """

    def __init__(self, threshold: float = 90.0) -> None:
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
            if sc >= self.threshold and (sc > best or (sc == best and poss[j] < best_pos)):
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


def near_duplicates(texts: Iterable[str], threshold: float = 90.0) -> list[int | None]:
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


# ---------------------------------------------------------------------------
# Records and files
# ---------------------------------------------------------------------------


class DroppedRecord(NamedTuple):
    """A dropped record: its position, the kept record it duplicates
    (position and text), and their ROUGE-L F1 (> threshold)."""

    position: int
    nearest_position: int
    nearest_text: str
    score: float


def _field_values(records: Sequence[Any], field: str, where: str) -> list[str]:
    out = []
    for pos, rec in enumerate(records):
        try:
            value = rec[field]
        except (KeyError, TypeError, IndexError):
            raise DedupInputError(f"{where}: record {pos} has no field {field!r}") from None
        if not isinstance(value, str):
            raise DedupInputError(
                f"{where}: field {field!r} of record {pos} is {type(value).__name__}, not a string"
            )
        out.append(value)
    return out


def dedup_records(
    records: Sequence[dict[str, Any]],
    field: str,
    threshold: float = DEFAULT_THRESHOLD,
    tokenizer: str = "rouge",
) -> tuple[list[int], list[DroppedRecord]]:
    """ROUGE-L dedup of records on one text field (pure function).

    Record i is kept iff ROUGE-L F1 of ``records[i][field]`` with every
    earlier kept record is ``<= threshold`` (Self-Instruct filter,
    rouge_score F1; the first record is always kept).

    Returns:
        ``(kept_positions, dropped)``: kept positions ascending, and one
        :class:`DroppedRecord` ``(position, nearest_position, nearest_text,
        score)`` per dropped record, ascending; ``nearest_position`` is the
        position in ``records`` of the most similar earlier kept record
        (lowest position on ties).

    Raises:
        DedupInputError: a record lacks ``field`` or its value is not a str.
        ValueError: bad threshold or tokenizer.
    """
    texts = _field_values(records, field, "records")
    index = RougeIndex(threshold=threshold, tokenizer=tokenizer)
    decisions = index.dedup_batch(texts, exact_nearest_for_kept=False)
    kept: list[int] = []
    dropped: list[DroppedRecord] = []
    for pos, d in enumerate(decisions):
        if d.keep:
            kept.append(pos)
        else:
            assert d.nearest_index is not None and d.nearest_text is not None
            dropped.append(DroppedRecord(pos, kept[d.nearest_index], d.nearest_text, d.score))
    return kept, dropped


def _first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """The first line of a JSON Lines file that the json module cannot parse, with
    the reason; None when every line parses. Only used to name the line after
    pandas has refused the file (its own errors give none)."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                return number, f"invalid JSON: {exc.msg}"
            except RecursionError:
                return number, "invalid JSON: nested too deeply"
    return None


def _read_table(path: Path):
    """Read JSON array / JSONL / Parquet into a pandas DataFrame.

    Only a regular file is read (:func:`selfinstruct.inputs.check_regular_file`).

    Raises:
        DedupInputError: not a regular file (missing, a directory, a FIFO, a
            device, a symlink loop), an unknown suffix, or a file pandas cannot
            read (for JSON Lines, naming the first line that does not parse).
    """
    import pandas as pd

    from .inputs import InputFileError, check_regular_file

    try:
        check_regular_file(path)
    except InputFileError as exc:
        raise DedupInputError(str(exc)) from None
    suffix = path.suffix.lower()
    lines = False
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            lines = True
        elif suffix == ".json":
            with open(path, "rb") as f:
                head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
            lines = not head.startswith(b"[")
        else:
            raise DedupInputError(
                f"{path}: unknown format {suffix!r} (expected .json, .jsonl, .ndjson or .parquet)"
            )
        kwargs: dict[str, Any] = {"orient": "records", "lines": lines, "dtype": False}
        if int(pd.__version__.split(".")[0]) < 3:
            kwargs["convert_dates"] = False  # pandas 3: implied by dtype=False
        return pd.read_json(path, **kwargs)
    except DedupInputError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types
        bad = _first_bad_json_line(path) if lines else None
        if bad is not None:
            raise DedupInputError(f"{path}:{bad[0]}: {bad[1]}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DedupInputError(f"{path}: cannot read ({type(exc).__name__}: {first})") from exc


#: Record files a directory INPUT of :func:`dedup_file` is read from (in name order).
INPUT_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".pq", ".csv")

#: Output extension -> format written by :func:`dedup_file` (the format follows the name).
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                  ".ndjson": "jsonl", ".json": "json"}


def output_format(output_path: str | os.PathLike[str]) -> str:
    """The format :func:`dedup_file` writes to ``output_path``, from its extension.

    Returns:
        ``"parquet"`` (``.parquet``, ``.pq``), ``"jsonl"`` (``.jsonl``,
        ``.ndjson``: one JSON object per line) or ``"json"`` (``.json``: a JSON
        array of objects); case-insensitive.

    Raises:
        DedupInputError: any other extension (one line naming the path).
    """
    p = Path(output_path)
    fmt = OUTPUT_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DedupInputError(
            f"{p}: unknown output format {p.suffix or '(no extension)'!r}; the format follows "
            "the extension: .parquet, .jsonl, .ndjson or .json")
    return fmt


def dropped_path(output_path: str | os.PathLike[str]) -> Path:
    """Where :func:`dedup_file` writes dropped rows: ``<stem>.dropped<ext>`` next to
    ``output_path``, with its extension (``kept.jsonl`` -> ``kept.dropped.jsonl``)."""
    p = Path(output_path)
    return p.with_name(f"{p.stem}.dropped{p.suffix}")


def _input_files(path: Path) -> list[Path]:
    """``[path]`` for a file; for a directory its record files (:data:`INPUT_SUFFIXES`,
    regular files, not hidden), sorted by name."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir()
                   if p.suffix.lower() in INPUT_SUFFIXES and not p.name.startswith(".")
                   and p.is_file())
    if not files:
        raise DedupInputError(f"{path}: directory holds no record files "
                              f"({', '.join(INPUT_SUFFIXES)})")
    return files


def _read_field(path: Path, field: str):
    """:func:`_read_table` of one file, checked: ``field`` present, string values."""
    df = _read_table(path)
    if field not in df.columns:
        cols = ", ".join(map(str, df.columns[:10]))
        raise DedupInputError(f"{path}: no field {field!r} (columns: {cols or 'none'})")
    for pos, v in enumerate(df[field].tolist()):
        if v is None or (isinstance(v, float) and math.isnan(v)):  # JSON null reads as NaN
            raise DedupInputError(f"{path}: field {field!r} of row {pos} is missing (null)")
        if not isinstance(v, str):
            raise DedupInputError(
                f"{path}: field {field!r} of row {pos} is {type(v).__name__}, not a string"
            )
    return df


def _read_input(path: Path, field: str):
    """One DataFrame of the file, or of a directory's record files concatenated in name
    order (columns united; a column missing from a file is null there)."""
    import pandas as pd

    frames = [_read_field(f, field) for f in _input_files(path)]
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):  # dates and times from Parquet
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode(df, fmt: str) -> bytes:
    """``df`` as the bytes of a ``fmt`` file (see :data:`OUTPUT_FORMATS`): Parquet with
    zstd through pyarrow; JSON from pyarrow's Python rows (nulls as null, UTF-8)."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return buffer.getvalue()
    lines = [json.dumps(row, ensure_ascii=False, allow_nan=False, default=_json_default)
             for row in table.to_pylist()]
    if fmt == "jsonl":
        text = "".join(line + "\n" for line in lines)
    else:
        text = "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    return text.encode("utf-8")


def dedup_file(
    input_path: str | os.PathLike[str],
    field: str,
    output_path: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    tokenizer: str = "rouge",
) -> dict[str, Any]:
    """ROUGE-L dedup of a dataset file (or a directory of them) on one text field.

    Reads a JSON array (``.json``), JSON Lines (``.jsonl``/``.ndjson``, or a
    ``.json`` file not starting with ``[``) or Parquet (``.parquet``/``.pq``)
    with pandas/pyarrow; a directory is read as its record files
    (:data:`INPUT_SUFFIXES`) in name order, one after the other. Applies
    :func:`dedup_records` (Self-Instruct filter: rouge_score ROUGE-L F1
    ``> threshold`` is dropped, in input order), and writes, in the format of
    ``output_path``'s extension (:func:`output_format`: Parquet with zstd,
    JSON Lines or a JSON array):

    * ``output_path``: the kept rows, all columns, in input order;
    * ``<stem>.dropped<ext>`` next to it (:func:`dropped_path`): the
      dropped rows plus ``nearest_index`` (int64, position in the input of
      the kept row it duplicates; for a directory, in the concatenation),
      ``nearest_text`` and ``rouge_l`` (float64); existing columns with these
      names are overwritten.

    Both files are written together (:func:`selfinstruct.safety.atomic_files`:
    temporary files, fsync, the dropped file renamed first, then the kept
    one), so they appear as a pair or not at all. Every output check is made
    before the input is read.

    Returns:
        ``{"input": rows read, "kept": n, "dropped": n, "output": str,
        "dropped_output": str, "read_seconds": s, "dedup_seconds": s,
        "write_seconds": s, "seconds": total wall seconds}``.

    Raises:
        DedupInputError: missing/unreadable file, unknown input or output
            format, a directory without record files, missing field,
            non-string values in the field, or rows the output format cannot
            hold.
        OutputPathError: (:mod:`selfinstruct.safety`) the output or its
            dropped file is, lies inside or contains the input, or cannot be
            written (an existing directory, a regular file on the path, a
            read-only directory).
        ValueError: bad threshold or tokenizer.
    """
    from .inputs import InputFileError, check_regular_file
    from .safety import (OutputPathError, atomic_files, check_not_in_run, check_output_apart,
                         check_writable_file)

    _check_tokenizer(tokenizer)
    if not (0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    t0 = time.perf_counter()
    src = Path(input_path)
    out = Path(output_path)
    drop_out = dropped_path(out)
    if not src.is_dir():  # the input's own mistakes first (a loop, a FIFO, nothing there)
        try:
            check_regular_file(src)
        except InputFileError as exc:
            raise DedupInputError(str(exc)) from None
    check_writable_file(out, "--output")
    check_writable_file(drop_out, "--output")
    check_not_in_run(out, "--output")
    fmt = output_format(out)
    check_output_apart(out, {"INPUT": src}, "--output")
    check_output_apart(drop_out, {"INPUT": src}, "--output",
                       name="the dropped-rows file of --output")
    df = _read_input(src, field)
    values = df[field].tolist()
    t1 = time.perf_counter()
    kept, dropped = dedup_records([{field: v} for v in values], field, threshold, tokenizer)
    t2 = time.perf_counter()
    kept_df = df.iloc[kept].reset_index(drop=True)
    drop_df = df.iloc[[d.position for d in dropped]].reset_index(drop=True)
    drop_df["nearest_index"] = np.array([d.nearest_position for d in dropped], dtype=np.int64)
    drop_df["nearest_text"] = [d.nearest_text for d in dropped]
    drop_df["rouge_l"] = np.array([d.score for d in dropped], dtype=np.float64)
    encoded = []
    for frame in (drop_df, kept_df):
        try:
            encoded.append(_encode(frame, fmt))
        except Exception as exc:  # pyarrow / json raise many types
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise DedupInputError(f"{src}: rows cannot be written as {fmt} "
                                  f"({type(exc).__name__}: {first})") from None
    try:
        with atomic_files(drop_out, out) as (drop_handle, kept_handle):
            drop_handle.write(encoded[0])
            kept_handle.write(encoded[1])
    except OSError as exc:
        raise OutputPathError(f"{out}: cannot write: {exc.strerror or exc}") from None
    t3 = time.perf_counter()
    return {
        "input": len(values),
        "kept": len(kept),
        "dropped": len(dropped),
        "output": str(out),
        "dropped_output": str(drop_out),
        "read_seconds": t1 - t0,
        "dedup_seconds": t2 - t1,
        "write_seconds": t3 - t2,
        "seconds": t3 - t0,
    }
