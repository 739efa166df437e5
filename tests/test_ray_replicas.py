"""The Ray backend's driver side (selfinstruct.engines.ray_replicas) without vLLM.

Fast: splitting a batch over replicas, placement, the one-line failure reasons, the
progress tally, and the whole engine over an in-process stand-in for ``ray``
(:class:`FakeRay`: actors called at once): reassembly, ``on_done``, failures mapped
to one line naming the replica, ``close``. Marked ``slow`` (a local Ray instance,
~10 s to start on 2 cores): real Ray actors whose engines are scripted stand-ins
(:mod:`selfinstruct.testing.replicas`): reassembly in request order, ``on_done``
and ``progress``, replicas started once for a whole two-round run, a replica that
fails to start, dies or rejects a request, and ``close``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
import types
from typing import Any

import pytest

from selfinstruct.config import EngineConfig
from selfinstruct.engines.base import (Completion, EngineRequestError, EngineUnavailable,
                                       Request, Sampling)
from selfinstruct.engines.ray_replicas import (Chunk, RayEngine, RayUnavailable, _Tally,
                                               estimated_work, failure_reason, replica_layout,
                                               split_batch)
from selfinstruct.testing.replicas import DIE, REJECT, ScriptedReplicas


def req(prompt: str = "p", max_tokens: int = 16, seed: int = 0, **kwargs) -> Request:
    return Request(prompt, Sampling(0.7, 0.9, max_tokens, **kwargs), seed=seed)


def covered(chunks: list[Chunk]) -> list[int]:
    return sorted(i for c in chunks for i in c.indices)


# -- splitting -------------------------------------------------------------------------

def test_equal_requests_go_round_robin_in_calls_of_at_most_the_batch_size():
    batch = [req(f"p{i}") for i in range(11)]
    chunks = split_batch(batch, 3, 2)
    assert covered(chunks) == list(range(11))
    assert all(0 < len(c.indices) <= 2 and list(c.indices) == sorted(c.indices)
               for c in chunks)
    shares = {r: [i for c in chunks if c.replica == r for i in c.indices] for r in range(3)}
    assert shares == {0: [0, 3, 6, 9], 1: [1, 4, 7, 10], 2: [2, 5, 8]}
    assert [c.replica for c in chunks] == [0, 0, 1, 1, 2, 2]


def test_the_split_balances_estimated_work_and_is_the_same_every_time():
    batch = [req("x" * 32 * n, max_tokens=m, seed=n)
             for n, m in enumerate([400, 10, 10, 10, 10, 200, 200, 10, 10, 10])]
    chunks = split_batch(batch, 2, 100)
    assert chunks == split_batch(batch, 2, 100)
    assert covered(chunks) == list(range(10))
    loads = [sum(estimated_work(batch[i]) for c in chunks if c.replica == r
                 for i in c.indices) for r in range(2)]
    heaviest = max(estimated_work(r) for r in batch)
    assert abs(loads[0] - loads[1]) <= heaviest
    # by count the 400-token request would share a replica with one 200-token one
    heavy = next(c for c in chunks if 0 in c.indices)
    assert 5 not in heavy.indices and 6 not in heavy.indices


def test_more_replicas_than_requests_leaves_some_idle_and_empty_batches_have_no_calls():
    assert split_batch([req(), req()], 4, 8) == [Chunk(0, (0,)), Chunk(1, (1,))]
    assert split_batch([], 4, 8) == []
    with pytest.raises(ValueError, match="replicas >= 1"):
        split_batch([req()], 0, 8)


def test_estimated_work_counts_output_budget_and_a_share_of_the_prompt():
    assert estimated_work(req("", 100)) == 100
    assert estimated_work(req("y" * 320, 100)) == 110
    assert estimated_work(req("", 200)) > estimated_work(req("z" * 3000, 100))


# -- placement -------------------------------------------------------------------------

def test_gpu_clusters_get_one_replica_per_tensor_parallel_group():
    layout = replica_layout(EngineConfig(backend="ray", tensor_parallel_size=2),
                            {"GPU": 8.0, "CPU": 64.0})
    assert (layout.replicas, layout.cpu, layout.resources) == (4, False, {"GPU": 2, "CPU": 1})
    one = replica_layout(EngineConfig(backend="ray", ray_replicas=1), {"GPU": 8.0, "CPU": 8.0})
    assert one.replicas == 1
    with pytest.raises(RayUnavailable, match=r"3 Ray replica\(s\) with tensor_parallel_size 4 "
                                             r"need 12 GPUs; the Ray cluster has 8"):
        replica_layout(EngineConfig(backend="ray", ray_replicas=3, tensor_parallel_size=4),
                       {"GPU": 8.0, "CPU": 64.0})


def test_cpu_clusters_share_their_cpus_among_the_replicas():
    layout = replica_layout(EngineConfig(backend="ray"), {"CPU": 16.0})
    assert (layout.replicas, layout.cpu, layout.resources) == (1, True, {"CPU": 16})
    assert replica_layout(EngineConfig(backend="ray", ray_replicas=3),
                          {"CPU": 16.0}).resources == {"CPU": 5}
    with pytest.raises(RayUnavailable, match=r"3 CPU Ray replica\(s\) need a CPU each; the "
                                             r"Ray cluster has 2 CPUs and no GPU"):
        replica_layout(EngineConfig(backend="ray", ray_replicas=3), {"CPU": 2.0})


# -- failure reasons -----------------------------------------------------------------------

class _TaskError(Exception):
    """Shaped like Ray's RayTaskError: the replica's own exception as ``cause``."""

    def __init__(self, text: str, cause: BaseException):
        super().__init__(text)
        self.cause = cause


class _ActorDied(Exception):
    def __init__(self, text: str, init_failed: bool = False):
        super().__init__(text)
        self.actor_init_failed = init_failed


def test_failure_reasons_are_one_line_from_what_the_replica_raised():
    task = _TaskError("\x1b[36mray::Replica.generate()\x1b[39m (pid=1)\n  File ...",
                      ValueError("bad sampling\nmore detail"))
    assert failure_reason(task) == "ValueError: bad sampling"
    init = _ActorDied("The actor died because of an error raised in its creation task, "
                      "\x1b[36mray::Replica.__init__()\x1b[39m (pid=6072, ip=10.0.0.2)\n"
                      "  File \"x.py\", line 8, in __init__\n    raise OSError(...)\n"
                      "OSError: model.safetensors: no such file\nsecond line", True)
    assert failure_reason(init) == "OSError: model.safetensors: no such file"
    died = _ActorDied("The actor died unexpectedly before finishing this task.\n"
                      "\tclass_name: Replica\n\tpid: 6536\nThe actor is dead because its "
                      "worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
                      "detail: Worker unexpectedly exits with a connection error code 2. End "
                      "of file. Some common causes include: (1) the OOM killer")
    assert failure_reason(died) == ("its process died (SYSTEM_ERROR: Worker unexpectedly exits "
                                    "with a connection error code 2.)")
    assert failure_reason(RuntimeError("x" * 500 + "\nmore")) == "x" * 300
    assert failure_reason(RuntimeError()) == "RuntimeError"


# -- progress ---------------------------------------------------------------------------

def test_progress_never_runs_ahead_of_a_share_and_ends_at_it():
    tally = _Tally(shares=[4, 3], base=[10, None], returned=[0, 0], told=[0, 0])
    assert tally.ticks(0, 12) == 2            # two finished since the batch began
    assert tally.ticks(0, 11) == 0            # a stale count takes nothing back
    assert tally.ticks(1, 99) == 0            # no base: only returned calls count
    tally.returned[1] = 3
    assert tally.ticks(1) == 3
    assert tally.ticks(0, 50) == 2            # capped at the share
    assert tally.told == [4, 3]


# -- the engine over a stand-in for ray (fast) --------------------------------------------

class FakeActorDied(Exception):
    """Stands for ray.exceptions.RayActorError (the stand-in module's)."""


class FakeTaskError(Exception):
    """Stands for RayTaskError: what the actor's method raised, as ``cause``."""

    def __init__(self, cause: BaseException):
        super().__init__(f"ray::Replica.method() (pid=1)\n{type(cause).__name__}: {cause}")
        self.cause = cause


class FakeRef:
    def __init__(self, call):
        try:
            self.value, self.error = call(), None
        except FakeActorDied as exc:
            self.value, self.error = None, exc
        except Exception as exc:
            self.value, self.error = None, FakeTaskError(exc)


class FakeActor:
    """An actor whose methods run at once, in this process; ``dead`` makes every call fail
    as a dead actor's do."""

    def __init__(self, ray: FakeRay, body: Any):
        self.ray, self.body, self.dead = ray, body, False

    def __getattr__(self, name: str) -> Any:
        actor = self

        class Method:
            def options(self, **kwargs):
                actor.ray.options.append(kwargs)
                return self

            def remote(self, *args):
                def call():
                    if actor.dead:
                        raise FakeActorDied("The actor died unexpectedly before finishing this "
                                            "task.\nWorker exit type: SYSTEM_ERROR Worker exit "
                                            "detail: killed by the test. More text.")
                    return getattr(actor.body, name)(*args)
                return FakeRef(call)

        return Method()


class NotStarted:
    """The body of an actor whose constructor raised: its calls raise that."""

    def __init__(self, error: Exception):
        self.error = error

    def info(self) -> None:
        raise self.error


class FakeRay(types.ModuleType):
    """The part of ``ray`` that RayEngine uses, with actors that run in this process."""

    __version__ = "fake"

    def __init__(self, cpus: int = 6):
        super().__init__("ray")
        self.cpus, self.actors, self.killed, self.options = cpus, [], [], []
        self.exceptions = types.ModuleType("ray.exceptions")
        self.exceptions.RayActorError = FakeActorDied

    def is_initialized(self) -> bool:
        return True

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": float(self.cpus)}

    def remote(self, **decorator):
        ray = self

        def wrap(cls):
            class ActorClass:
                def options(self, **kwargs):
                    ray.options.append({**decorator, **kwargs})
                    return self

                def remote(self, *args):
                    try:
                        body = cls(*args)
                    except Exception as exc:  # Ray reports it on the actor's first call
                        body = NotStarted(exc)
                    actor = FakeActor(ray, body)
                    ray.actors.append(actor)
                    return actor
            return ActorClass()
        return wrap

    def wait(self, refs, num_returns=1, timeout=None):
        return list(refs), []

    def get(self, ref, timeout=None):
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, actor):
        self.killed.append(actor)


