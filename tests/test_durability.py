"""Durable runs: resume by replay, exactly-once output, damaged files, lock, refilter.

The engine here is the scripted one of test_pipeline.py: deterministic per
request, so a resumed run must equal an uninterrupted one byte for byte (the
property a batch-invariant engine gives for real). Crashes are simulated by
an exception at each engine call or at the ledger's named crash points; the
real kill -9 tests with the vLLM engine are in test_resume_e2e.py.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from selfinstruct.storage import ledger as ledger_module
from selfinstruct import pipeline as pipeline_module
from selfinstruct.engines import recorded as recorded_module
from selfinstruct.engines.recorded import LazyEngine, RecordedEngine
from selfinstruct.storage.ledger import LedgerError, RunDirectory, RunLocked

from .test_pipeline import ScriptedEngine, make_loop

SETTINGS = {"n": 14, "generation": {"prompts_per_round": 3}}


class Crash(Exception):
    """Stands for the process dying."""


class CrashingEngine(ScriptedEngine):
    """Dies on its k-th call, before returning anything (kill -9 mid-batch)."""

    def __init__(self, die_on_call: int):
        super().__init__()
        self.die_on_call = die_on_call

    def generate(self, requests, progress=None, on_done=None):
        if len(self.batches) + 1 == self.die_on_call:
            self.batches.append(list(requests))
            raise Crash()
        return super().generate(requests, progress, on_done)


def finish(path, engine=None):
    loop, engine, writer = make_loop(path, engine=engine, **SETTINGS)
    stats = loop.run()
    return stats, engine, writer.close()


def shard_bytes(path, shards):
    return [(path / s.path).read_bytes() for s in shards]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference")
    stats, engine, shards = finish(path)
    assert stats.rounds >= 4, "the reference run must span several rounds"
    return path, stats, engine, shards


def resume_after_dying_call(path, reference, die_on_call, run=None):
    """Die in engine call ``die_on_call``, resume, and check the resumed run equals the
    reference byte for byte and asked only the call that died and those after it."""
    run = run or finish
    ref_path, ref_stats, ref_engine, ref_shards = reference
    with pytest.raises(Crash):
        run(path, CrashingEngine(die_on_call))
    committed = RunDirectory(path).committed_rounds()
    stats, engine, shards = run(path)
    assert shard_bytes(path, shards) == shard_bytes(ref_path, ref_shards)
    assert stats.tasks_written == ref_stats.tasks_written
    assert stats.replayed_rounds == committed
    # only the batch that died is asked again: nothing already paid for is requested
    sent = sum(len(b) for b in engine.batches)
    assert sent == sum(len(b) for b in ref_engine.batches[die_on_call - 1:])


def resume_after_crash_at(path, reference, monkeypatch, point, run=None,
                          stages=("instructions", "classification", "instances")):
    """Die at the ledger's crash point ``point``, resume, and check the shards equal the
    reference and every request is recorded exactly once; return the resumed engine."""
    run = run or finish
    ref_path, _, ref_engine, ref_shards = reference

    def die(name):
        if name == point:
            raise Crash()

    for module in (pipeline_module, ledger_module, recorded_module):
        monkeypatch.setattr(module, "crash_point", die)
    with pytest.raises(Crash):
        run(path)
    monkeypatch.undo()
    _, engine, shards = run(path)
    assert shard_bytes(path, shards) == shard_bytes(ref_path, ref_shards)
    total = sum(len(b) for b in ref_engine.batches)
    first = RunDirectory(path)
    rounds = range(1, first.committed_rounds() + 1)
    recorded = sum(len(first.load_stage(r, s, None) or []) for r in rounds
                   for s in stages)
    assert recorded == total  # every request recorded exactly once
    return engine


@pytest.mark.parametrize("die_on_call", [1, 2, 3, 4, 6, 8])
def test_resume_after_a_crash_in_any_stage_equals_an_uninterrupted_run(
        tmp_path, reference, die_on_call):
    resume_after_dying_call(tmp_path, reference, die_on_call)
    assert reference[1].tasks_written == 14


@pytest.mark.parametrize("point", ["round-2:after-classification", "round-2:before-commit",
                                   "round-3:before-manifest"])
def test_crash_between_writes_loses_nothing_and_asks_nothing_twice(
        tmp_path, reference, monkeypatch, point):
    resume_after_crash_at(tmp_path, reference, monkeypatch, point)


def test_completed_run_replays_without_the_engine(tmp_path):
    finish(tmp_path)
    loop, _, _ = make_loop(tmp_path, **SETTINGS)
    loop.engine.live = LazyEngine(None)  # any engine call would fail
    stats = loop.run()
    assert stats.replayed_rounds == stats.rounds and stats.live_requests == 0


def test_damaged_committed_record_is_refused(tmp_path):
    finish(tmp_path)
    rows = RunDirectory(tmp_path).round_dir(1) / "rows.parquet"
    rows.write_bytes(rows.read_bytes()[:-20])  # truncated, as a crash of a careless writer leaves
    with pytest.raises(LedgerError, match="does not match its recorded sha256"):
        finish(tmp_path)


def test_damaged_stage_record_of_an_unfinished_round_is_discarded_and_asked_again(tmp_path):
    with pytest.raises(Crash):
        finish(tmp_path, CrashingEngine(5))  # round 2: instructions recorded, then death
    stage = RunDirectory(tmp_path).round_dir(2) / "requests-instructions.parquet"
    stage.write_bytes(b"PAR1 garbage")
    loop, engine, _ = make_loop(tmp_path, **SETTINGS)
    loop.run()
    assert any("damaged record" in w for w in loop.run_dir.warnings)
    assert len(engine.batches[0]) == 3  # round 2's instruction prompts were sent again


def test_second_process_is_refused_while_the_lock_is_held(tmp_path):
    first = RunDirectory(tmp_path)
    first.lock()
    with pytest.raises(RunLocked, match="another selfinstruct run"):
        RunDirectory(tmp_path).lock()
    first.unlock()
    RunDirectory(tmp_path).lock()


def examples(path):
    return [(r["instruction"], r["input"], r["output"])
            for f in sorted(path.glob("data/*.parquet")) for r in pq.read_table(f).to_pylist()]


def refiltered(source, target, **overrides):
    from selfinstruct.config import Config
    from selfinstruct.pipeline import SelfInstruct
    from selfinstruct.prompts import PromptBuilder
    from selfinstruct.storage.shards import ShardWriter

    from .test_pipeline import SEEDS

    data = {"num_instructions": 14, "seed": 3, "generation": {"prompts_per_round": 3}}
    data.update(overrides)
    config = Config.model_validate(data)
    writer = ShardWriter(target, config.shards.shard_size)
    recorded = RecordedEngine(RunDirectory(target), LazyEngine(None), source=RunDirectory(source))
    loop = SelfInstruct(config, recorded, PromptBuilder(), SEEDS, writer, "scripted")
    loop.run()
    writer.close()
    return loop.stats


def test_refilter_with_original_settings_is_the_original_and_stricter_is_a_subset(
        tmp_path, reference):
    ref_path = reference[0]
    refiltered(ref_path, tmp_path / "same")
    assert examples(tmp_path / "same") == examples(ref_path)
    stats = refiltered(ref_path, tmp_path / "strict", filters={"rouge_threshold": 0.4})
    strict = examples(tmp_path / "strict")
    assert set(strict) < set(examples(ref_path))
    assert stats.rejections["rouge_l"] > reference[1].rejections["rouge_l"]


@pytest.mark.parametrize("point, chunk", [
    ("round-1:after-instances-part-1", 1),
    ("round-1:after-instances-part-3", 1),
    ("round-1:after-classification-part-1", 2),
    ("round-4:after-instances-part-2", 1),
])
def test_crash_after_k_parts_of_a_stage_resumes_with_only_the_unrecorded_requests(
        tmp_path, reference, monkeypatch, point, chunk):
    ref_path, _, ref_engine, ref_shards = reference
    round_number, stage, k = _part_point(point)

    def die(name):
        if name == point:
            raise Crash()  # right after the part file is renamed into place: kill -9

    monkeypatch.setattr(recorded_module, "crash_point", die)
    loop, dying, _ = make_loop(tmp_path, **SETTINGS)
    loop.engine.chunk_completions = chunk
    with pytest.raises(Crash):
        loop.run()
    monkeypatch.undo()
    cut = [r.key for r in dying.batches[-1]]
    index = len(dying.batches) - 1
    assert [r.key for r in ref_engine.batches[index]] == cut and len(cut) > k * chunk
    ledger = RunDirectory(tmp_path)
    assert [r.key for r in ledger.load_stage(round_number, stage, None)] == cut[:k * chunk]

    _stats, engine, shards = finish(tmp_path)
    assert shard_bytes(tmp_path, shards) == shard_bytes(ref_path, ref_shards)
    # the live engine is asked only for the cut stage's unrecorded requests, then the rest
    assert [r.key for r in engine.batches[0]] == cut[k * chunk:]
    assert sum(len(b) for b in engine.batches) == \
        sum(len(b) for b in ref_engine.batches[index:]) - k * chunk
    name = f"requests-{stage}.parquet"
    assert (ledger.round_dir(round_number) / name).read_bytes() == \
        (RunDirectory(ref_path).round_dir(round_number) / name).read_bytes()
    assert not list(tmp_path.glob("ledger/*/*.part-*"))


def _part_point(point: str) -> tuple[int, str, int]:
    """``round-R:after-STAGE-part-K`` -> (R, STAGE, K)."""
    where, _, what = point.partition(":after-")
    stage, _, k = what.rpartition("-part-")
    return int(where.removeprefix("round-")), stage, int(k)
