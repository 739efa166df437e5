"""Exact ROUGE-L duplicate search over a growing pool: :class:`RougeIndex`.

Reproduces the Self-Instruct filter's decisions *exactly* (same tokenizer, same
LCS, same floating-point F1 formula, same ``>`` comparison, same sequential
"compare with everything kept so far" semantics; see
:mod:`selfinstruct.dedup.rouge`) but replaces the quadratic scan with a
similarity join, vectorised with numpy over blocks of candidates:

* every text becomes a row of token ids in one flat array (plus a string of
  token characters, one code point per distinct token, so LCS lengths come
  from ``rapidfuzz.distance.LCSseq``);
* candidate pairs come from *prefix filtering* (AllPairs / PPJoin, Bayardo
  et al. 2007, Xiao et al. 2008) generalised to *k shared occurrences*
  (the l-prefix schemes of adaptive prefix filtering, Wang et al. 2012):
  signatures are k-subsets of length-dependent prefixes, kept in sorted
  arrays and probed with ``searchsorted``, with length and positional
  filters;
* candidate pairs then pass an exact overlap bound from bucketed
  fingerprints (bit planes of per-bucket counts, ANDed and popcounted);
* survivors are verified with the exact LCS (``rapidfuzz.process.cpdist``)
  and every decision is taken on the reference floating-point F1;
* candidates are processed in blocks: each block is joined with the pool
  (which holds only texts kept so far) and with itself, then the sequential
  rule (a candidate is compared with the candidates *kept* earlier, not with
  dropped ones) is applied to the verified pairs in input order, and the
  block's kept texts join the pool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, combinations, pairwise, repeat
from typing import TypeVar, overload

import numpy as np
import numpy.typing as npt
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from .rouge import (_EPS, _MAX_TOKENS, DEFAULT_THRESHOLD, TEXT_MARK, _check_tokenizer,
                    _f1_array, _rouge_tokens_joined, rouge_tokenize)


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


# Kept candidates without a requested nearest neighbour (Decision is immutable).
_KEPT_NAN = Decision(True, None, None, math.nan)
_KEPT_NONE = Decision(True, None, None, 0.0)


class _Grow:
    """Append-only int32 matrix with amortised doubling."""

    __slots__ = ("a", "n")

    def __init__(self, width: int, rows: np.ndarray | None = None) -> None:
        n = 0 if rows is None else len(rows)
        self.a = np.empty((max(4, 2 * n), width), dtype=np.int32)
        if rows is not None:
            self.a[:n] = rows
        self.n = n

    def extend(self, rows: np.ndarray) -> None:
        m = len(rows)
        if self.n + m > self.a.shape[0]:
            b = np.empty((max(2 * self.a.shape[0], self.n + m), self.a.shape[1]), dtype=np.int32)
            b[: self.n] = self.a[: self.n]
            self.a = b
        self.a[self.n : self.n + m] = rows
        self.n += m

    def append(self, row: tuple[int, ...]) -> None:
        if self.n == self.a.shape[0]:
            b = np.empty((2 * self.n, self.a.shape[1]), dtype=np.int32)
            b[: self.n] = self.a
            self.a = b
        self.a[self.n] = row
        self.n += 1


class _Array:
    """Append-only 1-D numpy array with amortised doubling (``view()``: the used part)."""

    __slots__ = ("a", "n")

    def __init__(self, dtype: npt.DTypeLike) -> None:
        self.a = np.empty(16, dtype=dtype)
        self.n = 0

    def extend(self, values: np.ndarray | list[str]) -> None:
        m = len(values)
        if self.n + m > len(self.a):
            b = np.empty(max(2 * len(self.a), self.n + m), dtype=self.a.dtype)
            b[: self.n] = self.a[: self.n]
            self.a = b
        self.a[self.n : self.n + m] = values
        self.n += m

    def truncate(self, n: int) -> None:
        if self.a.dtype == object:
            self.a[n : self.n] = None
        self.n = n

    def view(self) -> np.ndarray:
        return self.a[: self.n]


class _Columns:
    """Append-only 2-D numpy array grown along axis 1 (``view()``: the used columns)."""

    __slots__ = ("a", "n")

    def __init__(self, rows: int, dtype: npt.DTypeLike) -> None:
        self.a = np.empty((rows, 16), dtype=dtype)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        m = values.shape[1]
        if self.n + m > self.a.shape[1]:
            b = np.empty((self.a.shape[0], max(2 * self.a.shape[1], self.n + m)),
                         dtype=self.a.dtype)
            b[:, : self.n] = self.a[:, : self.n]
            self.a = b
        self.a[:, self.n : self.n + m] = values
        self.n += m

    def truncate(self, n: int) -> None:
        self.n = n

    def view(self) -> np.ndarray:
        return self.a[:, : self.n]


class _TextsView(Sequence[str]):
    """Read-only, copy-free view of the pool texts."""

    __slots__ = ("_data",)

    def __init__(self, data: list[str]) -> None:
        self._data = data

    def __len__(self) -> int:
        return len(self._data)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        return self._data[i]

    def __repr__(self) -> str:
        return f"<{len(self._data)} pool texts>"


# Candidates verified up front to bootstrap the exact nearest-neighbour search.
_BOOTSTRAP = 32
# Signature keys (< 2**43) are packed with a text length (low bits, clamped;
# a longer text is then searched in a superset window, and filters read the
# true length) into one sortable int64.
_LBITS = 20
_LMAX = (1 << _LBITS) - 1
_HASH_MASK = (1 << 41) - 1
_MUL = 0x5851F42D4C957F2D
# Rank values of occurrences seen when the global order was fixed.
_SEEN = 1 << 62
# Signature size k by the length of the shorter text of a pair: 3 shared
# occurrences up to _K3_LEN tokens (0: never), 2 up to _K2_LEN, then 1 (capped
# by the overlap the threshold implies).  Larger k prunes unrelated pairs
# better but multiplies the signatures, of long texts above all; on Alpaca
# and the 1M benchmark set k = 2 up to 20 tokens was the fastest.
_K3_LEN = 0
_K2_LEN = 20
# Candidates per sequential block (also texts per chunk wherever signatures
# are made) and (probe x segment) matches expanded at once: these bound the
# transient memory.
_BLOCK = 1 << 15
_COMBO_CHUNK = 1 << 22
# Pool texts added last stay out of the signature segments (a "tail") while
# there are at most _TAIL texts and a batch makes at most _BRUTE pairs with
# them: those pairs are checked directly (length filter and fingerprints).
# Batches of at most _BRUTE_BATCH texts are checked against each other so.
_TAIL = 4096
_BRUTE = 1 << 16
_BRUTE_BATCH = 64
# A new pool segment is merged into the one before while that one is at most
# _MERGE times as large (a log-structured merge: few segments to probe).
_MERGE = 64

# Fingerprints: occurrence ids hashed into 64 * _FP_WORDS - 1 buckets, one bitmap
# per count level 1.._FP_PLANES (see _fingerprints).
_FP_WORDS = 1
_FP_PLANES = 2
_FP_W = _FP_WORDS * _FP_PLANES

_S = TypeVar("_S", str, list[int])


def _split(flat: _S, lens: np.ndarray) -> list[_S]:
    """Consecutive pieces of ``flat`` with the given lengths."""
    ends: list[int] = np.cumsum(lens).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=False)]


def _occurrence_numbers(tok: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Per token of a flat token-id array (texts of ``lens`` tokens, in order):
    how many earlier tokens of its own text are the same token (int64)."""
    if len(tok) <= 64:  # a few texts: a dict per text beats sorting
        ks: list[int] = []
        pos = 0
        for n in lens.tolist():
            seen: dict[int, int] = {}
            for t in tok[pos : pos + n].tolist():
                k = seen.get(t, 0)
                seen[t] = k + 1
                ks.append(k)
            pos += n
        return np.array(ks, dtype=np.int64)
    out = np.empty(len(tok), dtype=np.int64)
    ends = np.cumsum(lens)
    for a in range(0, len(lens), 4 * _BLOCK):
        b = min(a + 4 * _BLOCK, len(lens))
        t0, t1 = (int(ends[a - 1]) if a else 0), int(ends[b - 1])
        n = t1 - t0
        if not n:
            continue
        item = np.repeat(np.arange(b - a, dtype=np.int64), lens[a:b])
        comp = (item << 21) | tok[t0:t1]
        order = np.argsort(comp, kind="stable")  # item-major already: runs merge cheaply
        s = comp[order]
        idx = np.arange(n, dtype=np.int64)
        start = np.where(np.concatenate(([True], s[1:] != s[:-1])), idx, 0)
        np.maximum.accumulate(start, out=start)
        out[t0 + order] = idx - start
    return out


