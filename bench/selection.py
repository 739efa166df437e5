"""Benchmark: budgeted selection (selfinstruct.selection.select_best) at pool scale.

Usage (manual; not part of the test suite):

    python bench/selection.py                      # 50,000 Alpaca rows, budget 0.5
    python bench/selection.py --rows 20000 --budget 5000 --threshold 0.5

Rows are the Alpaca instructions (../shared/data/alpaca_data.json), one task per
instruction with 1-3 instances each, given seeded random 1-5 scores (integers, so
ties are frequent as with a real judge). Prints the time of ``select_best`` and its
counts; exits non-zero past ``--limit`` seconds (60 by default).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfinstruct.selection import select_best  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "alpaca_data.json"


def make_rows(instructions: list[str], n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for t, text in enumerate(instructions):
        for k in range(rng.randint(1, 3)):
            if len(rows) == n:
                return rows
            overall = None if rng.random() < 0.02 else float(rng.randint(1, 5))
            rows.append({
                "id": f"r1-{t}-{k}", "task_id": f"r1-{t}", "instruction": text,
                "quality_overall": overall,
                "quality_instruction": float(rng.randint(1, 5)),
                "quality_input": float(rng.randint(1, 5)),
                "quality_output": float(rng.randint(1, 5)),
            })
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=float, default=60.0)
    args = ap.parse_args()
    with open(args.data, encoding="utf-8") as f:
        instructions = [r["instruction"] for r in json.load(f)]
    rows = make_rows(instructions, args.rows, args.seed)
    start = time.perf_counter()
    selection = select_best(rows, args.budget, args.threshold)
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": len(rows), "seconds": round(seconds, 2),
                      **selection.to_json_dict()}, indent=2))
    return 0 if seconds <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
