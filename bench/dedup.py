"""Benchmark: exact ROUGE-L dedup (selfinstruct.dedup) against its targets and the
rouge_score loop.

Usage (from anywhere; paths are relative to this file):

    python bench/dedup.py                       # targets, reference N=2000, scaling
    python bench/dedup.py --reference-n 0 --sizes ''   # the targets table only
    python bench/dedup.py --million 200000      # a smaller synthetic file
    python bench/dedup.py --reference-mode loop # single-process reference
    python bench/dedup.py --zh                  # also the Chinese file, unicode tokenizer
    python bench/dedup.py --near 10000          # also time near_duplicates

Targets (issue 15, "the pool index at scale"), each measured in a fresh child
process (wall seconds, and peak RSS from ``getrusage``: the interpreter, the
data and everything the run allocates):

* the 52,002 Alpaca instructions, threshold 0.7, rouge tokenizer, in <= 2 s:
  ``RougeIndex(0.7).dedup_batch(texts, exact_nearest_for_kept=False)``, what
  ``selfinstruct dedup`` runs (tokenizing and the index build included); the
  whole ``dedup_file`` (read JSON, write Parquet) is shown too;
* a 1,000,000-line JSON Lines file in <= 60 s and <= 2 GiB peak RSS: the whole
  ``dedup_file`` (read, dedup, write Parquet).

The 1M file is synthetic and deterministic (:func:`synthetic`, seed 0): the
52,002 Alpaca instructions plus 947,998 word-level variants of random ones
(30% light edits: about one word in ten substituted, deleted, inserted or
swapped; 40% heavy edits: about four in ten; 30% recombinations: a head of
one instruction and a tail of another), in a seeded random order; one
``{"id", "instruction"}`` object per line.

A rouge_score reference over all pairs is infeasible at these sizes (the
sequential loop makes ~1e9 and ~2e11 comparisons), so the ratio column there
is an estimate: rouge_score's ``_score_lcs`` timed on a random sample of the
pairs the loop would score, times the number of such pairs (the sum over
candidates of the texts kept before them).  Decisions are checked on a random
sample of candidates: each against every text kept before it by brute force
(token LCS with rapidfuzz, F1 in rouge_score's floating-point form, the same
numbers bit for bit) for keep/drop, the nearest kept text (lowest index on
ties) and its score, and rouge_score's own scorer on each sampled candidate's
five best pairs.  The script exits non-zero on any disagreement.

Reference ("alpaca-pool", default, on a prefix of --reference-n texts): the
loop of Stanford Alpaca's generate_instruction.py, which Self-Instruct's
filter is copied from: texts are pre-tokenized with rouge_score's tokenizer
and, for every candidate, a fresh ``multiprocessing.Pool(2)`` maps
``rouge_scorer._score_lcs(new, old)`` over all kept texts; the candidate is
dropped when the max F1 > threshold.  "loop" runs the same ``_score_lcs``
calls in this process instead.  Ours must give the same keep/drop decisions
and, in the exact mode, the same max score and argmax for every candidate.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from selfinstruct.config import FilterConfig, InstanceConfig  # noqa: E402
from selfinstruct.dedup import (RougeIndex, dedup_file, empty_fraction,  # noqa: E402
                                near_duplicates, rouge_tokenize)

DEFAULT_DATA = REPO.parent / "shared" / "data" / "alpaca_data.json"
DEFAULT_ZH = REPO.parent / "shared" / "data" / "alpaca_data_zh.json"
TARGET_52K_S = 2.0
TARGET_1M_S = 60.0
TARGET_1M_MIB = 2048.0


def load_instructions(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [r["instruction"] for r in json.load(f)]


def synthetic(base: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` texts: ``round(n * 52002 / 1e6)`` base texts (all 52,002 Alpaca
    instructions for n = 1,000,000; the first ones for smaller n), then
    word-level variants of random ones, all in a seeded random order
    (deterministic for a seed).

    A variant is, with probability 0.3, a light edit (round(0.1 * words *
    U(0.5, 1.5)), at least 1, operations), 0.4 a heavy edit (the same with
    0.4), 0.3 a recombination (the first 1..all words of one base text and the
    words of another from a random position).  An operation substitutes,
    deletes, inserts or swaps with the next word, at a random position, with
    words drawn from the base texts' words (so by corpus frequency).
    """
    rng = np.random.default_rng(seed)
    base = base[: max(1, min(len(base), round(n * 52002 / 1_000_000)))]
    words = [t.split() for t in base]
    vocab = [w for ws in words for w in ws]
    out = list(base[:n])
    m = n - len(out)
    kinds = rng.choice(3, size=m, p=[0.3, 0.4, 0.3])
    bases = rng.integers(0, len(base), size=m)
    others = rng.integers(0, len(base), size=m)
    fills = rng.integers(0, len(vocab), size=(m, 64))
    u = rng.random((m, 64))
    for i in range(m):
        ws = list(words[bases[i]]) or [vocab[fills[i, 0]]]
        kind = kinds[i]
        if kind == 2:
            other = words[others[i]] or ws
            ws = ws[: 1 + int(u[i, 0] * len(ws))] + other[int(u[i, 1] * len(other)) :]
        else:
            rate = 0.1 if kind == 0 else 0.4
            edits = max(1, round(rate * len(ws) * (0.5 + u[i, 2])))
            for e in range(min(edits, 60)):
                op = int(u[i, 3 + e] * 4) if len(ws) > 1 else 2
                p = int(u[i, 63 - e] * len(ws))
                w = vocab[fills[i, e]]
                if op == 0:
                    ws[p] = w
                elif op == 1:
                    del ws[p]
                elif op == 2:
                    ws.insert(p, w)
                elif p + 1 < len(ws):
                    ws[p], ws[p + 1] = ws[p + 1], ws[p]
        out.append(" ".join(ws))
    perm = rng.permutation(n)
    return [out[j] for j in perm]