def _expand(start: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranges ``[start, start+count)`` listed: (range number, index) per element."""
    rep = np.repeat(np.arange(len(count), dtype=np.int64), count)
    offsets = np.cumsum(count) - count
    idx = np.arange(len(rep), dtype=np.int64) + np.repeat(start - offsets, count)
    return rep, idx


def _chunks(count: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Split ``count`` (per probe entry) into consecutive runs of total <= ``limit``
    (a single entry over the limit is a run of its own)."""
    n = len(count)
    if n == 0:
        return []
    total = np.cumsum(count)
    if int(total[-1]) <= limit:
        return [(0, n)]
    out = []
    a = 0
    while a < n:
        base = int(total[a - 1]) if a else 0
        b = max(int(np.searchsorted(total, base + limit, side="right")), a + 1)
        out.append((a, b))
        a = b
    return out


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int64 array (sort-based)."""
    if len(a) < 2:
        return a
    a = np.sort(a)
    out: np.ndarray = a[np.concatenate(([True], a[1:] != a[:-1]))]
    return out


def _popcount(a: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array."""
    out: np.ndarray
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        out = np.bitwise_count(a)
    else:
        table = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)
        out = table[a.view(np.uint8)].reshape(*a.shape, 8).sum(axis=-1)
    return out


def _fingerprints(tok: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Overlap fingerprints of texts (flat token ids, lengths): uint64 array of
    shape (``_FP_W``, texts), word-major.

    Each occurrence id ``(token, k)`` is hashed to one of ``64 * _FP_WORDS - 1``
    buckets; plane t (t = 1.._FP_PLANES, ``_FP_WORDS`` words each) marks the
    buckets holding at least t of the text's occurrences.  Bit 0 of word 0
    (no bucket) is set when no bucket holds more than ``_FP_PLANES`` (the
    planes are *exact*).  For two texts the multiset overlap (hence the LCS)
    is at most ``sum_b min(cx_b, cy_b)`` (a shared occurrence lies in one
    bucket of both), which is the popcount of the planes ANDed when either
    text's planes are exact: see :func:`_overlap_bound`.
    """
    m = len(lens)
    fp = np.zeros((_FP_W, m), dtype=np.uint64)
    fp[0] = 1
    if not len(tok):
        return fp
    oid = (_occurrence_numbers(tok, lens) << 21) | tok
    bucket = 1 + ((oid * _MUL) >> 40) % (64 * _FP_WORDS - 1)  # bit positions 1..
    level = _occurrence_numbers(bucket, lens)
    item = np.repeat(np.arange(m, dtype=np.int64), lens)
    ok = level < _FP_PLANES
    word = level[ok] * _FP_WORDS + (bucket[ok] >> 6)
    bit = np.left_shift(np.uint64(1), (bucket[ok] & 63).astype(np.uint64))
    np.bitwise_or.at(fp, (word, item[ok]), bit)
    fp[0, item[~ok]] &= ~np.uint64(1)
    return fp


def _overlap_bound(fx: np.ndarray, lx: np.ndarray, fy: np.ndarray, ly: np.ndarray
                   ) -> np.ndarray:
    """Upper bound on the multiset overlap of text pairs from their fingerprints
    (columns of :func:`_fingerprints`, any trailing shape) and lengths: the
    buckets shared level by level when either fingerprint is exact, capped by
    the shorter length."""
    shorter = np.minimum(lx, ly)
    exact = ((fx[0] | fy[0]) & np.uint64(1)).astype(bool)
    shared = _popcount((fx[0] & fy[0]) >> np.uint64(1)).astype(np.int64)
    for w in range(1, len(fx)):
        shared += _popcount(fx[w] & fy[w])
    return np.where(exact, np.minimum(shared, shorter), shorter)


@lru_cache(maxsize=512)
def _combos(p: int, k: int) -> np.ndarray:
    """All k-subsets of ``range(p)`` as rows, increasing (int64, shape (C, k))."""
    if k == 1:
        return np.arange(p, dtype=np.int64)[:, None]
    return np.array(list(combinations(range(p), k)), dtype=np.int64).reshape(-1, k)


@dataclass(slots=True)
class _Sigs:
    """Signatures of texts, one element each: ``key`` (int64 < 2**43: the k
    occurrence ids hashed, tagged with k), ``item`` (text number), ``rem``
    (occurrences after the k-th one in the text's order), ``ln`` (the text's
    length), ``k``."""

    key: np.ndarray
    item: np.ndarray
    rem: np.ndarray
    ln: np.ndarray
    k: np.ndarray

    def __len__(self) -> int:
        return len(self.key)

    def sorted(self) -> _Sigs:
        """The same signatures sorted by (key, length): probes in this order make
        ``searchsorted`` walk the segments nearly sequentially."""
        order = np.argsort((self.key << _LBITS) | np.minimum(self.ln, _LMAX))
        return _Sigs(self.key[order], self.item[order], self.rem[order], self.ln[order],
                     self.k[order])

    @staticmethod
    def concat(parts: list[_Sigs]) -> _Sigs:
        if not parts:
            z = np.zeros(0, dtype=np.int64)
            return _Sigs(z, z, z, z, z)
        if len(parts) == 1:
            return parts[0]
        return _Sigs(*(np.concatenate([getattr(p, f) for p in parts])
                       for f in ("key", "item", "rem", "ln", "k")))


def _caps(sigs: _Sigs, tp: float) -> np.ndarray:
    """Per signature, the longest partner its side of the positional filter
    allows: ``2 (k + rem) > t' (ln + ly)`` iff ``ly <= cap`` (rounded up: a
    superset), int32."""
    if tp <= 0:
        return np.full(len(sigs), np.iinfo(np.int32).max, dtype=np.int32)
    v = np.floor((2.0 * (sigs.k + sigs.rem) - tp * sigs.ln) / tp + 1e-7)
    out: np.ndarray = np.clip(v, -1, np.iinfo(np.int32).max).astype(np.int32)
    return out


class _Segment:
    """Signatures sorted by ``(key, clamped length)`` for ``searchsorted`` probes:
    ``comp`` (key << 20 | length), ``item`` (pool index) and ``cap``
    (:func:`_caps`: a match with a probe text of length ``ly`` passes this
    side of the positional filter iff ``ly <= cap``)."""

    __slots__ = ("cap", "comp", "item")

    def __init__(self, comp: np.ndarray, item: np.ndarray, cap: np.ndarray) -> None:
        self.comp, self.item, self.cap = comp, item, cap

    @staticmethod
    def of(sigs: _Sigs, tp: float) -> _Segment:
        return _Segment.of_sorted(sigs.sorted(), tp)

    @staticmethod
    def of_sorted(sigs: _Sigs, tp: float) -> _Segment:
        """From signatures already sorted by (key, length) (:meth:`_Sigs.sorted`)."""
        comp = (sigs.key << _LBITS) | np.minimum(sigs.ln, _LMAX)
        return _Segment(comp, sigs.item.astype(np.int32), _caps(sigs, tp))

    def __len__(self) -> int:
        return len(self.comp)

    def merge(self, other: _Segment) -> _Segment:
        """Both segments' signatures, sorted (a linear merge of sorted runs)."""
        at = np.searchsorted(self.comp, other.comp, side="right")
        return _Segment(np.insert(self.comp, at, other.comp), np.insert(self.item, at, other.item),
                        np.insert(self.cap, at, other.cap))

    def below(self, n: int) -> _Segment:
        """The signatures of items ``< n``."""
        keep = self.item < n
        return _Segment(self.comp[keep], self.item[keep], self.cap[keep])


