"""Benchmark: the same generation requests through each engine backend.

Usage (from anywhere):

    python bench/generate.py                      # offline, http, ray (where it runs)
    python bench/generate.py --backends offline,http --prompts 128 --max-tokens 256
    python bench/generate.py --model DIR --served-name NAME

The requests are round-1 instruction-generation prompts as the pipeline builds
them: ``--prompts`` prompts built with :class:`selfinstruct.prompts.PromptBuilder`
from the bundled seed tasks (``generation.prompt_tasks`` tasks each, fixed RNG),
sampled with the defaults of :class:`selfinstruct.config.GenerationConfig`
(temperature, top_p, the stop before the list item after ``max_list_items``),
``--max-tokens`` output tokens at most and fixed per-request seeds. The
presence penalty and the blank-line stop among those defaults are left out: the
figures in the README were measured without them, and stay comparable.

Each backend runs in its own child process, one after the other, so never two
engines at once:

* ``offline``: :class:`selfinstruct.engines.offline.VLLMEngine` (``vllm.LLM`` in process).
* ``http``: a local vLLM OpenAI-compatible server started by the child (the CPU
  flags of :mod:`selfinstruct.testing.local_server`, ``--max-num-seqs`` 256 as the
  offline engine), then :class:`selfinstruct.engines.http.HTTPEngine` against it.
* ``ray``: :class:`selfinstruct.engines.ray_replicas.RayEngine` on a local Ray instance
  (``--ray-replicas`` vLLM replicas, default 1, started once: the start-up column);
  reported as skipped (with the reason) where it cannot run.

Every backend first completes a warm-up batch (8 requests, not timed); then the
whole batch is sent ``--repeats`` times and ``generate`` is timed. Printed: the
backend, requests, output tokens, seconds, output tokens/s, and the ratio of
tokens/s to the offline engine. Output lengths differ between backends (the
engines are not batch-invariant on CPU), so tokens/s is the figure compared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BACKENDS = ("offline", "http", "ray")


def build_requests(n: int, max_tokens: int, seed: int = 0):
    """``n`` round-1 instruction-generation requests from the bundled seeds."""
    from selfinstruct.config import GenerationConfig
    from selfinstruct.engines.base import Request, Sampling
    from selfinstruct.pipeline import request_seed
    from selfinstruct.prompts import PromptBuilder, instruction_stop, sample_prompt_tasks
    from selfinstruct.seeds import default_seeds_dir, load_seed_tasks

    tasks = load_seed_tasks(default_seeds_dir())
    prompts = PromptBuilder()
    rng = random.Random(f"{seed}:bench")
    gen = GenerationConfig()
    sampling = Sampling(gen.temperature, gen.top_p, max_tokens,
                        instruction_stop(gen.max_list_items))
    return [Request(prompts.instruction_generation(sample_prompt_tasks(
                        rng, tasks, [], gen.prompt_tasks, gen.prompt_human_tasks)),
                    sampling, request_seed(seed, 1, "instructions", i))
            for i in range(n)]


def other_engines(ours: int | None = None) -> list[int]:
    """PIDs of busy vLLM engines, servers and generate runs on this machine (they skew
    timings), process ``ours`` and its descendants aside; an idle one (an orphaned
    EngineCore waiting for work) does not count."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid in (os.getpid(), ours):
                continue
            if ours is not None and ours in {parent.pid for parent in proc.parents()}:
                continue
            text = " ".join([proc.info["name"] or ""] + (proc.info["cmdline"] or []))
            if any(mark in text for mark in ("VLLM::", "selfinstruct generate",
                                             "vllm.entrypoints", "bench/generate.py --child")):
                found.append(proc)
        except psutil.Error:
            continue
    for proc in found:
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for proc in found:
        try:
            if proc.cpu_percent(None) > 10.0:
                busy.append(proc.pid)
        except psutil.Error:
            continue
    return busy


def wait_until_quiet(limit: float) -> bool:
    """Wait (up to ``limit`` s) until no other vLLM engine runs here; False if one still does."""
    deadline = time.monotonic() + limit
    told = False
    while other_engines():
        if time.monotonic() > deadline:
            return False
        if not told:
            print(f"waiting for other vLLM engines to finish: {other_engines()}",
                  file=sys.stderr, flush=True)
            told = True
        time.sleep(5)
    return True


def measure(engine, requests, repeats: int) -> dict:
    """Warm up, then time ``repeats`` whole-batch ``generate`` calls."""
    engine.generate(requests[:8])
    seconds = 0.0
    output = prompt = count = 0
    for _ in range(repeats):
        started = time.perf_counter()
        completions = engine.generate(requests)
        seconds += time.perf_counter() - started
        count += len(completions)
        output += sum(c.output_tokens for c in completions)
        prompt += sum(c.prompt_tokens for c in completions)
    return {"requests": count, "prompt_tokens": prompt, "output_tokens": output,
            "seconds": seconds, "tokens_per_second": output / seconds if seconds else 0.0}


