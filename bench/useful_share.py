"""Benchmark: the useful share of output tokens of runs, recomputed from their ledgers.

Usage:

    python bench/useful_share.py RUN [RUN ...]      # the first run is the reference

A run's manifest records ``stats.engine.useful_token_share`` (output tokens inside
what the stages parsed, over all output tokens). Runs made before that figure
existed have a ledger all the same; this script replays each committed round's
recorded completions through the stages' own parsers
(:mod:`selfinstruct.stages`), with no model, so old and new runs are measured by
one rule. Printed per run and stage: requests, output tokens, useful output
tokens and share, and the run's wall time from its manifest (``stats.seconds``
plus the engine's start-up), with ratios to the first run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(run: Path) -> dict:
    """Per-stage requests, output tokens and useful output tokens of ``run``'s ledger."""
    from selfinstruct.config import Config
    from selfinstruct.prompts import PromptBuilder
    from selfinstruct.stages.classification import ClassificationIdentification
    from selfinstruct.stages.instances import InstanceGeneration
    from selfinstruct.stages.instructions import InstructionGeneration
    from selfinstruct.stats import RunStats
    from selfinstruct.storage.ledger import RunDirectory
    from selfinstruct.tasks import Candidate

    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    config = Config.model_validate({**manifest["config"], "output": str(run)})
    stats, prompts, ledger = RunStats(), PromptBuilder(), RunDirectory(run)
    instructions = InstructionGeneration(config, prompts, stats, [], [])
    classification = ClassificationIdentification(config, prompts, stats)
    instances = InstanceGeneration(config, prompts, stats)
    totals: dict[str, dict[str, int]] = {}
    for number in range(1, ledger.committed_rounds() + 1):
        files = ledger.read_commit(number)["files"]
        records = {stage: {r.key: r for r in ledger.load_stage(number, stage, files) or []}
                   for stage in ("instructions", "classification", "instances")}
        instructions.candidates(records["instructions"])
        asked = [Candidate(0, None, key, (), "") for key in records["classification"]]
        classification.apply(asked, records["classification"])
        flags = {c.instruction: c.is_classification for c in asked}
        generated = [Candidate(0, None, key, (), "", is_classification=flags.get(key))
                     for key in records["instances"]]
        instances.apply(generated, records["instances"])
        for stage, recorded in records.items():
            row = totals.setdefault(stage, {"requests": 0, "output_tokens": 0})
            row["requests"] += len(recorded)
            row["output_tokens"] += sum(r.output_tokens for r in recorded.values())
    for stage, row in totals.items():
        row["useful"] = stats.useful_output_tokens[stage]
    seconds = (manifest.get("stats", {}).get("seconds") or 0.0)
    return {"run": str(run), "stages": totals, "seconds": seconds,
            "tasks": manifest.get("tasks"), "rows": manifest.get("rows"),
            "recorded_share": manifest.get("stats", {}).get("engine", {})
            .get("useful_token_share")}


def main() -> None:
    runs = [Path(p) for p in sys.argv[1:]]
    if not runs:
        sys.exit(__doc__.split("\n\n")[1])
    results = [measure(run) for run in runs]
    print(f"{'run':<40} {'stage':<15} {'requests':>8} {'out tok':>8} {'useful':>8} {'share':>7}")
    for r in results:
        out = use = 0
        for stage, row in r["stages"].items():
            out, use = out + row["output_tokens"], use + row["useful"]
            share = row["useful"] / row["output_tokens"] if row["output_tokens"] else 0.0
            print(f"{Path(r['run']).name:<40} {stage:<15} {row['requests']:>8} "
                  f"{row['output_tokens']:>8} {row['useful']:>8} {share:>7.1%}")
        r["share"], r["output_tokens"] = (use / out if out else 0.0), out
        recorded = f" (manifest: {r['recorded_share']:.1%})" if r["recorded_share"] else ""
        print(f"{Path(r['run']).name:<40} {'all':<15} {'':>8} {out:>8} {use:>8} "
              f"{r['share']:>7.1%}{recorded}")
    base = results[0]
    print(f"\n{'run':<40} {'tasks':>6} {'rows':>6} {'loop s':>8} {'out tok':>8} {'share':>7} "
          f"{'time vs ref':>11}")
    for r in results:
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base["seconds"] else "-"
        print(f"{Path(r['run']).name:<40} {r['tasks']:>6} {r['rows']:>6} {r['seconds']:>8.1f} "
              f"{r['output_tokens']:>8} {r['share']:>7.1%} {ratio:>11}")


if __name__ == "__main__":
    main()