# ---------------------------------------------------------------------------
# Child runs (one measured setting per fresh process)
# ---------------------------------------------------------------------------


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _token_strings(texts: list[str]) -> list[str]:
    """rouge_score tokens of each text as a string of one character per token."""
    ids: dict[str, str] = {}

    def char(k: int) -> str:
        return chr(k if k < 0xD800 else k + 0x800)  # no surrogates

    return ["".join(ids.setdefault(t, char(len(ids))) for t in rouge_tokenize(x)) for x in texts]


def _f1(lcs: np.ndarray, la: int, lb: np.ndarray) -> np.ndarray:
    """rouge_score's F1 in its floating-point form (precision over the prediction)."""
    lcs = lcs.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p, r = lcs / lb, lcs / la
        f = 2 * p * r / (p + r)
    return np.where((p + r > 0) & (lb > 0) & (la > 0), f, 0.0)


def sample_check(texts: list[str], keep: np.ndarray, nearest: np.ndarray, score: np.ndarray,
                 threshold: float, sample: int, seed: int) -> dict[str, Any]:
    """Check decisions on ``sample`` random candidates against brute force.

    ``nearest`` is the input position of the kept text a dropped one duplicates
    (-1 otherwise), ``score`` its F1.  Returns counts and the seconds taken.
    """
    from rapidfuzz import process
    from rapidfuzz.distance import LCSseq
    from rouge_score import rouge_scorer

    t0 = time.perf_counter()
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(seed)
    cands = sorted(rng.sample(range(1, len(texts)), min(sample, len(texts) - 1)))
    kept_pos = np.flatnonzero(keep)
    seqs = _token_strings(texts)
    lens = np.array([len(s) for s in seqs])
    bad = rouge_bad = dropped = 0
    for i in cands:
        pool = kept_pos[kept_pos < i]
        if not len(pool) or not seqs[i]:
            bad += int(not keep[i])
            continue
        lcs = process.cdist([seqs[i]], [seqs[j] for j in pool], scorer=LCSseq.similarity,
                            dtype=np.int32)[0]
        f = _f1(lcs, len(seqs[i]), lens[pool])
        best = float(f.max())
        arg = int(pool[int(np.argmax(f))]) if best > 0 else -1
        want_keep = best <= threshold
        dropped += int(not want_keep)
        if bool(keep[i]) != want_keep or (not want_keep and (int(nearest[i]), float(score[i]))
                                          != (arg, best)):
            bad += 1
        for j in pool[np.argsort(-f, kind="stable")[:5]]:
            ref = scorer.score(texts[i], texts[int(j)])["rougeL"].fmeasure
            got = float(f[int(np.searchsorted(pool, j))])
            rouge_bad += int(ref != got)
    return {"sampled": len(cands), "sample_dropped": dropped, "mismatches": bad,
            "rouge_score_mismatches": rouge_bad, "check_seconds": time.perf_counter() - t0}


