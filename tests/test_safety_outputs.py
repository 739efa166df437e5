"""No command writes over, into or around its own inputs; unwritable outputs are one line.

Issue 10, classes 2, 7 (outputs, nan/inf) and 11 (``dedup DIR``): ``dedup``,
``generate --output``, ``refilter --output`` and ``inspect --report`` refuse an
output that is, lies inside or contains an input (after resolving relative
paths, ``..``, symlinks and hard links), and an output that cannot be written
(a regular file on the path, an existing directory where a file is expected or
the reverse, a read-only mount), with exit status 2, one line on stderr and
nothing written. ``dedup`` writes the format of the output's extension and its
kept and dropped files as a pair or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from selfinstruct import safety
from selfinstruct.config import ConfigError, load_config
from selfinstruct.dedup import DedupInputError, dedup_file, dropped_path
from selfinstruct.safety import (OutputPathError, atomic_files, check_output_apart,
                                 check_writable_dir, check_writable_file, overlap)

from .http_fakes import FakeOpenAI
from .small_run import write_small_run

BIN = Path(sys.executable).parent / "selfinstruct"

RECORDS = [
    {"instruction": "Write a poem about the sea.", "input": "", "output": "Waves.", "n": 1},
    {"instruction": "List three colors.", "input": "", "output": "Red, blue, green.", "n": 2},
    {"instruction": "Write a poem about the sea!", "input": "", "output": "Tides.", "n": 3},
    {"instruction": "Explain gravity briefly.", "input": "", "output": "Mass attracts.", "n": 4},
    {"instruction": "list three colors", "input": "", "output": "Pink.", "n": 5},
]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> dict[str, str]:
    """Every entry under ``path`` -> sha256 of a file, "dir" for a directory."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_jsonl(path: Path, records=RECORDS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only tmpfs mount (root ignores permission bits, so
    chmod cannot make one); skipped where mounting is not allowed."""
    target = tmp_path / "ro"
    target.mkdir()
    mount = shutil.which("mount")
    if mount is None or subprocess.run([mount, "-t", "tmpfs", "-o", "ro", "tmpfs", str(target)],
                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


# ---------------------------------------------------------------------------
# The helpers
# ---------------------------------------------------------------------------


def test_overlap_relations_follow_relative_paths_symlinks_and_hard_links(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    src = write_jsonl(data / "g.jsonl")
    (tmp_path / "link.jsonl").symlink_to(src)
    (tmp_path / "linkdir").symlink_to(data, target_is_directory=True)
    os.link(src, tmp_path / "hard.jsonl")
    assert overlap("data/g.jsonl", src) == "is"
    assert overlap("data/x/../g.jsonl", src) == "is"
    assert overlap("link.jsonl", "data/g.jsonl") == "is"
    assert overlap("hard.jsonl", src) == "is"  # same inode
    assert overlap("linkdir/new/out.parquet", data) == "inside"
    assert overlap("data/sub", "linkdir") == "inside"
    assert overlap(".", src) == "contains"
    assert overlap("data/other.jsonl", src) is None
    assert overlap("elsewhere", data) is None
    # with the names a command writes, only a source under one of them is at risk
    assert overlap("data", src, writes=("*.png", "index.html")) is None
    assert overlap("data", src, writes=("*.jsonl",)) == "contains"
    assert overlap("data", data / "g.jsonl", writes=()) is None
    assert overlap("data", data, writes=()) == "is"  # is / inside never depend on writes

    check_output_apart(tmp_path / "out", {"INPUT": src, "--seeds": None})
    with pytest.raises(OutputPathError) as err:
        check_output_apart("link.jsonl", {"INPUT": src}, "-o")
    assert str(err.value) == f"link.jsonl: -o is INPUT {src}; choose another -o"


def test_writable_checks_refuse_what_cannot_be_created(tmp_path):
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    check_writable_file(tmp_path / "new" / "deeper" / "out.parquet")
    check_writable_file(regular)  # an existing file is replaced
    check_writable_dir(tmp_path / "new" / "run")
    check_writable_dir(folder)
    for check, path, expected in (
            (check_writable_file, regular / "out.parquet", "file.txt is not a directory"),
            (check_writable_file, regular / "a" / "b" / "out.parquet", "is not a directory"),
            (check_writable_file, folder, "is a directory"),
            (check_writable_dir, regular, "exists and is not a directory"),
            (check_writable_dir, regular / "run", "file.txt is not a directory")):
        with pytest.raises(OutputPathError, match=expected) as err:
            check(path, "--output")
        assert "\n" not in str(err.value) and "--output" in str(err.value)
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    with pytest.raises(OutputPathError, match="symlink loop"):
        check_writable_dir(loop / "run")


def test_writable_checks_refuse_a_read_only_mount(read_only_dir):
    with pytest.raises(OutputPathError, match="read-only"):
        check_writable_file(read_only_dir / "out.parquet")
    with pytest.raises(OutputPathError, match="read-only"):
        check_writable_dir(read_only_dir / "run")
    with pytest.raises(OutputPathError, match="read-only"):
        check_writable_dir(read_only_dir)


def test_atomic_files_are_all_written_or_none(tmp_path, monkeypatch):
    a, b = tmp_path / "kept.dropped.jsonl", tmp_path / "kept.jsonl"
    with atomic_files(a, b) as (ha, hb):
        ha.write(b"old dropped\n")
        hb.write(b"old kept\n")
    assert (a.read_bytes(), b.read_bytes()) == (b"old dropped\n", b"old kept\n")

    # the writer fails: nothing changes
    with pytest.raises(RuntimeError), atomic_files(a, b) as (ha, hb):
        ha.write(b"new dropped\n")
        raise RuntimeError("boom")
    assert (a.read_bytes(), b.read_bytes()) == (b"old dropped\n", b"old kept\n")

    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(safety.os, "replace", second_rename_fails)
    with pytest.raises(OSError), atomic_files(a, b) as (ha, hb):
        ha.write(b"new dropped\n")
        hb.write(b"new kept\n")
    monkeypatch.undo()
    # the first file was renamed, then put back: the old pair is whole
    assert (a.read_bytes(), b.read_bytes()) == (b"old dropped\n", b"old kept\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.dropped.jsonl", "kept.jsonl"]


# ---------------------------------------------------------------------------
# dedup
# ---------------------------------------------------------------------------


# fast tier: the same path, the dropped companion, a directory input, the control
@pytest.mark.fast_cases("<lambda>0", "<lambda>5", "<lambda>6", "<lambda>8")
@pytest.mark.parametrize("make", [
    lambda t: (["g.jsonl", "-o", "g.jsonl"], "--output is INPUT g.jsonl"),
    lambda t: (["g.jsonl", "-o", "sub/../g.jsonl"], "--output is INPUT"),
    lambda t: (["g.jsonl", "-o", str(t / "g.jsonl")], "--output is INPUT"),
    lambda t: ((t / "link.jsonl").symlink_to(t / "g.jsonl")
               or ["link.jsonl", "-o", "g.jsonl"], "--output is INPUT link.jsonl"),
    lambda t: (os.link(t / "g.jsonl", t / "hard.jsonl")
               or ["g.jsonl", "-o", "hard.jsonl"], "--output is INPUT g.jsonl"),
    # the dropped companion of -o k.jsonl is k.dropped.jsonl: the input
    lambda t: (shutil.copy(t / "g.jsonl", t / "k.dropped.jsonl")
               and ["k.dropped.jsonl", "-o", "k.jsonl"],
               "the dropped-rows file of --output is INPUT k.dropped.jsonl"),
    lambda t: (["data", "-o", "data/kept.parquet"], "--output lies inside INPUT data"),
    lambda t: (["data", "-o", "data/deeper/kept.jsonl"], "lies inside INPUT data"),
    lambda t: (["data", "-o", "kept.parquet"], None),  # control: allowed
])
def test_dedup_refuses_to_write_over_or_into_its_input(tmp_path, make):
    write_jsonl(tmp_path / "g.jsonl")
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "a.jsonl")
    args, expected = make(tmp_path)
    before = tree(tmp_path)
    result = cli("dedup", *args, cwd=tmp_path)
    if expected is None:
        assert result.returncode == 0, result.stderr
        return
    assert_one_line_error(result, expected, "choose another --output")
    assert tree(tmp_path) == before  # not a byte changed, nothing added


@pytest.mark.parametrize("suffix, read", [
    (".parquet", lambda p: pq.read_table(p).to_pylist()),
    (".PQ", lambda p: pq.read_table(p).to_pylist()),
    (".jsonl", lambda p: [json.loads(line) for line in p.read_text("utf-8").splitlines()]),
    (".ndjson", lambda p: [json.loads(line) for line in p.read_text("utf-8").splitlines()]),
    (".json", lambda p: json.loads(p.read_text("utf-8"))),
])
def test_dedup_writes_the_format_of_the_extension(tmp_path, suffix, read):
    src = write_jsonl(tmp_path / "g.jsonl")
    out = tmp_path / f"kept{suffix}"
    stats = dedup_file(src, "instruction", out)
    drop = tmp_path / f"kept.dropped{suffix}"
    assert stats["dropped_output"] == str(drop) == str(dropped_path(out))
    assert read(out) == [RECORDS[i] for i in (0, 1, 3)]
    dropped = read(drop)
    assert [r["n"] for r in dropped] == [3, 5]
    assert [(r["nearest_index"], r["nearest_text"], r["rouge_l"]) for r in dropped] == [
        (0, "Write a poem about the sea.", 1.0), (1, "List three colors.", 1.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["g.jsonl", out.name, drop.name])  # no temporary file left
    # what dedup writes, dedup (and pandas) read back
    again = dedup_file(out, "instruction", tmp_path / "again.parquet")
    assert (again["input"], again["dropped"]) == (3, 0)


def test_dedup_json_output_keeps_unicode_nulls_and_nesting(tmp_path):
    records = [{"instruction": "写一首诗 / a poem", "input": None, "tags": ["a", "b"]},
               {"instruction": "写一首诗 / a poem", "input": "x", "tags": []}]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    dedup_file(src, "instruction", tmp_path / "o.jsonl")
    text = (tmp_path / "o.jsonl").read_text("utf-8")
    assert text == json.dumps(records[0], ensure_ascii=False) + "\n"
    assert pd.read_json(tmp_path / "o.dropped.jsonl", lines=True)["tags"].tolist() == [[]]


@pytest.mark.fast_cases(lambda name: name == "kept")
@pytest.mark.parametrize("name", ["kept.csv", "kept", "kept.txt"])
def test_dedup_refuses_an_output_extension_it_cannot_write(tmp_path, name):
    src = write_jsonl(tmp_path / "g.jsonl")
    before = tree(tmp_path)
    result = cli("dedup", src, "-o", tmp_path / name)
    assert_one_line_error(result, "unknown output format", ".parquet, .jsonl, .ndjson or .json")
    assert tree(tmp_path) == before


def test_dedup_kept_and_dropped_appear_as_a_pair(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "g.jsonl")
    out = tmp_path / "kept.parquet"
    dedup_file(write_jsonl(tmp_path / "first.jsonl", RECORDS[:1]), "instruction", out)
    before = tree(tmp_path)
    real_replace, calls = os.replace, []

    def second_rename_fails(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OutputPathError, match=r"kept\.parquet: cannot write: Input/output error"):
        dedup_file(src, "instruction", out)
    monkeypatch.undo()
    assert tree(tmp_path) == before  # the old pair, whole; no temporary file
    assert pq.read_table(out).num_rows == 1 and pq.read_table(dropped_path(out)).num_rows == 0


@pytest.mark.parametrize("make, expected", [
    (lambda t: t / "file.txt" / "out.parquet", "file.txt is not a directory"),
    (lambda t: t / "file.txt" / "a" / "out.jsonl", "file.txt is not a directory"),
    (lambda t: t / "folder", "is a directory"),
    (lambda t: t / "folder.parquet", "is a directory"),
    (lambda t: (t / "kept.dropped.parquet").mkdir() or t / "kept.parquet", "is a directory"),
])
def test_dedup_unwritable_output_is_one_line_and_writes_nothing(tmp_path, make, expected):
    src = write_jsonl(tmp_path / "g.jsonl")
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.parquet").mkdir()
    out = make(tmp_path)
    before = tree(tmp_path)
    assert_one_line_error(cli("dedup", src, "-o", out), expected)
    assert tree(tmp_path) == before


def test_dedup_into_a_read_only_mount_is_one_line(tmp_path, read_only_dir):
    src = write_jsonl(tmp_path / "g.jsonl")
    for out in (read_only_dir / "kept.parquet", read_only_dir / "sub" / "kept.jsonl"):
        assert_one_line_error(cli("dedup", src, "-o", out), "read-only")
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.fast_cases(lambda value: value == "-nan")
@pytest.mark.parametrize("value", ["nan", "NaN", "-nan"])
def test_dedup_threshold_nan_is_refused(tmp_path, value):
    src = write_jsonl(tmp_path / "g.jsonl")
    result = cli("dedup", src, "--threshold", value, "-o", tmp_path / "o.parquet")
    assert_one_line_error(result, "option --threshold", "not a finite number")
    assert not (tmp_path / "o.parquet").exists()


def test_dedup_reads_a_directory_of_record_files_in_name_order(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "b.jsonl", RECORDS[2:4])
    (data / "a.json").write_text(json.dumps(RECORDS[:2]), encoding="utf-8")
    pd.DataFrame(RECORDS[4:]).to_parquet(data / "c.parquet")
    (data / "notes.txt").write_text("not records")
    write_jsonl(data / ".hidden.jsonl", RECORDS[:1])  # hidden: a temp file, say
    (data / "sub.jsonl").mkdir()  # a directory, whatever its name
    result = cli("dedup", data, "-o", tmp_path / "kept.jsonl")
    assert result.returncode == 0, result.stderr
    assert "5 rows: kept 3, dropped 2" in result.stdout
    kept = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept == [RECORDS[i] for i in (0, 1, 3)]
    dropped = [json.loads(x) for x in (tmp_path / "kept.dropped.jsonl").read_text().splitlines()]
    assert [(r["n"], r["nearest_index"]) for r in dropped] == [(3, 0), (5, 1)]


def test_dedup_directory_errors_name_the_directory_or_the_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert_one_line_error(cli("dedup", empty, "-o", tmp_path / "o.parquet"),
                          f"{empty}: directory holds no record files")
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a.jsonl")
    write_jsonl(data / "b.jsonl", [{"prompt": "no instruction here"}])
    assert_one_line_error(cli("dedup", data, "-o", tmp_path / "o.parquet"),
                          f"{data / 'b.jsonl'}: no field 'instruction'")
    with pytest.raises(DedupInputError, match="directory holds no record files"):
        dedup_file(empty, "instruction", tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


# ---------------------------------------------------------------------------
# nan / inf in the run configuration (generate, refilter)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["generation.temperature", "generation.top_p",
                                 "filters.rouge_threshold", "engine.request_timeout",
                                 "instances.near_duplicate_threshold",
                                 "engine.gpu_memory_utilization"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_config_refuses_nan_and_inf(key, value):
    with pytest.raises(ConfigError, match="finite number"):
        load_config(None, {key: value}, {key: "--x"})


def test_config_file_nan_and_inf_are_refused_naming_the_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[generation]\ntemperature = nan\n")
    with pytest.raises(ConfigError, match=r"c.toml:2: field 'generation.temperature': "
                                          "Input should be a finite number"):
        load_config(path)
    # no upper bound: inf passed range validation (an HTTP request with no timeout)
    path.write_text("seed = 1\n[engine]\nrequest_timeout = inf\n")
    with pytest.raises(ConfigError, match=r"c.toml:3: field 'engine.request_timeout': "
                                          "Input should be a finite number"):
        load_config(path)


@pytest.mark.fast_cases(lambda option: option == "--temperature")
@pytest.mark.parametrize("option", ["--temperature", "--top-p", "--rouge-threshold",
                                    "--request-timeout"])
def test_generate_float_options_refuse_nan(tmp_path, option):
    seeds = write_jsonl(tmp_path / "seeds.jsonl")
    result = cli("generate", "--seeds", seeds, option, "nan", "-o", tmp_path / "out")
    assert_one_line_error(result, f"option {option}", "finite number")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# generate --output
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_server():
    with FakeOpenAI() as fake:
        yield fake


SEED = {"id": "a", "instruction": "Add the two numbers together.",
        "instances": [{"input": "1, 2", "output": "3"}]}


def seeds_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "seeds"
    folder.mkdir()
    write_jsonl(folder / "tasks.jsonl", [SEED])
    return folder


@pytest.mark.fast_cases(lambda make, expected: expected in (
    "--output lies inside the seeds", "tasks.jsonl is not a directory", "--output is the seeds"))
@pytest.mark.parametrize("make, expected", [
    (lambda t: (["--seeds", seeds_dir(t)], t / "seeds" / "run"),
     "--output lies inside the seeds"),
    (lambda t: (["--seeds", seeds_dir(t)], t / "seeds" / "tasks.jsonl"),
     "exists and is not a directory"),
    (lambda t: (["--seeds", seeds_dir(t)], t / "seeds" / "tasks.jsonl" / "run"),
     "tasks.jsonl is not a directory"),
    (lambda t: (["--seeds", write_jsonl(t / "s.jsonl", [SEED])], t / "s.jsonl" / "run"),
     "s.jsonl is not a directory"),
    (lambda t: (["--seeds", seeds_dir(t), "--prompts", shutil.copytree(
        Path(__file__).resolve().parent.parent / "prompts", t / "prompts")], t / "prompts" / "r"),
     "--output lies inside the prompt templates"),
    (lambda t: (["--seeds", seeds_dir(t), "--config", (t / "c.toml").write_text("seed = 1\n")
                 and t / "c.toml"], t / "c.toml" / "run"), "c.toml is not a directory"),
    (lambda t: (["--seeds", seeds_dir(t)], (t / "link").symlink_to(t / "seeds") or t / "link"),
     "--output is the seeds"),
])
def test_generate_output_must_be_apart_from_inputs_and_writable(tmp_path, fake_server, make,
                                                                 expected):
    args, out = make(tmp_path)
    before, sent = tree(tmp_path), len(fake_server.bodies)
    result = cli("generate", *args, "--base-url", fake_server.url, "-n", "1",
                 "--max-rounds", "1", "-o", out)
    assert_one_line_error(result, expected)
    assert tree(tmp_path) == before
    assert len(fake_server.bodies) == sent  # refused before anything was asked


def test_generate_into_a_read_only_mount_is_one_line(tmp_path, fake_server, read_only_dir):
    seeds = seeds_dir(tmp_path)
    for out in (read_only_dir / "run", read_only_dir):
        result = cli("generate", "--seeds", seeds, "--base-url", fake_server.url, "-n", "1",
                     "--max-rounds", "1", "-o", out)
        assert_one_line_error(result, "read-only")
    assert list(read_only_dir.iterdir()) == []


@pytest.mark.slow
def test_generate_resumes_a_run_holding_an_input_where_it_does_not_write(tmp_path,
                                                                         fake_server):
    out = tmp_path / "run"
    common = ["--base-url", fake_server.url, "-n", "1", "--max-rounds", "1",
              "--prompts-per-round", "2", "-o", out]
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [SEED])
    assert cli("generate", "--seeds", seeds, *common).returncode == 0
    inside = out / "seeds.jsonl"  # the user keeps the seeds beside the run: allowed
    shutil.copy(seeds, inside)
    result = cli("generate", "--seeds", inside, *common)
    assert result.returncode == 0, result.stderr  # same seed bytes: the run resumes
    assert "Resuming the run" in result.stdout + result.stderr
    # seeds among the files the run writes: refused
    shard = out / "data" / "shard-00000.parquet"
    assert_one_line_error(cli("generate", "--seeds", shard, *common),
                          "--output contains the seeds")


# ---------------------------------------------------------------------------
# refilter --output and inspect --report, on a real run (fake server)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, fake_server):
    base = tmp_path_factory.mktemp("real")
    seeds = write_jsonl(base / "seeds.jsonl", [SEED, {
        "id": "b", "instruction": "Name a colour of the rainbow.",
        "instances": [{"input": "", "output": "Red."}]}])
    out = base / "run"
    result = cli("generate", "--seeds", seeds, "--base-url", fake_server.url, "-n", "1",
                 "--max-rounds", "1", "--prompts-per-round", "2", "-o", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.fast_cases(lambda make, expected: expected in (
    "--output is the source run", "manifest.json is not a directory",
    "--output contains the source run"))
@pytest.mark.parametrize("make, expected", [
    (lambda run: run, "--output is the source run"),
    (lambda run: run / "data", "--output lies inside the source run"),
    (lambda run: run / "new", "--output lies inside the source run"),
    (lambda run: run / "manifest.json", "exists and is not a directory"),
    (lambda run: run / "manifest.json" / "out", "manifest.json is not a directory"),
    (lambda run: run.parent, "--output contains the source run"),
])
def test_refilter_output_apart_from_the_source_and_writable(real_run, make, expected):
    before = tree(real_run.parent)
    assert_one_line_error(cli("refilter", real_run, "-o", make(real_run)), expected)
    assert tree(real_run.parent) == before


def test_refilter_via_a_symlink_to_the_source_is_refused(real_run, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(real_run, target_is_directory=True)
    before = tree(real_run)
    assert_one_line_error(cli("refilter", real_run, "-o", link / "x"), "lies inside the source")
    assert tree(real_run) == before


def test_refilter_nan_is_refused_and_a_good_output_works(real_run, tmp_path):
    before = tree(real_run)
    for option in ("--rouge-threshold", "--near-duplicate-threshold"):
        result = cli("refilter", real_run, option, "nan", "-o", tmp_path / "nan")
        assert_one_line_error(result, f"option {option}", "finite number")
        assert not (tmp_path / "nan").exists()
    result = cli("refilter", real_run, "-o", tmp_path / "new")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new" / "manifest.json").is_file()
    assert tree(real_run) == before


def test_refilter_into_a_read_only_mount_is_one_line(real_run, read_only_dir):
    assert_one_line_error(cli("refilter", real_run, "-o", read_only_dir / "new"), "read-only")


def test_refilter_checks_the_output_before_reading_the_source(tmp_path):
    run = write_small_run(tmp_path)  # no ledger: refilter could not run it anyway
    before = tree(tmp_path)
    assert_one_line_error(cli("refilter", run, "-o", run / "again"), "lies inside the source run")
    assert tree(tmp_path) == before


@pytest.mark.fast_cases(lambda make, expected: expected in (
    "--report lies inside RUN", "manifest.json is not a directory"))
@pytest.mark.parametrize("make, expected", [
    (lambda run: run, "--report is RUN"),
    (lambda run: run / "report", "--report lies inside RUN"),
    (lambda run: run / "data", "--report lies inside RUN"),
    (lambda run: run / "manifest.json", "exists and is not a directory"),
    (lambda run: run / "manifest.json" / "report", "manifest.json is not a directory"),
])
def test_inspect_report_apart_from_the_run_and_writable(real_run, make, expected):
    before = tree(real_run.parent)
    result = cli("inspect", real_run, "--tokenizer", "none", "--report", make(real_run))
    assert_one_line_error(result, expected)
    assert result.stdout == ""  # refused before any work
    assert tree(real_run.parent) == before


@pytest.mark.slow
def test_inspect_report_beside_a_file_input_but_never_over_it(tmp_path):
    data = tmp_path / "stats.json"  # the name of a file the report writes
    data.write_text(json.dumps(RECORDS))
    before = tree(tmp_path)
    assert_one_line_error(cli("inspect", data, "--tokenizer", "none", "--report", tmp_path),
                          "--report contains RUN")
    assert tree(tmp_path) == before
    beside = tmp_path / "beside"
    beside.mkdir()
    other = beside / "records.json"
    other.write_text(json.dumps(RECORDS))
    result = cli("inspect", other, "--tokenizer", "none", "--report", beside)
    if result.returncode == 0:  # matplotlib installed: the report lands beside the input
        assert (beside / "index.html").is_file()
    else:
        assert_one_line_error(result, "needs matplotlib")
    assert other.read_text() == json.dumps(RECORDS)


def test_inspect_report_into_a_read_only_mount_is_one_line(real_run, read_only_dir):
    result = cli("inspect", real_run, "--tokenizer", "none", "--report", read_only_dir / "r")
    assert_one_line_error(result, "read-only")


def test_inspect_report_inside_the_seeds_directory_is_refused(real_run, tmp_path):
    seeds = seeds_dir(tmp_path)
    result = cli("inspect", real_run, "--seeds", seeds, "--tokenizer", "none",
                 "--report", seeds)
    assert_one_line_error(result, "--report is --seeds")
