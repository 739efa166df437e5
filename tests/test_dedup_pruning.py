"""RougeIndex's pruning paths against the sequential reference.

The index prunes with k-occurrence prefix signatures, length and positional
filters, bucketed fingerprints, sequential blocks and a brute-force tail of
recent pool texts (:mod:`selfinstruct.dedup.index`).  Each test below runs
with the module's limits as shipped and with limits shrunk so that every path
is taken on small inputs: signatures only (no brute-force tail), tiny blocks
and match chunks, a packed length field of 3 bits (lengths over 7 take the
clamped path), 5-bit signature hashes (collisions everywhere), k = 3 and
k = 2 signatures on short texts, one-word one-plane fingerprints (which
saturate) and several pool segments (merged only when of similar sizes).
Decisions must equal the reference loop: rouge_score's ROUGE-L F1 (through
:func:`rouge_l`, equal to it bit for bit; rouge_score itself where the texts
are short enough for its pure-Python LCS).
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from unittest import mock

import pytest

hypothesis = pytest.importorskip("hypothesis")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import selfinstruct.dedup.index as index_module  # noqa: E402
from selfinstruct.dedup import RougeIndex, rouge_l, rouge_tokenize  # noqa: E402
from selfinstruct.dedup.rouge import TEXT_MARK, _rouge_tokens_joined  # noqa: E402

SCORER = rouge_scorer.RougeScorer(["rougeL"])

LIMITS = {
    "shipped": {"_BLOCK": index_module._BLOCK},
    "signatures only": {"_TAIL": 0, "_BRUTE": 0, "_BRUTE_BATCH": 0},
    "tiny": {"_BLOCK": 7, "_TAIL": 3, "_BRUTE": 12, "_BRUTE_BATCH": 2, "_COMBO_CHUNK": 5,
             "_LBITS": 3, "_LMAX": 7, "_HASH_MASK": 31, "_K3_LEN": 6, "_K2_LEN": 12,
             "_FP_WORDS": 1, "_FP_PLANES": 1, "_FP_W": 1, "_MERGE": 1},
}


@contextmanager
def limits(name):
    with mock.patch.multiple(index_module, **LIMITS[name]):
        yield


def reference(pool, stream, threshold, score=rouge_l):
    """The Self-Instruct loop: (keep, nearest pool index, max F1) per stream text,
    the pool growing by the kept ones (lowest index on ties)."""
    pool = list(pool)
    out = []
    for text in stream:
        scores = [score(text, p) for p in pool]
        best = max(scores, default=0.0)
        nearest = scores.index(best) if best > 0 else None
        keep = best <= threshold
        out.append((keep, nearest, best))
        if keep:
            pool.append(text)
    return out, pool


def as_key(d):
    """A decision as a tuple that compares NaN scores equal."""
    return d.keep, d.nearest_index, d.nearest_text, None if math.isnan(d.score) else d.score


def check_decisions(got, ref, exact):
    assert [d.keep for d in got] == [r[0] for r in ref]
    for d, (keep, nearest, best) in zip(got, ref, strict=True):
        if exact or not keep:
            assert (d.nearest_index, d.score) == (nearest, best)
        else:
            assert d.nearest_index is None and (math.isnan(d.score) or d.score == 0.0)


def edited(words, rng, n_edits, vocab):
    words = list(words)
    for _ in range(n_edits):
        op = rng.randrange(3) if len(words) > 1 else 2
        p = rng.randrange(len(words) + (op == 2))
        if op == 0:
            words[p] = rng.choice(vocab)
        elif op == 1:
            del words[p]
        else:
            words.insert(p, rng.choice(vocab))
    return words


def stream_of(seed, n):
    """Texts with near-copies of earlier ones, repeated tokens, empty, one-token
    and long texts: a deterministic mix from ``seed``."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(rng.choice([3, 8, 30]))] + ["the", "a", "THE", "A!"]
    texts: list[list[str]] = []
    for _ in range(n):
        r = rng.random()
        if texts and r < 0.45:
            base = rng.choice(texts)
            texts.append(edited(base, rng, rng.choice([0, 1, 1, 2, 4]), vocab))
        elif r < 0.55:
            texts.append([rng.choice(vocab)] * rng.randrange(0, 12))
        elif r < 0.62:
            texts.append(rng.choices(vocab, k=rng.randrange(40, 90)))
        else:
            texts.append(rng.choices(vocab, k=rng.randrange(0, 18)))
    return [" ".join(t) for t in texts]


@pytest.mark.fast_cases(lambda name: name != "tiny")  # tiny: ~10 s
@pytest.mark.parametrize("name", list(LIMITS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9, 1.0]),
       n_seeds=st.integers(0, 6), chunk=st.integers(1, 40))
