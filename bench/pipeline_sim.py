"""Benchmark (simulated): how busy the real pipeline keeps a GPU-scale engine.

Usage (from anywhere; no engine is started):

    python bench/pipeline_sim.py --ledger RUN_DIR
    python bench/pipeline_sim.py --ledger /tmp/alpaca-ledger --make-ledger \\
        ../shared/data/alpaca_data.json --rounds 4 --depths 1,3

A simulated GPU (:mod:`selfinstruct.testing.gpu_sim`: vLLM's continuous batching of an
8B model on one H100, with step times from published measurements) is started on a
free loopback port, replaying the completions recorded in ``--ledger``. Then the real
pipeline, ``selfinstruct generate --backend http --base-url <the simulator>``, runs in a
child process (so it does not share this process's interpreter lock with the server)
for ``--rounds`` rounds with GPU-scale settings (``--prompts-per-round``,
``--max-in-flight``), once per pipeline depth of ``--depths``. A depth above 1 is run
only when this checkout's configuration has ``generation.pipeline_depth`` (passed as
``--pipeline-depth`` when the CLI has that option, else in a TOML config); otherwise
it is reported as skipped.

Printed, per depth, in **simulated** time (see the simulator's docstring: GPU steps
take their modelled time, the pipeline's own work its real wall time): the share of
the window (first request to last answer) with at least one sequence running, the
mean occupancy of the batch while busy (running / ``max_num_seqs``), output tokens
per simulated second, and the wall-clock a ``--target``-task run would take at the
tasks-per-simulated-second of the window, with its ratio to depth 1. ``--repeats N``
runs every depth N times, interleaved, and adds each depth's median. Below the
table, per run: requests by stage, how they were replayed (exact / cycled /
reused), the simulator's lag, the pipeline's CPU seconds and the load average.
The pipeline's own work runs in real time on this machine, so another process's
load lengthens the idle time it causes: compare runs made under the same load.

``--make-ledger TEXTS`` first writes ``--ledger`` (when it holds no run yet) with the
project's scripted engine answering from a record file of real instructions (Alpaca's
``alpaca_data.json``: instruction, input, output): each instruction-generation
request gets the list items its prompt asks for, drawn by its seed; each instruction
its classification (a wording rule) and one instance (its record's input and output).
Token counts are estimated at 4 characters a token. The bench then runs with the
same seed and settings, so its prompts are the recorded ones for as long as the
pipeline asks what the recorded run asked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selfinstruct.engines.base import Completion, Request  # noqa: E402
from selfinstruct.testing.scripted import ScriptedEngine  # noqa: E402

CHARS_PER_TOKEN = 4
_LAST_NUMBER = re.compile(r"(\d+)\.\s*$")
_CLASSIFICATION = re.compile(
    r"^(classify|categori[sz]e|identify whether|determine whether|decide whether|tell "
    r"whether|is |are |does |do |can |which of)", re.IGNORECASE)


def tokens(text: str) -> int:
    """Estimated tokens of a text (at least 1)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def one_line(text: str) -> str:
    return " ".join(text.split())


class TextScripted(ScriptedEngine):
    """The scripted engine answering from real instruction records (see the module
    docstring); judging and other stages fall back to :class:`ScriptedEngine`."""

    def __init__(self, records: list[dict[str, str]], max_list_items: int):
        super().__init__()
        self.records = [r for r in records if one_line(r.get("instruction", ""))
                        and r.get("output", "").strip()]
        self.by_instruction = {one_line(r["instruction"]): r for r in self.records}
        self.max_list_items = max_list_items

    def answer(self, request: Request) -> Completion:
        prompt_tokens = tokens(request.prompt)
        if request.stage == "instructions":
            match = _LAST_NUMBER.search(request.prompt)
            first = int(match.group(1)) if match else 1
            count = max(1, self.max_list_items - first + 1)
            drawn = random.Random(request.seed).sample(self.records, count)
            items = [one_line(r["instruction"]) for r in drawn]
            text = " " + items[0] + "".join(f"\n{first + k}. {item}"
                                            for k, item in enumerate(items[1:], start=1))
            return Completion(text, prompt_tokens, tokens(text), "stop")
        if request.stage == "classification":
            text = " Yes" if _CLASSIFICATION.match(request.key) else " No"
            return Completion(text, prompt_tokens, 1, "stop")
        if request.stage == "instances":
            rec = self.by_instruction.get(one_line(request.key)) or random.Random(
                request.key).choice(self.records)
            output, given = rec["output"].strip(), rec.get("input", "").strip()
            if _CLASSIFICATION.match(request.key):  # asked output-first
                text = f"Class label: {one_line(output)}\nInput: {given or 'none'}\n"
            else:
                text = "Example 1\n" + (f"Input: {given}\n" if given else "") + \
                    f"Output: {output}\n"
            return Completion(text, prompt_tokens, tokens(text), "stop")
        return super().answer(request)


