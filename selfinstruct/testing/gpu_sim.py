"""A simulated GPU: an OpenAI-compatible server that batches like vLLM serving an 8B model
on one H100, replaying a real run's completions (for benchmarks and tests only).

Nothing here runs a model. The server answers ``GET /v1/models``, ``GET /version``,
``POST /v1/completions`` and ``POST /v1/chat/completions`` in the shapes the HTTP backend
(:mod:`selfinstruct.engines.http`) reads, and times every answer with a model of
continuous batching, so that the *real* pipeline, over the *real* HTTP backend, can be
watched keeping a GPU-scale engine busy or idle. Every figure it reports is
**simulated**, not measured on a GPU.

The batching model (:class:`Batcher`)
-------------------------------------
* At most ``max_num_seqs`` sequences run at once; later requests wait in a FIFO queue.
* Time advances in discrete decode steps. A step with ``n`` running sequences takes
  ``a + b*n`` seconds, plus ``c`` seconds per prompt token prefilled in that step: a
  waiting sequence is admitted at the start of a step (while the step's prefill stays
  within ``max_num_batched_tokens``, less one token per running sequence, as vLLM's
  chunked-prefill budget) and its prefill is charged to that step.
* Every running sequence produces one token per step (an admitted one its first token
  in its admission step); a sequence of ``L`` completion tokens finishes after ``L``
  steps (at least 1: a model emits at least its end-of-sequence token).
* Prefix caching (vLLM's automatic prefix caching, on by default): a prompt's leading
  blocks of :data:`BLOCK_CHARS` characters already prefilled by an earlier step are
  not charged again (block hashes chained over the prefix, as vLLM hashes its KV
  blocks; nothing is evicted; blocks prefilled in the same step are not shared).
* Not modelled: KV-cache exhaustion and preemption (Llama-3-8B holds 128 KiB of KV
  cache a token; 256 of this workload's sequences, well under 1,000 tokens each, need
  under 32 GiB, within the ~50 GiB an H100 has left after the weights), sampling
  cost, network latency.

The constants (:data:`H100_LLAMA_8B`)
-------------------------------------
Taken from LambdaLabsML/vllm-benchmark (vLLM v0.6.0, ``num-scheduler-steps=10``,
one H100-80GB-SXM, tensor parallel 1, ``max-num-seqs=256``, ``max-seq-len=2048``):

* ``results/prompt_10/1xH100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp1_len2048.json``
  (10 ShareGPT prompts sent at once): the inter-token latencies are the times of
  10-step chunks. The last sequence, decoding alone, shows ~70.5 ms per chunk, so
  ``a + b = 7.05 ms``; with all 10 running the first chunk took 75.3 ms (7.53 ms a step).
  The time to first token of all 10 prompts (1,369 prompt tokens prefilled in one
  step) was 62.4 ms: ``c = (62.4 - 7.05) / 1369 = 0.040 ms`` per prompt token.
* ``benchmark_v0.md``, table "Llama 3.1 8B" (5,000 ShareGPT prompts at an infinite
  request rate, 256 sequences running): 8,088 output tokens/s with 10 scheduler
  steps, i.e. 256 / 8,088 = 31.65 ms per step, prefill included. ShareGPT prompts
  hold 1.13 prompt tokens per output token with a Llama-3 tokenizer (229,711 prompt
  and 203,068 output tokens for 1,000 requests in vllm-project/vllm pull request
  #18566), so a full step carries 256 x 1.13 x 0.040 = 11.6 ms of prefill and
  ``a + 256*b = 31.65 - 11.6 = 20.0 ms``; with ``a + b = 7.05 ms``:
  ``b = 0.050 ms`` per running sequence and ``a = 7.0 ms``. The fit predicts 7.5 ms
  a step at ``n = 10``, as the 10-prompt run measured.

So decode alone gives 1/(a+b) = 142 tokens/s at batch 1 and 256/(a+256b) = 12,900
tokens/s at a full batch of 256. Newer vLLM versions (CUDA graphs, V1's scheduler)
are faster; the model is of the engine the measurements describe.
``max_num_batched_tokens`` 8,192 and prefix caching on are vLLM 0.32's defaults for
the OpenAI server on an H100 (``vllm/engine/arg_utils.py``).

Time
----
``time_scale`` is simulated seconds per wall second: a step of ``d`` simulated
seconds takes ``d / time_scale`` wall seconds. The server keeps a simulated clock:
steps advance it by their modelled duration; time with nothing running advances it
by the wall time that passed times ``idle_scale`` (default 1: the client is real
software running at its real speed, and while the GPU idles it is the client's
time that passes; ``idle_scale = time_scale`` dilates everything alike). With
``time_scale`` 1 the simulation runs in real time and is faithful; with a larger
one the GPU's phases are compressed against the client's, so work a client overlaps
with the GPU spills into idle time (pessimistic for pipelined clients).

Replay (:class:`Replay`)
------------------------
Completion texts, their token counts and finish reasons come from a run directory's
ledger (``ledger/round-*/requests-<stage>.parquet`` of committed rounds, read with
:class:`~selfinstruct.storage.ledger.RunDirectory`). An incoming prompt equal to a
recorded one gets that record. Any other is matched to a stage by its head (its
first :data:`HEAD_CHARS` characters, which hold the template's fixed preamble): the
group of recorded prompts whose head shares the longest prefix with it; within the
group, records are served in ledger order, ones not yet served first, then again
from the start (counted as ``reused``). ``max_tokens`` is honoured: a longer record
is cut to that many tokens (its text to the same share of its characters) and
finishes with "length".

Counters (``GET /sim/stats``; ``POST /sim/reset`` starts them and the replay afresh):
see :class:`SimStats`.

Run one by hand: ``python -m selfinstruct.testing.gpu_sim --ledger RUN_DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..storage.ledger import LEDGER_DIR, LedgerError, RecordedRequest, RunDirectory

SIM_MODEL = "sim-llama-3.1-8b"
"""The served model name of a simulator (``--model`` of the run)."""

HEAD_CHARS = 120
"""Characters of a prompt that identify its template (and so its stage)."""

BLOCK_CHARS = 64
"""Characters per prefix-cache block: vLLM's 16-token KV blocks at ~4 characters a token."""

