"""Completions recorded as they arrive (issue 15): ledger part files and the chunk recorder.

A live batch's completions reach the ledger in chunks (part files of the stage)
while the batch runs, so a crash loses at most the last chunk; the whole stage
file supersedes the parts. The crash-and-resume tests over a whole run are in
test_durability.py; the engines' ``on_done`` in test_engines.py,
test_http_engine.py and test_ray_engine.py.
"""

from __future__ import annotations

import pytest

from selfinstruct.engines import recorded as recorded_module
from selfinstruct.engines.base import Completion, EngineUnavailable, Request, Sampling
from selfinstruct.engines.recorded import (CHUNK_COMPLETIONS, CHUNK_SECONDS, ChunkRecorder,
                                           LazyEngine, RecordedEngine)
from selfinstruct.storage.ledger import RecordedRequest, RunDirectory
from selfinstruct.testing.scripted import ScriptedEngine


def record(key: str, text: str = "t") -> RecordedRequest:
    return RecordedRequest(key=key, seed=1, prompt=f"p {key}", prompt_task_ids=("s1",),
                           text=text, finish_reason="stop", prompt_tokens=3, output_tokens=1)


def requests(stage: str, keys: list[str]) -> list[Request]:
    return [Request(f"prompt {k}", Sampling(0.0, 1.0, 8), seed=i, stage=stage, key=k)
            for i, k in enumerate(keys)]


def names(ledger: RunDirectory, round_number: int) -> list[str]:
    return sorted(p.name for p in ledger.round_dir(round_number).iterdir())


# -- part files in the ledger --------------------------------------------------------

def test_parts_are_numbered_merged_after_the_stage_file_and_superseded_by_it(tmp_path):
    ledger = RunDirectory(tmp_path)
    assert ledger.save_part(1, "instances", [record("a"), record("b")]).name == \
        "requests-instances.part-0001.parquet"
    ledger.save_part(1, "instances", [record("c")])
    ledger.save_part(1, "classification", [record("x")])  # another stage: not merged
    assert [r.key for r in ledger.load_stage(1, "instances", None)] == ["a", "b", "c"]
    assert [n for n, _ in ledger.part_paths(1, "instances")] == [1, 2]
    ledger.save_stage(1, "instances", [record(k) for k in "abcd"])
    assert names(ledger, 1) == ["requests-classification.part-0001.parquet",
                                "requests-instances.parquet"]
    assert [r.key for r in ledger.load_stage(1, "instances", None)] == list("abcd")


def test_the_stage_file_wins_over_a_part_left_behind(tmp_path):
    # a crash between writing the stage file and removing its parts leaves both
    ledger = RunDirectory(tmp_path)
    ledger.save_stage(1, "instances", [record("a", "kept")])
    ledger.save_part(1, "instances", [record("a", "stale"), record("b")])
    loaded = ledger.load_stage(1, "instances", None)
    assert [(r.key, r.text) for r in loaded] == [("a", "kept"), ("b", "t")]


def test_a_damaged_part_is_discarded_with_a_warning_and_the_others_are_merged(tmp_path):
    ledger = RunDirectory(tmp_path)
    for keys in (["a", "b"], ["c", "d"], ["e"]):
        ledger.save_part(1, "instances", [record(k) for k in keys])
    damaged = ledger.round_dir(1) / "requests-instances.part-0002.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-30])  # torn, as a careless writer leaves it
    assert [r.key for r in ledger.load_stage(1, "instances", None)] == ["a", "b", "e"]
    assert ledger.warnings == [(f"{damaged}: damaged record of an unfinished round discarded; "
                               "its requests are sent again")]
    assert not damaged.exists()
    # a new part is numbered after the highest left, never over a surviving one
    assert ledger.save_part(1, "instances", [record("c")]).name.endswith("part-0004.parquet")


def test_only_damaged_parts_leave_nothing_recorded(tmp_path):
    ledger = RunDirectory(tmp_path)
    ledger.save_part(1, "instances", [record("a")]).write_bytes(b"PAR1 garbage")
    assert ledger.load_stage(1, "instances", None) is None
    assert len(ledger.warnings) == 1


