"""Overlapped rounds (``generation.pipeline_depth`` > 1): full engine calls, the same
decisions in round order, determinism, crash and resume, refilter without an engine.

The engine is the scripted one (deterministic per request, as vLLM is batch-invariant),
so two runs of the same seed and depth must give byte-equal shards, and a resumed run
must equal an uninterrupted one.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from selfinstruct.engines import recorded as recorded_module
from selfinstruct.engines.recorded import LazyEngine, RecordedEngine
from selfinstruct.storage.ledger import RunDirectory

from .test_durability import (Crash, examples, refiltered, resume_after_crash_at,
                              resume_after_dying_call, shard_bytes)
from .test_pipeline import ScriptedEngine, make_loop

DEPTH = 3
SETTINGS = {"n": 14, "generation": {"prompts_per_round": 3, "pipeline_depth": DEPTH}}


def finish(path, engine=None, **settings):
    loop, engine, writer = make_loop(path, engine=engine, **(settings or SETTINGS))
    stats = loop.run()
    return stats, engine, writer.close()


def rows(path):
    return [r for f in sorted(path.glob("data/*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("depth3")
    stats, engine, shards = finish(path)
    assert stats.rounds >= 4, "the reference run must span several rounds"
    return path, stats, engine, shards


def test_each_engine_call_carries_the_next_stage_of_every_round_in_flight(reference):
    _, stats, engine, _ = reference
    stages = [sorted({r.stage for r in batch}) for batch in engine.batches]
    # once the pipeline is full, one call holds all three stages of three rounds
    assert ["classification", "instances", "instructions"] in stages
    for batch in engine.batches:
        keys = [(r.stage, r.key, r.seed) for r in batch]
        assert len(keys) == len(set(keys))
    assert len(engine.batches) < 3 * stats.rounds  # fewer, fuller calls than depth 1
    assert stats.tasks_written == 14


def test_depth_one_sends_one_stage_per_call(tmp_path):
    stats, engine, _ = finish(tmp_path, n=14, generation={"prompts_per_round": 3})
    assert all(len({r.stage for r in batch}) == 1 for batch in engine.batches)
    instruction_calls = [b for b in engine.batches if b[0].stage == "instructions"]
    assert len(instruction_calls) == stats.rounds  # rounds one after another


def test_same_seed_and_depth_give_byte_equal_shards(tmp_path, reference):
    ref_path, ref_stats, _, ref_shards = reference
    stats, _, shards = finish(tmp_path)
    assert shard_bytes(tmp_path, shards) == shard_bytes(ref_path, ref_shards)
    assert stats.rounds == ref_stats.rounds


def test_prompts_show_machine_tasks_of_rounds_committed_when_the_round_started(reference):
    ref_path = reference[0]
    run_dir = RunDirectory(ref_path)
    shown_machine = 0
    for round_number in range(1, run_dir.committed_rounds() + 1):
        for record in run_dir.load_stage(round_number, "instructions", None) or []:
            for task_id in record.prompt_task_ids:
                if task_id.startswith("r") and task_id[1:5].isdigit():
                    shown_machine += 1
                    assert int(task_id[1:5]) <= round_number - DEPTH, (round_number, task_id)
    assert shown_machine > 0  # the check is not vacuous: machine tasks were shown


def test_rounds_after_the_target_are_not_started_in_vain(tmp_path, reference):
    _, stats, _, _ = reference
    strict, _, _ = finish(tmp_path, n=14, generation={"prompts_per_round": 3})
    # each round writes a few tasks; overlapping may add at most depth - 1 rounds
    assert strict.rounds <= stats.rounds <= strict.rounds + DEPTH - 1
    assert stats.rejections["over_target"] <= strict.rejections["over_target"] + 8


@pytest.mark.parametrize("die_on_call", range(1, 10))
def test_crash_in_any_call_resumes_to_the_same_shards_asking_only_what_died(
        tmp_path, reference, die_on_call):
    resume_after_dying_call(tmp_path, reference, die_on_call, run=finish)


@pytest.mark.parametrize("point", ["round-2:after-classification", "round-3:after-instances",
                                   "round-3:before-commit", "round-4:after-instructions",
                                   "round-2:before-manifest"])
def test_crash_between_writes_of_overlapped_rounds_loses_nothing(
        tmp_path, reference, monkeypatch, point):
    engine = resume_after_crash_at(tmp_path, reference, monkeypatch, point, run=finish)
    # what the dead process had saved is not asked again
    assert sum(len(b) for b in engine.batches) < sum(len(b) for b in reference[2].batches)


def test_completed_deep_run_replays_without_an_engine(tmp_path):
    finish(tmp_path)
    loop, _, _ = make_loop(tmp_path, **SETTINGS)
    loop.engine.live = LazyEngine(None)
    stats = loop.run()
    assert stats.replayed_rounds == stats.rounds and stats.live_requests == 0


def test_refilter_of_a_deep_run_needs_no_engine_and_stricter_is_a_subset(tmp_path, reference):
    ref_path, ref_stats, _, _ = reference
    deep = {"generation": {"prompts_per_round": 3, "pipeline_depth": DEPTH}}
    refiltered(ref_path, tmp_path / "same", **deep)
    assert examples(tmp_path / "same") == examples(ref_path)
    stats = refiltered(ref_path, tmp_path / "strict", filters={"rouge_threshold": 0.4}, **deep)
    assert set(examples(tmp_path / "strict")) < set(examples(ref_path))
    assert stats.rejections["rouge_l"] > ref_stats.rejections["rouge_l"]


def judged(path, source=None, **quality):
    from .test_judging import judged_loop

    loop, engine, writer = judged_loop(
        path, source=source, n=10,
        generation={"prompts_per_round": 3, "pipeline_depth": 4}, **quality)
    stats = loop.run()
    writer.close()
    return stats, engine, rows(path)


def test_a_judged_deep_run_overlaps_judging_and_refilters_to_a_subset(tmp_path):
    stats, engine, out = judged(tmp_path / "run")
    assert any({"judging", "instructions"} <= {r.stage for r in b} for b in engine.batches)
    assert len({r["task_id"] for r in out}) == stats.tasks_written == 10
    assert all(r["quality_judge"] == "scripted" for r in out)
    again, _, out_again = judged(tmp_path / "again")
    assert out_again == out and again.rounds == stats.rounds
    # a cut applied afterwards, with no engine, keeps only what the run wrote
    _, _, cut = judged(tmp_path / "cut", source=tmp_path / "run", min_overall=3)
    key = lambda r: (r["instruction"], r["input"], r["output"])  # noqa: E731
    assert {key(r) for r in cut} <= {key(r) for r in out}
    assert all(r["quality_overall"] is None or r["quality_overall"] >= 3 for r in cut)


def test_recorded_engine_answers_many_asks_with_one_live_batch(tmp_path):
    from selfinstruct.engines.base import Request, Sampling
    from selfinstruct.engines.recorded import Ask

    engine = ScriptedEngine()
    recorded = RecordedEngine(RunDirectory(tmp_path), LazyEngine(lambda: engine))
    sampling = Sampling(0.0, 1.0, 8)
    first = Ask(1, "classification", [Request("p", sampling, 1, False, "classification",
                                              "Decide if x.")])
    second = Ask(2, "instructions", [Request("q", sampling, 2, False, "instructions", "0")],
                 {"0": ("t1",)})
    empty = Ask(2, "instances", [])
    labels = []
    answers = recorded.answer_many([first, second, empty],
                                   lambda label, n: labels.append((label, n)))
    assert len(engine.batches) == 1 and len(engine.batches[0]) == 2
    assert labels == [("classification+instructions", 2)]
    assert answers[0]["Decide if x."].text == " Yes"
    assert answers[1]["0"].prompt_task_ids == ("t1",)
    assert answers[2] == {}
    run_dir = RunDirectory(tmp_path)
    assert [r.key for r in run_dir.load_stage(1, "classification", None)] == ["Decide if x."]
    assert [r.key for r in run_dir.load_stage(2, "instructions", None)] == ["0"]
    # asked again: the ledger answers, the engine is not called
    again = recorded.answer_many([first, second])
    assert len(engine.batches) == 1 and again[0]["Decide if x."].text == " Yes"


def test_pipeline_depth_is_checked(tmp_path):
    from pydantic import ValidationError

    from selfinstruct.config import Config

    with pytest.raises(ValidationError, match="pipeline_depth"):
        Config.model_validate({"generation": {"pipeline_depth": 0}})
    assert Config().generation.pipeline_depth >= 1


def test_a_crash_inside_a_mixed_call_keeps_its_recorded_chunks(tmp_path, reference, monkeypatch):
    ref_path, _, _, ref_shards = reference
    parts: list[str] = []

    def die(name):
        if "-part-" in name:
            parts.append(name)
            if len(parts) == 4:
                raise Crash()

    monkeypatch.setattr(recorded_module, "crash_point", die)
    loop, engine, _ = make_loop(tmp_path, **SETTINGS)
    loop.engine.chunk_completions = 2  # a part file every 2 completions
    with pytest.raises(Crash):
        loop.run()
    monkeypatch.undo()
    died_in = engine.batches[-1]
    assert len({r.stage for r in died_in}) > 1  # the call that died mixed stages
    run_dir = RunDirectory(tmp_path)
    saved = {(stage, r.key) for n in range(1, 8)
             for stage in ("instructions", "classification", "instances")
             for _, path in run_dir.part_paths(n, stage)
             for r in run_dir.load_stage(n, stage, None) or []}
    assert saved
    _, again, shards = finish(tmp_path)
    assert shard_bytes(tmp_path, shards) == shard_bytes(ref_path, ref_shards)
    asked = {(r.stage, r.key) for b in again.batches[:1] for r in b}
    assert asked and not asked & saved  # what the parts held is not asked again
    assert len(again.batches[0]) < len(died_in)


def test_throughput_reports_the_engines_share_of_the_loop_after_start_up():
    from selfinstruct.engines.recorded import LiveStats
    from selfinstruct.run import throughput
    from selfinstruct.stats import RunStats

    stats = RunStats(live=LiveStats(requests=10, output_tokens=900, seconds=9.0), seconds=14.0)
    figures = throughput(stats, startup_seconds=2.0)
    assert figures["own_seconds"] == 3.0
    assert figures["engine_share"] == 0.75  # 9 s of the 12 s after start-up
    assert throughput(RunStats(live=LiveStats()), 0.0)["engine_share"] is None
