"""One reader for every record input (selfinstruct/records.py).

The same Alpaca-style records written as JSON, JSON Lines, NDJSON, Parquet, CSV
and a ``save_to_disk`` directory must be read identically, loaded as the same
seed tasks, deduplicated, inspected and exported identically by the command
line; a bad input in each format is one line naming the file and its line, row
or field, with exit status 2. ``dedup`` runs as the installed ``selfinstruct``
(the runs started together: each process spends most of its time importing);
``inspect``, ``export`` and ``generate`` run the same command lines in this
process (click's ``CliRunner``) to keep the file fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from selfinstruct.analysis.loading import InspectError, load_run
from selfinstruct.cli import main
from selfinstruct.dedup import DedupInputError, dedup_file
from selfinstruct.records import Position, RecordsError, input_files, read_records
from selfinstruct.seeds import SeedError, load_seed_tasks

BIN = Path(sys.executable).parent / "selfinstruct"
NO_ENGINE = ["--backend", "http", "--base-url", "http://127.0.0.1:9"]

ROWS = [
    {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow, blue."},
    {"instruction": "Übersetze ins Englische.", "input": "Schöne Grüße — 你好",
     "output": "Kind regards — hello"},
    {"instruction": "Add the two numbers.", "input": "2, 3", "output": "5"},
    {"instruction": "Name three primary colours!", "input": "", "output": "Red, green, blue."},
]
FORMATS = ["json", "jsonl", "ndjson", "parquet", "csv", "dataset"]


def write(fmt: str, path: Path, rows: list[dict]) -> Path:
    """``rows`` as a ``fmt`` input at ``path`` (a directory for "dataset")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    elif fmt in ("jsonl", "ndjson"):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        import datasets

        datasets.disable_progress_bars()
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def input_path(root: Path, fmt: str) -> Path:
    """Every format in a directory of its own, with the same stem ("data")."""
    return root / fmt / ("data" if fmt == "dataset" else f"data.{fmt}")


def run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run ``selfinstruct`` command lines as processes, concurrently; results in order."""
    def one(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(one, commands))


def invoke(args: list[str]):
    """Run a ``selfinstruct`` command line in this process (click's CliRunner)."""
    return CliRunner().invoke(main, args, env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    return {fmt: write(fmt, input_path(root, fmt), ROWS) for fmt in FORMATS}


# ---------------------------------------------------------------------------
# The reader and the seed loader
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_the_same_records(inputs, fmt):
    (source,) = read_records(inputs[fmt])
    assert source.rows == ROWS
    assert source.columns == ["instruction", "input", "output"]
    units = {"json": "line", "jsonl": "line", "ndjson": "line", "csv": "line",
             "parquet": "row", "dataset": "row"}
    numbers = {"json": [2, 7, 12, 17], "jsonl": [1, 2, 3, 4], "ndjson": [1, 2, 3, 4],
               "csv": [2, 3, 4, 5], "parquet": [1, 2, 3, 4], "dataset": [1, 2, 3, 4]}
    assert [record.position for record in source] == [
        Position(inputs[fmt], n, units[fmt]) for n in numbers[fmt]]
    assert [record.data for record in source] == ROWS


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_the_same_seed_tasks(inputs, fmt):
    tasks = load_seed_tasks(inputs[fmt])
    expected = load_seed_tasks(inputs["jsonl"])
    assert [(t.instruction, t.instances, t.is_classification) for t in tasks] == \
        [(t.instruction, t.instances, t.is_classification) for t in expected]
    assert [t.instances[0].input for t in tasks] == [r["input"] for r in ROWS]
    assert len({t.id for t in tasks}) == len(tasks)


def test_positions_name_records_of_a_one_line_array_by_number(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(ROWS[:2]), encoding="utf-8")
    (source,) = read_records(path)
    assert [str(r.position) for r in source] == [f"{path} (record 1)", f"{path} (record 2)"]
    assert [t.id for t in load_seed_tasks(path)] == ["one-1", "one-2"]


def test_a_json_file_of_json_lines_and_a_single_object(tmp_path):
    lines = tmp_path / "lines.json"
    lines.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    assert read_records(lines)[0].rows == ROWS
    single = tmp_path / "single.json"
    single.write_text(json.dumps(ROWS[0], indent=1), encoding="utf-8")
    assert read_records(single)[0].rows == ROWS[:1]


def test_json_lines_split_only_at_line_feeds(tmp_path):
    # U+2028, U+0085 and a form feed are valid raw inside JSON strings; CRLF ends lines too.
    rows = [{"instruction": "Join\u2028these\x85lines\x0c.", "input": "", "output": "ok"},
            ROWS[1]]
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b"\r\n".join(json.dumps(r, ensure_ascii=False).encode() for r in rows)
                     + b"\r\n")
    (source,) = read_records(path)
    assert source.rows == rows
    assert [r.position.line for r in source] == [1, 2]
    assert load_seed_tasks(path)[0].instruction == rows[0]["instruction"]


def test_directories_and_dataset_dicts_are_read_in_order(tmp_path):
    data = tmp_path / "data"
    write("csv", data / "b.csv", ROWS[2:])
    write("jsonl", data / "a.jsonl", ROWS[:2])
    (data / ".hidden.jsonl").write_text("not even JSON")
    (data / "notes.txt").write_text("ignored")
    (data / "sub.json").mkdir()
    sources = read_records(data)
    assert [s.path.name for s in sources] == ["a.jsonl", "b.csv"]
    assert [row for s in sources for row in s.rows] == ROWS
    assert input_files(data) == [data / "a.jsonl", data / "b.csv"]

    import datasets

    datasets.disable_progress_bars()
    splits = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[1:]),
                          "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(splits))
    sources = read_records(splits)
    assert [s.path for s in sources] == [splits / "train", splits / "test"]
    assert [row for s in sources for row in s.rows] == ROWS[1:] + ROWS[:1]
    assert str(next(iter(sources[1])).position) == f"{splits / 'test'} (row 1)"
    assert (splits / "dataset_dict.json") in input_files(splits)
    assert len(load_seed_tasks(splits)) == len(ROWS)


