"""Instruction and instance filters, each with its reason code (Self-Instruct §2.2, filtering)."""

from __future__ import annotations

import pytest

from selfinstruct.config import FilterConfig
from selfinstruct.filters import filter_instances, instruction_rejection
from selfinstruct.tasks import Instance

CONFIG = FilterConfig()


@pytest.mark.parametrize("text, reason", [
    ("Sort these words.", "too_short"),
    (" ".join(["word"] * 151), "too_long"),
    ("Describe the image in detail please.", "blacklist:image"),
    ("Summarize the following files for me.", "blacklist:files"),
    ("Tell me how to GO   TO the station.", "blacklist:go to"),
    ("write a program that sorts numbers quickly.", "bad_prefix"),
    ('"Quote" the following sentence back to me.', "punctuation_start"),
    ("Éxplain the French revolution in brief.", "non_ascii_start"),
    ("Explain how a bicycle gear system works.", None),
    ("Give a roadmap for learning Spanish quickly.", None),  # "map" only as a whole word
    ("List all the graphic designers you know.", None),
    (" ".join(["word"] * 150), None),
    ("Sort these four words.", None),
])
def test_instruction_rejection(text, reason):
    assert instruction_rejection(text, CONFIG) == reason


def test_filters_are_configurable():
    relaxed = FilterConfig(min_words=1, blacklist=[], reject_non_ascii_start=False)
    assert instruction_rejection("Sort.", relaxed) is None
    assert instruction_rejection("Describe the image.", relaxed) is None
    assert instruction_rejection("Éxplain the revolution.", relaxed) is None


def test_single_instance_filters():
    verdict = filter_instances([
        Instance("abc", ""), Instance("same", "same"), Instance("Answer:", "x"),
        Instance("q", "Label:"), Instance("2+2", "4"), Instance("2+2", "4"),
    ], max_instances=5)
    assert verdict.kept == (Instance("2+2", "4"),)
    assert [r for _, r in verdict.rejected] == [
        "empty_output", "input_equals_output", "ends_with_colon", "ends_with_colon",
        "duplicate_instance"]
    assert verdict.task_reason is None


def test_same_input_different_outputs_drops_the_task():
    verdict = filter_instances([Instance("2+2", "4"), Instance("2+2", "5")], max_instances=5)
    assert verdict.kept == () and verdict.task_reason == "conflicting_outputs"


def test_tasks_without_input_may_have_many_outputs_and_are_capped():
    outputs = [Instance("", f"idea {k}") for k in range(7)]
    verdict = filter_instances(outputs, max_instances=5)
    assert len(verdict.kept) == 5
    assert [r for _, r in verdict.rejected] == ["over_limit", "over_limit"]


def test_nothing_left_marks_the_task():
    assert filter_instances([Instance("a", "")], max_instances=5).task_reason == "no_instances"
