"""Tests for selfinstruct.dedup: rouge_score parity, exact decisions, files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from rapidfuzz import fuzz, process  # noqa: E402
from rapidfuzz.distance import LCSseq  # noqa: E402

from selfinstruct.dedup import (  # noqa: E402
    Decision,
    DedupInputError,
    NearDuplicateIndex,
    RougeIndex,
    dedup_file,
    dedup_records,
    dropped_path,
    empty_fraction,
    near_duplicates,
    rouge_l,
    rouge_tokenize,
)

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO.parent / "shared" / "data" / "alpaca_data.json"
ALPACA_ZH = REPO.parent / "shared" / "data" / "alpaca_data_zh.json"

SCORER = rouge_scorer.RougeScorer(["rougeL"])


def ref_f(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


# ---------------------------------------------------------------------------
# Independent sequential reference (the Self-Instruct / Alpaca loop)
# ---------------------------------------------------------------------------


def f1_reference_form(lcs: int, la: int, lb: int) -> float:
    if la == 0 or lb == 0:
        return 0.0
    p, r = lcs / lb, lcs / la
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def naive_sequential(texts, threshold, tokenizer="rouge", scorer=None):
    """Keep item i iff max ROUGE-L vs all earlier kept items <= threshold.

    Returns (keep, nearest pool index or None, max score) per item, where the
    pool index is the rank among kept items and ties go to the lowest one.
    ``scorer(i, j)`` defaults to LCS on token-id lists + reference F1.
    """
    toks = [rouge_tokenize(t, tokenizer) for t in texts]
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(w, len(vocab)) for w in t] for t in toks]
    kept: list[int] = []
    out = []
    for i in range(len(texts)):
        best_k, best = None, 0.0
        if scorer is not None:
            for k, j in enumerate(kept):
                s = scorer(i, j)
                if s > best:
                    best_k, best = k, s
        elif kept and ids[i]:
            # LCS over token-id lists, then rouge_score's F1 float form.
            lcs = process.cdist([ids[i]], [ids[j] for j in kept], scorer=LCSseq.similarity)[0]
            la = len(ids[i])
            lb = np.array([len(ids[j]) for j in kept], dtype=np.float64)
            p, r = lcs / lb, lcs / la
            with np.errstate(invalid="ignore"):
                f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
            k = int(np.argmax(f))
            if f[k] > 0:
                best_k, best = k, float(f[k])
        if best > threshold:
            out.append((False, best_k, best))
        else:
            out.append((True, best_k, best))
            kept.append(i)
    return out


def as_tuples(decisions):
    return [(d.keep, d.nearest_index, d.score) for d in decisions]


# ---------------------------------------------------------------------------
# Tokenizer and score parity with rouge_score
# ---------------------------------------------------------------------------

WORDS = ["the", "The", "a", "cat", "Cat", "sat", "on", "mat", "don't", "x1", "42", "3.14",
         "café", "naïve", "İstanbul", "\u212a", "日本語", "中文", "привет", "e-mail", "A_B"]
PUNCT = [" ", "  ", "\n", "\t", ",", ".", "!", "?", "-", "'", "(", ")", "_", "/", "…"]

text_strategy = st.lists(
    st.one_of(st.sampled_from(WORDS), st.sampled_from(PUNCT), st.text(max_size=6)),
    max_size=25,
).map(lambda parts: " ".join(parts) if len(parts) % 2 else "".join(parts))


FIXED = [
    ("", ""),
    ("", "hello"),
    ("hello", "hello"),
    ("hello", "world"),
    ("a", "a a a"),
    ("The cat sat on the mat.", "the cat, the mat; sat!"),
    ("Write a poem about autumn.", "Write a short poem about the autumn season."),
    ("Rewrite the sentence in passive voice.", "Rewrite this sentence using passive voice"),
    ("日本語のテキスト", "中文文本"),
    ("İstanbul is big", "istanbul is big"),
    ("\u212aelvin", "kelvin"),
    ("x_1 y-2 z3", "x 1 y 2 z3"),
    ("1 2 3 4 5 6 7 8 9 10", "10 9 8 7 6 5 4 3 2 1"),
]


@pytest.mark.parametrize("a,b", FIXED)
def test_fixed_parity(a, b):
    assert rouge_tokenize(a) == SCORER._tokenizer.tokenize(a)
    assert rouge_l(a, b) == ref_f(a, b)
    assert rouge_l(b, a) == ref_f(b, a)


@settings(max_examples=300, deadline=None)
@given(text_strategy, text_strategy)
def test_property_parity_with_rouge_score(a, b):
    assert rouge_tokenize(a) == SCORER._tokenizer.tokenize(a)
    ours = rouge_l(a, b)
    assert ours == ref_f(a, b)  # bit-identical, not just 1e-9
    assert ours == rouge_l(b, a)
    assert 0.0 <= ours <= 1.0


def test_empty_and_single_token():
    assert rouge_tokenize("") == []
    assert rouge_tokenize("!!! 中文 ...") == []
    assert rouge_l("", "") == 0.0
    assert rouge_l("hello", "") == 0.0
    assert rouge_l("Hello!", "hello") == 1.0
    assert rouge_l("hello", "world") == 0.0
    idx = RougeIndex()
    d = idx.dedup_batch(["", "...", "hello", "HELLO!", "world"])
    assert [x.keep for x in d] == [True, True, True, False, True]
    assert d[0] == Decision(True, None, None, 0.0)
    assert (d[3].nearest_index, d[3].nearest_text, d[3].score) == (2, "hello", 1.0)
    assert idx.nearest("") == (None, 0.0)
    assert idx.nearest("unrelated") == (None, 0.0)


def _words(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


def test_exact_threshold_ties_follow_reference_float():
    # la = lb = 10, lcs = 7: F = 0.7 exactly in floating point -> kept.
    a = " ".join(_words("w", 10))
    b = " ".join(_words("w", 7) + _words("x", 3))
    assert ref_f(a, b) == 0.7 and rouge_l(a, b) == 0.7
    d = RougeIndex().dedup_batch([a, b])
    assert d[1].keep and d[1].nearest_index == 0 and d[1].score == 0.7
    # la = 7, lb = 13, lcs = 7: also exactly 0.7 in rationals, but the
    # reference float is 0.7000000000000001 > 0.7 -> dropped, like rouge_score.
    c = " ".join(_words("v", 7))
    e = " ".join(_words("v", 7) + _words("y", 6))
    assert ref_f(c, e) > 0.7 and rouge_l(c, e) == ref_f(c, e)
    for exact in (True, False):  # both search paths
        d = RougeIndex().dedup_batch([a, b], exact_nearest_for_kept=exact)
        assert d[1].keep
        d = RougeIndex().dedup_batch([c, e], exact_nearest_for_kept=exact)
        assert not d[1].keep and d[1].nearest_index == 0 and d[1].score == ref_f(c, e)
        d = RougeIndex().dedup_batch([e, c], exact_nearest_for_kept=exact)
        assert not d[1].keep and d[1].nearest_index == 0 and d[1].score == ref_f(c, e)
        # Same with other items in the pool.
        idx = RougeIndex()
        idx.extend([" ".join(_words("z", 12)), "unrelated words here"])
        d = idx.dedup_batch([a, b, c, e], exact_nearest_for_kept=exact)
        assert [x.keep for x in d] == [True, True, True, False]
        assert d[3].nearest_index == 4  # c, pool index 2 + 2


def test_batch_internal_rule_and_add_false():
    idx = RougeIndex()
    idx.extend(["Write a poem about the sea.", "List three colors."])
    batch = [
        "Explain how photosynthesis works in plants.",
        "Explain how photosynthesis works in green plants!",  # dup of batch[0]
        "Name a famous painter.",
        "Write a poem about the sea",  # dup of pool item 0
    ]
    d = idx.dedup_batch(batch, add=False)
    assert [x.keep for x in d] == [True, False, True, False]
    assert d[1].nearest_index == 2 and d[1].nearest_text == batch[0]
    assert d[1].score == ref_f(batch[1], batch[0]) and d[1].score > 0.7
    assert d[3].nearest_index == 0 and d[3].score == 1.0
    assert len(idx) == 2
    assert list(idx.texts) == ["Write a poem about the sea.", "List three colors."]
    # nothing of the batch leaked into the index
    assert idx.nearest(batch[0]) == (None, 0.0)
    d2 = idx.dedup_batch(batch)
    assert as_tuples(d2) == as_tuples(d)
    assert len(idx) == 4 and idx[2] == batch[0] and idx[3] == batch[2]
    assert idx.nearest(batch[1]) == (2, d[1].score)


def test_kept_nearest_flag():
    idx = RougeIndex()
    idx.extend(["Write a poem about the sea.", "List three colors of the rainbow."])
    exact = idx.dedup_batch(["Compose a short story about a dragon at sea."], add=False)[0]
    fast = idx.dedup_batch(["Compose a short story about a dragon at sea."], add=False,
                           exact_nearest_for_kept=False)[0]
    assert exact.keep and fast.keep
    assert exact.nearest_index == 0
    assert exact.score == ref_f("Compose a short story about a dragon at sea.",
                                "Write a poem about the sea.")
    assert fast.nearest_index is None and math.isnan(fast.score)


def test_validation_errors():
    with pytest.raises(ValueError):
        RougeIndex(threshold=1.5)
    with pytest.raises(ValueError):
        RougeIndex(threshold=float("nan"))
    with pytest.raises(ValueError):
        RougeIndex(tokenizer="bpe")
    with pytest.raises(ValueError):
        rouge_tokenize("x", "nope")
    with pytest.raises(ValueError):
        NearDuplicateIndex(threshold=101)


# ---------------------------------------------------------------------------
# Index == sequential reference
# ---------------------------------------------------------------------------

VOCAB = ["write", "a", "poem", "about", "the", "sea", "list", "three", "colors", "of",
         "explain", "how", "to", "cook", "rice", "in", "short", "story", "1", "2"]

stream_strategy = st.lists(
    st.lists(st.sampled_from(VOCAB), min_size=0, max_size=12).map(" ".join),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream_strategy,
    st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.75, 0.9, 1.0]),
    st.integers(0, 5),
)
def test_property_index_equals_sequential_reference(texts, threshold, seed_count):
    seeds, stream = texts[:seed_count], texts[seed_count:]
    idx = RougeIndex(threshold=threshold)
    idx.extend(seeds)
    got = idx.dedup_batch(stream)
    # naive: seeds are in the pool unconditionally
    toks = [rouge_tokenize(t) for t in texts]
    pool = list(range(len(seeds)))
    for k, i in enumerate(range(len(seeds), len(texts))):
        scores = [rouge_l(texts[i], texts[j]) for j in pool]
        best = max(scores, default=0.0)
        keep = best <= threshold
        d = got[k]
        assert d.keep == keep
        assert d.score == best
        if best > 0:
            assert d.nearest_index == scores.index(best)
            assert d.nearest_text == texts[pool[d.nearest_index]]
        else:
            assert d.nearest_index is None
        if keep:
            pool.append(i)
        if not toks[i]:
            assert keep
    assert list(idx.texts) == [texts[j] for j in pool]
    fast_idx = RougeIndex(threshold=threshold)
    fast_idx.extend(seeds)
    fast = fast_idx.dedup_batch(stream, exact_nearest_for_kept=False)
    assert [d.keep for d in fast] == [d.keep for d in got]
    assert [d for d in fast if not d.keep] == [d for d in got if not d.keep]
    assert all(math.isnan(d.score) or d.nearest_index is None for d in fast if d.keep)
    # nearest() is the exact argmax with lowest index on ties
    probe = texts[-1]
    scores = [rouge_l(probe, texts[j]) for j in pool]
    best = max(scores, default=0.0)
    assert idx.nearest(probe) == ((scores.index(best), best) if best > 0 else (None, 0.0))


def _alpaca_instructions(n):
    if not ALPACA.is_file():
        pytest.skip(f"{ALPACA} not present")
    with open(ALPACA, encoding="utf-8") as f:
        return [r["instruction"] for r in json.load(f)[:n]]


@pytest.mark.slow
@pytest.mark.parametrize("threshold", [0.7, 0.5])
def test_alpaca_decisions_equal_sequential_reference(threshold):
    texts = _alpaca_instructions(3000)
    ref = naive_sequential(texts, threshold)
    exact = as_tuples(RougeIndex(threshold).dedup_batch(texts))
    assert exact == ref
    fast = RougeIndex(threshold).dedup_batch(texts, exact_nearest_for_kept=False)
    assert [d.keep for d in fast] == [r[0] for r in ref]
    assert [(d.nearest_index, d.score) for d in fast if not d.keep] == [
        (r[1], r[2]) for r in ref if not r[0]
    ]
    if threshold == 0.5:
        assert sum(not r[0] for r in ref) > 500  # the drop path is exercised


@pytest.mark.slow
def test_alpaca_against_rouge_score_itself():
    """The true reference: rouge_score's own LCS and F1, Alpaca-style loop."""
    texts = _alpaca_instructions(300)
    toks = [SCORER._tokenizer.tokenize(t) for t in texts]

    def scorer(i, j):
        return rouge_scorer._score_lcs(toks[i], toks[j]).fmeasure

    for threshold in (0.7, 0.35):
        ref = naive_sequential(texts, threshold, scorer=scorer)
        assert as_tuples(RougeIndex(threshold).dedup_batch(texts)) == ref