@pytest.fixture
def fake_ray(monkeypatch) -> FakeRay:
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.exceptions", ray.exceptions)
    return ray


def test_the_engine_reassembles_calls_in_request_order(fake_ray):
    ray = engine(replicas=3, batch_size=2)
    assert ray.replicas_started == 3 and ray.version == "scripted"
    assert {"concurrency_groups": {"poll": 1}, "num_cpus": 2, "num_gpus": 0, "max_restarts": 0,
            "scheduling_strategy": "SPREAD"}.items() <= fake_ray.options[0].items()
    batch = [req(f"p{i}", 10 + i % 4, seed=i) for i in range(9)]
    done: list[int] = []
    ticks: list[int] = []
    out = ray.generate(batch, progress=ticks.append, on_done=lambda i, c: done.append(i))
    assert [echoed(c)["prompt"] for c in out] == [f"p{i}" for i in range(9)]
    assert sorted(done) == list(range(9)) and sum(ticks) == 9
    assert ray.calls == len(split_batch(batch, 3, 2))
    served = [h["requests"] for h in ray.describe()["replica_hosts"]]
    assert served == [sum(len(c.indices) for c in split_batch(batch, 3, 2) if c.replica == k)
                      for k in range(3)]
    ray.close()
    assert fake_ray.killed == fake_ray.actors
    assert all(a.body._engine is None for a in fake_ray.actors)  # engines shut down first


