"""Reading the judge's verdicts (Self-Instruct §3.3's three questions plus an overall score)."""

from __future__ import annotations

import json

import pytest

from selfinstruct.parsing import RATIONALE_MAX_CHARS, judgement_schema, parse_judgement
from selfinstruct.quality import SCORES, Judgement


def verdict(instruction: object = 4, input_: object = 3, output: object = 5,
            overall: object = 4) -> dict[str, object]:
    return {"instruction": {"score": instruction, "rationale": "A clear task."},
            "input": {"score": input_, "rationale": "Fits the task."},
            "output": {"score": output, "rationale": "Correct."},
            "overall": overall}


GOOD = json.dumps(verdict())
EXPECTED = Judgement(4.0, 3.0, 5.0, 4.0, "A clear task.", "Fits the task.", "Correct.")


def test_valid_json_verdict():
    assert parse_judgement(GOOD, 1, 5) == EXPECTED
    got = parse_judgement(GOOD, 1, 5)
    assert got is not None and all(isinstance(got.score(n), float) for n in SCORES)


def test_json_inside_prose_and_fences():
    assert parse_judgement(f"Here is my verdict: {GOOD} Hope it helps.", 1, 5) == EXPECTED
    assert parse_judgement(f"Sure!\n```json\n{json.dumps(verdict(), indent=2)}\n```\n",
                           1, 5) == EXPECTED
    wrapped = json.dumps({"verdict": verdict()})
    assert parse_judgement(wrapped, 1, 5) == EXPECTED


def test_first_complete_verdict_wins():
    second = json.dumps(verdict(1, 1, 1, 1))
    assert parse_judgement(f"{GOOD}\n{second}", 1, 5) == EXPECTED
    partial = json.dumps({"instruction": 2, "input": 2, "output": 2})  # no overall
    assert parse_judgement(f'{partial} then {{"note": 1}} and {GOOD}', 1, 5) == EXPECTED
    # the first object with all four scores decides, even when one is out of the scale
    assert parse_judgement(f"{json.dumps(verdict(6))}\n{GOOD}", 1, 5) is None


