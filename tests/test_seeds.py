"""Seed loading: every accepted format, and every bad input named by file, line and field."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from selfinstruct.seeds import SeedError, default_seeds_dir, load_seed_tasks

from .conftest import SELF_INSTRUCT_SEEDS


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


SI_RECORD = {"id": "t1", "name": "add", "instruction": "Add the two numbers together.",
             "instances": [{"input": "2, 3", "output": "5"}], "is_classification": False}


def test_bundled_seeds_meet_the_brief():
    tasks = load_seed_tasks(default_seeds_dir())
    assert len(tasks) >= 60
    share = sum(bool(t.is_classification) for t in tasks) / len(tasks)
    assert 0.2 <= share <= 0.3
    assert all(t.instances for t in tasks)
    assert len({t.id for t in tasks}) == len(tasks)


def test_self_instruct_seed_file_loads_as_is(shared_data):
    tasks = load_seed_tasks(SELF_INSTRUCT_SEEDS)
    assert len(tasks) == 175
    assert tasks[0].id == "seed_task_0"
    assert sum(t.is_classification for t in tasks) == 26
    assert all(t.instances and t.instances[0].output for t in tasks)


def test_alpaca_json_array_groups_rows_by_instruction(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([
        {"instruction": "Name a color.", "input": "", "output": "Red"},
        {"instruction": "Double the number.", "input": "4", "output": "8"},
        {"instruction": "Double the number.", "input": "5", "output": "10"},
    ], indent=1), encoding="utf-8")
    tasks = load_seed_tasks(path)
    assert [t.instruction for t in tasks] == ["Name a color.", "Double the number."]
    assert [i.output for i in tasks[1].instances] == ["8", "10"]
    assert tasks[0].is_classification is None
    assert tasks[0].id == "a-2"  # file stem and the line the record starts on


def test_alpaca_jsonl_parquet_and_csv(tmp_path):
    rows = [{"instruction": "Name a color.", "input": "", "output": "Red"},
            {"instruction": "Is 7 prime?", "input": "", "output": "Yes"}]
    write_lines(tmp_path / "s.jsonl", rows)
    pd.DataFrame(rows).to_parquet(tmp_path / "s.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "s.csv", index=False)
    for suffix in ("jsonl", "parquet", "csv"):
        tasks = load_seed_tasks(tmp_path / f"s.{suffix}")
        assert [t.instruction for t in tasks] == ["Name a color.", "Is 7 prime?"], suffix
        assert tasks[0].instances[0].input == "", suffix


def test_directory_reads_every_seed_file_in_order(tmp_path):
    write_lines(tmp_path / "b.jsonl", [dict(SI_RECORD, id="b1", instruction="Second file task.")])
    write_lines(tmp_path / "a.jsonl", [SI_RECORD])
    (tmp_path / "notes.txt").write_text("ignored")
    tasks = load_seed_tasks(tmp_path)
    assert [t.id for t in tasks] == ["t1", "b1"]


@pytest.mark.parametrize("content, expected", [
    (b"", "file is empty"),
    (b"   \n\n", "file is empty"),
    (b'{"instruction": "ok", "instances": [{"output": "x"}]}\n{"instruction": \n',
     ":2: invalid JSON"),
    (b'{"instruction": "caf\xe9 time", "instances": []}\n', ":1: not valid UTF-8"),
    (b'{"name": "x", "instances": [{"output": "y"}]}\n', ":1: field 'instruction': missing"),
    (b'{"instruction": "   ", "instances": [{"output": "y"}]}\n', ":1: field 'instruction': empty"),
    (b'{"instruction": "Do it.", "instances": [{"input": "a"}]}\n',
     ":1: field 'instances[0].output': missing"),
    (b'{"instruction": "Do it.", "instances": []}\n', "field 'instances': must be a non-empty"),
    (b'{"instruction": "Do it.", "instances": [{"output": "y"}], "is_classification": "maybe"}\n',
     "field 'is_classification'"),
    (b'[1, 2]\n', ":1: record is an array, expected an object"),
])
def test_bad_jsonl_is_named_by_line_and_field(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(SeedError) as err:
        load_seed_tasks(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


def test_json_array_error_names_the_records_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "A", "input": "", "output": "x"},\n'
                    '  {"instruction": "B",\n   "input": "q"}\n]\n', encoding="utf-8")
    with pytest.raises(SeedError, match=r"bad\.json:3: field 'output': missing"):
        load_seed_tasks(path)


def test_csv_without_instruction_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,output\nhi,there\n", encoding="utf-8")
    with pytest.raises(SeedError, match="field 'instruction': missing column"):
        load_seed_tasks(path)


def test_missing_file_unsupported_suffix_duplicate_id(tmp_path):
    with pytest.raises(SeedError, match="seed file not found"):
        load_seed_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "s.yaml").write_text("x: 1")
    with pytest.raises(SeedError, match=r"unsupported format '\.yaml'"):
        load_seed_tasks(tmp_path / "s.yaml")
    path = write_lines(tmp_path / "d.jsonl",
                       [SI_RECORD, dict(SI_RECORD, instruction="Another task here.")])
    with pytest.raises(SeedError, match=r"d\.jsonl:2: field 'id': duplicate id 't1'"):
        load_seed_tasks(path)