@dataclass(slots=True)
class _Joined:
    """Result of :meth:`RougeIndex._join`: verified pairs ``(y, x, f, in_pool)``
    (the later text, as a position in the joined texts; its partner, a pool
    index when ``in_pool`` else an earlier position; their reference F1 with
    ``y`` the target) and the texts' sorted short and long signatures."""

    y: np.ndarray
    x: np.ndarray
    f: np.ndarray
    in_pool: np.ndarray
    shorts: _Sigs
    longs: _Sigs


@dataclass(slots=True)
class _Encoded:
    """Texts as token ids: ``tok`` flat (int64), ``lens`` per text, ``seqs``
    token-character strings (for rapidfuzz), overlap fingerprints ``fp``
    (:func:`_fingerprints`, made on first use)."""

    tok: np.ndarray
    lens: np.ndarray
    seqs: list[str]
    fp: np.ndarray | None = None

    def sub(self, a: int, b: int) -> _Encoded:
        """Texts ``a..b-1``."""
        ends = np.cumsum(self.lens)
        t0 = int(ends[a - 1]) if a else 0
        t1 = int(ends[b - 1]) if b else 0
        return _Encoded(self.tok[t0:t1], self.lens[a:b], self.seqs[a:b],
                        None if self.fp is None else self.fp[:, a:b])

    def fingerprints(self) -> np.ndarray:
        if self.fp is None:
            self.fp = _fingerprints(self.tok, self.lens)
        return self.fp