def test_truncated_json_is_unparseable():
    for cut in (len(GOOD) - 1, len(GOOD) // 2, 20):
        assert parse_judgement(GOOD[:cut], 1, 5) is None
    pretty = json.dumps(verdict(), indent=2)
    # a pretty-printed verdict cut before its closing brace is not read as the line form
    flat = json.dumps({"instruction": 4, "input": 3, "output": 5, "overall": 4}, indent=1)
    assert parse_judgement(flat[:-1], 1, 5) is None
    assert parse_judgement(pretty[:-2], 1, 5) is None
    # a begun JSON verdict rules out the line form, even beside score lines
    lines = "Instruction: 4\nInput: 3\nOutput: 5\nOverall: 4\n"
    assert parse_judgement(lines, 1, 5) is not None
    assert parse_judgement(lines + GOOD[:30], 1, 5) is None


@pytest.mark.parametrize("bad", [0, 6, -1, 5.5, "6", "0"])
def test_scores_outside_the_scale_are_refused(bad):
    for slot in range(4):
        scores: list[object] = [4, 3, 5, 4]
        scores[slot] = bad
        assert parse_judgement(json.dumps(verdict(*scores)), 1, 5) is None


def test_a_custom_scale():
    assert parse_judgement(json.dumps(verdict(7, 7, 10, 1)), 1, 10) == Judgement(
        7.0, 7.0, 10.0, 1.0, "A clear task.", "Fits the task.", "Correct.")
    assert parse_judgement(json.dumps(verdict(7, 3, 3, 3)), 1, 5) is None
    assert parse_judgement(json.dumps(verdict(0, 3, 3, 3)), 0, 3) is not None


def test_booleans_and_non_numbers_are_not_scores():
    for bad in (True, False, None, "four", [4], {"value": 4}, "4_0", "3 or 4"):
        assert parse_judgement(json.dumps(verdict(instruction=bad)), 1, 5) is None, bad
    for literal in ("NaN", "Infinity", "-Infinity"):
        text = GOOD.replace('"overall": 4', f'"overall": {literal}')
        assert literal in text and parse_judgement(text, 1, 5) is None


def test_tolerated_score_forms():
    got = parse_judgement(json.dumps(verdict("4", 3.0, " 5 ", {"score": "4/5"})), 1, 5)
    assert got is not None and (got.instruction, got.input, got.output, got.overall) == (
        4.0, 3.0, 5.0, 4.0)
    assert parse_judgement(json.dumps(verdict(3.5)), 1, 5).instruction == 3.5  # type: ignore[union-attr]
    # "4/10" is a score on another scale
    assert parse_judgement(json.dumps(verdict("4/10")), 1, 5) is None
    bare = json.dumps({"Instruction": 4, "INPUT": 3, "output": 5, "Overall": 4})
    assert parse_judgement(bare, 1, 5) == Judgement(4.0, 3.0, 5.0, 4.0)
    mixed = json.dumps({"instruction": {"Score": 2, "Rationale": "  vague  "}, "input": 2,
                        "output": {"score": 2}, "overall": 2})
    assert parse_judgement(mixed, 1, 5) == Judgement(2.0, 2.0, 2.0, 2.0, "vague", "", "")


def test_a_missing_score_is_unparseable():
    for name in SCORES:
        data = verdict()
        if name == "overall":
            del data[name]
        else:
            data[name] = {"rationale": "no score given"}
        assert parse_judgement(json.dumps(data), 1, 5) is None, name


def test_rationales_are_cut():
    data = verdict()
    data["output"] = {"score": 5, "rationale": "x" * 2000}
    got = parse_judgement(json.dumps(data), 1, 5)
    assert got is not None and got.output_rationale == "x" * RATIONALE_MAX_CHARS


@pytest.mark.parametrize("text", ["", "   \n", "I cannot judge this.", "5", "{}", "{",
                                  '{"instruction": ', "```json\n```"])
def test_empty_and_verdictless_answers(text):
    assert parse_judgement(text, 1, 5) is None


def test_deeply_nested_json_does_not_raise():
    assert parse_judgement('{"a": ' * 100_000, 1, 5) is None
    assert parse_judgement("[" * 100_000 + "{", 1, 5) is None
    deep = '{"instruction": ' + "[" * 50_000 + "]" * 50_000 + "}"
    assert parse_judgement(deep, 1, 5) is None


def test_line_form():
    text = ("Instruction: 4 - the task is clear\n"
            "**Input:** 3/5 The input fits.\n"
            "- Output score: 5. Correct answer.\n"
            "Overall: 3")
    assert parse_judgement(text, 1, 5) == Judgement(
        4.0, 3.0, 5.0, 3.0, "the task is clear", "The input fits.", "Correct answer.")
    # one score missing, or out of the scale, or on another scale
    assert parse_judgement(text.replace("Overall: 3", "That is all."), 1, 5) is None
    assert parse_judgement(text.replace("Overall: 3", "Overall: 6"), 1, 5) is None
    assert parse_judgement(text.replace("3/5", "3/10"), 1, 5) is None
    # on a 1-10 scale
    ten = "(a) Instruction: 9\n(b) Input: 7/10\n(c) Output: 8\nOverall: 8 - good"
    assert parse_judgement(ten, 1, 10) == Judgement(9.0, 7.0, 8.0, 8.0)


def test_line_form_after_an_echoed_example_uses_the_verdict_lines():
    text = ("Instruction: Add 2 and 3.\nOutput: 5\n\n"
            "Instruction: 4 - fine\nInput: 5 - none needed\nOutput: 1 - wrong sum\nOverall: 2")
    got = parse_judgement(text, 1, 5)
    assert got is not None and (got.output, got.output_rationale) == (1.0, "wrong sum")


def test_schema_shape():
    schema = judgement_schema(1, 5)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == list(SCORES)
    assert schema["properties"]["overall"] == {"type": "integer", "minimum": 1, "maximum": 5}
    for question in ("instruction", "input", "output"):
        part = schema["properties"][question]
        assert part["required"] == ["score", "rationale"]
        assert part["additionalProperties"] is False
        assert part["properties"]["score"] == {"type": "integer", "minimum": 1, "maximum": 5}
        rationale = part["properties"]["rationale"]
        assert rationale["type"] == "string"
        assert 0 < rationale["maxLength"] <= RATIONALE_MAX_CHARS
    keywords = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                keywords.add(key)
                if key == "properties":
                    for sub in value.values():
                        walk(sub)
                else:
                    walk(value)

    walk(schema)
    assert keywords <= {"type", "properties", "required", "minimum", "maximum", "maxLength",
                        "additionalProperties"}
    assert judgement_schema(1, 10)["properties"]["overall"]["maximum"] == 10
    with pytest.raises(ValueError):
        judgement_schema(5, 1)
    json.dumps(schema)  # plain JSON


def test_schema_validates_a_verdict_the_parser_accepts():
    jsonschema = pytest.importorskip("jsonschema")
    schema = judgement_schema(1, 5)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(verdict())
    assert parse_judgement(json.dumps(verdict()), 1, 5) is not None
    bad = [verdict(6), verdict(3.5), verdict("4"), verdict(True),
           {**verdict(), "extra": 1}, {k: v for k, v in verdict().items() if k != "overall"}]
    missing_rationale = verdict()
    missing_rationale["input"] = {"score": 3}
    long_rationale = verdict()
    long_rationale["input"] = {"score": 3, "rationale": "x" * 1000}
    for data in (*bad, missing_rationale, long_rationale):
        assert not validator.is_valid(data), data
