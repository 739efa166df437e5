"""Parsing numbered instruction lists, yes/no answers and instances."""

from __future__ import annotations

from selfinstruct.parsing import (parse_input_first, parse_instruction_list, parse_output_first,
                                  parse_yes_no)
from selfinstruct.tasks import Instance


def test_list_continuation_starts_inside_the_prompts_last_item():
    items = parse_instruction_list(" Name a planet.\n10. Sort the words.\n11) Task: Add 2 and 2.",
                                   9)
    assert [(i.number, i.text) for i in items] == [
        (9, "Name a planet."), (10, "Sort the words."), (11, "Add 2 and 2.")]


def test_continuation_lines_join_and_blank_line_ends_the_item():
    items = parse_instruction_list(
        " Describe the\n   water cycle.\n\nThat is all for now.\n10. Next.", 9)
    assert [i.text for i in items] == ["Describe the water cycle.", "Next."]


def test_body_on_the_next_line_and_empty_completion():
    assert [i.text for i in parse_instruction_list("\nExplain tides.", 9)] == ["Explain tides."]
    assert parse_instruction_list("", 9) == []
    assert parse_instruction_list("   \n\n", 9) == []


def test_last_item_is_truncated_when_cut_at_length():
    items = parse_instruction_list(" One task.\n10. Another unfin", 9, cut_at_length=True)
    assert [i.truncated for i in items] == [False, True]
    assert not parse_instruction_list(" One task.", 9)[0].truncated


def test_yes_no():
    assert parse_yes_no(" Yes") is True
    assert parse_yes_no("no.") is False
    assert parse_yes_no("NO, it is not") is False
    assert parse_yes_no(" Maybe") is None
    assert parse_yes_no("") is None


def test_input_first_examples_with_and_without_input():
    text = ("Example 1\nInput: 3, 1, 2\nOutput: 1, 2, 3\n"
            "Example 2\nInput: None\nOutput: nothing to sort\n"
            "Example 3\nInput: lonely input without output\n")
    assert parse_input_first(text) == [Instance("3, 1, 2", "1, 2, 3"),
                                       Instance("", "nothing to sort")]


def test_input_first_without_headers_and_multiline_fields():
    text = "Input: line one\nline two\nOutput: first\nsecond"
    assert parse_input_first(text) == [Instance("line one\nline two", "first\nsecond")]
    assert parse_input_first("just some prose") == []


def test_output_first_labels_become_outputs():
    text = ("Class label: Positive\nInput: I loved it.\n"
            "Class label: Negative\nInput: Awful.\nClass label: Neutral\n")
    assert parse_output_first(text) == [Instance("I loved it.", "Positive"),
                                        Instance("Awful.", "Negative")]
    assert parse_output_first("no labels here") == []