def test_a_dead_replica_and_a_failing_call_are_one_line_naming_the_replica(fake_ray):
    ray = engine(replicas=3, batch_size=2)
    fake_ray.actors[1].dead = True
    host = ray.describe()["replica_hosts"][1]
    with pytest.raises(EngineUnavailable) as caught:
        ray.generate([req(f"p{i}") for i in range(6)])
    assert str(caught.value) == (f"Ray replica 2 of 3 ({host['host']}, pid {host['pid']}) "
                                 "died: its process died (SYSTEM_ERROR: killed by the test.)")
    fake_ray.actors[1].dead = False
    with pytest.raises(EngineRequestError, match=r"^Ray replica 1 of 3 .*: the scripted "
                                                 r"replica rejects this request$"):
        ray.generate([req(REJECT)])


def test_a_replica_that_fails_to_start_ends_the_start(fake_ray):
    with pytest.raises(RayUnavailable, match=r"^Ray replica 1 of 2 could not start: "
                                             r"RuntimeError: out of memory$"):
        engine(fail_start="out of memory")
    assert fake_ray.killed == fake_ray.actors and len(fake_ray.actors) == 2


# -- real Ray, scripted replicas (slow) ------------------------------------------------------

RAY_MISSING = importlib.util.find_spec("ray") is None


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (4 logical CPUs) for the module's engines."""
    if RAY_MISSING:
        pytest.skip("ray is not installed (pip install 'selfinstruct[ray]')")
    import logging

    import ray

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def engine(replicas: int = 2, batch_size: int = 3, **factory) -> RayEngine:
    return RayEngine("model", "scripted", EngineConfig(backend="ray", ray_replicas=replicas,
                                                       ray_batch_size=batch_size),
                     engine_factory=ScriptedReplicas(**factory))