def test_incremental_batches_equal_one_batch():
    texts = _alpaca_instructions(2000)
    one = RougeIndex(0.5).dedup_batch(texts)
    idx = RougeIndex(0.5)
    many = []
    for i in range(0, len(texts), 137):  # pool order gets rebuilt on the way
        many += idx.dedup_batch(texts[i : i + 137])
    assert as_tuples(many) == as_tuples(one)
    one_by_one = RougeIndex(0.5)
    for t in texts[:400]:
        if one_by_one.nearest(t)[1] <= 0.5:
            one_by_one.add(t)
    assert list(one_by_one.texts) == [t for t, d in zip(texts[:400], one[:400], strict=True)
                                      if d.keep]


# ---------------------------------------------------------------------------
# Unicode tokenizer
# ---------------------------------------------------------------------------


def test_unicode_tokenizer():
    assert rouge_tokenize("请写一首诗。", "unicode") == ["请", "写", "一", "首", "诗"]
    assert rouge_tokenize("Hello, 世界! ＡＢＣ１２３", "unicode") == ["hello", "世", "界", "abc123"]
    assert rouge_tokenize("カタカナ and 한국어", "unicode") == [
        "カ", "タ", "カ", "ナ", "and", "한", "국", "어"
    ]
    assert rouge_tokenize("Straße snake_case", "unicode") == ["strasse", "snake", "case"]
    assert rouge_tokenize("नमस्ते दुनिया", "unicode") == ["नमस्ते", "दुनिया"]
    assert rouge_tokenize("Привет, МИР", "unicode") == ["привет", "мир"]