def test_stream_decisions_equal_reference(name, seed, threshold, n_seeds, chunk):
    texts = stream_of(seed, 45)
    seeds, stream = texts[:n_seeds], texts[n_seeds:]
    ref, final_pool = reference(seeds, stream, threshold)
    with limits(name):
        for exact in (True, False):
            idx = RougeIndex(threshold)
            idx.extend(seeds)
            got = []
            for a in range(0, len(stream), chunk):
                part = stream[a : a + chunk]
                # A dry run first: it must leave the index as it was.
                dry = idx.dedup_batch(part, add=False, exact_nearest_for_kept=exact)
                real = idx.dedup_batch(part, exact_nearest_for_kept=exact)
                assert [as_key(d) for d in dry] == [as_key(d) for d in real]
                got += real
            check_decisions(got, ref, exact)
            assert list(idx.texts) == final_pool
        probes = [*stream[-5:], "w1 w2 w3", "", "the a the"]
        expected = []
        for text in probes:
            scores = [rouge_l(text, p) for p in final_pool]
            best = max(scores, default=0.0)
            expected.append((scores.index(best), best) if best > 0 else (None, 0.0))
        assert [idx.nearest(p) for p in probes] == expected
        assert idx.above_threshold(probes) == [e if e[1] > threshold else None
                                               for e in expected]


@pytest.mark.parametrize("name", list(LIMITS))
def test_adversarial_texts_equal_rouge_score(name):
    rng = random.Random(7)
    vocab = [f"t{i}" for i in range(40)]
    long_a = rng.choices(vocab, k=90)
    texts = [
        "a", "a", "b", "a b", "b a", "A, b!", "",
        "a a a a a a a a a a", "a a a a a a a", "a a a a a a a a a a a a a a a a a a a a",
        "a b a b a b a b", "b a b a b a b a", "the the the cat", "cat the the the",
        " ".join(long_a), " ".join(edited(long_a, rng, 8, vocab)),
        " ".join(edited(long_a, rng, 30, vocab)), " ".join(reversed(long_a)),
        " ".join(long_a[:50]), " ".join(long_a[40:]),
        # 0.7 exactly (10 and 10 tokens, LCS 7: kept) and 0.7000000000000001 (7 and 13).
        " ".join(f"w{i}" for i in range(10)),
        " ".join([f"w{i}" for i in range(7)] + [f"x{i}" for i in range(3)]),
        " ".join(f"v{i}" for i in range(7)),
        " ".join([f"v{i}" for i in range(7)] + [f"y{i}" for i in range(6)]),
    ]

    def score(a, b):
        return SCORER.score(a, b)["rougeL"].fmeasure

    refs = {}
    for threshold in (0.7, 0.5):
        ref = refs[threshold] = reference([], texts, threshold, score)[0]
        with limits(name):
            for exact in (True, False):
                got = RougeIndex(threshold).dedup_batch(texts, exact_nearest_for_kept=exact)
                check_decisions(got, ref, exact)
                idx = RougeIndex(threshold)  # one text at a time: the tail, then segments
                got = [idx.dedup_batch([t], exact_nearest_for_kept=exact)[0] for t in texts]
                check_decisions(got, ref, exact)
    ref = refs[0.7]
    assert ref[21][0] and ref[21][2] == 0.7  # a tie at 0.7 is kept
    assert not ref[23][0] and ref[23][2] > 0.7
    # Repeated tokens, reorderings, copies, edits and cut-outs go both ways.
    assert [r[0] for r in ref[:20]] == [True, False, True, True, True, False, True, True, False,
                                        True, True, False, True, False, True, False, False, True,
                                        False, False]


@pytest.mark.parametrize("name", ["shipped", "signatures only"])
def test_very_long_texts(name):
    """Texts of 700-1500 tokens: k = 1 signatures and saturated fingerprints."""
    rng = random.Random(3)
    vocab = [f"z{i}" for i in range(300)]
    a = rng.choices(vocab, k=1500)
    texts = [" ".join(a), " ".join(edited(a, rng, 60, vocab)), " ".join(a[:700]),
             " ".join(rng.choices(vocab, k=1400)), " ".join(edited(a, rng, 700, vocab)),
             " ".join(a[:1100])]
    ref, _ = reference([], texts, 0.7)
    with limits(name):
        check_decisions(RougeIndex(0.7).dedup_batch(texts), ref, True)
    assert [r[0] for r in ref] == [True, False, True, True, False, False]
    pair = (" ".join(a[:300]), " ".join(edited(a[:300], rng, 20, vocab)))
    assert rouge_l(*pair) == SCORER.score(*pair)["rougeL"].fmeasure


def test_joined_tokenizer_equals_rouge_score():
    texts = ["Hello, World!", "", "Straße café naïve", "x_1 y-2 z3", "ÀÉÎ über 42",
             "日本語 text", "MiXeD CaSe 123abc", "   ", "a\tb\nc", "ǅemal ﬁne ½"]
    tokens = _rouge_tokens_joined(texts)
    assert tokens is not None
    per_text: list[list[str]] = [[]]
    for t in tokens:
        if t == TEXT_MARK:
            per_text.append([])
        else:
            per_text[-1].append(t.decode("ascii"))
    assert per_text == [SCORER._tokenizer.tokenize(t) for t in texts]
    assert per_text == [rouge_tokenize(t) for t in texts]
    # Characters that lowercase to ASCII letters, and NUL, take the per-text path.
    for odd in ("İstanbul", "\u212aelvin", "a\x00b"):
        assert _rouge_tokens_joined(["plain", odd]) is None
        d = RougeIndex().dedup_batch(["x", odd, odd.lower(), odd.upper()])
        ref, _ = reference([], ["x", odd, odd.lower(), odd.upper()], 0.7)
        check_decisions(d, ref, True)
