"""gzip-compressed record files (selfinstruct/records.py).

A ``.json.gz``, ``.jsonl.gz``, ``.ndjson.gz`` or ``.csv.gz`` file must give the
records, columns and positions of the plain file it compresses, fail on the
same bad content with the same line, be read inside a directory, and a file
gzip cannot decompress must be one error naming it.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from selfinstruct.records import (SUFFIXES, RecordsError, input_files, read_records,
                                  record_suffix)
from selfinstruct.seeds import load_seed_tasks

ROWS = [
    {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow, blue."},
    {"instruction": "Übersetze ins Englische.", "input": "Schöne Grüße — 你好",
     "output": "Kind regards — hello"},
    {"instruction": "Add the two numbers.", "input": "2, 3", "output": "5"},
]


def plain_bytes(kind: str, rows: list[dict]) -> bytes:
    """``rows`` as the bytes of a plain ``kind`` file."""
    if kind == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False).encode()
    if kind == "json-one-line":
        return json.dumps(rows, ensure_ascii=False).encode()
    if kind in ("jsonl", "ndjson"):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    assert kind == "csv"
    return pd.DataFrame(rows).to_csv(index=False).encode()


SUFFIX = {"json": ".json", "json-one-line": ".json", "jsonl": ".jsonl", "ndjson": ".ndjson",
          "csv": ".csv"}


@pytest.mark.parametrize("kind", list(SUFFIX))
def test_a_compressed_file_reads_as_the_plain_one(tmp_path, kind):
    plain = tmp_path / f"data{SUFFIX[kind]}"
    plain.write_bytes(plain_bytes(kind, ROWS))
    packed = tmp_path / f"data{SUFFIX[kind]}.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    (want,) = read_records(plain)
    (got,) = read_records(packed)
    assert got.rows == want.rows == ROWS
    assert got.columns == want.columns == ["instruction", "input", "output"]
    assert got.format == want.format
    assert [(r.position.number, r.position.unit) for r in got] == \
        [(r.position.number, r.position.unit) for r in want]
    assert all(r.position.path == packed for r in got)


def test_upper_case_suffixes_and_seed_tasks(tmp_path):
    path = tmp_path / "SEEDS.JSONL.GZ"
    path.write_bytes(gzip.compress(plain_bytes("jsonl", ROWS)))
    tasks = load_seed_tasks(path)
    assert [t.instruction for t in tasks] == [r["instruction"] for r in ROWS]
    csv = tmp_path / "T.CSV.GZ"
    csv.write_bytes(gzip.compress(plain_bytes("csv", ROWS)))
    assert read_records(csv)[0].rows == ROWS


def test_record_suffix():
    assert record_suffix("HumanEval.jsonl.gz") == ".jsonl.gz"
    assert record_suffix("a/b.Json.GZ") == ".json.gz"
    assert record_suffix("x.ndjson") == ".ndjson"
    assert record_suffix("x.tar.gz") is None
    assert record_suffix("x.parquet.gz") is None
    assert record_suffix(".jsonl.gz") is None  # nothing before the suffix
    assert record_suffix("x.gz") is None
    assert {".json.gz", ".jsonl.gz", ".ndjson.gz", ".csv.gz"} <= set(SUFFIXES)


def test_a_directory_reads_compressed_files_in_name_order(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(plain_bytes("jsonl", ROWS[:1])))
    (tmp_path / "b.csv").write_bytes(plain_bytes("csv", ROWS[1:2]))
    (tmp_path / "c.json.gz").write_bytes(gzip.compress(plain_bytes("json", ROWS[2:])))
    (tmp_path / "d.tar.gz").write_bytes(gzip.compress(b"not records"))
    (tmp_path / ".hidden.jsonl.gz").write_bytes(b"not even gzip")
    names = [p.name for p in input_files(tmp_path)]
    assert names == ["a.jsonl.gz", "b.csv", "c.json.gz"]
    parts = read_records(tmp_path)
    assert [row for part in parts for row in part.rows] == ROWS
    assert [p.path.name for p in parts] == names


def test_a_directory_of_only_unknown_gz_files_holds_no_records(tmp_path):
    (tmp_path / "d.tar.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(RecordsError, match="directory holds no record files"):
        read_records(tmp_path)


def gz_errors(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(gzip.compress(content))
    with pytest.raises(RecordsError) as info:
        read_records(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message.removeprefix(str(path))


def test_bad_content_is_named_by_its_line_as_in_the_plain_file(tmp_path):
    lines = b'{"instruction": "a"}\n\n{"instruction": "b"}\n{broken\n'
    assert gz_errors(tmp_path, "l.jsonl.gz", lines).startswith(":4: invalid JSON")
    assert gz_errors(tmp_path, "n.ndjson.gz", b'{"a": 1}\n[1]\n') == \
        ":2: record is an array, expected an object"
    doc = b'[\n  {"instruction": "a"},\n  {"instruction": \n]\n'
    assert gz_errors(tmp_path, "d.json.gz", doc).startswith(":4: invalid JSON")
    assert gz_errors(tmp_path, "u.jsonl.gz", b'{"a": "ok"}\n{"a": "\xff"}\n') == \
        ":2: not valid UTF-8 (byte 19)"
    csv = b"instruction,output\na,b\nc,d,e\n"
    assert gz_errors(tmp_path, "c.csv.gz", csv).startswith(":3: 3 fields, but the header has 2")
    assert gz_errors(tmp_path, "e.jsonl.gz", b"  \n") == ": file is empty"
    assert gz_errors(tmp_path, "e.csv.gz", b"") == ": file is empty"


def corrupt(kind: str) -> bytes:
    data = json.dumps([{"instruction": os.urandom(40).hex()} for _ in range(40)]).encode()
    packed = gzip.compress(data)
    if kind == "not gzip":
        return data
    if kind == "truncated":
        return packed[: len(packed) // 2]
    if kind == "crc":
        damaged = bytearray(packed)
        damaged[-6] ^= 0xFF  # the stored CRC-32
        return bytes(damaged)
    assert kind == "trailing junk"
    return packed + b"junk"


@pytest.mark.parametrize("kind", ["not gzip", "truncated", "crc", "trailing junk"])
@pytest.mark.parametrize("name", ["bad.json.gz", "bad.jsonl.gz", "bad.csv.gz"])
def test_a_file_gzip_cannot_decompress_is_one_line_naming_it(tmp_path, kind, name):
    path = tmp_path / name
    path.write_bytes(corrupt(kind))
    with pytest.raises(RecordsError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}: not a valid gzip file (")
    assert "\n" not in str(info.value)
    assert info.value.position is None and info.value.path == path


def test_a_corrupt_file_in_a_directory_is_named(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(plain_bytes("jsonl", ROWS)))
    (tmp_path / "b.jsonl.gz").write_bytes(b"\x1f\x8b but not really")
    with pytest.raises(RecordsError, match=r"b\.jsonl\.gz: not a valid gzip file"):
        read_records(tmp_path)


def test_compressed_parquet_and_other_formats_are_refused(tmp_path):
    for name, shown in (("t.parquet.gz", ".parquet.gz"), ("t.txt.gz", ".txt.gz")):
        path = tmp_path / name
        path.write_bytes(gzip.compress(b"x"))
        with pytest.raises(RecordsError) as info:
            read_records(path)
        assert str(info.value).startswith(f"{path}: unsupported format '{shown}' (use .json,")
