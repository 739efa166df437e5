"""Benchmark: exact ROUGE-L dedup (selfinstruct.dedup) vs the rouge_score loop.

Usage (from anywhere; paths are relative to this file):

    python bench/dedup.py                       # reference N=2000, then scaling
    python bench/dedup.py --reference-n 5000    # ~6 minutes of reference time
    python bench/dedup.py --reference-mode loop # single-process reference
    python bench/dedup.py --zh                  # also the Chinese file, unicode tokenizer
    python bench/dedup.py --data PATH --threshold 0.5
    python bench/dedup.py --reference-n 0 --near 10000  # skip reference, time near_duplicates

Reference ("alpaca-pool", default): the loop of Stanford Alpaca's
generate_instruction.py, which Self-Instruct's filter is copied from: texts
are pre-tokenized with rouge_score's tokenizer and, for every candidate, a
fresh ``multiprocessing.Pool(2)`` maps ``rouge_scorer._score_lcs(new, old)``
over all kept texts; the candidate is dropped when the max F1 > threshold.
"loop" runs the same ``_score_lcs`` calls in this process instead (faster for
small pools because no worker processes are started per candidate).

Ours: ``RougeIndex(threshold).dedup_batch(texts)`` from an empty index
(tokenization and index build included), in two modes: decisions only
(``exact_nearest_for_kept=False``, what ``dedup_file`` uses) and with the
exact nearest neighbour and score of every kept text as well.  Both must give
the same keep/drop decisions as the reference and, in the exact mode, the
same max score and argmax (lowest index on ties) for every candidate; the
script exits non-zero otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import sys
import time
import tracemalloc
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfinstruct.config import FilterConfig, InstanceConfig  # noqa: E402
from selfinstruct.dedup import RougeIndex, empty_fraction, near_duplicates  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "alpaca_data.json"
DEFAULT_ZH = REPO.parent / "shared" / "data" / "alpaca_data_zh.json"


def load_instructions(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [r["instruction"] for r in json.load(f)]


def reference(texts: list[str], threshold: float,
              mode: str) -> list[tuple[bool, int | None, float]]:
    """Sequential rouge_score filter; (keep, argmax kept index, max F1) per text."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept_tokens: list[list[str]] = []
    out = []
    for text in texts:
        tokens = scorer._tokenizer.tokenize(text)
        if not kept_tokens:
            scores = []
        elif mode == "alpaca-pool":
            with multiprocessing.Pool(2) as p:
                scores = p.map(partial(rouge_scorer._score_lcs, tokens), kept_tokens)
        else:
            scores = [rouge_scorer._score_lcs(tokens, old) for old in kept_tokens]
        f = [s.fmeasure for s in scores]
        best = max(f, default=0.0)
        arg = f.index(best) if best > 0 else None
        keep = best <= threshold
        out.append((keep, arg, float(best)))
        if keep:
            kept_tokens.append(tokens)
    return out


def ours(texts: list[str], threshold: float, exact: bool, tokenizer: str = "rouge"):
    t0 = time.perf_counter()
    decisions = RougeIndex(threshold, tokenizer).dedup_batch(texts, exact_nearest_for_kept=exact)
    return time.perf_counter() - t0, decisions


def check(ref, decisions, exact: bool) -> int:
    """Number of disagreements with the reference."""
    bad = 0
    for r, d in zip(ref, decisions, strict=True):
        wrong_match = (r[1], r[2]) != (d.nearest_index, d.score)
        if r[0] != d.keep or ((exact or not d.keep) and wrong_match):
            bad += 1
    return bad


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, sep, *body])