CHARS_PER_TOKEN = 4.0
"""Prompt characters per token when the ledger gives no ratio (English BPE, roughly)."""


class GPUSimError(ValueError):
    """A simulator that cannot be set up (a bad ledger path); the message is one line."""


@dataclass(frozen=True)
class StepModel:
    """The time of one continuous-batching step (see the module docstring).

    Attributes:
        a: seconds per step, whatever runs.
        b: seconds per step per running sequence.
        c: seconds per prompt token prefilled in the step.
    """

    a: float
    b: float
    c: float

    def step_seconds(self, running: int, prefill_tokens: int) -> float:
        """Seconds of a step with ``running`` sequences and ``prefill_tokens`` prefilled."""
        return self.a + self.b * running + self.c * prefill_tokens

    def decode_tokens_per_second(self, running: int) -> float:
        """Output tokens per second of ``running`` sequences decoding (no prefill)."""
        return running / (self.a + self.b * running)


H100_LLAMA_8B = StepModel(a=7.0e-3, b=5.0e-5, c=4.0e-5)
"""Llama-3-8B / 3.1-8B on one H100 under vLLM v0.6.0 (derivation: module docstring)."""


@dataclass(frozen=True)
class Reply:
    """What the simulator answers one request with.

    Attributes:
        text: the completion text.
        prompt_tokens: tokens of the prompt (recorded, or estimated from its length).
        output_tokens: completion tokens (the steps the sequence runs).
        finish_reason: "stop" or "length".
        stage: the ledger stage it was drawn from ("" when the ledger matched nothing).
        how: "exact" (the same prompt was recorded), "cycled" or "reused".
    """

    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str
    stage: str
    how: str


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Replay:
    """Recorded completions, matched to incoming prompts (see the module docstring).

    Args:
        records: stage name -> its recorded requests, in ledger order. Records whose
            finish reason is neither "stop" nor "length" (``prompt_too_long``) are left out.

    Raises:
        GPUSimError: no usable record.
    """

    def __init__(self, records: Mapping[str, Sequence[RecordedRequest]]):
        self._exact: dict[str, int] = {}
        self._groups: dict[tuple[str, str], list[int]] = {}
        self._all: list[tuple[tuple[str, str], RecordedRequest]] = []
        chars = tokens = 0
        for stage, rows in records.items():
            for record in rows:
                if record.finish_reason not in ("stop", "length"):
                    continue
                key = (stage, record.prompt[:HEAD_CHARS])
                self._exact.setdefault(record.prompt, len(self._all))
                self._groups.setdefault(key, []).append(len(self._all))
                self._all.append((key, record))
                if record.prompt_tokens > 0:
                    chars += len(record.prompt)
                    tokens += record.prompt_tokens
        if not self._all:
            raise GPUSimError("the ledger holds no completed request to replay")
        self.chars_per_token = chars / tokens if tokens else CHARS_PER_TOKEN
        self.stages = sorted({stage for stage, _ in self._groups})
        self._largest = max(self._groups, key=lambda k: len(self._groups[k]))
        self._by_head: dict[str, tuple[str, str]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget what was served: every record is unserved again, each group's turn
        back at its first record (a new run replays as the first did)."""
        self._next: dict[tuple[str, str], int] = dict.fromkeys(self._groups, 0)
        self._unserved = {key: len(indices) for key, indices in self._groups.items()}
        self._served: set[int] = set()

    def __len__(self) -> int:
        return len(self._all)

    @classmethod
    def from_run(cls, path: Path) -> Replay:
        """The records of every committed round of the run directory ``path``.

        Raises:
            GPUSimError: ``path`` is not a directory, has no ``ledger/``, or no
                committed round with recorded requests.
            LedgerError: a committed round's file is damaged (its hash differs).
        """
        path = Path(path)
        if not path.is_dir():
            raise GPUSimError(f"{path}: no such run directory")
        if not (path / LEDGER_DIR).is_dir():
            raise GPUSimError(f"{path}: not a selfinstruct run directory (no {LEDGER_DIR}/)")
        run = RunDirectory(path)
        records: dict[str, list[RecordedRequest]] = {}
        for number in range(1, run.committed_rounds() + 1):
            commit = run.read_commit(number)
            assert commit is not None  # committed_rounds() counted it
            for name in sorted(commit["files"]):
                if (name.startswith("requests-") and name.endswith(".parquet")
                        and ".part-" not in name):  # a stage file, not a chunk of one
                    stage = name[len("requests-"):-len(".parquet")]
                    rows = run.load_stage(number, stage, commit["files"])
                    records.setdefault(stage, []).extend(rows or ())
        if not any(records.values()):
            raise GPUSimError(f"{path}: holds no committed round with recorded requests")
        return cls(records)

    def _group(self, prompt: str) -> tuple[str, str]:
        """The group whose head shares the longest prefix with ``prompt``'s (the
        largest group when none shares a character)."""
        head = prompt[:HEAD_CHARS]
        key = self._by_head.get(head)
        if key is None:
            best, best_len = self._largest, 0
            for candidate in self._groups:
                n = _common_prefix(head, candidate[1])
                if n > best_len:
                    best, best_len = candidate, n
            key = self._by_head[head] = best
        return key

    def _serve(self, index: int) -> None:
        if index not in self._served:
            self._served.add(index)
            self._unserved[self._all[index][0]] -= 1

    def answer(self, prompt: str, max_tokens: int) -> Reply:
        """The reply to ``prompt`` with at most ``max_tokens`` completion tokens
        (deterministic given the order of the calls)."""
        index = self._exact.get(prompt)
        if index is not None:
            how = "exact"
        else:
            key = self._group(prompt)
            indices = self._groups[key]
            pick = self._next[key] % len(indices)
            if self._unserved[key]:
                how = "cycled"
                while indices[pick] in self._served:
                    pick = (pick + 1) % len(indices)
            else:
                how = "reused"
            self._next[key] = pick + 1
            index = indices[pick]
        self._serve(index)
        (stage, _), record = self._all[index]
        prompt_tokens = (record.prompt_tokens if how == "exact" and record.prompt_tokens > 0
                         else max(1, round(len(prompt) / self.chars_per_token)))
        text, tokens, reason = record.text, max(0, record.output_tokens), record.finish_reason
        limit = max(1, int(max_tokens))
        if tokens > limit:
            text = text[:len(text) * limit // tokens]
            tokens, reason = limit, "length"
        return Reply(text, prompt_tokens, tokens, reason, stage, how)


class PrefixCache:
    """Which prompt prefixes were prefilled already, in blocks of :data:`BLOCK_CHARS`."""

    def __init__(self) -> None:
        self._blocks: set[bytes] = set()

    @staticmethod
    def _chain(prompt: str) -> list[bytes]:
        hashes, h = [], b""
        for start in range(0, len(prompt) - BLOCK_CHARS + 1, BLOCK_CHARS):
            h = hashlib.blake2b(h + prompt[start:start + BLOCK_CHARS].encode(),
                                digest_size=16).digest()
            hashes.append(h)
        return hashes

    def cached_share(self, prompt: str) -> float:
        """The share (0-1) of ``prompt``'s characters in leading blocks already cached."""
        if not prompt:
            return 0.0
        cached = 0
        for h in self._chain(prompt):
            if h not in self._blocks:
                break
            cached += 1
        return cached * BLOCK_CHARS / len(prompt)

    def add(self, prompt: str) -> None:
        """Remember every full block of ``prompt`` as prefilled."""
        self._blocks.update(self._chain(prompt))

    def clear(self) -> None:
        self._blocks.clear()