def test_unicode_finds_chinese_near_duplicate():
    a = "请写一首关于秋天的诗。"
    b = "请写一首关于春天的诗"
    c = "解释光合作用的原理。"
    assert rouge_l(a, b, "rouge") == 0.0  # invisible to the rouge tokenizer
    assert rouge_l(a, b, "unicode") == 0.9  # 10 chars each, LCS 9
    assert empty_fraction([a, b, c, "hello"], "rouge") == 0.75
    assert empty_fraction([a, b, c, "hello"], "unicode") == 0.0
    assert empty_fraction([]) == 0.0
    d = RougeIndex(tokenizer="unicode").dedup_batch([a, c, b])
    assert [x.keep for x in d] == [True, True, False]
    assert d[2].nearest_index == 0 and d[2].score == 0.9
    assert all(x.keep for x in RougeIndex(tokenizer="rouge").dedup_batch([a, c, b]))


def test_unicode_zh_sample_equals_reference():
    if not ALPACA_ZH.is_file():
        pytest.skip(f"{ALPACA_ZH} not present")
    with open(ALPACA_ZH, encoding="utf-8") as f:
        texts = [r["instruction"] for r in json.load(f)[:1500]]
    ref = naive_sequential(texts, 0.7, tokenizer="unicode")
    assert as_tuples(RougeIndex(0.7, "unicode").dedup_batch(texts)) == ref
    assert sum(not r[0] for r in ref) > 0