def slope(points: list[tuple[int, float]]) -> float:
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    covariance = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return covariance / sum((x - mx) ** 2 for x in xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Alpaca-format JSON array")
    ap.add_argument("--reference-n", type=int, default=2000,
                    help="prefix size for the reference (0: skip)")
    ap.add_argument("--reference-mode", choices=["alpaca-pool", "loop"], default="alpaca-pool")
    ap.add_argument("--threshold", type=float, default=FilterConfig().rouge_threshold,
                    help="drop when ROUGE-L F1 > this "
                         "(default: %(default)s, filters.rouge_threshold)")
    ap.add_argument("--sizes", default="10000,20000,52002",
                    help="comma-separated N for the scaling run")
    ap.add_argument("--zh", action="store_true",
                    help="also run the unicode tokenizer on the Chinese file")
    ap.add_argument("--zh-data", type=Path, default=DEFAULT_ZH)
    ap.add_argument("--near", type=int, default=0, metavar="N",
                    help="also time near_duplicates (fuzz.ratio >= "
                         "instances.near_duplicate_threshold) on the first N examples")
    args = ap.parse_args()

    texts = load_instructions(args.data)
    t = args.threshold
    print(f"data: {args.data} ({len(texts)} instructions), threshold {t} (drop if ROUGE-L > {t})")
    failures = 0
    scaling: dict[bool, list[tuple[int, float]]] = {False: [], True: []}

    if args.reference_n > 0:
        n = min(args.reference_n, len(texts))
        sub = texts[:n]
        print(f"\nreference: rouge_score, mode {args.reference_mode} ... ", end="", flush=True)
        t0 = time.perf_counter()
        ref = reference(sub, t, args.reference_mode)
        t_ref = time.perf_counter() - t0
        print(f"{t_ref:.1f} s")
        t_fast, d_fast = ours(sub, t, exact=False)
        t_exact, d_exact = ours(sub, t, exact=True)
        bad_fast, bad_exact = check(ref, d_fast, False), check(ref, d_exact, True)
        failures += bad_fast + bad_exact
        scaling[False].append((n, t_fast))
        scaling[True].append((n, t_exact))
        dropped = sum(not r[0] for r in ref)
        print(table(
            ["N", "dropped", "reference s", "ours s", "ratio", "ours+nearest s", "ratio",
             "mismatches"],
            [[str(n), str(dropped), f"{t_ref:.2f}", f"{t_fast:.3f}", f"{t_ref / t_fast:,.0f}x",
              f"{t_exact:.3f}", f"{t_ref / t_exact:,.0f}x", str(bad_fast + bad_exact)]],
        ))
        print("ours s: decisions (+ exact neighbour of dropped items); ours+nearest s: also "
              "the exact nearest neighbour and score of every kept item (what the reference "
              "computes).")
        if bad_fast + bad_exact:
            print("ERROR: decisions differ from the reference", file=sys.stderr)

    sizes = sorted({min(int(s), len(texts)) for s in args.sizes.split(",") if s.strip()})
    rows = []
    for n in sizes:
        t_fast, d = ours(texts[:n], t, exact=False)
        t_exact, d2 = ours(texts[:n], t, exact=True)
        if [x.keep for x in d] != [x.keep for x in d2]:
            failures += 1
            print(f"ERROR: modes disagree at N={n}", file=sys.stderr)
        scaling[False].append((n, t_fast))
        scaling[True].append((n, t_exact))
        rows.append([str(n), str(sum(not x.keep for x in d)), f"{t_fast:.2f}", f"{t_exact:.2f}"])
    if rows:
        print("\nours alone (wall seconds, index build included):")
        print(table(["N", "dropped", "ours s", "ours+nearest s"], rows))
        for exact, name in ((False, "ours"), (True, "ours+nearest")):
            pts = [p for p in scaling[exact][-len(sizes):] if p[1] > 0]
            if len(pts) >= 2:
                print(f"growth exponent ({name}, log-log slope over N={[p[0] for p in pts]}): "
                      f"{slope(pts):.2f}")
        n = sizes[-1]
        tracemalloc.start()
        RougeIndex(t).dedup_batch(texts[:n], exact_nearest_for_kept=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"peak traced memory, decisions at N={n}: {peak / 2**20:.1f} MiB (tracemalloc)")
        tracemalloc.start()
        RougeIndex(t).dedup_batch(texts[:n], exact_nearest_for_kept=True)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"peak traced memory, +nearest at N={n}: {peak / 2**20:.1f} MiB (tracemalloc)")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"process peak RSS (everything loaded): {rss:.0f} MiB")

    if args.zh:
        zh = load_instructions(args.zh_data)
        print(f"\nzh: {args.zh_data} ({len(zh)} instructions)")
        ef = empty_fraction(zh, "rouge")
        print(f"rouge tokenizer leaves {ef:.1%} of them without tokens (invisible to dedup)")
        zrows = []
        for exact in (False, True):
            tz, dz = ours(zh, t, exact=exact, tokenizer="unicode")
            zrows.append(["unicode", "yes" if exact else "no", str(len(zh)),
                          str(sum(not x.keep for x in dz)), f"{tz:.2f}"])
        print(table(["tokenizer", "nearest for kept", "N", "dropped", "seconds"], zrows))

    if args.near > 0:
        with open(args.data, encoding="utf-8") as f:
            ex = [r["instruction"] + "\n" + r.get("input", "") for r in json.load(f)][: args.near]
        near = InstanceConfig().near_duplicate_threshold
        t0 = time.perf_counter()
        nd = near_duplicates(ex, near)
        tn = time.perf_counter() - t0
        print(f"\nnear_duplicates(instruction + '\\n' + input, threshold {near:g}) on N={len(ex)}: "
              f"{tn:.2f} s, {sum(x is not None for x in nd)} near-duplicates")

    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
