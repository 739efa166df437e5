"""Benchmark: the offline engine in bfloat16 and in float32 on this machine's CPU.

Usage:

    python bench/dtype.py                          # 16 prompts x 128 tokens, both dtypes
    python bench/dtype.py --prompts 32 --max-tokens 256 --dtypes bfloat16,float32,auto

What ``engine.dtype = "auto"`` picks rests on this measurement
(:func:`selfinstruct.engines.offline.resolve_dtype`): CPUs without AVX-512 BF16
emulate bfloat16, and on an AVX2-only AMD EPYC float32 ran the embedded model
2.4x faster. Each dtype runs in its own child process, one after the other (never
two engines at once): a warm-up batch of 4 requests, then the round-1
instruction-generation requests of ``bench/generate.py`` (fixed seeds), timed.
Printed: the CPU's AVX-512 BF16 flag, what ``auto`` resolves to here, and per
dtype the output tokens, seconds, tokens/s and the ratio to bfloat16.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def child(dtype: str, prompts: int, max_tokens: int) -> dict:
    """Start the engine in ``dtype``, time one batch, return the figures."""
    from generate import build_requests

    from selfinstruct.config import EngineConfig
    from selfinstruct.engines.offline import VLLMEngine
    from selfinstruct.models import resolve_model

    model = resolve_model(None)
    started = time.perf_counter()
    engine = VLLMEngine(model.path, model.name, EngineConfig(dtype=dtype), seed=0)
    startup = time.perf_counter() - started
    try:
        engine.generate(build_requests(4, 16, seed=1))
        requests = build_requests(prompts, max_tokens)
        started = time.perf_counter()
        out = engine.generate(requests)
        seconds = time.perf_counter() - started
        described = engine.describe()
    finally:
        engine.close()
    tokens = sum(c.output_tokens for c in out)
    return {"dtype": dtype, "given": described["dtype"], "startup_s": round(startup, 1),
            "requests": len(out), "output_tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.prompts, args.max_tokens)))
        return
    from selfinstruct.engines.offline import cpu_flags, resolve_dtype

    has_bf16 = "avx512_bf16" in cpu_flags()
    print(f"avx512_bf16: {'yes' if has_bf16 else 'no'}; dtype auto -> "
          f"{resolve_dtype('auto', cpu=True)}")
    results = []
    for dtype in args.dtypes.split(","):
        done = subprocess.run([sys.executable, __file__, "--child", dtype, "--prompts",
                               str(args.prompts), "--max-tokens", str(args.max_tokens)],
                              capture_output=True, text=True)
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode != 0 or not line:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{dtype}: failed ({tail})")
            continue
        results.append(json.loads(line[0][len("RESULT "):]))
    base = next((r["tokens_per_s"] for r in results if r["dtype"] == "bfloat16"), None)
    print(f"{'dtype':<10} {'given':<10} {'start s':>8} {'requests':>8} {'out tok':>8} "
          f"{'seconds':>8} {'tok/s':>7} {'vs bf16':>8}")
    for r in results:
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        print(f"{r['dtype']:<10} {r['given']:<10} {r['startup_s']:>8} {r['requests']:>8} "
              f"{r['output_tokens']:>8} {r['seconds']:>8} {r['tokens_per_s']:>7} {ratio:>8}")


if __name__ == "__main__":
    main()
