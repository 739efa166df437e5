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


GENERATION = {"instruction_generation": "{% for t in tasks %}{{ t.instruction }};{% endfor %}",
              "classification": "C {{ instruction }}",
              "instances_input_first": "I {{ instruction }}",
              "instances_output_first": "O {{ instruction }}"}
MISSING = r"judge\.jinja: rubric template does not use required variable "


def template_dir(path, rubric: str | None = None, name: str = "judge"):
    for stem, text in GENERATION.items():
        (path / f"{stem}.jinja").write_text(text)
    if rubric is not None:
        (path / f"{name}.jinja").write_text(rubric)
    return path


def test_bundled_rubric_shows_the_example_and_asks_for_the_verdict():
    builder = PromptBuilder(rubric="judge")
    text = builder.judge("Add the numbers.", "2, 3", "The sum\n  is 5.\n", 1, 5)
    assert "Add the numbers." in text and "2, 3" in text
    assert "The sum\n  is 5." in text  # the output's layout is kept
    assert "from 1 to 5" in text and '"overall": N}' in text
    assert not text.endswith("\n")
    none = builder.judge("Name a planet.", "", "Mars.", 1, 10)
    assert "2, 3" not in none and "(none" in none and "from 1 to 10" in none
    with pytest.raises(PromptError, match="without rubric"):
        PromptBuilder().judge("a", "", "b", 1, 5)


def test_rubric_is_hashed_only_when_asked_for():
    plain = PromptBuilder()
    assert set(plain.sha256) == {"instruction_generation", "classification",
                                 "instances_input_first", "instances_output_first"}
    judged = PromptBuilder(rubric="judge")
    import hashlib
    assert judged.sha256 == {**plain.sha256, "judge": hashlib.sha256(
        (judged.directory / "judge.jinja").read_bytes()).hexdigest()}
    # a run's recorded hashes: the rubric's must match like the others'
    PromptBuilder(expected_sha256=judged.sha256, rubric="judge")
    PromptBuilder(expected_sha256=plain.sha256)
    with pytest.raises(PromptError, match=r"judge\.jinja: prompt template differs"):
        PromptBuilder(expected_sha256=plain.sha256, rubric="judge")
    with pytest.raises(PromptError, match=r"judge\.jinja: prompt template differs"):
        PromptBuilder(expected_sha256={**judged.sha256, "judge": "0" * 64}, rubric="judge")


def test_custom_rubric(tmp_path):
    rubric = "{{ instruction }}|{{ input or '-' }}|{{ output }}|{{ scale_min }}-{{ scale_max }}\n\n"
    template_dir(tmp_path, rubric, name="strict.v2")
    builder = PromptBuilder(tmp_path, rubric="strict.v2")
    assert builder.judge("i", "", " o\n", 0, 3) == "i|-| o\n|0-3"
    assert "strict.v2" in builder.sha256
    with pytest.raises(PromptError, match=r"judge\.jinja: prompt template not found"):
        PromptBuilder(tmp_path, rubric="judge")


@pytest.mark.parametrize("text, error", [
    ("{{ instruction }} {{ input }}", MISSING + "'output'"),
    ("{{ output }} {{ input }}", MISSING + "'instruction'"),
    ("{{ instruction }} {{ input }} {{ output }} {{ score }}",
     r"judge\.jinja: template uses undefined variable 'score'"),
    ("{{ instruction }} {{ output }} {% if input %}{{ 1 / 0 }}{% endif %}",
     r"judge\.jinja: template fails to render"),
    ("{{ instruction }} {{ input }} {{ output }} {{ ''.__class__ }}",
     r"judge\.jinja: template fails to render"),
    ("{{ instruction }} {{ input }} {% if %}", r"judge\.jinja:1: template error"),
])
def test_broken_rubrics_name_the_file(tmp_path, text, error):
    template_dir(tmp_path, text)
    with pytest.raises(PromptError, match=error):
        PromptBuilder(tmp_path, rubric="judge")
    PromptBuilder(tmp_path)  # without a rubric the file is never read


@pytest.mark.parametrize("name", ["../judge", "a/b", "classification", ".."])
def test_rubric_names_that_are_not_rubrics(tmp_path, name):
    template_dir(tmp_path, "{{ instruction }}{{ input }}{{ output }}")
    with pytest.raises(PromptError, match="rubric"):
        PromptBuilder(tmp_path, rubric=name)