@dataclass
class SimStats:
    """The simulator's counters since the last reset; times in simulated seconds.

    Attributes:
        elapsed_s: simulated time since the reset.
        window_s: from the first request's arrival to the last answer's completion.
        busy_s: time with at least one sequence running (sum of step times).
        steps: decode steps.
        running_step_sum: sum over steps of the sequences running (for the per-step mean).
        running_time_sum: sum over steps of running x step time (for the time mean).
        output_tokens: tokens generated.
        prompt_tokens: prompt tokens admitted; ``prefilled_tokens`` of them computed,
            the rest found in the prefix cache.
        requests: answered; ``by_stage``: stage -> requests; ``by_how``: exact /
            cycled / reused -> requests; ``aborted``: clients that went away.
        max_running, max_waiting: the most running and queued at once.
        lag_s: wall seconds the simulation fell behind its own clock (CPU too slow
            for the time scale); large values mean the client saw a slower GPU.
    """

    max_num_seqs: int
    time_scale: float
    elapsed_s: float = 0.0
    window_s: float = 0.0
    busy_s: float = 0.0
    steps: int = 0
    running_step_sum: int = 0
    running_time_sum: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    prefilled_tokens: int = 0
    requests: int = 0
    aborted: int = 0
    max_running: int = 0
    max_waiting: int = 0
    lag_s: float = 0.0
    by_stage: dict[str, int] = field(default_factory=dict)
    by_how: dict[str, int] = field(default_factory=dict)

    @property
    def busy_share(self) -> float:
        """Busy time over the window (0 before any request)."""
        return self.busy_s / self.window_s if self.window_s > 0 else 0.0

    @property
    def mean_running(self) -> float:
        """Sequences running, averaged over busy time."""
        return self.running_time_sum / self.busy_s if self.busy_s > 0 else 0.0

    @property
    def occupancy(self) -> float:
        """``mean_running`` over ``max_num_seqs``."""
        return self.mean_running / self.max_num_seqs

    @property
    def output_tokens_per_second(self) -> float:
        """Output tokens per simulated second of the window."""
        return self.output_tokens / self.window_s if self.window_s > 0 else 0.0

    def to_json_dict(self) -> dict[str, Any]:
        """The counters and the derived figures, JSON-ready."""
        data = dict(vars(self))
        data.update(busy_share=self.busy_share, mean_running=self.mean_running,
                    occupancy=self.occupancy,
                    output_tokens_per_second=self.output_tokens_per_second,
                    mean_running_per_step=(self.running_step_sum / self.steps
                                           if self.steps else 0.0))
        return data