# ---------------------------------------------------------------------------
# Near-duplicates (rapidfuzz)
# ---------------------------------------------------------------------------


def test_near_duplicates_behaviour():
    texts = [
        "Summarize the article.\nThe quick brown fox jumps over the lazy dog.",
        "summarize the article\nthe quick brown fox jumps over the lazy dog!!",  # same
        "Translate to French.\nGood morning",
        "Summarize the article.\nThe quick brown fox jumped over the lazy dog.",
        "Completely different instruction\nwith another input",
    ]
    assert near_duplicates(texts) == [None, 0, None, 0, None]
    assert near_duplicates(texts, threshold=100.0) == [None, 0, None, None, None]
    assert near_duplicates([]) == []
    # boundary: ratio exactly 90 counts as a near-duplicate (>=)
    a, b = "aaaaaaaaaa", "aaaaaaaaab"
    assert fuzz.ratio(a, b) == 90.0
    assert near_duplicates([a, b], 90.0) == [None, 0]
    assert near_duplicates([a, b], 90.0001) == [None, None]
    # points at the best-scoring kept text, earliest on ties
    a, b = "abcdefghijklmnop", "abcdefghqrstuvwx"
    tie, closer_to_b = "abcdefghijklqrst", "abcdefghqrstuvwy"
    assert fuzz.ratio(a, b) == 50.0
    assert fuzz.ratio(tie, a) == fuzz.ratio(tie, b) == 75.0
    assert fuzz.ratio(closer_to_b, b) > fuzz.ratio(closer_to_b, a) >= 0
    assert near_duplicates([a, b, tie, closer_to_b], 70.0) == [None, None, 0, 1]
    idx = NearDuplicateIndex(70.0)
    assert [idx.add(t) for t in (a, b)] == [None, None] and len(idx) == 2
    assert idx.match(tie) == (0, 75.0)
    assert idx.match("zzzz") == (None, 0.0)