def generate_options(**values: Any) -> dict[str, Any]:
    from selfinstruct.cli import GENERATE_OPTIONS

    options: dict[str, Any] = dict.fromkeys(GENERATE_OPTIONS)
    options.update(values)
    return options


def make_ledger(run_dir: Path, texts: Path, rounds: int, prompts_per_round: int,
                seed: int) -> None:
    """Write a run of ``rounds`` rounds to ``run_dir`` with :class:`TextScripted`."""
    from selfinstruct import run as run_module
    from selfinstruct.cli import GENERATE_OPTIONS
    from selfinstruct.config import GenerationConfig

    records = json.loads(texts.read_text(encoding="utf-8"))
    engine = TextScripted(records, GenerationConfig().max_list_items)
    model = Path(tempfile.mkdtemp(prefix="sim-model-"))  # a local model dir, never loaded
    (model / "config.json").write_text("{}")
    options = generate_options(model=str(model), output=run_dir, num_instructions=10**6,
                               max_rounds=rounds, prompts_per_round=prompts_per_round,
                               seed=seed)
    job = run_module.GenerateJob.prepare(None, options, dict(GENERATE_OPTIONS))
    built = run_module.build_engine
    run_module.build_engine = lambda config, prepared: engine  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the run's summary is not the bench's
            job.execute()
    finally:
        run_module.build_engine = built


def depth_flag(depth: int, work: Path) -> list[str] | None:
    """The arguments that set ``generation.pipeline_depth`` to ``depth`` (every depth, 1
    too: the setting's default may be deeper); [] for depth 1 and None for any other
    when this checkout has no such setting (its rounds are then strictly in order)."""
    from selfinstruct.cli import GENERATE_OPTIONS
    from selfinstruct.config import GenerationConfig

    if "pipeline_depth" not in GenerationConfig.model_fields:
        return [] if depth == 1 else None
    for name, key in GENERATE_OPTIONS.items():
        if key == "generation.pipeline_depth":
            return ["--" + name.replace("_", "-"), str(depth)]
    config = work / f"depth-{depth}.toml"
    config.write_text(f"[generation]\npipeline_depth = {depth}\n", encoding="utf-8")
    return ["--config", str(config)]


def run_pipeline(url: str, model: str, out: Path, args: argparse.Namespace,
                 extra: list[str]) -> dict[str, Any]:
    """``selfinstruct generate`` against ``url`` in a child process; its manifest stats."""
    command = [sys.executable, "-c", "from selfinstruct.cli import main; main()", "generate",
               "--backend", "http", "--base-url", url, "--model", model, "-o", str(out),
               "-n", str(args.target), "--max-rounds", str(args.rounds),
               "--prompts-per-round", str(args.prompts_per_round), "--seed", str(args.seed),
               "--max-in-flight", str(args.max_in_flight), "--request-timeout", "7200",
               *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = out.with_suffix(".log")
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                              cwd=REPO)
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        raise SystemExit(f"generate failed (exit {done.returncode}): {' | '.join(tail)}")
    stats: dict[str, Any] = json.loads((out / "manifest.json").read_text())["stats"]
    return stats


def child_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def result_row(depth: int, repeat: int, stats: dict[str, Any], sim: Any,
               wall: float) -> dict[str, Any]:
    """One run's figures: the run's manifest ``stats`` and the simulator's SimStats."""
    window = sim.window_s
    return {"depth": depth, "repeat": repeat, "rounds": stats["rounds"],
            "tasks": stats["tasks_written"], "wall_s": wall, "window_s": window,
            "busy_share": sim.busy_share, "occupancy": sim.occupancy,
            "output_tokens_per_s": sim.output_tokens_per_second,
            "tasks_per_s": stats["tasks_written"] / window if window else 0.0,
            "requests": sim.requests, "by_how": sim.by_how, "by_stage": sim.by_stage,
            "lag_s": sim.lag_s, "sim": sim.to_json_dict()}