@dataclass
class _Sequence:
    prompt: str
    prompt_tokens: int
    remaining: int
    done: asyncio.Future[float]
    aborted: bool = False


class Batcher:
    """Continuous batching on the running event loop (see the module docstring).

    Args:
        model: the step times.
        max_num_seqs: sequences running at once at most.
        max_num_batched_tokens: tokens (prefill plus one per running sequence) one
            step takes in at most; one sequence is admitted whatever its prompt.
        time_scale: simulated seconds per wall second (> 0).
        idle_scale: simulated seconds per wall second while nothing runs.
        prefix_caching: charge no prefill for cached prompt blocks.
    """

    def __init__(self, model: StepModel = H100_LLAMA_8B, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192, time_scale: float = 1.0,
                 idle_scale: float = 1.0, prefix_caching: bool = True):
        if time_scale <= 0 or idle_scale < 0 or max_num_seqs < 1:
            raise GPUSimError("time_scale must be > 0, idle_scale >= 0, max_num_seqs >= 1")
        self.model = model
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.time_scale = time_scale
        self.idle_scale = idle_scale
        self.prefix_caching = prefix_caching
        self.cache = PrefixCache()
        self.waiting: deque[_Sequence] = deque()
        self.running: list[_Sequence] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.clock = 0.0  # simulated seconds since the batcher was made; never reset
        self._idle_since: float | None = time.monotonic()
        self.reset()

    # -- the clock ---------------------------------------------------------------

    def reset(self) -> None:
        """Start a new period: zero the counters (times count from now) and empty the
        prefix cache. Sequences in flight keep running and count towards the new period."""
        self.stats = SimStats(self.max_num_seqs, self.time_scale)
        self._epoch = self.now()
        self._first_arrival: float | None = None
        self._last_finish = self._epoch
        self.cache.clear()

    def now(self) -> float:
        """The simulated clock, counting an idle period still going on."""
        if self._idle_since is None:
            return self.clock
        return self.clock + (time.monotonic() - self._idle_since) * self.idle_scale

    def snapshot(self) -> SimStats:
        """A copy of the counters with ``elapsed_s`` and ``window_s`` filled in."""
        stats = SimStats(**{**vars(self.stats), "by_stage": dict(self.stats.by_stage),
                            "by_how": dict(self.stats.by_how)})
        stats.elapsed_s = self.now() - self._epoch
        if self._first_arrival is not None:
            stats.window_s = max(0.0, self._last_finish - self._first_arrival)
        return stats

    # -- sequences ---------------------------------------------------------------

    async def run(self, prompt: str, prompt_tokens: int, output_tokens: int) -> float:
        """Queue one sequence and wait until it has generated ``output_tokens`` tokens
        (at least one step).

        Returns:
            The simulated clock (s) at the end of its last step.

        Cancelled, it is dropped (counted as aborted).
        """
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.get_loop() is not loop:  # the first, or a new loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._loop())
        seq = _Sequence(prompt, max(0, prompt_tokens), max(1, output_tokens),
                        loop.create_future())
        if self._first_arrival is None:
            self._first_arrival = self.now()
        self.waiting.append(seq)
        self.stats.max_waiting = max(self.stats.max_waiting, len(self.waiting))
        assert self._wake is not None
        self._wake.set()
        try:
            return await asyncio.shield(seq.done)
        except asyncio.CancelledError:
            seq.aborted = True
            self.stats.aborted += 1
            raise

    def _admit(self) -> int:
        """Move waiting sequences into the batch; returns the prompt tokens to prefill."""
        prefill = 0
        budget = self.max_num_batched_tokens - len(self.running)
        admitted = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            if admitted and prefill >= budget:
                break
            seq = self.waiting.popleft()
            if seq.aborted:
                continue
            share = self.cache.cached_share(seq.prompt) if self.prefix_caching else 0.0
            computed = max(1, math.ceil(seq.prompt_tokens * (1.0 - share))) \
                if seq.prompt_tokens else 0
            prefill += computed
            self.stats.prompt_tokens += seq.prompt_tokens
            self.stats.prefilled_tokens += computed
            self.running.append(seq)
            admitted += 1
        if self.prefix_caching:
            for seq in self.running[len(self.running) - admitted:]:
                self.cache.add(seq.prompt)
        return prefill

    async def _loop(self) -> None:
        assert self._wake is not None
        anchor_wall, anchor_clock = time.monotonic(), self.clock
        while True:
            self.running = [s for s in self.running if not s.aborted]
            if not self.running and not any(not s.aborted for s in self.waiting):
                self.waiting.clear()
                if self._idle_since is None:  # a busy period ends
                    behind = time.monotonic() - (anchor_wall + (self.clock - anchor_clock)
                                                 / self.time_scale)
                    self.stats.lag_s += max(0.0, behind)
                    self._idle_since = time.monotonic()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._idle_since is not None:  # a busy period starts
                self.clock = self.now()
                self._idle_since = None
                anchor_wall, anchor_clock = time.monotonic(), self.clock
            prefill = self._admit()
            n = len(self.running)
            if n == 0:
                continue
            step = self.model.step_seconds(n, prefill)
            self.clock += step
            stats = self.stats
            stats.busy_s += step
            stats.steps += 1
            stats.running_step_sum += n
            stats.running_time_sum += n * step
            stats.output_tokens += n
            stats.max_running = max(stats.max_running, n)
            target = anchor_wall + (self.clock - anchor_clock) / self.time_scale
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            still = []
            for seq in self.running:
                seq.remaining -= 1
                if seq.remaining > 0:
                    still.append(seq)
                elif not seq.done.done():
                    seq.done.set_result(self.clock)
            if len(still) < len(self.running):
                self._last_finish = self.clock
            self.running = still