def test_near_duplicates_equal_brute_force():
    rng = np.random.default_rng(0)
    base = ["the cat sat on the mat", "write a poem", "list three colors", "explain gravity"]
    texts = []
    for _ in range(300):
        s = list(base[rng.integers(len(base))])
        for _ in range(rng.integers(0, 4)):
            s[rng.integers(len(s))] = "abcxyz "[rng.integers(7)]
        texts.append("".join(s))
    for th in (70.0, 85.0, 95.0):
        proc = [" ".join(t.lower().split()) for t in texts]
        kept, ref = [], []
        for i, p in enumerate(proc):
            best, bs = None, -1.0
            for j in kept:
                sc = fuzz.ratio(p, proc[j])
                if sc >= th and sc > bs:
                    best, bs = j, sc
            ref.append(best)
            if best is None:
                kept.append(i)
        assert near_duplicates(texts, th) == ref


# ---------------------------------------------------------------------------
# Records and files
# ---------------------------------------------------------------------------

RECORDS = [
    {"instruction": "Write a poem about the sea.", "input": "", "output": "Waves...", "n": 1},
    {"instruction": "List three colors.", "input": "", "output": "Red, green, blue", "n": 2},
    {"instruction": "Write a poem about the sea!", "input": "x", "output": "Blue...", "n": 3},
    {"instruction": "Explain gravity briefly.", "input": "", "output": "Mass...", "n": 4},
    {"instruction": "list three colors", "input": "", "output": "...", "n": 5},
]


def test_dedup_records():
    kept, dropped = dedup_records(RECORDS, "instruction")
    assert kept == [0, 1, 3]
    assert [tuple(d) for d in dropped] == [
        (2, 0, "Write a poem about the sea.", 1.0),
        (4, 1, "List three colors.", 1.0),
    ]
    with pytest.raises(DedupInputError, match="'prompt'"):
        dedup_records(RECORDS, "prompt")
    with pytest.raises(DedupInputError, match="record 1"):
        dedup_records([{"instruction": "a"}, {"instruction": None}], "instruction")