def echoed(completion: Completion) -> dict:
    return json.loads(completion.text)


@pytest.mark.slow
def test_batches_come_back_in_order_from_replicas_started_once(local_ray):
    ray = engine()
    try:
        assert ray.replicas_started == 2 and ray.cpu_replicas
        schema = '{"type": "object"}'
        batch = [req(f"p{i}", 8 + i % 3, seed=i, json_schema=schema if i == 4 else None)
                 for i in range(10)]
        done: list[tuple[int, str]] = []
        ticks: list[int] = []
        first = ray.generate(batch, progress=ticks.append,
                             on_done=lambda i, c: done.append(
                                 (i, threading.current_thread().name)))
        assert [echoed(c)["prompt"] for c in first] == [f"p{i}" for i in range(10)]
        assert [echoed(c)["seed"] for c in first] == list(range(10))
        assert [echoed(c)["schema"] for c in first] == [i == 4 for i in range(10)]
        assert sorted(i for i, _ in done) == list(range(10))
        assert {name for _, name in done} == {threading.current_thread().name}
        assert sum(ticks) == 10
        pids = {echoed(c)["pid"] for c in first}
        assert len(pids) == 2
        # the same batch again: the same replicas, each request on the same one
        again = ray.generate(batch)
        assert [echoed(c)["pid"] for c in again] == [echoed(c)["pid"] for c in first]
        info = ray.describe()
        assert info["replicas"] == info["replicas_started"] == 2
        assert info["calls"] == 2 * len(split_batch(batch, 2, 3))
        assert {h["pid"] for h in info["replica_hosts"]} == pids
        assert sum(h["requests"] for h in info["replica_hosts"]) == 20
        assert info["engine"]["built"] == 1 and info["ray_version"]
        assert ray.generate([]) == []
    finally:
        ray.close()
    with pytest.raises(EngineUnavailable, match="shut down"):
        ray.generate([req()])


@pytest.mark.slow
def test_progress_ticks_while_a_long_call_runs(local_ray):
    ray = engine(replicas=1, batch_size=100, seconds_per_request=0.5)
    try:
        seen: list[tuple[float, int]] = []
        done: list[float] = []
        ray.generate([req(f"q{i}") for i in range(8)],
                     progress=lambda n: seen.append((time.monotonic(), n)),
                     on_done=lambda i, c: done.append(time.monotonic()))
        assert sum(n for _, n in seen) == 8 and len(done) == 8
        # the replica's count was asked while its one call ran
        assert seen[0][0] < min(done) and seen[0][1] < 8
    finally:
        ray.close()