def print_table(rows: list[dict[str, Any]], target: int, medians: bool) -> None:
    """The table of runs (and, with ``medians``, each depth's median over its runs: one
    run slowed by another process's load does not move it); the ratio is tasks per
    simulated second over the first depth's median."""
    def median(items: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in items))

    shown = [dict(r, setting=f"depth {r['depth']}" + (f" ({r['repeat']})" if medians else ""))
             for r in rows]
    if medians:
        for depth in dict.fromkeys(r["depth"] for r in rows):
            runs = [r for r in rows if r["depth"] == depth]
            shown.append({"setting": f"depth {depth} median", **{
                key: median(runs, key) for key in ("busy_share", "occupancy",
                                                 "output_tokens_per_s", "tasks",
                                                 "window_s", "tasks_per_s")}})
    first = [r for r in rows if r["depth"] == rows[0]["depth"]] if rows else []
    base = median(first, "tasks_per_s") if first else 0.0
    header = (f"{'setting':<14} {'busy share':>10} {'occupancy':>10} {'out tok/s':>10} "
              f"{'tasks':>6} {'window s':>9} {f'{target:,} tasks':>14} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for row in shown:
        rate = row["tasks_per_s"]
        projected = target / rate / 3600 if rate else math.inf
        print(f"{row['setting']:<14} {row['busy_share']:>10.1%} {row['occupancy']:>10.1%} "
              f"{row['output_tokens_per_s']:>10,.0f} {row['tasks']:>6.0f} "
              f"{row['window_s']:>9.1f} {projected:>12.2f} h {rate / base if base else 0:>5.2f}x")
        if "repeat" in row:
            row.update(projected_hours=projected, ratio=rate / base if base else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", type=Path, required=True,
                        help="the run directory whose completions are replayed")
    parser.add_argument("--make-ledger", type=Path, metavar="TEXTS",
                        help="first write --ledger from this instruction record file")
    parser.add_argument("--ledger-rounds", type=int, default=None,
                        help="rounds of the made ledger (default: --rounds + 2)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompts-per-round", type=int, default=256)
    parser.add_argument("--max-in-flight", type=int, default=512)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--depths", default="1,3", help="pipeline depths, comma-separated")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="simulated seconds per wall second of GPU work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each depth (interleaved); the table adds medians")
    parser.add_argument("--target", type=int, default=52_000,
                        help="tasks of the run whose wall-clock is projected")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from selfinstruct.storage.ledger import LedgerError
    from selfinstruct.testing.gpu_sim import H100_LLAMA_8B, SIM_MODEL, GPUSim, GPUSimError, Replay

    if args.make_ledger and not (args.ledger / "manifest.json").is_file():
        started = time.perf_counter()
        make_ledger(args.ledger, args.make_ledger, args.ledger_rounds or args.rounds + 2,
                    args.prompts_per_round, args.seed)
        print(f"ledger written to {args.ledger} in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
    try:
        replay = Replay.from_run(args.ledger)
    except (GPUSimError, LedgerError) as exc:
        raise SystemExit(f"error: {exc}") from None
    depths = [int(d) for d in args.depths.split(",")]
    work = Path(tempfile.mkdtemp(prefix="pipeline-sim-"))
    rows: list[dict[str, Any]] = []
    model = H100_LLAMA_8B
    with GPUSim(replay, SIM_MODEL, max_num_seqs=args.max_num_seqs,
                time_scale=args.time_scale) as sim:
        for repeat in range(1, args.repeats + 1):  # interleaved: load drifts alike
            for depth in depths:
                extra = depth_flag(depth, work)
                if extra is None:
                    if repeat == 1:
                        print(f"depth {depth}: skipped (this checkout has no "
                              "generation.pipeline_depth)", file=sys.stderr)
                    continue
                sim.reset()
                started, cpu = time.perf_counter(), child_cpu_seconds()
                stats = run_pipeline(sim.url, SIM_MODEL, work / f"depth-{depth}-{repeat}",
                                     args, extra)
                rows.append(result_row(depth, repeat, stats, sim.stats(),
                                       time.perf_counter() - started))
                rows[-1].update(client_cpu_s=child_cpu_seconds() - cpu,
                                load=os.getloadavg()[0])
    print(f"\nSIMULATED: {args.prompts_per_round} prompts/round, {args.rounds} rounds, "
          f"max_num_seqs {args.max_num_seqs}, max_in_flight {args.max_in_flight}; "
          f"step = {model.a * 1e3:g} ms + {model.b * 1e3:g} ms x running + "
          f"{model.c * 1e3:g} ms x prefilled token; time scale {args.time_scale:g}x; "
          f"{len(replay)} recorded completions from {args.ledger}")
    print_table(rows, args.target, args.repeats > 1)
    for row in rows:
        print(f"depth {row['depth']} ({row['repeat']}): {row['requests']} requests "
              f"{row['by_stage']}, replayed {row['by_how']}, sim lag {row['lag_s']:.1f} s, "
              f"bench wall {row['wall_s']:.0f} s, pipeline CPU {row['client_cpu_s']:.0f} s, "
              f"load {row['load']:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