class GPUSim:
    """The simulator as an aiohttp server on 127.0.0.1, served from its own thread.

    Args:
        replay: where answers come from (:meth:`Replay.from_run` for a run directory).
        model_name: the served model name.
        port: the port; 0 = a free one.
        **batcher: passed to :class:`Batcher` (``model``, ``max_num_seqs``,
            ``max_num_batched_tokens``, ``time_scale``, ``idle_scale``, ``prefix_caching``).

    Use as a context manager, or call :meth:`start` and :meth:`close`.

    Attributes:
        url: the base URL, ``http://127.0.0.1:<port>/v1`` (after :meth:`start`).
        batcher: the batching model (its counters: :meth:`stats`).
    """

    def __init__(self, replay: Replay, model_name: str = SIM_MODEL, port: int = 0,
                 **batcher: Any):
        self.replay = replay
        self.model_name = model_name
        self.port = port
        self.batcher = Batcher(**batcher)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="gpu-sim")
        self._runner: Any = None

    # -- lifecycle -----------------------------------------------------------------

    def _submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def start(self) -> GPUSim:
        """Start serving; returns self."""
        from aiohttp import web

        async def start() -> None:
            self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None,
                                         shutdown_timeout=0.1)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await site.start()
            self.port = self._runner.addresses[0][1]

        self._thread.start()
        self._submit(start())
        return self

    def close(self) -> None:
        """Stop serving and end the thread (idempotent)."""
        if self.loop.is_closed():
            return

        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            self._submit(stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> GPUSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> SimStats:
        """The counters now (a copy)."""
        async def get() -> SimStats:
            return self.batcher.snapshot()
        result: SimStats = self._submit(get())
        return result

    def reset(self) -> None:
        """Start a new period: the counters (see :meth:`Batcher.reset`) and the replay
        (see :meth:`Replay.reset`) start afresh."""
        async def do() -> None:
            self.batcher.reset()
            self.replay.reset()
        self._submit(do())

    # -- HTTP ------------------------------------------------------------------------

    def app(self) -> Any:
        """The aiohttp application."""
        from aiohttp import web

        app = web.Application(client_max_size=16 * 1024**2)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/version", self._version)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/sim/stats", self._stats)
        app.router.add_post("/sim/reset", self._reset)
        return app

    async def _models(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "owned_by": "gpu-sim"}]})

    async def _version(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"version": "gpu-sim"})

    async def _stats(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self.batcher.snapshot().to_json_dict())

    async def _reset(self, request: Any) -> Any:
        from aiohttp import web

        self.batcher.reset()
        self.replay.reset()
        return web.json_response({"reset": True})

    @staticmethod
    def _error(status: int, message: str) -> Any:
        from aiohttp import web

        return web.json_response({"error": {"message": message, "code": status}},
                                 status=status)

    async def _complete(self, request: Any) -> Any:
        from aiohttp import web

        chat = request.path.endswith("/chat/completions")
        try:
            body = await request.json()
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            max_tokens = int(body.get("max_tokens") or 16)
        except (ValueError, KeyError, IndexError, TypeError):
            return self._error(400, "malformed request: needs a JSON body with "
                                    + ("messages" if chat else "prompt"))
        if not isinstance(prompt, str):
            return self._error(400, "the prompt must be one string")
        if body.get("model") not in (None, self.model_name):
            return self._error(404, f"The model `{body.get('model')}` does not exist.")
        reply = self.replay.answer(prompt, max_tokens)
        await self.batcher.run(prompt, reply.prompt_tokens, reply.output_tokens)
        stats = self.batcher.stats  # a reset while it ran counts it in the new period
        stats.requests += 1
        stats.by_stage[reply.stage] = stats.by_stage.get(reply.stage, 0) + 1
        stats.by_how[reply.how] = stats.by_how.get(reply.how, 0) + 1
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": reply.text},
             "finish_reason": reply.finish_reason} if chat else
            {"index": 0, "text": reply.text, "finish_reason": reply.finish_reason})
        return web.json_response({
            "id": f"sim-{stats.requests}", "object": "chat.completion" if chat
            else "text_completion", "created": int(time.time()), "model": self.model_name,
            "choices": [choice],
            "usage": {"prompt_tokens": reply.prompt_tokens,
                      "completion_tokens": reply.output_tokens,
                      "total_tokens": reply.prompt_tokens + reply.output_tokens}})


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a simulator until Ctrl-C (``python -m selfinstruct.testing.gpu_sim``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", type=Path, required=True, help="a run directory")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=SIM_MODEL)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--time-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    try:
        replay = Replay.from_run(args.ledger)
    except (GPUSimError, LedgerError) as exc:
        parser.exit(2, f"error: {exc}\n")
    with GPUSim(replay, args.model_name, args.port, max_num_seqs=args.max_num_seqs,
                time_scale=args.time_scale) as sim:
        print(f"simulated GPU serving {args.model_name} at {sim.url} "
              f"({len(replay)} recorded completions)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print(json.dumps(sim.stats().to_json_dict(), indent=1))


if __name__ == "__main__":
    main()