class RougeIndex:
    """Incremental pool of texts with exact ROUGE-L F1 duplicate search.

    Implements the Self-Instruct diversity filter (drop a candidate whose
    ROUGE-L F1 with any pool instruction is ``> threshold``, default 0.7) with
    exactly the decisions of the reference loop ("keep item i iff its max
    ``rouge_score`` ROUGE-L against all earlier kept items is <= threshold"),
    using prefix filtering instead of a full scan.

    Algorithm (all bounds exact, with a 1e-9 safety margin ``t' = t - 1e-9``;
    decisions and reported scores always use the reference float F1 of the
    exact LCS):

    * A text with ``l`` tokens is the set of its token occurrences
      ``(token, k)`` ("the" twice -> (the,0), (the,1)), so multiset overlap
      ``o`` is set overlap, and LCS <= o.  F1 = 2*lcs/(lx+ly) > t' needs
      ``o > t'(lx+ly)/2``; for the shorter text (``lx <= ly``) that is
      ``o >= m(lx) = floor(t' lx) + 1``, for the longer one
      ``o >= floor(t'(lx+ly)/2) + 1 >= a(ly) = floor(t' ly/(2-t')) + 1``.
    * k-prefix filter (one global order of occurrences, rarest first): if
      ``o >= k`` occurrences are shared, the first k shared ones lie within
      the first ``l - o + k`` of each text.  So a pair is a candidate only if
      a k-subset of the shorter text's first ``lx - m(lx) + k`` occurrences
      (its *short* signatures) equals one of the longer text's first
      ``ly - o_min + k`` (its *long* signatures, ``o_min`` the least overlap
      over the partner lengths of that k).  k is fixed by the shorter length
      (2 up to 20 tokens, then 1, never above ``m(lx)``; k = 1 is the classic
      prefix filter; see ``_K3_LEN``, ``_K2_LEN``).
    * Length filter: ``lx`` in ``(t' ly/(2-t'), ly (2-t')/t')``.  Positional
      filter: at the k-th shared occurrence, with ``rx``, ``ry`` occurrences
      after it, ``o <= k + min(rx, ry)``; this holds at the first k shared
      occurrences, which every candidate pair has, so filtering each match by
      its own bound loses no pair.  The probe's bound also narrows the
      searched length window.
    * Fingerprint filter: occurrences hashed to 63 buckets, with per-bucket
      counts up to 2 as bit planes; ``sum_b min(cx_b, cy_b)`` (the planes
      ANDed, popcounted) bounds the overlap whenever one text has no bucket
      above 2 (:func:`_fingerprints`).
    * The pool keeps both signature sets in sorted segments (merged as they
      grow).  A block of candidates (32,768) probes the pool (its long
      signatures against shorter-or-equal pool texts, its short ones against
      longer ones) and itself (long against short, each pair probed from its
      longer text).  Survivors are verified with ``rapidfuzz`` (LCSseq on
      token strings); the sequential rule is applied to the pairs above the
      threshold, and the block's kept texts join the pool.  Small batches
      compare with the pool texts added last (up to 4,096) and with each
      other directly, through the length and fingerprint filters only.

    The global order is document frequency (rarest first) over the pool plus
    the batch being processed; it is recomputed (and the pool's signatures
    rebuilt) whenever the pool size doubles, at amortised O(1) cost per item.
    Any fixed order is correct; a good one only prunes more.

    The exact nearest neighbour of texts that are *kept* (no threshold to
    prune with) is found best-first: a lower bound from the best pair
    verified by the join (or ~32 items of the rarest shared occurrence),
    then posting lists of *all* occurrences (built on first use) scanned
    only as deep as the bound allows (items sharing none of the query's
    first I occurrences have F1 <= 2r/(lq+r), r = lq - I), with a per-item
    overlap bound from the shared occurrences counted there; candidates are
    verified in decreasing bound order until the bound drops below the best
    score found.

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
        # Pool storage: texts, token strings, lengths, token ids (flat) + offsets.
        self._texts: list[str] = []
        self._seqarr = _Array(object)
        self._lens = _Array(np.int64)
        self._maxlen = 0  # longest text ever stored (in tokens)
        self._tok = _Array(np.int32)  # token ids < 2**21
        self._off = _Array(np.int64)
        self._off.extend(np.zeros(1, dtype=np.int64))
        self._fp = _Columns(_FP_W, np.uint64)  # fingerprints (word-major)
        self._vocab: dict[str | bytes, int] = {}
        self._stamp = np.zeros(16, dtype=np.int64)
        self._qid = 0
        # Global order: ranks of occurrences seen when it was fixed.
        self._rank0 = np.zeros(0, dtype=np.int64)  # by token id, for k = 0
        self._rep_keys = np.zeros(0, dtype=np.int64)  # occurrence ids with k >= 1, sorted
        self._rep_rank = np.zeros(0, dtype=np.int64)
        self._order_basis = 0
        # Signature plans by text length (see _plans).
        self._plan = np.zeros((6, 0), dtype=np.int64)
        # Pool signatures: sorted segments covering items [0, _indexed).
        self._short_segs: list[_Segment] = []
        self._long_segs: list[_Segment] = []
        self._indexed = 0
        # Full posting lists (item, rem, n) by occurrence id, items [0, _posted).
        self._fpost: dict[int, _Grow] | None = None
        self._posted = 0

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

    def _encode(self, texts: Sequence[str]) -> _Encoded:
        """Texts -> token ids (index-local, first-seen order) and token strings.

        Tokens of the rouge tokenizer are kept as ASCII bytes (one pass over
        all texts, :func:`_rouge_tokens_joined`, when it applies)."""
        vocab = self._vocab
        joined = (_rouge_tokens_joined(texts) if self.tokenizer == "rouge" and len(texts) > 1
                  else None)
        flat: list[str] | list[bytes]
        lens: np.ndarray | None = None
        if joined is not None:
            flat = joined
        else:
            tokens = [rouge_tokenize(t, self.tokenizer) for t in texts]
            lens = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
            if self.tokenizer == "rouge":
                flat = [t.encode("ascii") for t in chain.from_iterable(tokens)]
            else:
                flat = list(chain.from_iterable(tokens))
        new: dict[str | bytes, None] = dict.fromkeys(flat)
        new.pop(TEXT_MARK, None)
        for t in new:
            if t not in vocab:
                if len(vocab) >= _MAX_TOKENS:
                    raise OverflowError("RougeIndex supports at most 1,112,064 distinct tokens")
                vocab[t] = len(vocab)
        ids = np.fromiter(map(vocab.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
        if lens is None:  # the joined tokens: a mark ends each text
            marks = np.flatnonzero(ids < 0)
            lens = np.diff(np.concatenate(([-1], marks, [len(ids)]))) - 1
            tok = ids[ids >= 0]
        else:
            tok = ids
        # One code point per token id, skipping the surrogates (rouge._char).
        cps = (tok + np.where(tok >= 0xD800, 0x800, 0)).astype("<u4")
        return _Encoded(tok, lens, _split(cps.tobytes().decode("utf-32-le"), lens))

    # -- signature plans ------------------------------------------------------------

    def _plans(self, n: int) -> np.ndarray:
        """Signature plan for text lengths ``0..n`` (at least), int64 rows:

        0. ``k`` of a text of this length as the shorter of a pair;
        1. its short prefix (occurrences): ``l - m(l) + k``;
        2. the lower end of partner lengths (length filter, rounded down);
        3.-5. its long prefix for partners with k = 1, 2, 3 (0: no such
           partner): ``l - o_min + k``, ``o_min`` the least overlap over
           partner lengths with that k.

        Floors are taken 1e-7 low (more conservative) against rounding.
        """
        if self._plan.shape[1] > n:
            return self._plan
        tp = self._tp
        size = max(2 * n + 2, 64)
        ln = np.arange(size, dtype=np.int64)
        lf = ln.astype(np.float64)
        cap = np.where(ln <= _K3_LEN, 3, np.where(ln <= _K2_LEN, 2, 1))
        if tp > 0:
            m = np.maximum(np.floor(tp * lf - 1e-7) + 1, 1).astype(np.int64)
            lo = np.maximum(np.floor(tp * lf / (2.0 - tp) - 1e-7), 1).astype(np.int64)
        else:  # F1 > t' needs only one shared token
            m = np.ones(size, dtype=np.int64)
            lo = np.ones(size, dtype=np.int64)
        k = np.clip(np.minimum(m, cap), 1, 3)
        short = np.minimum(ln, ln - m + k)
        plan = np.zeros((6, size), dtype=np.int64)
        plan[0], plan[1], plan[2] = k, short, lo
        for kk in (1, 2, 3):
            at = np.flatnonzero(k == kk)  # lengths whose k is kk, ascending
            if not len(at):
                continue
            j = np.searchsorted(at, lo)
            first = at[np.minimum(j, len(at) - 1)]  # shortest such partner >= lo
            ok = (j < len(at)) & (first <= ln)
            if tp > 0:
                omin = np.floor(tp * (first + lf) / 2.0 - 1e-7).astype(np.int64) + 1
            else:
                omin = np.ones(size, dtype=np.int64)
            p = np.minimum(ln, ln - np.maximum(omin, 1) + kk)
            plan[2 + kk] = np.where(ok & (p >= kk), p, 0)
        self._plan = plan
        return plan

    # -- order maintenance ----------------------------------------------------------

    def _order_values(self, tok: np.ndarray, k: np.ndarray, oid: np.ndarray) -> np.ndarray:
        """Position of each occurrence in the global order (int64, unique per
        occurrence id): ``_SEEN + rank`` for occurrences seen when the order
        was fixed (rarest first), the occurrence id itself (lower) otherwise."""
        r = np.full(len(tok), -1, dtype=np.int64)
        first = k == 0
        t0 = tok[first]
        known = t0 < len(self._rank0)
        r0 = np.full(len(t0), -1, dtype=np.int64)
        r0[known] = self._rank0[t0[known]]
        r[first] = r0
        rest = ~first
        if len(self._rep_keys) and rest.any():
            o = oid[rest]
            pos = np.minimum(np.searchsorted(self._rep_keys, o), len(self._rep_keys) - 1)
            r[rest] = np.where(self._rep_keys[pos] == o, self._rep_rank[pos], -1)
        return np.where(r >= 0, _SEEN + r, oid)

    def _ordered(self, tok: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Occurrences of texts (flat tokens, lengths) in the global order.

        Returns:
            ``(oid, pos)``: per occurrence, item-major, each text's occurrences
            sorted in the global order: its occurrence id ``k << 21 | token``
            and its position in the text.
        """
        k = _occurrence_numbers(tok, lens)
        oid = (k << 21) | tok
        ordv = self._order_values(tok, k, oid)
        m = len(lens)
        item = np.repeat(np.arange(m, dtype=np.int64), lens)
        if len(oid) and int(oid.max()) < (1 << 40) and m < (1 << 21):
            # The same order within each text, packed into one sortable int64.
            small = np.where(ordv >= _SEEN, ordv - _SEEN + (1 << 40), ordv)
            order = np.argsort((item << 42) | small, kind="stable")
        else:
            order = np.lexsort((ordv, item))
        starts = np.cumsum(lens) - lens
        pos = np.arange(len(oid), dtype=np.int64) - np.repeat(starts, lens)
        return oid[order], pos

    def _signatures(self, oid: np.ndarray, lens: np.ndarray, long: bool) -> _Sigs:
        """Short (or ``long``) signatures of texts given by their occurrences in
        the global order (``oid`` from :meth:`_ordered`) and lengths; items
        numbered from 0."""
        plan = self._plans(int(lens.max()) if len(lens) else 0)
        starts = np.cumsum(lens) - lens
        by_len = np.argsort(lens, kind="stable")
        sl = lens[by_len]
        brk = [0, *(np.flatnonzero(sl[1:] != sl[:-1]) + 1).tolist(), len(sl)]
        parts = []
        for s, e in pairwise(brk):
            ln = int(sl[s])
            if ln == 0:
                continue
            idx = by_len[s:e]
            todo = ([(kk, int(plan[2 + kk, ln])) for kk in (1, 2, 3)] if long
                    else [(int(plan[0, ln]), int(plan[1, ln]))])
            for kk, p in todo:
                if p < kk:
                    continue
                cmb = _combos(p, kk)
                cols = starts[idx][:, None] + cmb.T[:, None, :]  # (k, n, C)
                key = _sig_keys(oid, cols, kk)
                c = len(cmb)
                parts.append(_Sigs(key.ravel(), np.repeat(idx, c),
                                   np.tile(ln - 1 - cmb[:, -1], len(idx)),
                                   np.full(key.size, ln, dtype=np.int64),
                                   np.full(key.size, kk, dtype=np.int64)))
        return _Sigs.concat(parts)

    def _maybe_reorder(self, upcoming: _Encoded) -> None:
        n = len(self._texts)
        total = n + len(upcoming.lens)
        if total == 0 or (self._order_basis and total < 2 * self._order_basis):
            return
        tok = np.concatenate((self._tok.view(), upcoming.tok))
        lens = np.concatenate((self._lens.view(), upcoming.lens))
        k = _occurrence_numbers(tok, lens)
        first = k == 0
        df0 = np.bincount(tok[first], minlength=len(self._vocab))
        rep, rep_df = np.unique((k[~first] << 21) | tok[~first], return_counts=True)
        seen0 = np.flatnonzero(df0)
        keys = np.concatenate((seen0, rep))
        dfs = np.concatenate((df0[seen0], rep_df))
        order = np.lexsort((keys, dfs))  # rarest first, then by occurrence id
        rank = np.empty(len(keys), dtype=np.int64)
        rank[order] = np.arange(len(keys), dtype=np.int64)
        self._rank0 = np.full(len(self._vocab), -1, dtype=np.int64)
        self._rank0[seen0] = rank[: len(seen0)]
        self._rep_keys = rep
        self._rep_rank = rank[len(seen0) :]
        self._order_basis = total
        # Every signature and posting list depends on the order: rebuilt lazily.
        self._short_segs = []
        self._long_segs = []
        self._indexed = 0
        if self._fpost is not None:
            self._fpost = None
            self._posted = 0

    def _index_pending(self) -> None:
        """Add pool items not yet in the signature segments as new sorted segments."""
        n = len(self._texts)
        off = self._off.view()
        lens_all = self._lens.view()
        for a in range(self._indexed, n, _BLOCK):
            b = min(a + _BLOCK, n)
            lens = lens_all[a:b]
            oid, _ = self._ordered(self._tok.view()[int(off[a]) : int(off[b])], lens)
            for long in (False, True):
                sigs = self._signatures(oid, lens, long).sorted()
                sigs.item += a
                self._add_segment(long, _Segment.of_sorted(sigs, self._tp))
            self._indexed = b

    def _add_segment(self, long: bool, seg: _Segment) -> None:
        """Append a segment to the pool's short or long signatures, merging
        segments of similar size (a log-structured merge)."""
        if not len(seg):
            return
        segs = self._long_segs if long else self._short_segs
        segs.append(seg)
        while len(segs) >= 2 and len(segs[-2]) <= _MERGE * len(segs[-1]):
            last = segs.pop()
            segs[-1] = segs[-1].merge(last)

    def _index_block(self, shorts: _Sigs, longs: _Sigs, keep: np.ndarray, nb: int) -> None:
        """Add the kept texts of a block (now pool items ``nb..``) to the
        segments from the block's own sorted signatures."""
        if self._indexed != nb or len(keep) < _TAIL or not len(shorts) + len(longs):
            return  # the kept texts stay in the tail (indexed later)
        pool_index = nb + np.cumsum(keep) - 1
        for long, sigs in ((False, shorts), (True, longs)):
            sel = keep[sigs.item]
            kept = _Sigs(sigs.key[sel], pool_index[sigs.item[sel]], sigs.rem[sel], sigs.ln[sel],
                         sigs.k[sel])
            self._add_segment(long, _Segment.of_sorted(kept, self._tp))
        self._indexed = nb + int(keep.sum())

    def _ensure_full(self, upto: int | None = None) -> None:
        """Full posting lists (every occurrence: rows (item, rem, n)) of pool
        items ``0..upto-1`` (default: all)."""
        n = len(self._texts) if upto is None else upto
        if self._fpost is None:
            self._fpost = {}
            self._posted = 0
        a = self._posted
        if a >= n:
            return
        fp = self._fpost
        off = self._off.view()
        lens = self._lens.view()[a:n]
        self._posted = n
        if not lens.sum():
            return
        oid, pos = self._ordered(self._tok.view()[int(off[a]) : int(off[n])], lens)
        ln = np.repeat(lens, lens)
        rows = np.stack((np.repeat(np.arange(a, n, dtype=np.int64), lens), ln - 1 - pos, ln),
                        axis=1).astype(np.int32)
        order = np.argsort(oid, kind="stable")  # item ascending within each list
        so = oid[order]
        rows = rows[order]
        brk = (np.flatnonzero(so[1:] != so[:-1]) + 1).tolist()
        for s, e in zip([0, *brk], [*brk, len(so)], strict=True):
            key = int(so[s])
            g = fp.get(key)
            if g is None:
                fp[key] = _Grow(3, rows[s:e])
            else:
                g.extend(rows[s:e])

    def _post_full(self, i: int, ks: list[int]) -> None:
        """Index every occurrence of pool item ``i`` (the next one): rows
        (item, rem, n), rem = occurrences after it."""
        assert self._fpost is not None and self._posted == i
        n = len(ks)
        fp = self._fpost
        for j, k in enumerate(ks):
            g = fp.get(k)
            if g is None:
                g = fp[k] = _Grow(3)
            g.append((i, n - 1 - j, n))
        self._posted = i + 1

    def _sorted_keys(self, enc: _Encoded) -> list[list[int]]:
        """Per text, its occurrence ids in the global order (rarest first)."""
        oid, _ = self._ordered(enc.tok, enc.lens)
        return _split(oid.tolist(), enc.lens)

    # -- storage ------------------------------------------------------------------

    def _store(self, texts: list[str], enc: _Encoded, mask: np.ndarray | None = None) -> None:
        """Append ``texts`` (those of ``enc``, or its rows where ``mask``) to the pool."""
        fp = enc.fingerprints()
        if mask is None:
            seqs, lens, tok = enc.seqs, enc.lens, enc.tok
        else:
            seqs = [s for s, k in zip(enc.seqs, mask.tolist(), strict=True) if k]
            lens = enc.lens[mask]
            tok = enc.tok[np.repeat(mask, enc.lens)]
            fp = fp[:, mask]
        self._fp.extend(fp)
        self._texts.extend(texts)
        self._seqarr.extend(seqs)
        self._lens.extend(lens)
        self._maxlen = max(self._maxlen, int(lens.max()) if len(lens) else 0)
        self._tok.extend(tok)
        self._off.extend(int(self._off.a[self._off.n - 1]) + np.cumsum(lens))
        if len(self._stamp) < len(self._texts):
            stamp = np.zeros(2 * len(self._texts), dtype=np.int64)
            stamp[: len(self._stamp)] = self._stamp
            self._stamp = stamp

    def _truncate(self, n: int) -> None:
        """Remove pool items ``n..`` from the storage, segments and posting lists."""
        m = len(self._texts)
        if m <= n:
            return
        off = self._off.view()
        if self._indexed > n:
            self._short_segs = [s.below(n) for s in self._short_segs]
            self._long_segs = [s.below(n) for s in self._long_segs]
            self._indexed = n
        if self._fpost is not None and self._posted > n:
            tok = self._tok.view()[int(off[n]) : int(off[self._posted])]
            oid = (_occurrence_numbers(tok, self._lens.view()[n : self._posted]) << 21) | tok
            for key in set(oid.tolist()):
                g = self._fpost[key]
                while g.n and g.a[g.n - 1, 0] >= n:
                    g.n -= 1
            self._posted = n
        del self._texts[n:]
        self._fp.truncate(n)
        self._seqarr.truncate(n)
        self._lens.truncate(n)
        self._tok.truncate(int(off[n]))
        self._off.truncate(n + 1)

    # -- public mutation ------------------------------------------------------------

    def add(self, text: str) -> int:
        """Append ``text`` to the pool unconditionally (e.g. a seed task).

        Returns:
            Its pool index (``len(self) - 1`` afterwards).
        """
        return self.extend([text])[0]

    def extend(self, texts: Iterable[str]) -> list[int]:
        """Append all ``texts`` unconditionally; returns their pool indices."""
        texts = list(texts)
        enc = self._encode(texts)
        self._maybe_reorder(enc)
        n0 = len(self._texts)
        self._store(texts, enc)
        return list(range(n0, len(self._texts)))

    # -- search ---------------------------------------------------------------------

    def _lcs(self, sq: str, cands: np.ndarray) -> np.ndarray:
        """Exact token LCS lengths of the query with pool items ``cands``."""
        seqs = self._seqarr.a
        if len(cands) <= 8:
            sim = LCSseq.similarity
            return np.array([sim(sq, seqs[c]) for c in cands.tolist()], dtype=np.int64)
        row: np.ndarray = process.cdist([sq], seqs[cands], scorer=LCSseq.similarity,
                                        dtype=np.int32)[0]
        return row

    def _verify(self, sq: str, lq: int, cands: np.ndarray) -> np.ndarray:
        """Reference-form F1 of the query against pool items ``cands``."""
        # target = new text (length lq), prediction = pool text, as in Alpaca.
        return _f1_array(self._lcs(sq, cands), lq, self._lens.a[cands])


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
                    c = g.a[: min(g.n, _BOOTSTRAP), 0]
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
                if m > best_f or j < best_i:  # best_i is set: bootstrapped above
                    best_i, best_f = j, m
        return best_i, best_f

    def _window_hi(self, probe: _Sigs) -> np.ndarray:
        """Longest partner length the probe's positional bound allows:
        ``2 (k + ry) > t' (lx + ly)``, rounded up (int64; 2**40 when t' <= 0)."""
        tp = self._tp
        if tp <= 0:
            return np.full(len(probe), 1 << 40, dtype=np.int64)
        v = (2.0 * (probe.k + probe.rem) - tp * probe.ln) / tp
        out: np.ndarray = np.clip(np.ceil(v + 1e-7), 0, 1 << 40).astype(np.int64)
        return out

    def _pairs(self, probe: _Sigs, seg: _Segment, lo: np.ndarray, hi: np.ndarray,
               self_join: bool, qfp: np.ndarray, xfp: np.ndarray, xlens: np.ndarray,
               long_texts: bool) -> np.ndarray:
        """Candidate pairs of probe signatures with a sorted segment, packed as
        ``probe item << 32 | segment item`` (int64, sorted, unique).

        The segment is searched in the partner length window ``[lo, hi]``
        (which holds the probe side of the positional filter; clamped to the
        packed length field, then checked on true lengths); each match
        must pass the segment side, then the pair the overlap bound of the
        fingerprints (``qfp`` of the probe's texts, ``xfp`` and ``xlens`` of
        the segment's).  ``self_join``: the segment holds the short
        signatures of the probe's own texts, and a pair is taken from its
        longer text only (equal lengths: the higher item number probes).
        ``long_texts``: some length exceeds the packed field (read the true
        lengths).
        """
        base = probe.key << _LBITS
        start = np.searchsorted(seg.comp, base | np.minimum(lo, _LMAX), side="left")
        end = np.searchsorted(seg.comp, base | np.minimum(hi, _LMAX), side="right")
        count = np.maximum(end - start, 0)
        plen = probe.ln.astype(np.int32)
        out = []
        for a, b in _chunks(count, _COMBO_CHUNK):
            cnt = count[a:b]
            total = int(cnt.sum())
            if not total:
                continue
            offsets = np.cumsum(cnt) - cnt
            idx = np.arange(total, dtype=np.int64) + np.repeat(start[a:b] - offsets, cnt)
            ly = np.repeat(plen[a:b], cnt)
            ok = seg.cap[idx] >= ly
            idx = idx[ok]
            ly = ly[ok].astype(np.int64)
            y = np.repeat(probe.item[a:b], cnt)[ok]
            x = seg.item[idx].astype(np.int64)
            lx = xlens[x] if long_texts else seg.comp[idx] & _LMAX
            if self_join:
                sel = (lx < ly) | ((lx == ly) & (x < y))
            elif long_texts:
                sel = ((lx >= np.repeat(lo[a:b], cnt)[ok])
                       & (lx <= np.repeat(hi[a:b], cnt)[ok]))
            else:
                sel = None
            if sel is not None:
                x, y, lx, ly = x[sel], y[sel], lx[sel], ly[sel]
            ub = _overlap_bound(qfp[:, y], ly, xfp[:, x], lx)
            sel = 2.0 * ub > self._tp * (lx + ly)
            out.append((y[sel] << 32) | x[sel])
        if not out:
            return np.zeros(0, dtype=np.int64)
        return _unique(np.concatenate(out))

    def _brute(self, ylens: np.ndarray, yfp: np.ndarray, xlens: np.ndarray, xfp: np.ndarray,
               x0: int, lower: bool) -> np.ndarray:
        """All pairs of texts ``y`` (lengths, fingerprints) with texts ``x0 + j``
        (``j``-th of ``xlens``, ``xfp``) that pass the length filter and the
        fingerprint overlap bound, packed ``y << 32 | x``; with ``lower`` only
        ``x < y`` (the same texts on both sides)."""
        ly, lx = ylens[:, None], xlens[None, :]
        ub = _overlap_bound(yfp[:, :, None], ly, xfp[:, None, :], lx)
        ok = (2.0 * ub > self._tp * (lx + ly)) & (ub > 0)
        if lower:
            ok &= np.tri(len(ylens), len(xlens), -1, dtype=bool)
        y, j = np.nonzero(ok)
        return (y.astype(np.int64) << 32) | (j.astype(np.int64) + x0)

    def _join(self, enc: _Encoded, pool: bool, batch: bool, keep_all: bool) -> _Joined:
        """Verified candidate pairs of the texts ``enc`` (not in the pool) with
        the pool (``pool``) and with each other (``batch``): see :class:`_Joined`.

        Only pairs with F1 > threshold are returned unless ``keep_all`` (then
        every verified pair with F1 > 0)."""
        m = len(enc.lens)
        z = np.zeros(0, dtype=np.int64)
        none = _Sigs.concat([])
        if not m or not enc.lens.any():
            return _Joined(z, z, z.astype(np.float64), z.astype(bool), none, none)
        n = len(self._texts) if pool else 0
        if n - self._indexed > min(_TAIL, _BRUTE // m):
            self._index_pending()
        tail = n - self._indexed if pool else 0
        short_segs = self._short_segs if pool else []
        long_segs = self._long_segs if pool else []
        brute_self = batch and m <= _BRUTE_BATCH
        plens = self._lens.a
        qfp = enc.fingerprints()
        pfp = self._fp.a
        jobs: list[tuple[np.ndarray, bool]] = []
        if tail:
            a = self._indexed
            jobs.append((self._brute(enc.lens, qfp, plens[a:n], pfp[:, a:n], a, False), True))
        if brute_self and m > 1:
            jobs.append((self._brute(enc.lens, qfp, enc.lens, qfp, 0, True), False))
        shortp = longp = none
        if short_segs or long_segs or (batch and not brute_self):
            plan = self._plans(int(enc.lens.max()))
            long_texts = bool(enc.lens.max() >= _LMAX) or (pool and self._maxlen >= _LMAX)
            oid, _ = self._ordered(enc.tok, enc.lens)
            shortp = self._signatures(oid, enc.lens, long=False).sorted()
            longp = self._signatures(oid, enc.lens, long=True).sorted()
            del oid
            if len(longp):
                lo = plan[2, longp.ln]
                hi = np.minimum(self._window_hi(longp), longp.ln)
                jobs.extend((self._pairs(longp, seg, lo, hi, False, qfp, pfp, plens, long_texts),
                             True) for seg in short_segs)
                if batch and not brute_self:
                    selfseg = _Segment.of_sorted(shortp, self._tp)
                    jobs.append((self._pairs(longp, selfseg, lo, hi, True, qfp, qfp, enc.lens,
                                             long_texts), False))
            if len(shortp) and long_segs:
                lo = shortp.ln + 1
                hi = self._window_hi(shortp)
                jobs.extend((self._pairs(shortp, seg, lo, hi, False, qfp, pfp, plens,
                                         long_texts), True) for seg in long_segs)
        qseqs = np.empty(m, dtype=object)
        qseqs[:] = enc.seqs
        pseqs = self._seqarr.a
        thr = 0.0 if keep_all else self.threshold
        ys, xs, fs, ps = [z], [z], [z.astype(np.float64)], [z.astype(bool)]
        for packed, in_pool in jobs:
            if not len(packed):
                continue
            y = packed >> 32
            x = packed & 0xFFFFFFFF
            if in_pool:
                xseqs, xlens = pseqs, plens
            else:  # the later text is the target
                y, x = np.maximum(y, x), np.minimum(y, x)
                xseqs, xlens = qseqs, enc.lens
            lcs = process.cpdist(qseqs[y], xseqs[x], scorer=LCSseq.similarity, dtype=np.int32)
            f = _f1_array(lcs, enc.lens[y], xlens[x])
            sel = f > thr
            ys.append(y[sel])
            xs.append(x[sel])
            fs.append(f[sel])
            ps.append(np.full(int(sel.sum()), in_pool))
        return _Joined(np.concatenate(ys), np.concatenate(xs), np.concatenate(fs),
                       np.concatenate(ps), shortp, longp)

    def nearest(self, text: str) -> tuple[int | None, float]:
        """Most similar pool text by ROUGE-L F1.

        Returns:
            ``(pool_index, score)``; among equal scores the lowest index.
            ``(None, 0.0)`` if the pool is empty, the text has no tokens, or
            no pool text shares a token with it.
        """
        enc = self._encode([text])
        seq = enc.seqs[0]
        if not seq or not self._texts:
            return None, 0.0
        self._ensure_full()
        self._qid += 1
        return self._full_search(self._sorted_keys(enc)[0], len(seq), seq, None, 0.0)

    def above_threshold(self, texts: Sequence[str]) -> list[tuple[int, float] | None]:
        """For each text, the most similar pool text when its ROUGE-L F1 is above the
        threshold, comparing with the pool only (never with the other texts), the
        pool unchanged: the decontamination check of texts against a fixed set.

        Returns:
            Per text ``(pool_index, score)`` of the exact maximum F1 (lowest index on
            ties) when it is ``> threshold``, else None. Prefix filtering never
            misses a pool text above the threshold, so the answer is exact.
        """
        enc = self._encode(texts)
        self._maybe_reorder(enc)
        out: list[tuple[int, float] | None] = [None] * len(enc.lens)
        if not self._texts:
            return out
        for a in range(0, len(out), _BLOCK):
            j = self._join(enc.sub(a, min(a + _BLOCK, len(out))), pool=True, batch=False,
                           keep_all=False)
            for yi, xi, fi in zip(*_best_per_target(j.y, j.x, j.f), strict=True):
                out[a + yi] = (xi, fi)
        return out

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
        n0 = len(self._texts)
        try:
            keep, nearest, score = self._filter(candidates, exact_nearest_for_kept)
            texts = self._texts
            out = []
            for k, ni, sc in zip(keep.tolist(), nearest.tolist(), score.tolist(), strict=True):
                if ni >= 0:
                    out.append(Decision(k, ni, texts[ni], sc))
                else:
                    out.append(_KEPT_NONE if sc == 0.0 else
                               _KEPT_NAN if k and sc != sc else Decision(k, None, None, sc))
        finally:
            if not add:
                self._truncate(n0)
        return out

    def _filter(self, candidates: list[str], exact: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`dedup_batch` as arrays, the kept candidates appended to the pool.

        Returns:
            ``(keep, nearest, score)``: bool, int64 (pool index of the nearest
            text, -1 for none) and float64 (its F1; for kept candidates 0.0 when
            the candidate has no tokens or the pool was empty, else NaN unless
            ``exact``) per candidate.
        """
        m = len(candidates)
        enc = self._encode(candidates)
        self._maybe_reorder(enc)
        n0 = len(self._texts)
        keep = np.zeros(m, dtype=bool)
        nearest = np.full(m, -1, dtype=np.int64)
        score = np.full(m, math.nan)
        z = np.zeros(0, dtype=np.int64)
        seeds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(z, z, z.astype(np.float64))]
        if exact:
            self._ensure_full(n0)  # the pool as it is; kept candidates enter in order
        for a in range(0, m, _BLOCK):
            b = min(a + _BLOCK, m)
            nb = len(self._texts)
            blk = enc.sub(a, b)
            j = self._join(blk, pool=nb > 0, batch=True, keep_all=exact)
            y, x, f, in_pool = j.y, j.x, j.f, j.in_pool
            hot = f > self.threshold
            kb = _resolve(b - a, y[hot], x[hot], in_pool[hot])
            kept_before = np.cumsum(kb) - kb
            # A partner counts when it is in the pool or kept earlier in the
            # block; px: its pool index (a kept candidate gets nb + kept before).
            inner = ~in_pool
            live = in_pool.copy()
            live[inner] = kb[x[inner]]
            px = x.copy()
            px[inner] = nb + kept_before[x[inner]]
            self._store([c for c, k in zip(candidates[a:b], kb.tolist(), strict=True) if k],
                        blk, kb)
            self._index_block(j.shorts, j.longs, kb, nb)
            dropped = hot & live & ~kb[y]
            by, bx, bf = _best_per_target(y[dropped], px[dropped], f[dropped])
            nearest[a + np.array(by, dtype=np.int64)] = bx
            score[a + np.array(by, dtype=np.int64)] = bf
            score[a:b][kb & ((blk.lens == 0) | (kept_before + nb == 0))] = 0.0
            if exact:
                sel = live & kb[y]
                seeds.append((a + y[sel], px[sel], f[sel]))
            keep[a:b] = kb
        if exact:
            sy, sx, sf = (np.concatenate([s[c] for s in seeds]) for c in range(3))
            self._exact_kept(enc, keep, n0, sy, sx, sf, nearest, score)
        return keep, nearest, score

    def _exact_kept(self, enc: _Encoded, keep: np.ndarray, n0: int, y: np.ndarray,
                    px: np.ndarray, f: np.ndarray, nearest: np.ndarray,
                    score: np.ndarray) -> None:
        """Exact nearest pool text of every kept candidate, in order (into
        ``nearest``/``score``), each added to the full posting lists after its
        search (the storage holds them already, at ``n0..``).  ``y``/``px``/``f``:
        verified pairs (candidate, pool index of an earlier kept text, F1)
        seeding the lower bounds."""
        seed: dict[int, tuple[int, float]] = {}
        if len(y):
            sy, sx, sf = _best_per_target(y.astype(np.int64), px.astype(np.int64), f)
            seed = dict(zip(sy, zip(sx, sf, strict=True), strict=True))
        rows = np.flatnonzero(keep)
        ks_all = self._sorted_keys(_Encoded(enc.tok[np.repeat(keep, enc.lens)], enc.lens[keep],
                                            []))
        for r, i in enumerate(rows.tolist()):
            seq = enc.seqs[i]
            pool_i = n0 + r
            ks = ks_all[r]
            if not seq or pool_i == 0:
                score[i] = 0.0
            else:
                self._qid += 1
                best_i, best_f = seed.get(i, (None, 0.0))
                bi, bf = self._full_search(ks, len(seq), seq, best_i, best_f)
                nearest[i] = -1 if bi is None else bi
                score[i] = bf
            self._post_full(pool_i, ks)


def _sig_keys(oid: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Signature keys of k-subsets: ``cols[c]`` indexes the c-th occurrence of
    each subset in ``oid``.  k = 1: the occurrence id (ids beyond 2**41, i.e.
    a token repeated over a million times, share one key: a superset); else a
    41-bit hash of the k ids (collisions only add candidates).  Tagged with k."""
    out: np.ndarray
    if k == 1:
        out = (np.minimum(oid[cols[0]], _HASH_MASK) << 2) | 1
        return out
    h = oid[cols[0]]
    for c in range(1, k):
        h = h * _MUL + oid[cols[c]]  # wraps modulo 2**64
    out = ((h & _HASH_MASK) << 2) | k
    return out


def _resolve(m: int, y: np.ndarray, x: np.ndarray, in_pool: np.ndarray) -> np.ndarray:
    """Keep flags of ``m`` candidates under the sequential rule, from the pairs
    above the threshold (candidate ``y``, partner ``x``: a pool item when
    ``in_pool``, else an earlier candidate, which counts only if kept)."""
    keep = np.ones(m, dtype=bool)
    keep[y[in_pool]] = False
    inner = ~in_pool & keep[y]
    if not inner.any():
        return keep
    yb, xb = y[inner], x[inner]
    order = np.lexsort((xb, yb))
    flags = keep.tolist()
    # In candidate order: a partner's flag is final before it is read (x < y).
    for yi, xi in zip(yb[order].tolist(), xb[order].tolist(), strict=True):
        if flags[yi] and flags[xi]:
            flags[yi] = False
    return np.array(flags, dtype=bool)


def _best_per_target(y: np.ndarray, x: np.ndarray, f: np.ndarray
                     ) -> tuple[list[int], list[int], list[float]]:
    """Per distinct ``y``: the ``x`` of maximum ``f``, lowest ``x`` on ties."""
    if not len(y):
        return [], [], []
    order = np.lexsort((x, -f, y))
    y, x, f = y[order], x[order], f[order]
    first = np.concatenate(([True], y[1:] != y[:-1]))
    return y[first].tolist(), x[first].tolist(), f[first].tolist()
