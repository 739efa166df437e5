"""The Self-Instruct loop's orchestration, with a scripted per-request engine.

The real vLLM engine runs in test_generate_e2e.py; here a deterministic stand-in
answers each prompt kind so counts, stages and provenance can be asserted exactly.
"""

from __future__ import annotations

import re

import pyarrow.parquet as pq

from selfinstruct.config import Config
from selfinstruct.storage.ledger import RunDirectory
from selfinstruct.engines.recorded import LazyEngine, RecordedEngine
from selfinstruct.pipeline import SelfInstruct, request_seed
from selfinstruct.stages.instances import InstanceGeneration
from selfinstruct.tasks import Candidate
from selfinstruct.testing.scripted import ScriptedEngine
from selfinstruct.prompts import PromptBuilder
from selfinstruct.tasks import Instance, Task
from selfinstruct.storage.shards import ShardWriter

SEEDS = [Task(f"s{i}", "", text, (Instance("", "x"),), False) for i, text in enumerate([
    "Name three fruits that are red.", "Explain how a bicycle stays upright.",
    "Translate the sentence into German.", "Is the review positive or negative?",
    "Suggest a title for the blog post.", "Convert the time to 24-hour format.",
    "Find the verb in the sentence.", "Give advice for a first job interview.",
])]

def make_loop(tmp_path, engine=None, **overrides):
    # the strict order of the paper unless a test asks for overlapped rounds
    generation = {"prompts_per_round": 4, "pipeline_depth": 1,
                  **overrides.pop("generation", {})}
    config = Config.model_validate({"num_instructions": overrides.pop("n", 6), "seed": 3,
                                    "generation": generation, **overrides})
    engine = engine or ScriptedEngine()
    writer = ShardWriter(tmp_path, config.shards.shard_size)
    recorded = RecordedEngine(RunDirectory(tmp_path), LazyEngine(lambda: engine))
    loop = SelfInstruct(config, recorded, PromptBuilder(), SEEDS, writer, "scripted")
    return loop, engine, writer


def run(tmp_path, **overrides):
    loop, engine, writer = make_loop(tmp_path, **overrides)
    return loop, engine, loop.run(), writer.close()


def test_rounds_stages_and_reasons(tmp_path):
    _, engine, stats, shards = run(tmp_path, n=6)
    # each round: 4 instruction prompts, then one classification and one instance
    # request per instruction kept (at most 2 of the 5 items per completion pass)
    sizes = [len(b) for b in engine.batches]
    assert sizes[0::3] == [4] * stats.rounds
    assert sizes[1::3] == sizes[2::3]
    assert sum(sizes[1::3]) == stats.kept_instructions <= 8 * stats.rounds
    later = ("not_generated", "unparseable_instances", "no_instances", "conflicting_outputs",
             "near_duplicate", "over_target")
    assert stats.tasks_written + sum(stats.rejections[k] for k in later) == stats.kept_instructions
    assert stats.rejections["blacklist:image"] > 0
    assert stats.rejections["too_short"] > 0
    assert stats.rejections["truncated"] > 0
    assert stats.tasks_written == 6
    rows = pq.read_table(tmp_path / shards[0].path).to_pylist()
    assert len({r["task_id"] for r in rows}) == 6
    cls = [r for r in rows if r["is_classification"]]
    assert cls and all(r["output"] in ("A", "B") for r in cls)
    plain = [r for r in rows if not r["is_classification"]]
    assert plain and plain[0]["messages"][0]["content"].endswith("\n\nsome input")
    assert all(len(r["prompt_task_ids"]) == 8 and r["model"] == "scripted" for r in rows)
    assert all(r["nearest_instruction"] is not None for r in rows)


def test_rouge_filter_drops_repeats_across_rounds(tmp_path):
    _, _, stats, _ = run(tmp_path, n=40, generation={"prompts_per_round": 4, "max_rounds": 6})
    # the scripted engine has few distinct topics: later rounds mostly repeat
    assert stats.rejections["rouge_l"] > 0
    assert stats.rounds == 6 or stats.tasks_written == 40


def test_requests_carry_per_request_seeds_from_coordinates(tmp_path):
    _, engine, _, _ = run(tmp_path, n=2)
    first = engine.batches[0]
    assert [r.seed for r in first] == [request_seed(3, 1, "instructions", k) for k in range(4)]
    instruction = engine.batches[2][0].prompt.rsplit("Task: ", 1)[1].strip()
    assert engine.batches[2][0].seed == request_seed(3, 1, "instances", instruction)
    assert len({r.seed for r in first}) == 4
    assert all(re.search(r"\n9\.$", r.prompt) for r in first)


def test_same_seed_same_output(tmp_path):
    a = run(tmp_path / "a", n=5)[3]
    b = run(tmp_path / "b", n=5)[3]
    assert pq.read_table(tmp_path / "a" / a[0].path).equals(
        pq.read_table(tmp_path / "b" / b[0].path))


def test_near_duplicate_examples_of_other_tasks_are_dropped(tmp_path):
    loop, _, _ = make_loop(tmp_path / "a")
    instances = loop.completing[-1]
    assert isinstance(instances, InstanceGeneration)
    # a seed's example, re-worded only in case and punctuation: a near-duplicate
    near = Candidate(0, 9, "name three fruits that are RED!", (), "")
    assert instances.drop_near_duplicates(near, [Instance("", "a")]) == ()
    assert near.instance_rejections == ["near_duplicate"]
    fresh = [Instance("", "Mango"), Instance("", "Papaya")]  # one task, several outputs
    task = Candidate(0, 10, "Name a tropical fruit.", (), "")
    assert instances.drop_near_duplicates(task, fresh) == tuple(fresh)
    loop, _, _ = make_loop(tmp_path / "b", instances={"near_duplicate_threshold": None})
    assert loop.completing[-1].drop_near_duplicates(near, [Instance("", "a")])


def test_useful_token_share_counts_what_the_parsers_took(tmp_path):
    _, _, stats, _ = run(tmp_path, n=4)
    by_stage = stats.by_stage()
    # every classification answer is a parseable yes/no: all of its tokens count
    assert by_stage["classification"]["useful_output_tokens"] == \
        by_stage["classification"]["output_tokens"] > 0
    # instruction lists end in a truncated item and carry numbering: part of them counts
    assert 0 < by_stage["instructions"]["useful_output_tokens"] < \
        by_stage["instructions"]["output_tokens"]
    assert 0 < stats.useful_token_share < 1
    engine = stats.to_json_dict()["engine"]
    assert engine["useful_token_share"] == round(stats.useful_token_share, 4)
    assert engine["useful_output_tokens"] == sum(stats.useful_output_tokens.values())
