"""The Alpaca recipe without an engine: its parser, prompt, settings, filters and loop.

The real CPU engine runs the recipe in test_alpaca_e2e.py; here the scripted engine
answers the "examples" stage (selfinstruct/testing/scripted.py) so counts, reasons
and provenance can be asserted exactly.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from selfinstruct.config import (ALPACA_BLACKLIST, DEFAULT_BLACKLIST, Config, ConfigError,
                                 load_config)
from selfinstruct.engines.recorded import LazyEngine, RecordedEngine
from selfinstruct.filters import instruction_rejection
from selfinstruct.parsing import EXAMPLE_REASONS, ParsedExample, parse_example_blocks
from selfinstruct.pipeline import SelfInstruct
from selfinstruct.prompts import PromptBuilder, PromptError, alpaca_stop
from selfinstruct.run import check_identity, JobError
from selfinstruct.storage.ledger import RunDirectory
from selfinstruct.storage.shards import ShardWriter
from selfinstruct.tasks import Instance, Task
from selfinstruct.testing.scripted import ScriptedEngine

from .conftest import ALPACA, SELF_INSTRUCT_SEEDS
from .test_durability import resume_after_crash_at, resume_after_dying_call
from .test_pipeline import SEEDS

# A completion in the recipe's layout, written for these tests: the prompt showed
# three tasks and ended with "4. Instruction:".
COMPLETION = """ Rewrite the sentence so that it uses the passive voice.
4. Input:
The committee approved the new budget on Monday.
4. Output:
The new budget was approved by the committee on Monday.
###
5. Instruction: What is the boiling point of water at sea level in Celsius?
5. Input:
<noinput>
5. Output:
100 degrees Celsius.
###
6. Instruction: Write a short agenda for a team meeting
about the product launch.
6. Input:
<NoInput>
6. Output:
### Agenda
1. Launch date
2. Open questions

