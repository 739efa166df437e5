"""Exact ROUGE-L duplicate search over a growing pool: :class:`RougeIndex`.

Reproduces the Self-Instruct filter's decisions *exactly* (same tokenizer, same
LCS, same floating-point F1 formula, same ``>`` comparison, same sequential
"compare with everything kept so far" semantics; see
:mod:`selfinstruct.dedup.rouge`) but replaces the quadratic scan with a
similarity join:

* every text becomes a string of token characters (one code point per
  distinct token), so LCS lengths come from ``rapidfuzz.distance.LCSseq``;
* candidates are generated with *prefix filtering* (AllPairs / PPJoin, Bayardo
  et al. 2007, Xiao et al. 2008) over token occurrences ``(token, k)`` so
  multisets become sets, with a length filter and a positional filter;
* survivors are verified with the exact LCS and the decision is taken on the
  reference floating-point F1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from .rouge import (_EPS, _MAX_TOKENS, DEFAULT_THRESHOLD, _char, _check_tokenizer, _f1_array,
                    rouge_tokenize)


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
        row: np.ndarray = process.cdist([sq], self._seqarr[cands], scorer=LCSseq.similarity,
                                        dtype=np.int32)[0]
        return row

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
                if m > best_f or j < best_i:  # best_i is set: bootstrapped above
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

    def above_threshold(self, texts: Sequence[str]) -> list[tuple[int, float] | None]:
        """For each text, the most similar pool text when its ROUGE-L F1 is above the
        threshold, comparing with the pool only (never with the other texts), the
        pool unchanged: the decontamination check of texts against a fixed set.

        Returns:
            Per text ``(pool_index, score)`` of the exact maximum F1 (lowest index on
            ties) when it is ``> threshold``, else None. Prefix filtering never
            misses a pool text above the threshold, so the answer is exact.
        """
        seqs = [self._encode(t) for t in texts]
        self._maybe_reorder(seqs)
        out: list[tuple[int, float] | None] = []
        for seq in seqs:
            keep, ni, score = self._query(seq, self._sorted_keys(seq) if seq else [], False)
            out.append(None if keep or ni is None else (ni, score))
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