def test_commit_folds_leftover_parts_and_a_committed_round_never_reads_parts(tmp_path):
    ledger = RunDirectory(tmp_path)
    ledger.save_stage(1, "instructions", [record("0")])
    ledger.save_part(1, "instances", [record("a")])
    ledger.save_part(1, "instances", [record("b")])
    assert ledger.commit_round(1, [], [])
    commit = ledger.read_commit(1)
    assert sorted(n for n in commit["files"] if n.startswith("requests-")) == [
        "requests-instances.parquet", "requests-instructions.parquet"]
    assert not ledger.part_paths(1, "instances")
    # a part appearing in a committed round is not read (nor is its damage noticed)
    ledger.save_part(1, "instances", [record("z")]).write_bytes(b"junk")
    assert [r.key for r in ledger.load_stage(1, "instances", commit["files"])] == ["a", "b"]
    assert ledger.warnings == []


# -- the chunk recorder ------------------------------------------------------------------

def test_the_default_bound_is_32_completions_or_5_seconds():
    assert (CHUNK_COMPLETIONS, CHUNK_SECONDS) == (32, 5.0)


def test_a_chunk_is_written_every_n_completions(tmp_path, monkeypatch):
    points = []
    monkeypatch.setattr(recorded_module, "crash_point", points.append)
    ledger = RunDirectory(tmp_path)
    recorder = ChunkRecorder(ledger, size=3, seconds=3600)
    batch = requests("instances", [f"k{i}" for i in range(7)])
    for request in batch:
        recorder.add(2, request, Completion(f"text {request.key}", 5, 2, "stop"), ("s1",))
    assert points == ["round-2:after-instances-part-1", "round-2:after-instances-part-2"]
    assert recorder.pending == 1
    recorder.flush()
    assert recorder.pending == 0 and len(recorder.parts) == 3
    loaded = ledger.load_stage(2, "instances", None)
    assert [r.key for r in loaded] == [r.key for r in batch]
    assert loaded[4] == RecordedRequest(key="k4", seed=4, prompt="prompt k4",
                                        prompt_task_ids=("s1",), text="text k4",
                                        finish_reason="stop", prompt_tokens=5, output_tokens=2)


def test_a_chunk_is_written_when_its_oldest_completion_has_waited_t_seconds(tmp_path):
    now = [0.0]
    ledger = RunDirectory(tmp_path)
    recorder = ChunkRecorder(ledger, size=100, seconds=5.0, clock=lambda: now[0])
    batch = requests("instances", ["a", "b", "c", "d"])
    for request, at in zip(batch, [0.0, 4.9, 5.0, 6.0], strict=True):
        now[0] = at
        recorder.add(1, request, Completion("x", 1, 1, "stop"))
    # a and b waited; c arrived 5 s after a: a, b, c written; d waits (1 s old)
    assert [r.key for r in ledger.load_stage(1, "instances", None)] == ["a", "b", "c"]
    assert recorder.pending == 1


def test_one_batch_of_several_rounds_and_stages_gets_parts_per_round_and_stage(tmp_path,
                                                                                monkeypatch):
    points = []
    monkeypatch.setattr(recorded_module, "crash_point", points.append)
    ledger = RunDirectory(tmp_path)
    recorder = ChunkRecorder(ledger, size=4)
    mixed = [(3, requests("instances", ["i1"])[0]), (4, requests("classification", ["c1"])[0]),
             (3, requests("instances", ["i2"])[0]), (4, requests("instructions", ["0"])[0])]
    for round_number, request in mixed:
        recorder.add(round_number, request, Completion(request.key, 1, 1, "stop"))
    assert sorted(points) == ["round-3:after-instances-part-1",
                              "round-4:after-classification-part-1",
                              "round-4:after-instructions-part-1"]
    assert [r.key for r in ledger.load_stage(3, "instances", None)] == ["i1", "i2"]
    assert [r.key for r in ledger.load_stage(4, "classification", None)] == ["c1"]
    assert [r.key for r in ledger.load_stage(4, "instructions", None)] == ["0"]


def test_size_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        ChunkRecorder(RunDirectory(tmp_path), size=0)


# -- the recorded engine ------------------------------------------------------------------