def reference_estimate(texts: list[str], keep: np.ndarray, pairs: int, seed: int
                       ) -> dict[str, float]:
    """Estimated seconds of the sequential rouge_score loop over ``texts`` with
    these decisions: ``_score_lcs`` timed on ``pairs`` random (candidate, kept
    before it) pairs, times the number of such pairs."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    kept_before = np.cumsum(keep) - keep
    total = float(kept_before.sum())
    rng = random.Random(seed)
    kept_pos = np.flatnonzero(keep)
    sample = []
    while len(sample) < pairs:
        i = rng.randrange(1, len(texts))
        if kept_before[i]:
            sample.append((i, int(kept_pos[rng.randrange(int(kept_before[i]))])))
    toks = {k: scorer._tokenizer.tokenize(texts[k]) for pair in sample for k in pair}
    t0 = time.perf_counter()
    for i, j in sample:
        rouge_scorer._score_lcs(toks[i], toks[j])
    per_pair = (time.perf_counter() - t0) / len(sample)
    return {"reference_pairs": total, "reference_seconds_est": per_pair * total}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measured run (in its own process); returns what it measured."""
    threshold = spec["threshold"]
    out: dict[str, Any] = {}
    if spec["kind"] == "batch":
        texts = load_instructions(Path(spec["data"]))[: spec["n"]]
        t0 = time.perf_counter()
        decisions = RougeIndex(threshold).dedup_batch(texts, exact_nearest_for_kept=False)
        out["seconds"] = time.perf_counter() - t0
        out["peak_mib"] = peak_mib()
        keep = np.array([d.keep for d in decisions])
        kept_pos = np.flatnonzero(keep)
        nearest = np.array([-1 if d.keep else int(kept_pos[d.nearest_index])
                            for d in decisions])
        score = np.array([d.score for d in decisions])
    else:  # "file": dedup_file end to end
        src, dst = Path(spec["input"]), Path(spec["output"])
        t0 = time.perf_counter()
        res = dedup_file(src, "instruction", dst, threshold=threshold)
        out["seconds"] = time.perf_counter() - t0
        out["peak_mib"] = peak_mib()
        out.update({k: res[k] for k in ("read_seconds", "dedup_seconds", "write_seconds")})
        if not spec.get("check"):
            return out
        import pyarrow.parquet as pq

        n = res["input"]
        if src.suffix == ".jsonl":
            with open(src, encoding="utf-8") as f:
                texts = [json.loads(line)["instruction"] for line in f]
        else:
            texts = load_instructions(src)
        keep = np.zeros(n, dtype=bool)
        nearest = np.full(n, -1)
        score = np.full(n, np.nan)
        kept_ids = pq.read_table(dst, columns=["id"]).column("id").to_numpy()
        keep[kept_ids] = True
        drop = pq.read_table(dst.with_name(f"{dst.stem}.dropped{dst.suffix}"),
                             columns=["id", "nearest_index", "rouge_l"])
        ids = drop.column("id").to_numpy()
        nearest[ids] = drop.column("nearest_index").to_numpy()
        score[ids] = drop.column("rouge_l").to_numpy()
        texts = texts[:n]
    out["n"] = len(keep)
    out["dropped"] = int((~keep).sum())
    if spec.get("check"):
        out.update(sample_check(texts, keep, nearest, score, threshold, spec["sample"],
                                spec["seed"]))
        out.update(reference_estimate(texts, keep, spec["ref_pairs"], spec["seed"]))
    return out


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"child run failed ({spec['kind']}):\n{res.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------
# The rouge_score reference on a prefix (measured)
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def targets(args: argparse.Namespace) -> int:
    """The targets table; returns the number of failed checks."""
    t = args.threshold
    common = {"threshold": t, "sample": args.sample, "seed": args.seed,
              "ref_pairs": args.ref_pairs}
    rows: list[list[str]] = []
    failures = 0
    notes = []
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        work = Path(tmp)
        print("alpaca: dedup_batch ...", flush=True)
        a = run_child({**common, "kind": "batch", "data": str(args.data), "n": 52002,
                       "check": True})
        print("alpaca: dedup_file ...", flush=True)
        af = run_child({**common, "kind": "file", "input": str(args.data),
                        "output": str(work / "alpaca.parquet"), "check": False})
        est = a["reference_seconds_est"]
        rows.append(["alpaca, dedup stage (dedup_batch)", f"{a['n']:,}", f"{a['seconds']:.2f}",
                     f"{a['peak_mib']:.0f}", f"~{est / a['seconds']:,.0f}x est.",
                     f"<= {TARGET_52K_S:g} s", "yes" if a["seconds"] <= TARGET_52K_S else "no"])
        rows.append(["alpaca, whole dedup_file (JSON -> Parquet)", f"{a['n']:,}",
                     f"{af['seconds']:.2f}", f"{af['peak_mib']:.0f}", "", "", ""])
        failures += a["mismatches"] + a["rouge_score_mismatches"]
        notes.append(f"alpaca: {a['dropped']} dropped; sample of {a['sampled']} candidates "
                     f"({a['sample_dropped']} dropped) vs brute force: {a['mismatches']} "
                     f"mismatches; rouge_score on their 5 best pairs: "
                     f"{a['rouge_score_mismatches']} mismatches; reference est. "
                     f"{a['reference_pairs']:.3g} rouge_score pairs, {est / 3600:,.1f} h")
        if args.million > 0:
            print(f"synthetic: building {args.million:,} lines ...", flush=True)
            base = load_instructions(args.data)
            texts = synthetic(base, args.million, args.seed)
            src = work / "synthetic.jsonl"
            with open(src, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"id": i, "instruction": text}, ensure_ascii=False) + "\n"
                             for i, text in enumerate(texts))
            del texts, base
            print("synthetic: dedup_file ...", flush=True)
            s = run_child({**common, "kind": "file", "input": str(src),
                           "output": str(work / "synthetic.parquet"), "check": True})
            est = s["reference_seconds_est"]
            met = s["seconds"] <= TARGET_1M_S and s["peak_mib"] <= TARGET_1M_MIB
            rows.append(["synthetic, whole dedup_file (JSONL -> Parquet)", f"{s['n']:,}",
                         f"{s['seconds']:.2f}", f"{s['peak_mib']:.0f}",
                         f"~{est / s['seconds']:,.0f}x est.",
                         f"<= {TARGET_1M_S:g} s, <= {TARGET_1M_MIB:g} MiB",
                         "yes" if met else "no"])
            rows.append(["synthetic, dedup stage of it", f"{s['n']:,}",
                         f"{s['dedup_seconds']:.2f}", "", "", "", ""])
            failures += s["mismatches"] + s["rouge_score_mismatches"]
            notes.append(f"synthetic: {s['dropped']:,} dropped; read {s['read_seconds']:.1f} s, "
                         f"dedup {s['dedup_seconds']:.1f} s, write {s['write_seconds']:.1f} s; "
                         f"sample of {s['sampled']} candidates ({s['sample_dropped']} dropped) "
                         f"vs brute force: {s['mismatches']} mismatches; rouge_score on their "
                         f"5 best pairs: {s['rouge_score_mismatches']} mismatches; reference "
                         f"est. {s['reference_pairs']:.3g} pairs, {est / 86400:,.1f} days")
    print("\ntargets (each row a fresh process; seconds wall, peak RSS of that process):")
    print(table(["setting", "N", "seconds", "peak MiB", "vs rouge_score", "target", "met?"],
                rows))
    for note in notes:
        print(note)
    if failures:
        print("ERROR: sampled decisions differ from brute force / rouge_score", file=sys.stderr)
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Alpaca-format JSON array")
    ap.add_argument("--million", type=int, default=1_000_000, metavar="N",
                    help="lines of the synthetic file (0: skip it)")
    ap.add_argument("--seed", type=int, default=0, help="synthetic file and samples")
    ap.add_argument("--sample", type=int, default=200,
                    help="candidates checked by brute force per target")
    ap.add_argument("--ref-pairs", type=int, default=3000,
                    help="rouge_score pairs timed for the reference estimate")
    ap.add_argument("--no-targets", action="store_true", help="skip the targets table")
    ap.add_argument("--reference-n", type=int, default=2000,
                    help="prefix size for the measured reference (0: skip)")
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
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    texts = load_instructions(args.data)
    t = args.threshold
    print(f"data: {args.data} ({len(texts)} instructions), threshold {t} (drop if ROUGE-L > {t})")
    failures = 0 if args.no_targets else targets(args)
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
        for exact, name in ((False, "decisions"), (True, "+nearest")):
            tracemalloc.start()
            RougeIndex(t).dedup_batch(texts[:n], exact_nearest_for_kept=exact)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"peak traced memory, {name} at N={n}: {peak / 2**20:.1f} MiB (tracemalloc)")
        print(f"process peak RSS (everything loaded): {peak_mib():.0f} MiB")

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