Please bring your notes.
###
7. Instruction: Classify the animal as a mammal, bird or reptile.
7. Input:
Penguin
7. Output:
Bird
###
"""


def test_a_well_formed_completion_gives_every_block():
    blocks = parse_example_blocks(COMPLETION, 4)
    assert [b.number for b in blocks] == [4, 5, 6, 7]
    assert all(b.reason is None for b in blocks)
    assert blocks[0] == ParsedExample(
        4, "Rewrite the sentence so that it uses the passive voice.",
        "The committee approved the new budget on Monday.",
        "The new budget was approved by the committee on Monday.")
    assert blocks[1].input == "" and blocks[1].output == "100 degrees Celsius."
    # an instruction over two lines is one line; <noinput> in any case is no input; a
    # Markdown heading and blank lines inside an output stay in it
    assert blocks[2].instruction == ("Write a short agenda for a team meeting about the "
                                     "product launch.")
    assert blocks[2].input == ""
    assert blocks[2].output == ("### Agenda\n1. Launch date\n2. Open questions\n\n"
                                "Please bring your notes.")
    assert blocks[3].input == "Penguin" and blocks[3].output == "Bird"


@pytest.mark.parametrize("block, reason", [
    ("8. Instruction: Name a river.\n8. Input:\n<noinput>\n", "missing_output"),
    ("8. Instruction: Name a river.\n8. Output:\nThe Nile.\n", "missing_input"),
    ("8. Input:\nx\n8. Output:\ny\n", "missing_instruction"),
    ("8. Instruction: Name a river.\n8. Input:\n<noinput>\n8. Output:\nNile\n8. Output:\nAmazon",
     "repeated_field"),
    ("8. Instruction: Name a river.\n8. Output:\nNile\n8. Input:\n<noinput>\n",
     "fields_out_of_order"),
    ("8. Instruction: Name a river.\n8. Input:\n<noinput>\n9. Output:\nNile\n", "misnumbered"),
    ("8. Instruction: Name a river.\n8. Input:\n<noinput>\n8. Output:\n   \n", "empty_output"),
])
def test_each_malformed_block_has_its_reason(block, reason):
    blocks = parse_example_blocks(COMPLETION + block, 4)
    assert [b.reason for b in blocks[:4]] == [None] * 4
    assert len(blocks) == 5 and blocks[4].reason == reason
    assert reason in EXAMPLE_REASONS
    if reason != "missing_instruction":
        assert blocks[4].instruction == "Name a river."


def test_blocks_without_separators_or_in_place_numbers_are_read():
    # small models often leave out the ### lines and repeat or skip numbers: each
    # new "N. Instruction:" starts a block, numbered by its place in the list
    text = (" Name a river.\n4. Input:\n<noinput>\n4. Output:\nNile\n"
            "4. Instruction: Name a lake.\n4. Input:\n<noinput>\n4. Output:\nVictoria\n"
            "###\n9. Instruction: Name a sea.\n9. Input:\n<noinput>\n9. Output:\nBaltic\n"
            "10. Instruction: Name a bay.\n10. Input:\n<noinput>\n")
    assert [(b.number, b.instruction, b.output, b.reason) for b in parse_example_blocks(text, 4)
            ] == [(4, "Name a river.", "Nile", None), (5, "Name a lake.", "Victoria", None),
                  (6, "Name a sea.", "Baltic", None), (7, "Name a bay.", "", "missing_output")]


def test_the_last_block_of_a_cut_completion_is_truncated_whatever_it_holds():
    cut = parse_example_blocks(COMPLETION + "8. Instruction: Name a river.\n8. Inp", 4,
                               cut_at_length=True)
    assert [b.reason for b in cut] == [None, None, None, None, "truncated"]
    # even a block that looks whole: its output may have been cut mid-sentence
    whole = parse_example_blocks(COMPLETION.rstrip("#\n"), 4, cut_at_length=True)
    assert [b.reason for b in whole] == [None, None, None, "truncated"]
    # stopped before block 20 ("\n20"): the text ends after a separator, nothing is cut
    assert [b.reason for b in parse_example_blocks(COMPLETION, 4)][-1] is None


def test_labels_in_any_case_and_text_before_them():
    text = (" Name a river.\n4. input:\n<noinput>\n4. OUTPUT:\nNile\n###\n"
            "Here is another one.\n5. Instruction: Name a lake.\n5. Input:\n<noinput>\n"
            "5. Output:\nVictoria\n")
    assert [(b.instruction, b.output, b.reason) for b in parse_example_blocks(text, 4)] == [
        ("Name a river.", "Nile", None), ("Name a lake.", "Victoria", None)]


def test_a_blank_completion_has_no_block():
    assert parse_example_blocks("", 4) == []
    assert parse_example_blocks("  \n", 4, cut_at_length=True) == []


def test_the_prompt_shows_seeds_as_numbered_blocks_and_opens_the_next():
    seeds = [Task("a", "", "Sort the words\n alphabetically:",
                  (Instance("pear apple", "apple pear"), Instance("b a", "a b"))),
             Task("b", "", "Name a prime number.", (Instance("", "7"),))]
    prompt = PromptBuilder(recipe="alpaca").alpaca_generation(seeds, 20)
    assert prompt.endswith("###\n3. Instruction:")
    assert "20" in prompt.split("###")[0]  # the list size in the rules
    blocks = prompt.split("###\n")[1:3]
    # whitespace collapsed, the trailing colon dropped, the first instance only
    assert blocks[0] == ("1. Instruction: Sort the words alphabetically\n1. Input:\npear apple\n"
                         "1. Output:\napple pear\n")
    assert blocks[1] == ("2. Instruction: Name a prime number.\n2. Input:\n<noinput>\n"
                         "2. Output:\n7\n")
    # the parser reads a continuation of this prompt from block 3
    assert parse_example_blocks(" Name a colour.\n3. Input:\n<noinput>\n3. Output:\nRed\n",
                                len(seeds) + 1)[0].number == 3


def test_recipes_load_only_their_templates():
    assert set(PromptBuilder(recipe="alpaca").sha256) == {"alpaca_generation"}
    assert "alpaca_generation" not in PromptBuilder().sha256
    with pytest.raises(PromptError, match="alpaca recipe"):
        PromptBuilder().alpaca_generation(SEEDS[:3], 20)
    with pytest.raises(PromptError, match="unknown recipe"):
        PromptBuilder(recipe="flan")
    judged = PromptBuilder(recipe="alpaca", rubric="judge")
    assert set(judged.sha256) == {"alpaca_generation", "judge"}


def test_the_recipe_sets_alpacas_published_settings_as_defaults():
    config = Config(recipe="alpaca", model="Qwen/Qwen2.5-7B-Instruct")
    gen = config.generation
    assert (gen.prompt_tasks, gen.prompt_human_tasks, gen.max_list_items) == (3, 3, 19)
    assert (gen.temperature, gen.top_p, gen.max_tokens) == (1.0, 1.0, 3072)
    assert gen.stop == [] and gen.presence_penalty == 0.0
    assert alpaca_stop(gen.max_list_items) == ("\n20", "20.")
    assert config.filters.blacklist == list(ALPACA_BLACKLIST)
    assert set(ALPACA_BLACKLIST) - set(DEFAULT_BLACKLIST) == {
        "video", "audio", "music", "flowchart", "diagram"}
    assert (config.filters.min_words, config.filters.max_words) == (4, 150)
    assert config.filters.rouge_threshold == 0.7
    assert config.engine.max_model_len == 4096
    # what the user sets wins, from a file or a flag
    assert Config(recipe="alpaca", generation={"temperature": 0.5}).generation.temperature == 0.5
    assert load_config(None, {"recipe": "alpaca", "generation.max_tokens": 512}
                       ).generation.max_tokens == 512
    # the embedded 135M model writes noise at temperature 1: it gets its own sampling
    embedded = Config(recipe="alpaca").generation
    assert (embedded.temperature, embedded.top_p, embedded.max_tokens) == (0.7, 0.9, 1024)
    assert embedded.prompt_tasks == 3 and embedded.max_list_items == 19
    assert Config(recipe="alpaca", generation={"top_p": 1.0}).generation.top_p == 1.0
    # the default recipe keeps the paper's settings
    assert Config().generation.temperature == 0.7 and Config().recipe == "self-instruct"
    # the resolved values are what a manifest records and reloads
    assert Config.model_validate(config.to_json_dict()) == config


def test_a_bad_recipe_is_one_line_naming_the_file_line_and_field(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('num_instructions = 5\nrecipe = "alpacca"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:2: field 'recipe'")
    assert "\n" not in str(err.value)


def test_the_recipe_is_part_of_the_identity():
    # a run made before recipes (and overlapped rounds) existed
    old = {"settings": {"seed": 0}}
    now = {"settings": {"seed": 0, "recipe": "self-instruct",
                        "generation": {"pipeline_depth": 1}}}
    check_identity(Path("run"), old, now)
    now["settings"]["recipe"] = "alpaca"
    with pytest.raises(JobError, match="recipe = 'self-instruct', not 'alpaca'"):
        check_identity(Path("run"), old, now)
    alpaca = {"settings": {**now["settings"], "recipe": "alpaca"}}
    with pytest.raises(JobError, match="recipe = 'alpaca', not 'self-instruct'"):
        check_identity(Path("run"), alpaca, {"settings": {**now["settings"],
                                                          "recipe": "self-instruct"}})


# -- filter parity with the reference's rules -------------------------------------

def reference_keeps(instruction: str) -> bool:
    """Stanford Alpaca's instruction filters as its README and script state them:
    more than 3 and at most 150 words, no blacklisted word (whole word, any case), not
    starting with "Write a program", nor with punctuation or a non-ASCII character."""
    words = len(instruction.split())
    if words <= 3 or words > 150:
        return False
    if any(re.search(rf"\b{re.escape(w)}\b", instruction, re.IGNORECASE)
           for w in ALPACA_BLACKLIST):
        return False
    if instruction.startswith("Write a program"):
        return False
    return instruction[0] not in string.punctuation and instruction[0].isascii()


def mutations(instruction: str) -> list[str]:
    return [instruction, "Draw " + instruction, instruction + " Add some music.",
            "Write a program that does this: " + instruction, "- " + instruction,
            "Ünd " + instruction, " ".join(instruction.split()[:3]),
            " ".join([instruction] * 40), instruction.replace(" ", " diagrams ", 1),
            instruction + " (see the flowchart)", "Go to the shop and " + instruction]


def test_filters_agree_with_the_reference_on_alpaca_and_self_instruct_data(shared_data):
    filters = Config(recipe="alpaca").filters
    alpaca = json.loads(ALPACA.read_text(encoding="utf-8"))
    seeds = [json.loads(line)["instruction"]
             for line in SELF_INSTRUCT_SEEDS.read_text(encoding="utf-8").splitlines()]
    texts = [t for instruction in [r["instruction"] for r in alpaca[::50]] + seeds
             for t in mutations(instruction)]
    ours = [instruction_rejection(t, filters) is None for t in texts]
    theirs = [reference_keeps(t) for t in texts]
    differ = [t for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert len(texts) > 10_000 and 0 < sum(ours) < len(texts)
    assert differ == []


def test_every_alpaca_instruction_passes_the_recipes_filters(shared_data):
    # the 52K were kept by the reference's filters, so ours keep them too, except
    # where the filters knowingly differ (none: the list below must stay empty)
    filters = Config(recipe="alpaca").filters
    alpaca = json.loads(ALPACA.read_text(encoding="utf-8"))
    rejected = {}
    for record in alpaca:
        reason = instruction_rejection(record["instruction"], filters)
        if reason is not None and reference_keeps(record["instruction"]):
            rejected[record["instruction"]] = reason
    assert len(alpaca) == 52_002
    assert rejected == {}


def test_the_filters_known_difference_is_the_case_of_the_bad_prefix():
    filters = Config(recipe="alpaca").filters
    text = "write a program that prints the primes below 100."
    assert reference_keeps(text)
    assert instruction_rejection(text, filters) == "bad_prefix"


# -- the loop ------------------------------------------------------------------

def alpaca_loop(path, engine=None, **overrides):
    generation = {"prompts_per_round": 2, **overrides.pop("generation", {})}
    config = Config.model_validate({"recipe": "alpaca", "num_instructions": overrides.pop("n", 6),
                                    "seed": 3, "generation": generation, **overrides})
    engine = engine or ScriptedEngine()
    writer = ShardWriter(path, config.shards.shard_size)
    recorded = RecordedEngine(RunDirectory(path), LazyEngine(lambda: engine))
    loop = SelfInstruct(config, recorded, PromptBuilder(recipe="alpaca"), SEEDS, writer,
                        "scripted")
    return loop, engine, writer


def test_one_call_per_round_writes_whole_tasks_from_seed_prompts(tmp_path):
    loop, engine, writer = alpaca_loop(tmp_path, n=7)
    stats = loop.run()
    shards = writer.close()
    # one engine call per round, only the "examples" stage, 2 prompts each
    assert [{r.stage for r in b} for b in engine.batches] == [{"examples"}] * stats.rounds
    assert [len(b) for b in engine.batches] == [2] * stats.rounds
    assert stats.rounds >= 2
    first = engine.batches[0][0]
    assert first.prompt.endswith("4. Instruction:")
    assert first.sampling.stop == ("\n20", "20.") and first.sampling.max_tokens == 1024
    rows = [r for s in shards for r in pq.read_table(tmp_path / s.path).to_pylist()]
    assert stats.tasks_written == 7 == len(rows) == len({r["task_id"] for r in rows})
    seed_ids = {t.id for t in SEEDS}
    # in-context tasks are seeds only, in every round, never the machine tasks
    assert all(set(r["prompt_task_ids"]) <= seed_ids and len(r["prompt_task_ids"]) == 3
               for r in rows)
    assert max(r["round"] for r in rows) >= 2
    assert all(r["is_classification"] is None for r in rows)
    assert {r["input"] for r in rows} >= {""} and any(r["input"] for r in rows)
    # each malformed block is counted under its reason; the blacklist is Alpaca's
    for reason in ("missing_output", "truncated", "blacklist:draw"):
        assert stats.rejections[reason] >= 2
    candidates = pq.read_table(tmp_path / "ledger" / "round-00001" / "candidates.parquet"
                               ).to_pylist()
    assert {c["reason"] for c in candidates if c["stage"] == "instructions"} >= {
        "missing_output", "truncated", "blacklist:draw"}
    assert (tmp_path / "ledger" / "round-00001" / "requests-examples.parquet").is_file()


def test_rouge_l_against_the_whole_pool_drops_repeats_across_rounds(tmp_path):
    loop, _, writer = alpaca_loop(tmp_path, n=60, generation={"max_rounds": 8})
    stats = loop.run()
    writer.close()
    # the scripted topics repeat: later rounds' tasks are near the earlier ones
    assert stats.rejections["rouge_l"] > 0
    assert stats.tasks_written < 60


def test_diagram_is_only_blacklisted_by_the_alpaca_recipe():
    text = "Describe the parts of the diagram below in order."
    assert instruction_rejection(text, Config(recipe="alpaca").filters) == "blacklist:diagram"
    assert instruction_rejection(text, Config().filters) is None


def finish_alpaca(path, engine=None):
    loop, engine, writer = alpaca_loop(path, engine, n=10)
    stats = loop.run()
    return stats, engine, writer.close()


@pytest.fixture(scope="module")
def alpaca_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("alpaca-reference")
    stats, engine, shards = finish_alpaca(path)
    assert stats.rounds >= 3 and stats.tasks_written == 10
    return path, stats, engine, shards


@pytest.mark.parametrize("die_on_call", [1, 2, 3])
def test_a_run_killed_in_any_call_resumes_to_the_same_shards(tmp_path, alpaca_reference,
                                                              die_on_call):
    resume_after_dying_call(tmp_path, alpaca_reference, die_on_call, run=finish_alpaca)


@pytest.mark.parametrize("point", ["round-1:before-commit", "round-2:before-manifest"])
def test_a_crash_between_writes_loses_nothing_and_asks_nothing_twice(
        tmp_path, alpaca_reference, monkeypatch, point):
    resume_after_crash_at(tmp_path, alpaca_reference, monkeypatch, point, run=finish_alpaca,
                          stages=("examples",))