class FailsAfter(ScriptedEngine):
    """Answers ``n`` requests of its first batch, then fails as a lost server does."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def generate(self, requests, progress=None, on_done=None):
        self.batches.append(list(requests))
        if len(self.batches) == 1:
            for index, request in enumerate(requests[:self.n]):
                on_done(index, self.answer(request))
            raise EngineUnavailable("http://h:1/v1: every endpoint is down")
        return [self.answer(r) for r in requests]


def test_a_failed_batch_keeps_what_it_answered_and_the_retry_asks_only_the_rest(tmp_path):
    keys = [f"Decide {i}" for i in range(10)]
    ledger = RunDirectory(tmp_path)
    dying = RecordedEngine(ledger, LazyEngine(lambda: FailsAfter(7)), chunk_completions=4)
    with pytest.raises(EngineUnavailable):
        dying.answer(1, requests("classification", keys), dict.fromkeys(keys, ("s1",)))
    # one chunk of 4 written as they came, the last 3 when the error went by
    assert [n for n, _ in ledger.part_paths(1, "classification")] == [1, 2]
    live = ScriptedEngine()
    again = RecordedEngine(RunDirectory(tmp_path), LazyEngine(lambda: live))
    out = again.answer(1, requests("classification", keys), dict.fromkeys(keys, ("s1",)))
    assert [r.key for r in live.batches[0]] == keys[7:]
    assert [r.text for r in out.values()] == [" Yes"] * 10
    assert names(ledger, 1) == ["requests-classification.parquet"]
    assert all(r.prompt_task_ids == ("s1",) for r in out.values())


def test_a_stage_wholly_in_parts_is_saved_whole_without_the_engine(tmp_path):
    keys = ["a", "b", "c"]
    ledger = RunDirectory(tmp_path)
    for k in keys:
        ledger.save_part(1, "classification", [record(k)])
    again = RecordedEngine(ledger, LazyEngine(None))  # any engine call would fail
    out = again.answer(1, requests("classification", keys))
    assert [r.key for r in out.values()] == keys
    assert names(ledger, 1) == ["requests-classification.parquet"]
    assert ledger.commit_round(1, [], [])
    assert "requests-classification.parquet" in ledger.read_commit(1)["files"]


def test_a_returned_batch_leaves_only_the_stage_file(tmp_path):
    live = ScriptedEngine()
    ledger = RunDirectory(tmp_path)
    engine = RecordedEngine(ledger, LazyEngine(lambda: live), chunk_completions=2)
    out = engine.answer(1, requests("classification", ["a", "b", "c", "d", "e"]))
    assert len(out) == 5 and len(live.batches) == 1
    assert names(ledger, 1) == ["requests-classification.parquet"]


# -- a real kill -9 mid-stage, over HTTP ------------------------------------------------------

@pytest.mark.slow
def test_kill_9_after_the_first_chunk_of_a_stage_loses_only_the_rest(tmp_path):
    """`generate` over HTTP (the fake server answers each prompt the same way whatever
    the batch) is SIGKILLed right after the first part file of its 40-request
    instruction stage; the resumed run sends only the 8 requests not in it, and its
    ledger and shards equal an uninterrupted run's byte for byte."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from selfinstruct.seeds import default_seeds_dir
    from selfinstruct.storage.ledger import CRASH_ENV

    from .http_fakes import FakeOpenAI

    seeds = tmp_path / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")

    def generate(out, crash_at=None):
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        if crash_at:
            env[CRASH_ENV] = crash_at
        with FakeOpenAI() as fake:
            result = subprocess.run(
                [str(Path(sys.executable).parent / "selfinstruct"), "generate", "--seeds",
                 str(seeds), "--base-url", fake.url, "-n", "6", "--prompts-per-round", "40",
                 "--max-rounds", "1", "--seed", "5", "-o", str(out)],
                capture_output=True, text=True, timeout=300, env=env)
        return result, [b["prompt"] for b in fake.bodies]

    done, sent = generate(tmp_path / "reference")
    assert done.returncode == 0, done.stderr[-2000:]
    cut, _ = generate(tmp_path / "run", "round-1:after-instructions-part-1")
    assert cut.returncode == -signal.SIGKILL, cut.stderr[-2000:]
    ledger = RunDirectory(tmp_path / "run")
    assert names(ledger, 1) == ["requests-instructions.part-0001.parquet"]
    kept = {r.prompt for r in ledger.load_stage(1, "instructions", None)}
    assert len(kept) == CHUNK_COMPLETIONS
    resumed, resent = generate(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(resent) == sorted(p for p in sent if p not in kept)
    assert len(resent) == len(sent) - CHUNK_COMPLETIONS
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stats"]["engine"]["live_requests"] == len(resent)
    files = {d: sorted(p.relative_to(tmp_path / d).as_posix()
                       for p in (tmp_path / d).rglob("*.parquet")) for d in ("reference", "run")}
    assert files["run"] == files["reference"]
    assert "data/shard-00000.parquet" in files["run"]
    assert "ledger/round-00001/requests-instructions.parquet" in files["run"]
    for name in files["run"]:
        assert (tmp_path / "run" / name).read_bytes() == \
            (tmp_path / "reference" / name).read_bytes(), name
