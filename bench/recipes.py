"""Cost per kept example of the two recipes, on the same seeds and model.

Runs ``selfinstruct generate`` once per recipe (self-instruct, then alpaca) with the
same seeds, model, target and prompts per round, and reads each run's manifest: the
engine requests and tokens of every stage, and the rows written (kept examples).
Prints a table and the ratio alpaca / self-instruct of requests and output tokens
per kept example, measured in this process's two runs (no stored reference).

Self-Instruct asks three questions per task (instructions, classification, instances)
and keeps up to five instances per task; Alpaca asks once per 16 tasks and keeps one
instance each, so its requests per example should be far lower; its tokens per
example depend on how many blocks survive the filters.

Usage (CPU, the embedded model; a few minutes per recipe):

    .venv/bin/python bench/recipes.py --seeds ../shared/data/self_instruct_seed_tasks.jsonl \\
        -n 20 --prompts-per-round 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "selfinstruct"


def run_recipe(recipe: str, args: argparse.Namespace, directory: Path) -> dict:
    """One ``generate`` run of ``recipe``; returns its costs from the manifest."""
    out = directory / recipe
    command = [str(BIN), "generate", "--recipe", recipe, "-n", str(args.n),
               "--prompts-per-round", str(args.prompts_per_round), "--output", str(out),
               "--seed", str(args.seed), "--max-rounds", str(args.max_rounds)]
    if args.seeds:
        command += ["--seeds", str(args.seeds)]
    if args.model:
        command += ["--model", args.model]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{recipe}: generate failed ({done.returncode}): "
                 f"{done.stderr.strip().splitlines()[-1:]}")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    stats, engine = manifest["stats"], manifest["stats"]["engine"]
    return {"recipe": recipe, "rounds": stats["rounds"], "tasks": stats["tasks_written"],
            "rows": stats["rows_written"], "requests": engine["requests"],
            "output_tokens": engine["output_tokens"], "prompt_tokens": engine["prompt_tokens"],
            "by_stage": {k: v["requests"] for k, v in engine["by_stage"].items()},
            "seconds": seconds}


def per_row(result: dict, key: str) -> float:
    return result[key] / result["rows"] if result["rows"] else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=Path, default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("-n", type=int, default=20, help="tasks per run")
    parser.add_argument("--prompts-per-round", type=int, default=16)
    parser.add_argument("--max-rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_recipe(r, args, Path(tmp)) for r in ("self-instruct", "alpaca")]
    print(f"{'recipe':<14}{'rounds':>7}{'tasks':>7}{'rows':>6}{'requests':>10}"
          f"{'out tok':>10}{'req/row':>9}{'tok/row':>9}{'seconds':>9}  requests by stage")
    for r in results:
        print(f"{r['recipe']:<14}{r['rounds']:>7}{r['tasks']:>7}{r['rows']:>6}"
              f"{r['requests']:>10}{r['output_tokens']:>10}{per_row(r, 'requests'):>9.2f}"
              f"{per_row(r, 'output_tokens'):>9.0f}{r['seconds']:>9.0f}  {r['by_stage']}")
    si, al = results
    for key, name in (("requests", "requests"), ("output_tokens", "output tokens")):
        ratio = per_row(al, key) / per_row(si, key)
        print(f"alpaca / self-instruct, {name} per kept example: {ratio:.2f}")


if __name__ == "__main__":
    main()