def run_backend(name: str, args) -> dict:
    """Run one backend in this process; returns its measurement (or a skip reason)."""
    from selfinstruct.config import EngineConfig
    from selfinstruct.models import resolve_model

    model = resolve_model(args.model)
    served = args.served_name or model.name
    requests = build_requests(args.prompts, args.max_tokens)
    config = EngineConfig(max_model_len=2048)
    started = time.perf_counter()
    if name == "offline":
        from selfinstruct.engines.offline import VLLMEngine

        engine = VLLMEngine(model.path, model.name, config, seed=0)
        startup = time.perf_counter() - started
        try:
            result = measure(engine, requests, args.repeats)
        finally:
            engine.close()
    elif name == "http":
        from selfinstruct.engines.http import HTTPEngine
        from selfinstruct.testing.local_server import LocalServer

        with LocalServer(model.path, served, max_num_seqs=args.max_num_seqs) as server:
            startup = time.perf_counter() - started
            engine = HTTPEngine(EngineConfig(base_urls=[server.url],
                                             max_in_flight=args.max_in_flight), served)
            try:
                result = measure(engine, requests, args.repeats)
            finally:
                engine.close()
    elif name == "ray":
        from selfinstruct.engines.ray_replicas import RayEngine, RayUnavailable

        try:
            engine = RayEngine(model.path, model.name,
                               EngineConfig(backend="ray", max_model_len=2048,
                                            ray_replicas=args.ray_replicas), seed=0)
        except RayUnavailable as exc:
            return {"skipped": str(exc)}
        startup = time.perf_counter() - started
        try:
            result = measure(engine, requests, args.repeats)
        finally:
            engine.close()
    else:
        raise ValueError(name)
    result["startup_seconds"] = startup
    return result


def run_watched(command: list[str]) -> subprocess.CompletedProcess:
    """Run a child, checking every 15 s whether an engine other than the child's runs
    (the result's ``busy`` attribute)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True,
                                 env=dict(os.environ, VLLM_LOGGING_LEVEL="ERROR"))
        busy = False
        while child.poll() is None:
            busy = busy or bool(other_engines(child.pid))
            try:
                child.wait(timeout=14)
            except subprocess.TimeoutExpired:
                pass
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(command, child.returncode, out.read(), err.read())
    result.busy = busy
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma-separated subset of offline,http,ray")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--served-name", default=None)
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--max-num-seqs", type=int, default=256,
                        help="the server's --max-num-seqs (offline vllm.LLM on CPU: 256)")
    parser.add_argument("--ray-replicas", type=int, default=None,
                        help="vLLM replicas of the ray backend (default: one per GPU, or 1 "
                             "on a CPU machine; several CPU replicas share its cores)")
    parser.add_argument("--wait-quiet", type=float, default=1800.0,
                        help="seconds to wait for other vLLM engines on this machine to "
                             "finish before each backend (timings would be skewed)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    if args.child:
        print("RESULT " + json.dumps(run_backend(args.child, args)), flush=True)
        return 0

    results: dict[str, dict] = {}
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r}")
        command = [sys.executable, __file__, "--child", name] + [
            a for a in sys.argv[1:] if a != "--json"]
        quiet = wait_until_quiet(args.wait_quiet)
        print(f"[{name}] running ...", file=sys.stderr, flush=True)
        proc = run_watched(command)
        busy = not quiet or proc.busy
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
            results[name] = {"skipped": f"failed (exit {proc.returncode}): {tail}"}
        else:
            results[name] = json.loads(lines[-1][len("RESULT "):])
        if busy:
            results[name]["warning"] = "another vLLM engine was running: timings skewed"
    base = results.get("offline", {}).get("tokens_per_second")
    for result in results.values():
        if base and "tokens_per_second" in result:
            result["ratio_to_offline"] = result["tokens_per_second"] / base
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.prompts} instruction-generation prompts x {args.repeats}, max_tokens "
          f"{args.max_tokens}, warm engines (start-up not timed)")
    print(f"{'backend':<9} {'requests':>8} {'output tok':>10} {'seconds':>8} {'tok/s':>8} "
          f"{'vs offline':>10} {'start-up s':>10}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:<9} skipped: {r['skipped']}")
            continue
        ratio = f"{r['ratio_to_offline']:.2f}" if "ratio_to_offline" in r else "-"
        print(f"{name:<9} {r['requests']:>8} {r['output_tokens']:>10} {r['seconds']:>8.1f} "
              f"{r['tokens_per_second']:>8.1f} {ratio:>10} {r['startup_seconds']:>10.1f}"
              + (f"  ({r['warning']})" if "warning" in r else ""))
    if "tokens_per_second" in results.get("ray", {}):
        print("ray: the replicas start once (start-up, not timed, as in a run: once per "
              "run); every generate call is split over them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