def _write_inputs(tmp_path):
    import pandas as pd

    paths = {}
    p = tmp_path / "data.json"
    p.write_text(json.dumps(RECORDS), encoding="utf-8")
    paths["json"] = p
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    paths["jsonl"] = p
    p = tmp_path / "data.parquet"
    pd.DataFrame(RECORDS).to_parquet(p)
    paths["parquet"] = p
    p = tmp_path / "data.csv"
    pd.DataFrame(RECORDS).to_csv(p, index=False)
    paths["csv"] = p
    return paths


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_dedup_file_round_trip(tmp_path, fmt):
    import pyarrow.parquet as pq

    src = _write_inputs(tmp_path)[fmt]
    out = tmp_path / "out" / "kept.parquet"
    stats = dedup_file(src, "instruction", out)
    assert (stats["input"], stats["kept"], stats["dropped"]) == (5, 3, 2)
    assert stats["seconds"] >= 0 and stats["output"] == str(out)
    kept = pq.read_table(out).to_pylist()
    assert kept == [RECORDS[i] for i in (0, 1, 3)]  # all columns, input order
    dp = dropped_path(out)
    assert dp == out.parent / "kept.dropped.parquet" and stats["dropped_output"] == str(dp)
    dropped = pq.read_table(dp)
    assert pq.read_metadata(out).row_group(0).column(0).compression == "ZSTD"
    rows = dropped.to_pylist()
    assert [r["n"] for r in rows] == [3, 5]
    assert [r["nearest_index"] for r in rows] == [0, 1]
    assert [r["nearest_text"] for r in rows] == ["Write a poem about the sea.",
                                                 "List three colors."]
    assert [r["rouge_l"] for r in rows] == [1.0, 1.0]
    assert str(dropped.schema.field("nearest_index").type) == "int64"
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["kept.dropped.parquet", "kept.parquet"]


def test_dedup_file_threshold_and_tokenizer(tmp_path):
    src = tmp_path / "zh.jsonl"
    rows = [{"instruction": "请写一首关于秋天的诗。"}, {"instruction": "请写一首关于春天的诗"}]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    out = tmp_path / "o.parquet"
    assert dedup_file(src, "instruction", out)["dropped"] == 0
    assert dedup_file(src, "instruction", out, tokenizer="unicode")["dropped"] == 1
    assert dedup_file(src, "instruction", out, threshold=0.95, tokenizer="unicode")["dropped"] == 0


def test_dedup_file_errors(tmp_path):
    import pandas as pd

    paths = _write_inputs(tmp_path)
    out = tmp_path / "o.parquet"
    for p in paths.values():
        with pytest.raises(DedupInputError) as e:
            dedup_file(p, "prompt", out)
        msg = str(e.value)
        assert str(p) in msg and "'prompt'" in msg and "\n" not in msg
    with pytest.raises(DedupInputError, match="no such file"):
        dedup_file(tmp_path / "missing.json", "instruction", out)
    bad = tmp_path / "bad.json"
    bad.write_text("[{not json", encoding="utf-8")
    with pytest.raises(DedupInputError, match=r"bad\.json:1: invalid JSON"):
        dedup_file(bad, "instruction", out)
    weird = tmp_path / "data.txt"
    weird.write_text("instruction\nx\n", encoding="utf-8")
    with pytest.raises(DedupInputError, match=r"data\.txt: unsupported format '\.txt'"):
        dedup_file(weird, "instruction", out)
    nonstr = tmp_path / "n.jsonl"
    nonstr.write_text('{"instruction": "a"}\n{"instruction": 3}\n', encoding="utf-8")
    with pytest.raises(DedupInputError,
                       match=r"n\.jsonl:2: field 'instruction': expected a string, got int"):
        dedup_file(nonstr, "instruction", out)
    absent = tmp_path / "a.jsonl"
    absent.write_text('{"instruction": "a"}\n{"prompt": "b"}\n', encoding="utf-8")
    with pytest.raises(DedupInputError, match=r"a\.jsonl:2: field 'instruction': missing$"):
        dedup_file(absent, "instruction", out)
    null = tmp_path / "null.parquet"
    pd.DataFrame({"instruction": ["a", None]}).to_parquet(null)
    with pytest.raises(DedupInputError,
                       match=r"null\.parquet \(row 2\): field 'instruction': missing \(null\)"):
        dedup_file(null, "instruction", out)
    assert isinstance(DedupInputError("x"), ValueError)
    assert not out.exists()


def test_import_is_light():
    code = (
        "import sys, selfinstruct.dedup as d; "
        "bad = [m for m in ('vllm', 'torch', 'pandas', 'pyarrow', 'numba') if m in sys.modules]; "
        "print(bad)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
