"""Prompt building and in-context task sampling (Self-Instruct §2.2)."""

from __future__ import annotations

import random

import pytest

from selfinstruct.prompts import (PromptBuilder, PromptError, instruction_stop,
                                  sample_prompt_tasks)
from selfinstruct.tasks import Instance, Task


def task(i: int, prefix: str = "h") -> Task:
    return Task(f"{prefix}{i}", "", f"Instruction number {i} from {prefix}.",
                (Instance("", "x"),), False)


HUMAN = [task(i) for i in range(20)]
MACHINE = [task(i, "m") for i in range(10)]


def test_instruction_prompt_numbers_tasks_and_ends_with_next_number():
    tasks = [task(1), Task("m", "", "Multi\n  line   instruction.", (), None)]
    text = PromptBuilder().instruction_generation(tasks)
    assert "1. Instruction number 1 from h.\n2. Multi line instruction.\n3." in text
    assert text.endswith("\n3.")


def test_classification_and_instance_prompts_pick_their_template():
    builder = PromptBuilder()
    assert builder.classification("Is 9 prime?").endswith("Task: Is 9 prime?\nClassification task:")
    output_first = builder.instances("Is 9 prime?", is_classification=True)
    input_first = builder.instances("Sort the list.", is_classification=False)
    assert "Class label:" in output_first and output_first.endswith("Task: Is 9 prime?\n")
    assert "Class label:" not in input_first and input_first.endswith("Task: Sort the list.\n")


def test_sampling_all_human_until_two_machine_tasks_exist():
    rng = random.Random(0)
    picked = sample_prompt_tasks(rng, HUMAN, MACHINE[:1], total=8, human_count=6)
    assert len(picked) == 8 and all(t.id.startswith("h") for t in picked)
    picked = sample_prompt_tasks(rng, HUMAN, MACHINE, total=8, human_count=6)
    assert sum(t.id.startswith("h") for t in picked) == 6
    assert sum(t.id.startswith("m") for t in picked) == 2
    assert len({t.id for t in picked}) == 8


def test_sampling_is_reproducible_and_never_exceeds_the_pool():
    a = sample_prompt_tasks(random.Random(5), HUMAN, MACHINE, total=8, human_count=6)
    b = sample_prompt_tasks(random.Random(5), HUMAN, MACHINE, total=8, human_count=6)
    assert [t.id for t in a] == [t.id for t in b]
    assert len(sample_prompt_tasks(random.Random(0), HUMAN[:3], [], total=8, human_count=6)) == 3


def test_stop_before_item_sixteen():
    assert "\n16." in instruction_stop(15)


def test_custom_template_directory(tmp_path):
    for name in ("instruction_generation", "classification", "instances_input_first",
                 "instances_output_first"):
        (tmp_path / f"{name}.jinja").write_text(
            "X {{ instruction }}" if name != "instruction_generation"
            else "{% for t in tasks %}{{ t.instruction }};{% endfor %}")
    builder = PromptBuilder(tmp_path)
    assert builder.classification("q") == "X q"
    (tmp_path / "classification.jinja").write_text("{% if %}")
    with pytest.raises(PromptError, match=r"classification\.jinja:1: template error"):
        PromptBuilder(tmp_path)
    (tmp_path / "classification.jinja").unlink()
    with pytest.raises(PromptError, match=r"classification\.jinja: prompt template not found"):
        PromptBuilder(tmp_path)