def test_importing_the_reader_loads_no_table_library():
    code = ("import sys, selfinstruct.records, selfinstruct.seeds, selfinstruct.dedup; "
            "print([m for m in ('pandas', 'pyarrow', 'datasets') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


# ---------------------------------------------------------------------------
# The commands: dedup, inspect --json, export --format alpaca
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def command_outputs(inputs, tmp_path_factory) -> dict[tuple[str, str], object]:
    """What ``dedup``, ``inspect --json`` and ``export`` give for every format."""
    out = tmp_path_factory.mktemp("outputs")
    results: dict[tuple[str, str], object] = {}
    deduped = run_all([["dedup", str(path), "--field", "instruction", "-o",
                        str(out / fmt / "kept.jsonl")] for fmt, path in inputs.items()])
    for fmt, result in zip(inputs, deduped, strict=True):
        assert result.returncode == 0, (fmt, result.stderr[-2000:])
        summary = result.stdout.splitlines()[0]
        results[(fmt, "dedup")] = (summary[: summary.index(" in ")],
                                   (out / fmt / "kept.jsonl").read_text("utf-8"),
                                   (out / fmt / "kept.dropped.jsonl").read_text("utf-8"))
    for fmt, path in inputs.items():
        inspected = invoke(["inspect", str(path), "--json", "--tokenizer", "none"])
        assert inspected.exit_code == 0, (fmt, inspected.output)
        stats = json.loads(inspected.stdout)
        assert stats.pop("source")["path"] == str(path)
        results[(fmt, "inspect")] = stats
        exported = invoke(["export", str(path), "--format", "alpaca", "-o", str(out / fmt / "a"),
                           "--tokenizer", "none"])
        assert exported.exit_code == 0, (fmt, exported.output)
        results[(fmt, "export")] = (out / fmt / "a" / "train.json").read_text("utf-8")
    return results


@pytest.mark.parametrize("fmt", FORMATS)
def test_dedup_gives_the_same_rows_for_every_format(command_outputs, fmt):
    summary, kept, dropped = command_outputs[(fmt, "dedup")]
    assert summary == "4 rows: kept 3, dropped 1 (ROUGE-L > 0.7, rouge tokenizer)"
    assert [json.loads(line) for line in kept.splitlines()] == ROWS[:3]
    (row,) = [json.loads(line) for line in dropped.splitlines()]
    assert row == {**ROWS[3], "nearest_index": 0, "nearest_text": ROWS[0]["instruction"],
                   "rouge_l": 1.0}
    assert command_outputs[(fmt, "dedup")] == command_outputs[("jsonl", "dedup")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_gives_the_same_statistics_for_every_format(command_outputs, fmt):
    stats = command_outputs[(fmt, "inspect")]
    assert stats["counts"]["rows"] == 4 and stats["counts"]["empty_inputs"] == 2
    assert stats == command_outputs[("jsonl", "inspect")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_the_same_file_for_every_format(command_outputs, fmt):
    train = command_outputs[(fmt, "export")]
    assert json.loads(train) == ROWS
    assert train == command_outputs[("jsonl", "export")]


# ---------------------------------------------------------------------------
# Bad input: one line naming the file and its line, row or field
# ---------------------------------------------------------------------------


def _bad(fmt: str, root: Path) -> tuple[Path, str]:
    """A bad ``fmt`` input and the place its error names (after the path)."""
    path = input_path(root, fmt)
    if fmt == "json":  # the third record's instruction is a number
        write(fmt, path, [*ROWS[:2], {**ROWS[2], "instruction": 3}])
        return path, ":12: field 'instruction': expected a string, got int"
    if fmt == "jsonl":
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(ROWS[0]) + '\n{"instruction": "x",\n', encoding="utf-8")
        return path, ":2: invalid JSON"
    if fmt == "ndjson":
        path.parent.mkdir(parents=True)
        path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS[:2])
                         + b'{"instruction": "caf\xe9"}\n')
        return path, ":3: not valid UTF-8"
    if fmt == "csv":
        path.parent.mkdir(parents=True)
        path.write_text("instruction,input,output\nName a colour.,,Red\nAdd 2 and 3,,5,6\n",
                        encoding="utf-8")
        return path, ":3: 4 fields, but the header has 3"
    rows = [ROWS[0], {**ROWS[1], "instruction": None}]
    write(fmt, path, rows)
    return path, " (row 2): field 'instruction': missing"


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("bad")
    return {fmt: _bad(fmt, root) for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_reader_names_the_place_of_a_bad_record(bad_inputs, tmp_path, fmt):
    path, place = bad_inputs[fmt]
    for error, call in ((SeedError, lambda: load_seed_tasks(path)),
                        (InspectError, lambda: load_run(path)),
                        (DedupInputError, lambda: dedup_file(path, "instruction",
                                                             tmp_path / "o.jsonl"))):
        with pytest.raises(error) as caught:
            call()
        assert str(caught.value).startswith(f"{path}{place}"), str(caught.value)
        assert "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir())


COMMANDS = {
    "generate": lambda p, out: ["generate", "--seeds", str(p), "-o", str(out), *NO_ENGINE],
    "inspect": lambda p, out: ["inspect", str(p), "--json", "--tokenizer", "none"],
    "export": lambda p, out: ["export", str(p), "--format", "alpaca", "-o", str(out),
                              "--tokenizer", "none"],
    "dedup": lambda p, out: ["dedup", str(p), "-o", str(out / "d.parquet")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bad_input_is_one_line_and_exit_2_in_every_command(bad_inputs, tmp_path, fmt,
                                                             command):
    path, place = bad_inputs[fmt]
    result = invoke(COMMANDS[command](path, tmp_path / "out"))
    assert result.exit_code == 2, (result.exception, result.output)
    assert isinstance(result.exception, SystemExit)  # no other exception: no traceback
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {path}{place}"), lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, expected", [
    (b"", ": file is empty"),
    (b'"just text"', ":1: expected a JSON array of records, got a string"),
    (b"[1]", " (record 1): record is a number, expected an object"),
    (b"[\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n]", ": invalid JSON: nested too deeply"),
    (b'[\n  {"a": 1},\n  {"a": \n]', ":4: invalid JSON: Expecting value"),
])
def test_json_errors_name_the_file_and_line(tmp_path, text, expected):
    path = tmp_path / "x.json"
    path.write_bytes(text)
    with pytest.raises(RecordsError) as caught:
        read_records(path)
    assert str(caught.value).startswith(f"{path}{expected}"), str(caught.value)


def test_a_damaged_parquet_file_or_dataset_directory_is_one_line(tmp_path):
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"PAR1 not really")
    with pytest.raises(RecordsError, match=r"x\.parquet: cannot read Parquet: "):
        read_records(parquet)
    dataset = write("dataset", tmp_path / "ds", ROWS)
    (dataset / "state.json").write_text("{")
    with pytest.raises(RecordsError, match=r"ds: cannot read save_to_disk directory: "):
        read_records(dataset)
