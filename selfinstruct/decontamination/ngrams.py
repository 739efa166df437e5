"""n-gram overlap between examples and evaluation items: :class:`NgramIndex`.

The rule is GPT-3's (Brown et al. 2020, Appendix C): an example is contaminated
by an evaluation item when both contain the same sequence of ``n`` normalized
tokens (n = 13 by default). An item with fewer than ``n`` tokens matches when
the example contains all of it, contiguously, provided it has at least
``min_item_tokens`` tokens; shorter items are not indexed (GPT-3 lowered n for
short benchmarks for the same reason: a handful of words is shared by chance).

Besides the flag, every match reports the longest token span the two texts
share and the share of the item's tokens that lie inside shared n-grams: the
longest match is the most reliable single contamination score in ConTAM (Singh
et al. 2024).

How it is fast: tokens become integer ids (the evaluation vocabulary; a token
no item has is id 0 and a window holding it cannot match), every window of
``n`` ids is hashed with a polynomial rolling hash over 64-bit values (numpy,
wrap-around arithmetic, ``n`` vector operations for a whole batch), the
evaluation hashes are one sorted array, and a batch of examples is looked up
with one ``searchsorted``. Only the windows that hit are expanded into
(example, item) pairs, checked token by token (a hash collision never makes a
match), and scored.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, pairwise, repeat

import numpy as np

from ..dedup.rouge import _CJK, combining_marks
from . import DEFAULT_NGRAM, MIN_ITEM_TOKENS, DecontaminationError

NORMALIZATION_VERSION = f"1/unicode-{unicodedata.unidata_version}"
"""Names the normalization: bumped when :func:`tokens` changes, and it follows the
Unicode database (categories decide what a letter is), so a cached index built
under another one is never reused (:mod:`.cache` keys on it)."""

_ASCII_TOKEN = re.compile(r"[a-z0-9]+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2**64
_THREE, _SEVEN = np.uint64(3), np.uint64(7)


@lru_cache(maxsize=1)
def _token_re() -> re.Pattern[str]:
    """The token pattern for non-ASCII text (compiled once; scanning the Unicode
    database for combining marks takes ~0.1 s)."""
    marks = combining_marks()
    # one CJK ideograph / kana / hangul character, or a run of letters and digits
    # (\w less "_" and CJK) with the combining marks inside it (Devanagari vowel signs)
    return re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+(?:[{marks}]+[^\\W_{_CJK}]*)*")


def tokens(text: str) -> list[str]:
    """The normalized tokens of ``text``, in order: ``normalize(text).split()``.

    NFKC, then ``str.casefold`` (lowercase, also for ß and final sigma); a token is
    a maximal run of Unicode letters, digits and combining marks; everything else
    (punctuation, symbols, ``_``, whitespace, control characters) separates
    tokens. CJK ideographs, kana and hangul are one token per character (those
    scripts write no spaces; the ``unicode`` ROUGE tokenizer does the same).
    ASCII text takes a fast path with the same result: runs of ``[a-z0-9]`` in
    ``text.lower()``.

    Examples: ``"has_close_elements(numbers)"`` -> ``["has", "close", "elements",
    "numbers"]``; ``"Ünïcode, 中文!"`` -> ``["ünïcode", "中", "文"]``.
    """
    if text.isascii():
        return _ASCII_TOKEN.findall(text.lower())
    return _token_re().findall(unicodedata.normalize("NFKC", text).casefold())


def normalize(text: str) -> str:
    """``text`` normalized for n-gram matching: lowercase, every run of
    punctuation (``_`` included) and whitespace one space, stripped; letters of
    any script and digits kept. See :func:`tokens` for the exact rule."""
    return " ".join(tokens(text))


@dataclass(frozen=True, slots=True)
class NgramMatch:
    """One evaluation item an example overlaps with (:meth:`NgramIndex.match`).

    Attributes:
        item: the item's id (its position in the ``items`` given to
            :meth:`NgramIndex.build`).
        group: the item's group (the benchmark id given in ``groups``; 0 without).
        shared: distinct n-grams the example and the item share (1 for an item
            shorter than n, matched whole).
        longest: tokens in the longest contiguous span they share; exact when it
            is at least n (every match has one that long), the item's length for
            an item matched whole.
        coverage: share of the item's tokens that lie inside a shared n-gram, in
            (0, 1] (1.0 for an item matched whole).
        item_tokens: the item's length in normalized tokens.
    """

    item: int
    group: int
    shared: int
    longest: int
    coverage: float
    item_tokens: int


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of every uint64 in ``x`` (wrap-around): the 64-bit value a token id
    contributes to a hash, a fixed function so stored hashes stay valid."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = x ^ (x >> np.uint64(31))
    return mixed


def _rolling(values: np.ndarray, length: int, starts: np.ndarray | None = None) -> np.ndarray:
    """Hash of ``values[s:s + length]`` for every start ``s`` (all starts when None).

    The hash is ``sum(values[s + k] * M**(length - 1 - k))`` mod 2**64, computed
    with ``length`` vector operations. Shape: ``len(values) - length + 1`` (or
    ``len(starts)``), uint64.
    """
    if starts is None:
        count = len(values) - length + 1
        if count <= 0:
            return np.zeros(0, dtype=np.uint64)
        h = np.array(values[:count])
        for k in range(1, length):
            h *= _MULTIPLIER
            h += values[k:k + count]
        return h
    h = np.asarray(values[starts])
    for k in range(1, length):
        h *= _MULTIPLIER
        h += values[starts + k]
    return h


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_settings(n: object, min_item_tokens: object, hash_bits: int) -> None:
    if not _positive(n):
        raise DecontaminationError(f"n-gram size must be an integer >= 1, got {n!r}")
    if not _positive(min_item_tokens):
        raise DecontaminationError(
            f"minimum item length must be an integer >= 1 token, got {min_item_tokens!r}")
    if not 1 <= hash_bits <= 64:
        raise ValueError(f"hash_bits must be in [1, 64], got {hash_bits!r}")


class NgramIndex:
    """The n-grams of a fixed list of evaluation items, matched against batches of examples.

    Build it once over every benchmark's items (:meth:`build`, or
    :func:`selfinstruct.decontamination.cache.load_or_build`), then call
    :meth:`match` with as many example texts at a time as memory allows (about
    60 bytes per example token, plus the matches).

    Attributes:
        n: the n-gram size.
        min_item_tokens: the shortest item (in tokens) matched whole.
        hash_bits: bits of the n-gram hashes (64; fewer only to test collisions).
        items: the number of items.
        skipped_items: items with fewer than ``min(n, min_item_tokens)`` tokens,
            never matched.
        groups: the group (benchmark id) of every item, int32, shape (items,).
        item_tokens: every item's length in tokens, int64, shape (items,).
    """

    def __init__(self, arrays: dict[str, np.ndarray],
                 groups: Sequence[int] | np.ndarray | None = None) -> None:
        """Wrap the arrays of :meth:`to_arrays` (use :meth:`build` or :meth:`from_arrays`).

        Raises:
            ValueError: the arrays are inconsistent (a damaged cache file).
        """
        try:
            self.n = int(arrays["n"])
            self.min_item_tokens = int(arrays["min_item_tokens"])
            self.hash_bits = int(arrays["hash_bits"])
            self._vocab_bytes = np.asarray(arrays["vocab"], dtype=np.uint8)
            self._item_offsets = np.asarray(arrays["item_offsets"], dtype=np.int64)
            self._item_ids = np.asarray(arrays["item_ids"], dtype=np.int32)
            self._hash = np.asarray(arrays["entry_hash"], dtype=np.uint64)
            self._entry_item = np.asarray(arrays["entry_item"], dtype=np.int32)
            self._entry_pos = np.asarray(arrays["entry_pos"], dtype=np.int32)
            self._entry_canon = np.asarray(arrays["entry_canon"], dtype=np.int32)
            self._seg_lengths = np.asarray(arrays["segment_lengths"], dtype=np.int64)
            self._seg_starts = np.asarray(arrays["segment_starts"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an n-gram index: {exc}") from exc
        _check_settings(self.n, self.min_item_tokens, self.hash_bits)
        words = bytes(self._vocab_bytes).decode("utf-8")
        vocabulary = words.split("\n") if words else []
        self._vocab = dict(zip(vocabulary, range(1, len(vocabulary) + 1), strict=True))
        if len(self._vocab) != len(vocabulary):
            raise ValueError("the vocabulary repeats a token")
        self.items = len(self._item_offsets) - 1
        self._check(len(vocabulary))
        self.item_tokens = np.diff(self._item_offsets)
        self.skipped_items = int(np.count_nonzero(self.item_tokens < min(self.n,
                                                                         self.min_item_tokens)))
        self._table = _mix(np.arange(len(vocabulary) + 1, dtype=np.uint64))
        # a bitmap of the hashes' low bits, ~16 bits per entry: most windows that hit
        # no entry are dropped by one lookup here instead of a binary search
        bits = 1 << min(32, max(13, (16 * len(self._hash)).bit_length()))
        present = np.zeros(bits, dtype=bool)
        present[self._hash & np.uint64(bits - 1)] = True
        self._filter = np.packbits(present, bitorder="little")
        self._filter_mask = np.uint64(bits - 1)
        self.groups = np.zeros(self.items, dtype=np.int32)
        if groups is not None:
            self.groups = self._groups(groups)

    def _check(self, vocabulary: int) -> None:
        offsets, entries = self._item_offsets, len(self._hash)
        if self.items < 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0) \
                or offsets[-1] != len(self._item_ids):
            raise ValueError("item offsets do not cover the token ids")
        if len(self._item_ids) and (self._item_ids.min() < 1 or self._item_ids.max() > vocabulary):
            raise ValueError("a token id is outside the vocabulary")
        if not len(self._entry_item) == len(self._entry_pos) == len(self._entry_canon) == entries:
            raise ValueError("entry arrays differ in length")
        seg, starts = self._seg_lengths, self._seg_starts
        if len(starts) != len(seg) + 1 or starts[0] != 0 or starts[-1] != entries \
                or np.any(np.diff(starts) < 0) or np.any(seg < 1):
            raise ValueError("segments do not cover the entries")
        if not entries:
            return
        if self._entry_item.min() < 0 or self._entry_item.max() >= self.items:
            raise ValueError("an entry names an item that does not exist")
        lengths = np.repeat(seg, np.diff(starts))
        room = offsets[self._entry_item + 1] - offsets[self._entry_item] - lengths
        if np.any(self._entry_pos < 0) or np.any(self._entry_pos > room) \
                or np.any(self._entry_canon < 0) or np.any(self._entry_canon > room):
            raise ValueError("an entry lies outside its item")
        for a, b in pairwise(starts.tolist()):
            if np.any(self._hash[a + 1:b] < self._hash[a:b - 1]):
                raise ValueError("entry hashes are not sorted")

    def _groups(self, groups: Sequence[int] | np.ndarray) -> np.ndarray:
        array = np.asarray(groups, dtype=np.int64).reshape(-1)
        if len(array) != self.items:
            raise ValueError(f"groups has {len(array)} entries for {self.items} items")
        if len(array) and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
            raise ValueError("groups must be non-negative int32 values")
        return array.astype(np.int32)

    def with_groups(self, groups: Sequence[int] | np.ndarray | None) -> NgramIndex:
        """This index with every item's group set (None: all 0); the arrays are shared.

        Raises:
            ValueError: ``groups`` does not have one non-negative int per item.
        """
        other = copy.copy(self)
        other.groups = np.zeros(self.items, dtype=np.int32) if groups is None \
            else self._groups(groups)
        return other

    @classmethod
    def build(cls, items: Sequence[str], n: int = DEFAULT_NGRAM,
              min_item_tokens: int = MIN_ITEM_TOKENS, groups: Sequence[int] | None = None,
              *, hash_bits: int = 64) -> NgramIndex:
        """Index the n-grams of ``items``.

        Args:
            items: the evaluation texts of every benchmark, in order; an item's id
                is its position here.
            n: the n-gram size, in normalized tokens (GPT-3's 13 by default).
            min_item_tokens: an item with fewer than ``n`` tokens is matched whole
                when it has at least this many, and skipped below (counted in
                :attr:`skipped_items`).
            groups: the group of every item (e.g. its benchmark's position in
                ``--against``); :meth:`match` returns the best match per group.
                None: one group, 0.
            hash_bits: keep only this many low bits of each hash. Only tests lower
                it (to force collisions, which are then ruled out token by token).

        Raises:
            DecontaminationError: ``n`` or ``min_item_tokens`` is below 1.
            ValueError: ``groups`` does not have one non-negative int per item;
                ``hash_bits`` is outside [1, 64].
        """
        _check_settings(n, min_item_tokens, hash_bits)
        token_lists = [tokens(text) for text in items]
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # ids 1, 2, ... in order of first occurrence (0 is "no item has it" in match)
        vocab = {t: k for k, t in enumerate(dict.fromkeys(chain.from_iterable(token_lists)), 1)}
        ids = np.fromiter(map(vocab.__getitem__, chain.from_iterable(token_lists)),
                          dtype=np.int32, count=int(offsets[-1]))
        del token_lists
        table = _mix(np.arange(len(vocab) + 1, dtype=np.uint64))
        values = table[ids]
        mask = np.uint64((1 << hash_bits) - 1)

        parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # length, hash, item, pos
        hashes = _rolling(values, n)
        if len(hashes):
            item_of = np.repeat(np.arange(len(items), dtype=np.int32), lengths)[:len(hashes)]
            starts = np.arange(len(hashes), dtype=np.int64)
            inside = starts + n <= offsets[1:][item_of]  # no window across two items
            starts, item_of = starts[inside], item_of[inside]
            parts.append((n, hashes[inside] & mask, item_of,
                          (starts - offsets[item_of]).astype(np.int32)))
        short = np.flatnonzero((lengths < n) & (lengths >= min_item_tokens))
        for length in np.unique(lengths[short]).tolist():
            which = short[lengths[short] == length].astype(np.int32)
            parts.append((length, _rolling(values, length, offsets[which]) & mask, which,
                          np.zeros(len(which), dtype=np.int32)))

        segment_lengths, segment_starts = [], [0]
        sorted_parts = []
        for length, h, item, pos in sorted(parts, key=lambda part: part[0]):
            order = np.lexsort((pos, item, h))
            h, item, pos = h[order], item[order], pos[order]
            sorted_parts.append((h, item, pos, _canonical(h, item, pos, length, ids, offsets)))
            segment_lengths.append(length)
            segment_starts.append(segment_starts[-1] + len(h))

        def joined(k: int, dtype: type) -> np.ndarray:
            if not sorted_parts:
                return np.zeros(0, dtype=dtype)
            return np.asarray(np.concatenate([part[k] for part in sorted_parts]), dtype=dtype)

        words = "\n".join(vocab).encode("utf-8")
        arrays: dict[str, np.ndarray] = {
            "n": np.array(n, dtype=np.int64),
            "min_item_tokens": np.array(min_item_tokens, dtype=np.int64),
            "hash_bits": np.array(hash_bits, dtype=np.int64),
            "vocab": np.frombuffer(words, dtype=np.uint8),
            "item_offsets": offsets, "item_ids": ids,
            "entry_hash": joined(0, np.uint64), "entry_item": joined(1, np.int32),
            "entry_pos": joined(2, np.int32), "entry_canon": joined(3, np.int32),
            "segment_lengths": np.asarray(segment_lengths, dtype=np.int64),
            "segment_starts": np.asarray(segment_starts, dtype=np.int64),
        }
        return cls(arrays, groups)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything the index holds but the groups, as named numpy arrays (no
        objects: ``np.load(allow_pickle=False)`` reads them back); see :meth:`from_arrays`."""
        return {
            "n": np.array(self.n, dtype=np.int64),
            "min_item_tokens": np.array(self.min_item_tokens, dtype=np.int64),
            "hash_bits": np.array(self.hash_bits, dtype=np.int64), "vocab": self._vocab_bytes,
            "item_offsets": self._item_offsets, "item_ids": self._item_ids,
            "entry_hash": self._hash, "entry_item": self._entry_item,
            "entry_pos": self._entry_pos, "entry_canon": self._entry_canon,
            "segment_lengths": self._seg_lengths, "segment_starts": self._seg_starts,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray],
                    groups: Sequence[int] | np.ndarray | None = None) -> NgramIndex:
        """The index :meth:`to_arrays` described, with ``groups`` (None: all 0).

        Raises:
            ValueError: a missing array, or arrays that do not fit together (ids
                outside the vocabulary, entries outside their items, unsorted
                hashes): what a damaged file reads as.
        """
        return cls(arrays, groups)

    def match(self, texts: Sequence[str], *, every_item: bool = False) -> list[list[NgramMatch]]:
        """The evaluation items each text overlaps with.

        A text matches an item with at least ``n`` tokens when they share an
        n-gram, and a shorter indexed item when it contains the whole item
        contiguously. Windows never span two texts of the batch.

        Args:
            texts: the example texts (e.g. instruction, input and output joined
                with newlines); each is normalized like the items.
            every_item: return every matched item instead of the best per group.

        Returns:
            One list per text (empty: clean). By default it holds the best match
            of every group the text matches: most shared n-grams, then the
            longest span, then the lowest item id. Lists are ordered by that same
            rank, best first, so ``matches[0]`` is the text's best match overall.
        """
        out: list[list[NgramMatch]] = [[] for _ in texts]
        if not texts or not len(self._hash):
            return out
        token_lists = [tokens(text) for text in texts]
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter(map(self._vocab.get, chain.from_iterable(token_lists), repeat(0)),
                          dtype=np.int32, count=int(offsets[-1]))  # 0: no item has the token
        del token_lists
        known = np.zeros(len(ids) + 1, dtype=np.int64)  # known[k]: in-vocabulary tokens before k
        np.cumsum(ids != 0, out=known[1:])
        ends = np.repeat(offsets[1:], lengths)  # the end of the text each token is in
        values = self._table[ids]
        mask = np.uint64((1 << self.hash_bits) - 1)

        found: list[tuple[np.ndarray, np.ndarray]] = []  # (window start, entry) verified
        position = np.arange(len(ids), dtype=np.int64)
        for k, length in enumerate(self._seg_lengths.tolist()):
            first, last = int(self._seg_starts[k]), int(self._seg_starts[k + 1])
            count = len(ids) - length + 1
            if count <= 0 or first == last:
                continue
            hashes = _rolling(values, length) & mask  # contiguous slices: faster than gathers
            slot = hashes & self._filter_mask
            usable = ((self._filter[slot >> _THREE] >> (slot & _SEVEN).astype(np.uint8)) & 1) == 1
            usable &= position[:count] + length <= ends[:count]  # inside one text
            usable &= known[length:length + count] - known[:count] == length  # every token known
            starts = np.flatnonzero(usable)
            hashes = hashes[starts]
            segment = self._hash[first:last]
            lo = np.searchsorted(segment, hashes, side="left")
            hit = lo < len(segment)
            hit[hit] = segment[lo[hit]] == hashes[hit]
            if not hit.any():
                continue
            starts, lo, hashes = starts[hit], lo[hit], hashes[hit]
            hi = np.searchsorted(segment, hashes, side="right")
            window, entry = _expand(starts, lo + first, hi + first)
            begin = self._item_offsets[self._entry_item[entry]] + self._entry_pos[entry]
            same = np.ones(len(entry), dtype=bool)
            for j in range(length):
                same &= ids[window + j] == self._item_ids[begin + j]
            found.append((window[same], entry[same]))
        if not found:
            return out
        window = np.concatenate([f[0] for f in found])
        entry = np.concatenate([f[1] for f in found])
        if not len(entry):
            return out
        text = np.searchsorted(offsets, window, side="right") - 1
        for m in self._score(text, window - offsets[text], entry, every_item):
            out[m[0]].append(m[1])
        return out

    def _score(self, text: np.ndarray, p: np.ndarray, entry: np.ndarray,
               every_item: bool) -> Iterable[tuple[int, NgramMatch]]:
        """(text, match) for every verified hit (text, window start p in the text, entry),
        best first within each text."""
        item = self._entry_item[entry].astype(np.int64)
        q = self._entry_pos[entry].astype(np.int64)
        canon = self._entry_canon[entry]
        keys, pair = np.unique(text * self.items + item, return_inverse=True)
        pair = pair.reshape(-1)
        pairs = len(keys)
        pair_text, pair_item = keys // self.items, keys % self.items
        item_tokens = self.item_tokens[pair_item]
        window = np.minimum(item_tokens, self.n)  # the matched length: n, or the whole item

        # distinct shared n-grams: distinct canonical positions per pair
        order = np.lexsort((canon, pair))
        sp, sc = pair[order], canon[order]
        new = np.ones(len(sp), dtype=bool)
        new[1:] = (sp[1:] != sp[:-1]) | (sc[1:] != sc[:-1])
        shared = np.bincount(sp[new], minlength=pairs)

        # longest span: runs of consecutive windows on one diagonal (q - p constant)
        order = np.lexsort((p, q - p, pair))
        sp, sd, spp = pair[order], (q - p)[order], p[order]
        run_start = np.ones(len(sp), dtype=bool)
        run_start[1:] = (sp[1:] != sp[:-1]) | (sd[1:] != sd[:-1]) | (spp[1:] != spp[:-1] + 1)
        run = np.cumsum(run_start) - 1
        runs = np.bincount(run)
        longest = np.zeros(pairs, dtype=np.int64)
        np.maximum.at(longest, sp[run_start], runs)
        longest += window - 1

        # coverage: the union of [q, q + window) over the pair's distinct item positions
        order = np.lexsort((q, pair))
        sp, sq = pair[order], q[order]
        keep = np.ones(len(sp), dtype=bool)
        keep[1:] = (sp[1:] != sp[:-1]) | (sq[1:] != sq[:-1])
        sp, sq = sp[keep], sq[keep]
        step = np.full(len(sp), np.iinfo(np.int64).max, dtype=np.int64)
        same_pair = sp[1:] == sp[:-1]
        step[:-1][same_pair] = sq[1:][same_pair] - sq[:-1][same_pair]
        covered = np.bincount(sp, weights=np.minimum(step, window[sp]), minlength=pairs)
        coverage = covered / item_tokens

        group = self.groups[pair_item].astype(np.int64)
        # rank: text, then most shared, longest, lowest item
        order = np.lexsort((pair_item, -longest, -shared, pair_text))
        if not every_item:  # the first of every (text, group) in rank order
            by_group = order[np.lexsort((np.arange(pairs), group[order], pair_text[order]))]
            first = np.ones(pairs, dtype=bool)
            first[1:] = (pair_text[by_group][1:] != pair_text[by_group][:-1]) \
                | (group[by_group][1:] != group[by_group][:-1])
            chosen = np.zeros(pairs, dtype=bool)
            chosen[by_group[first]] = True
            order = order[chosen[order]]
        for k in order.tolist():
            yield int(pair_text[k]), NgramMatch(
                item=int(pair_item[k]), group=int(group[k]), shared=int(shared[k]),
                longest=int(longest[k]), coverage=float(coverage[k]),
                item_tokens=int(item_tokens[k]))


