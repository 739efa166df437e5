"""Benchmark: a data set's judge requests as one engine batch, then through the pipeline.

Usage:

    python bench/judge.py                          # 64 examples of ../shared/data's Alpaca
    python bench/judge.py RUN_OR_FILE --examples 128 --max-tokens 256 --chunk-size 1000

One in-process vLLM engine (:class:`selfinstruct.engines.offline.VLLMEngine`, the
embedded model unless ``--model``) is started once and warmed up with the whole
batch (the verdict grammar compiled, every prompt in the prefix cache, so no
timed run has an advantage). Then, on that same engine:

* **engine**: the judging stage's requests for the examples (the rubric
  prompt, the verdict's JSON schema, temperature 0, per-request seeds), built
  with :class:`selfinstruct.stages.judging.QualityJudging`, sent as one
  ``generate`` batch and timed;
* **pipeline**: ``selfinstruct score`` on the same examples
  (:class:`selfinstruct.scoring.ScoreJob` into a fresh directory): chunks, the
  ledger's atomic writes, parsing the verdicts, shards and the manifest; timed
  from start to end.

The two alternate ``--repeats`` times (2), each pipeline run into a fresh
directory, and the totals are compared. Printed: requests, output tokens,
seconds, output tokens/s of each and the pipeline's ratio to the engine batch
(the target is >= 0.9: the pipeline keeps the engine as busy as one batch
would). Both send the same requests with the
same seeds, so their output tokens agree where the engine is batch-invariant.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    """Run both measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path,
                        default=REPO.parent / "shared" / "data" / "alpaca_data.json")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate engine and pipeline this many times each; totals")
    args = parser.parse_args()

    from selfinstruct.engines.offline import VLLMEngine
    from selfinstruct.models import resolve_model
    from selfinstruct.cli import SCORE_OPTIONS
    from selfinstruct.scoring import ScoreJob
    from selfinstruct.stages.judging import QualityJudging
    from selfinstruct.stats import RunStats
    from selfinstruct.tasks import Candidate, Instance

    with tempfile.TemporaryDirectory() as tmp:
        def prepared(k: int) -> ScoreJob:
            options = {"output": Path(tmp) / f"scored-{k}", "max_tokens": args.max_tokens,
                       "model": args.model}
            return ScoreJob.prepare(args.source, None, options,
                                    {key: SCORE_OPTIONS[key] for key in options},
                                    chunk_size=args.chunk_size, limit=args.examples)

        job = prepared(0)
        model = resolve_model(args.model)
        started = time.perf_counter()
        engine = VLLMEngine(model.path, model.name, job.config.engine, job.config.seed)
        startup = time.perf_counter() - started
        stage = QualityJudging(job.config, job.prompts, RunStats())
        candidates = [Candidate(k, None, e["instruction"], (), "",
                                instances=(Instance(e["input"], e["output"]),))
                      for k, e in enumerate(job.examples)]
        requests = stage.requests(1, candidates)
        # warm-up, not timed: the whole batch once, so the schema's grammar is compiled
        # and vLLM's prefix cache holds every prompt for all timed runs alike
        engine.generate(requests)

        batch_seconds = pipeline_seconds = 0.0
        batch_tokens = pipeline_tokens = pipeline_requests = 0
        for k in range(args.repeats):  # alternated, so drifting load hits both alike
            started = time.perf_counter()
            completions = engine.generate(requests)
            batch_seconds += time.perf_counter() - started
            batch_tokens += sum(c.output_tokens for c in completions)

            job = prepared(k + 1)
            job.engine = engine
            started = time.perf_counter()
            stats = job.execute()
            pipeline_seconds += time.perf_counter() - started
            pipeline_tokens += stats["engine"]["live_output_tokens"]
            pipeline_requests += stats["engine"]["live_requests"]
        engine.close()

    batch_rate = batch_tokens / batch_seconds
    pipeline_rate = pipeline_tokens / pipeline_seconds
    verdicts = stats.get("quality", {}).get("verdicts", {})
    print(f"\njudging benchmark: {len(requests)} examples of {args.source.name}, judge "
          f"{model.name}, max_tokens {args.max_tokens}, chunk {args.chunk_size}, engine "
          f"start-up {startup:.1f} s")
    print(f"{'path':<10} {'requests':>8} {'out tokens':>10} {'seconds':>8} {'tok/s':>8} "
          f"{'ratio':>6}")
    print(f"{'engine':<10} {len(requests) * args.repeats:>8} {batch_tokens:>10} "
          f"{batch_seconds:>8.1f} {batch_rate:>8.1f} {1.0:>6.2f}")
    print(f"{'pipeline':<10} {pipeline_requests:>8} {pipeline_tokens:>10} "
          f"{pipeline_seconds:>8.1f} {pipeline_rate:>8.1f} {pipeline_rate / batch_rate:>6.2f}")
    print(f"verdicts: {verdicts}")


if __name__ == "__main__":
    main()