@pytest.mark.slow
def test_a_replica_that_dies_is_named_in_one_line(local_ray):
    ray = engine()
    try:
        batch = [req(f"r{i}") for i in range(5)] + [req(DIE)]
        dying = next(c.replica for c in split_batch(batch, 2, 3) if 5 in c.indices)
        with pytest.raises(EngineUnavailable) as caught:
            ray.generate(batch)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"Ray replica {dying + 1} of 2 (")
        assert " died: its process died" in message
    finally:
        ray.close()


@pytest.mark.slow
def test_an_engine_error_on_a_replica_keeps_its_kind(local_ray):
    ray = engine(replicas=1)
    try:
        with pytest.raises(EngineRequestError,
                           match=r"^Ray replica 1 of 1 \(.*pid \d+\): the scripted replica "
                                 r"rejects this request$"):
            ray.generate([req("fine"), req(REJECT)])
        assert echoed(ray.generate([req("still up")])[0])["prompt"] == "still up"
    finally:
        ray.close()


@pytest.mark.slow
def test_a_replica_that_cannot_start_fails_the_start_in_one_line(local_ray):
    with pytest.raises(RayUnavailable, match=r"^Ray replica \d of 2 could not start: "
                                             r"RuntimeError: no weights at /nowhere$"):
        engine(fail_start="no weights at /nowhere")
    with pytest.raises(RayUnavailable, match="need a CPU each"):
        engine(replicas=9)
    # nothing is left holding the cluster's CPUs
    deadline = time.monotonic() + 20
    while local_ray.available_resources().get("CPU") != 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert local_ray.available_resources().get("CPU") == 4


@pytest.mark.slow
def test_close_ends_the_replicas(local_ray):
    import psutil

    ray = engine()
    pids = [h["pid"] for h in ray.describe()["replica_hosts"]]
    ray.close()
    ray.close()
    deadline = time.monotonic() + 20
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
              for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in pids)


@pytest.mark.slow
def test_a_two_round_run_uses_the_same_replicas_throughout(local_ray, tmp_path):
    """`generate --backend ray` as the CLI runs it, with scripted replica engines."""
    import pyarrow.parquet as pq

    from selfinstruct import run as run_module
    from selfinstruct.cli import GENERATE_OPTIONS
    from selfinstruct.seeds import default_seeds_dir

    seeds = tmp_path / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    model = tmp_path / "model"  # resolves as a local model directory; never loaded
    model.mkdir()
    (model / "config.json").write_text("{}")
    options = dict.fromkeys(GENERATE_OPTIONS)
    options.update(backend="ray", ray_replicas=2, seeds=seeds, model=str(model),
                   output=tmp_path / "run", num_instructions=1000, max_rounds=2, seed=3,
                   prompts_per_round=4)
    job = run_module.GenerateJob.prepare(None, options, GENERATE_OPTIONS)
    started: list[RayEngine] = []

    def build(config, prepared):
        started.append(RayEngine(prepared.model.path, prepared.model.name, config.engine,
                                 config.seed, engine_factory=ScriptedReplicas()))
        return started[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "build_engine", build)
        job.execute()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["stats"]["rounds"] == 2
    backend = manifest["backend"]
    assert len(started) == 1
    assert backend["backend"] == "ray" and backend["replicas"] == backend["replicas_started"] == 2
    # three stages a round, each split over both replicas
    assert backend["calls"] >= 2 * 3
    served = sum(h["requests"] for h in backend["replica_hosts"])
    assert served == manifest["stats"]["engine"]["requests"] > 8
    assert all(h["requests"] > 0 for h in backend["replica_hosts"])
    rows = [r for f in manifest["files"]
            for r in pq.read_table(tmp_path / "run" / f["path"]).to_pylist()]
    assert rows and {r["round"] for r in rows} == {1, 2}