def _expand(window: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (window, entry) for entry in [lo, hi) of each window: two int64 arrays."""
    counts = hi - lo
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(window)), counts)
    before = np.zeros(len(window), dtype=np.int64)
    np.cumsum(counts[:-1], out=before[1:])
    return window[owner], lo[owner] + (np.arange(total) - before[owner])


def _canonical(h: np.ndarray, item: np.ndarray, pos: np.ndarray, length: int,
               ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """For entries sorted by (hash, item, pos): the first position in the same item of
    the same token sequence (so a repeated n-gram counts once); exact even when
    distinct n-grams share a hash."""
    canon = pos.copy()
    if len(h) < 2:
        return canon
    same = (h[1:] == h[:-1]) & (item[1:] == item[:-1])
    if not same.any():
        return canon
    head = np.ones(len(h), dtype=bool)  # first entry of each (hash, item) run
    head[1:] = ~same
    leader = np.maximum.accumulate(np.where(head, np.arange(len(h)), 0))
    tail = np.flatnonzero(~head)
    lead = leader[tail]
    base = offsets[item[tail]]
    equal = np.ones(len(tail), dtype=bool)
    for j in range(length):
        equal &= ids[base + pos[tail] + j] == ids[base + pos[lead] + j]
    canon[tail[equal]] = pos[lead[equal]]
    for k in tail[~equal].tolist():  # a collision inside one item: compare with every earlier one
        start = int(offsets[item[k]])
        mine = ids[start + pos[k]:start + pos[k] + length]
        j = int(leader[k])
        while j < k:
            if np.array_equal(ids[start + pos[j]:start + pos[j] + length], mine):
                canon[k] = canon[j]
                break
            j += 1
    return canon
