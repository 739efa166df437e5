"""Hostile and careless inputs (issue 10): only regular files are read, CSV rows are
never shifted, deep JSON and symlink loops give one line, config values are checked
up front and strictly, null fields are named as missing, and seed instructions that
cannot fit the model's context are refused before anything is written."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfinstruct.config import ConfigError, load_config
from selfinstruct.dedup import DedupInputError, dedup_file
from selfinstruct.inputs import InputFileError, check_regular_file, read_csv_records
from selfinstruct.analysis.loading import InspectError, load_run
from selfinstruct.prompts import PromptBuilder, PromptError, default_prompts_dir
from selfinstruct.seeds import SeedError, load_seed_tasks

BIN = Path(sys.executable).parent / "selfinstruct"
DEEP = "[" * 100_000 + "]" * 100_000
GOOD = {"instruction": "Name a primary colour.", "input": "", "output": "Red."}
# A run that gets past its input checks must not start vLLM here: nothing listens on
# this port, so such a run ends at once with an endpoint error (which fails the test).
NO_ENGINE = ["--backend", "http", "--base-url", "http://127.0.0.1:9"]


def _limit_memory() -> None:
    # A regression that reads /dev/zero should fail with MemoryError, not take the machine.
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=90,
                          preexec_fn=_limit_memory)


def assert_one_line_exit_2(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# The shared regular-file check
# ---------------------------------------------------------------------------


@pytest.fixture
def odd_paths(tmp_path) -> Iterator[dict[str, Path]]:
    """One input path of each kind that must be refused, all with a data suffix.

    A reader that opens the FIFO would block forever: SIGALRM turns that into a
    failure after 30 s (in-process tests never read the device, which would take
    all memory; the CLI tests read it under a memory limit)."""

    def expire(signum, frame):
        raise TimeoutError("blocked reading an input (a FIFO?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    loop_a, loop_b = tmp_path / "loop_a.jsonl", tmp_path / "loop_b.jsonl"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    directory = tmp_path / "dir.jsonl"
    directory.mkdir()
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "nowhere.jsonl")
    yield {"fifo": fifo, "device": zero, "loop": loop_a, "directory": directory,
           "dangling": dangling}
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


REASONS = {"fifo": "not a regular file (a FIFO)",
           "device": "not a regular file (a character device)",
           "loop": "symlink loop",
           "directory": "not a regular file (a directory)",
           "dangling": "no such file or directory"}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_check_regular_file_refuses_everything_but_a_regular_file(odd_paths, kind):
    with pytest.raises(InputFileError) as caught:
        check_regular_file(odd_paths[kind])
    assert str(caught.value) == f"{odd_paths[kind]}: {REASONS[kind]}"


def test_check_regular_file_follows_a_symlink_to_a_regular_file(tmp_path):
    target = write(tmp_path / "real.jsonl", json.dumps(GOOD) + "\n")
    (tmp_path / "link.jsonl").symlink_to(target)
    assert check_regular_file(tmp_path / "link.jsonl").st_size == target.stat().st_size


@pytest.mark.parametrize("kind", ["fifo", "loop"])
def test_every_reader_refuses_non_regular_inputs(odd_paths, tmp_path, kind):
    path, reason = odd_paths[kind], re.escape(REASONS[kind])
    with pytest.raises(SeedError, match=reason):
        load_seed_tasks(path)
    with pytest.raises(InspectError, match=reason):
        load_run(path)
    with pytest.raises(DedupInputError, match=reason):
        dedup_file(path, "instruction", tmp_path / "out.parquet")
    with pytest.raises(ConfigError, match=reason):
        load_config(path)
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("kind", ["fifo", "dangling"])
def test_a_seed_directory_entry_that_is_not_a_regular_file_is_an_error(odd_paths, tmp_path,
                                                                       kind):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    write(seeds / "a.jsonl", json.dumps(GOOD) + "\n")
    os.replace(odd_paths[kind], seeds / "b.jsonl")  # renames the link or FIFO itself
    with pytest.raises(SeedError, match=r"b\.jsonl: .*(not a regular file|not found)"):
        load_seed_tasks(seeds)


def test_a_template_that_is_a_fifo_is_refused(tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(default_prompts_dir(), prompts)
    (prompts / "classification.jinja").unlink()
    os.mkfifo(prompts / "classification.jinja")
    with pytest.raises(PromptError, match=r"classification\.jinja: not a regular file \(a FIFO\)"):
        PromptBuilder(prompts)


# ---------------------------------------------------------------------------
# Every command: one line, exit 2, nothing written
# ---------------------------------------------------------------------------


def _bad_input(kind: str, tmp_path: Path, odd_paths: dict[str, Path]) -> tuple[Path, str]:
    if kind == "deep.json":
        return write(tmp_path / "deep.json", DEEP), "deep.json: invalid JSON"
    if kind == "deep.jsonl":
        return (write(tmp_path / "deep.jsonl", json.dumps(GOOD) + "\n" + DEEP + "\n"),
                "deep.jsonl:2: invalid JSON: nested too deeply")
    return odd_paths[kind], f"{odd_paths[kind]}: {REASONS[kind]}"


def _command(name: str, path: Path, out: Path) -> list[str]:
    if name == "generate":
        return ["generate", "--seeds", str(path), "--output", str(out), *NO_ENGINE]
    if name == "inspect":
        return ["inspect", str(path), "--report", str(out)]
    if name == "export":
        return ["export", str(path), "--format", "alpaca", "--output", str(out)]
    return ["dedup", str(path), "--output", str(out / "kept.parquet")]


@pytest.mark.fast_cases(lambda command, kind: kind == "device" or (command == "dedup"
                                                                   and kind == "deep.jsonl"))
@pytest.mark.parametrize("kind", ["deep.json", "deep.jsonl", "fifo", "device", "loop"])
@pytest.mark.parametrize("command", ["generate", "inspect", "export", "dedup"])
def test_commands_answer_hostile_inputs_with_one_line(tmp_path, odd_paths, command, kind):
    path, expected = _bad_input(kind, tmp_path, odd_paths)
    out = tmp_path / "out"
    result = cli(*_command(command, path, out))
    assert_one_line_exit_2(result, expected)
    assert not out.exists()


# ---------------------------------------------------------------------------
# CSV: a row with more fields than the header
# ---------------------------------------------------------------------------

WIDE_FIRST = "instruction,input,output\nName a colour,in,out,extra1,extra2\n"
WIDE_LATER = ('instruction,input,output\nName a colour,,Red\n"Spans\ntwo lines",,x\n'
              "Name a fruit,,Apple,Pear\n")


@pytest.mark.parametrize("text, line", [(WIDE_FIRST, 2), (WIDE_LATER, 4)])
def test_a_csv_row_with_extra_fields_is_an_error_naming_its_line(tmp_path, text, line):
    # pandas' default shifts a wide first row into the index: "instruction" became "out".
    path = write(tmp_path / "wide.csv", text)
    with pytest.raises(SeedError, match=rf"wide\.csv:{line}: \d fields, but the header has 3"):
        load_seed_tasks(path)
    with pytest.raises(InspectError, match=rf"wide\.csv:{line}: \d fields, but the header has 3"):
        load_run(path)


def test_export_of_a_wide_csv_writes_nothing(tmp_path):
    path = write(tmp_path / "wide.csv", WIDE_FIRST)
    out = tmp_path / "out"
    result = cli("export", str(path), "--format", "alpaca", "--output", str(out))
    assert_one_line_exit_2(result, "wide.csv:2: 5 fields, but the header has 3")
    assert not out.exists()


def test_a_csv_row_with_fewer_fields_is_a_missing_field(tmp_path):
    path = write(tmp_path / "short.csv", "instruction,input,output\nName a colour,in\n")
    with pytest.raises(SeedError, match=r"short\.csv:2: field 'output': missing"):
        load_seed_tasks(path)
    with pytest.raises(InspectError, match=r"short\.csv:2: field 'output': missing \(null\)"):
        load_run(path)


def test_well_formed_csv_still_reads_with_quoted_commas_and_newlines(tmp_path):
    path = write(tmp_path / "ok.csv",
                 'instruction,input,output\n"Add 1, 2 and 3.",,6\n"Two\nlines here.",a,b\n')
    columns, rows = read_csv_records(path)
    assert columns == ["instruction", "input", "output"]
    assert [r["instruction"] for r in rows] == ["Add 1, 2 and 3.", "Two\nlines here."]
    assert [t.instruction for t in load_seed_tasks(path)] == ["Add 1, 2 and 3.",
                                                              "Two\nlines here."]
    assert load_run(path).frame["output"].tolist() == ["6", "b"]


def test_a_csv_header_with_a_duplicate_column_is_an_error(tmp_path):
    path = write(tmp_path / "dup.csv", "instruction,output,output\nName a colour,a,b\n")
    with pytest.raises(SeedError, match=r"dup\.csv:1: duplicate column 'output'"):
        load_seed_tasks(path)


# ---------------------------------------------------------------------------
# Deep JSON in every reader
# ---------------------------------------------------------------------------


def test_deep_json_names_file_and_line(tmp_path):
    array = write(tmp_path / "deep.json", DEEP)
    lines = write(tmp_path / "deep.jsonl", json.dumps(GOOD) + "\n" + DEEP + "\n")
    inner = write(tmp_path / "inner.json", json.dumps([GOOD]).replace('"Red."', DEEP))
    with pytest.raises(SeedError, match=r"deep\.json: invalid JSON: nested too deeply"):
        load_seed_tasks(array)
    with pytest.raises(SeedError, match=r"deep\.jsonl:2: invalid JSON: nested too deeply"):
        load_seed_tasks(lines)
    with pytest.raises(SeedError, match=r"inner\.json: invalid JSON: nested too deeply"):
        load_seed_tasks(inner)
    with pytest.raises(InspectError, match=r"deep\.json: invalid JSON: nested too deeply"):
        load_run(array)
    with pytest.raises(InspectError, match=r"deep\.jsonl:2: invalid JSON: nested too deeply"):
        load_run(lines)
    with pytest.raises(DedupInputError, match=r"deep\.jsonl:2: invalid JSON: nested too deeply"):
        dedup_file(lines, "instruction", tmp_path / "out.parquet")


# ---------------------------------------------------------------------------
# Null fields
# ---------------------------------------------------------------------------


def test_a_null_field_is_reported_as_missing_not_as_a_float(tmp_path):
    path = write(tmp_path / "null.jsonl", json.dumps(GOOD) + "\n"
                 + json.dumps({**GOOD, "instruction": None}) + "\n")
    with pytest.raises(InspectError) as inspected:
        load_run(path)
    assert str(inspected.value) == f"{path}:2: field 'instruction': missing (null)"
    with pytest.raises(DedupInputError) as deduped:
        dedup_file(path, "instruction", tmp_path / "out.parquet")
    assert "missing (null)" in str(deduped.value) and "float" not in str(deduped.value)
    with pytest.raises(SeedError, match=r"null\.jsonl:2: field 'instruction': missing"):
        load_seed_tasks(path)
    array = write(tmp_path / "null.json", json.dumps([GOOD, {**GOOD, "output": None}]))
    with pytest.raises(InspectError, match=r"null\.json \(record 2\): field 'output': missing"):
        load_run(array)


# ---------------------------------------------------------------------------
# Configuration: values that used to fail late, and strict types
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("body, expected", [
    ('[shards]\ncompression = "bogus"\n', "c.toml:2: field 'shards.compression': "),
    ('[shards]\ncompression = "bz2"\n', "c.toml:2: field 'shards.compression': "),
    ('model = "m"\n[engine]\ndtype = "fp8"\n', "c.toml:3: field 'engine.dtype': "),
    ("[generation]\nprompt_tasks = true\n", "c.toml:2: field 'generation.prompt_tasks': "),
    ("seed = 1.5\n", "c.toml:1: field 'seed': "),
    ('[generation]\ntemperature = "0.7"\n', "c.toml:2: field 'generation.temperature': "),
    ("[filters]\nreject_punctuation_start = 1\n",
     "c.toml:2: field 'filters.reject_punctuation_start': "),
])
def test_config_values_are_checked_up_front_and_strictly(tmp_path, body, expected):
    path = write(tmp_path / "c.toml", body)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_config_keeps_ints_for_floats_paths_and_cli_overrides(tmp_path):
    path = write(tmp_path / "c.toml", 'seeds = "x.jsonl"\n[generation]\ntemperature = 1\n'
                                      '[shards]\ncompression = "snappy"\n'
                                      '[engine]\ndtype = "bfloat16"\n')
    config = load_config(path, {"generation.prompt_tasks": 7, "generation.top_p": 1,
                                "seed": 3})
    assert config.generation.temperature == 1.0 and config.generation.top_p == 1.0
    assert config.generation.prompt_tasks == 7 and config.seed == 3
    assert config.shards.compression == "snappy" and config.engine.dtype == "bfloat16"
    assert config.seeds == Path("x.jsonl")
    with pytest.raises(ConfigError, match="option --dtype: "):
        load_config(None, {"engine.dtype": "int4"}, {"engine.dtype": "--dtype"})


@pytest.mark.parametrize("kind", ["fifo", "device", "loop"])
def test_generate_refuses_a_config_that_is_not_a_regular_file(tmp_path, kind):
    config = tmp_path / "c.toml"
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "device":
        config.symlink_to("/dev/zero")
    else:
        config.symlink_to(tmp_path / "d.toml")
        (tmp_path / "d.toml").symlink_to(config)
    out = tmp_path / "out"
    result = cli("generate", "--config", str(config), "--output", str(out), *NO_ENGINE)
    assert_one_line_exit_2(result, f"{config}: {REASONS[kind]}")
    assert not out.exists()


def test_generate_with_a_bad_compression_writes_nothing(tmp_path):
    config = write(tmp_path / "c.toml", '[shards]\ncompression = "bogus"\n')
    out = tmp_path / "out"
    result = cli("generate", "--config", str(config), "--output", str(out), *NO_ENGINE)
    assert_one_line_exit_2(result, "c.toml:2: field 'shards.compression': ")
    assert not out.exists()


# ---------------------------------------------------------------------------
# Seed instructions that cannot fit the context
# ---------------------------------------------------------------------------


def test_a_seed_instruction_longer_than_the_context_is_refused_before_writing(tmp_path):
    seeds = write(tmp_path / "seeds.jsonl", json.dumps(GOOD) + "\n" + json.dumps(
        {**GOOD, "instruction": " ".join(["word"] * 20_000)}) + "\n")
    out = tmp_path / "out"
    result = cli("generate", "--seeds", str(seeds), "--output", str(out), *NO_ENGINE)
    assert_one_line_exit_2(result, f"{seeds}:2: field 'instruction': 20000 words",
                           "engine.max_model_len 2048 - generation.max_tokens 1024")
    assert not out.exists()


def test_the_seed_length_bound_is_context_minus_output_tokens(tmp_path):
    # 200 words: over filters.max_words (150), suspicious, but it can fit: allowed.
    seeds = write(tmp_path / "seeds.jsonl", json.dumps(
        {**GOOD, "instruction": " ".join(["word"] * 200)}) + "\n")
    assert len(load_seed_tasks(seeds, 2048 - 1024)) == 1
    with pytest.raises(SeedError, match=r"seeds\.jsonl:1: field 'instruction': 200 words, "
                                        r"more than 199"):
        load_seed_tasks(seeds, 199)
    out = tmp_path / "out"
    result = cli("generate", "--seeds", str(seeds), "--output", str(out),
                 "--max-model-len", "256", "--max-tokens", "64", *NO_ENGINE)
    assert_one_line_exit_2(result, "seeds.jsonl:1: field 'instruction': 200 words, more than 192")
    assert not out.exists()


def test_max_tokens_that_leave_no_room_for_a_prompt_are_refused(tmp_path):
    out = tmp_path / "out"
    result = cli("generate", "--output", str(out), "--max-model-len", "256",
                 "--max-tokens", "256", *NO_ENGINE)
    assert_one_line_exit_2(result, "generation.max_tokens 256 leaves no room for a prompt in "
                                   "engine.max_model_len 256")
    assert not out.exists()
