"""Every command against hostile input (issue 10, item 7): exit 2, one stderr line, no
traceback, nothing written.

Each case builds its input in a fresh directory, runs one command as a user would (a
subprocess of the installed ``selfinstruct``), and compares the directory, file by file,
before and after. A FIFO or a device as input must not block or exhaust memory, so every
command runs under a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .small_run import write_small_run
from .test_safety_runs import make_scripted_run

BIN = Path(sys.executable).parent / "selfinstruct"

GOOD_SEED = json.dumps({"id": "a", "instruction": "Add the two numbers together.",
                        "instances": [{"input": "1, 2", "output": "3"}]}) + "\n"
NESTED = "[" * 100000 + "]" * 100000


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[name] = "link:" + os.readlink(path)
        elif path.is_file():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[name] = "dir" if path.is_dir() else "other"
    return out


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory) -> Path:
    """A whole run with its ledger (made by GenerateJob once per module; copied into
    each workspace)."""
    return make_scripted_run(tmp_path_factory.mktemp("whole"))


def copy_run(template: Path, base: Path) -> Path:
    """``template``'s directory (seeds, model, run) copied to ``base``, the absolute
    paths in its manifest moved with it: the run as if ``generate`` had made it there."""
    shutil.copytree(template.parent, base, symlinks=True)
    manifest = base / template.name / "manifest.json"
    old, new = (json.dumps(str(p))[1:-1] for p in (template.parent, base))
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(old, new),
                        encoding="utf-8")
    return base / template.name


def workspace(t: Path, whole_run: Path) -> dict[str, Path]:
    """Good inputs: seeds, a model directory that resolves (never loaded), a small run
    (shards and manifest only) and a whole run with its ledger (for refilter)."""
    (t / "seeds.jsonl").write_text(GOOD_SEED)
    (t / "model").mkdir()
    (t / "model" / "config.json").write_text("{}")
    (t / "records.jsonl").write_text(json.dumps({"instruction": "Say hi.", "input": "",
                                                 "output": "Hi."}) + "\n")
    (t / "afile").write_text("a regular file")
    run = write_small_run(t / "small")
    ledger_run = copy_run(whole_run, t / "whole")
    return {"seeds": t / "seeds.jsonl", "model": t / "model", "records": t / "records.jsonl",
            "file": t / "afile", "run": run, "ledger_run": ledger_run}


NO_JUDGE = ("--base-url", "http://127.0.0.1:9/v1")
"""``score``'s judge: a port nobody serves, so that a check that lets a case through
fails on the judge's endpoint instead of starting an engine."""


def score(w: dict[str, Path], source: Path, output: Path, *extra: str) -> list[str]:
    return ["score", str(source), "-o", str(output), *NO_JUDGE, *extra]


def generate(w: dict[str, Path], *extra: str, seeds: Path | None = None) -> list[str]:
    return ["generate", "--seeds", str(seeds or w["seeds"]), "--model", str(w["model"]), *extra]


def hostile_file(t: Path, kind: str, name: str = "input.jsonl") -> Path:
    path = t / name
    if kind == "nested":
        path.write_text(NESTED)
    elif kind == "nested-jsonl":
        path.write_text(GOOD_SEED + NESTED + "\n")
    elif kind == "symlink-loop":
        os.symlink(t / f"{name}.b", path)
        os.symlink(path, t / f"{name}.b")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.symlink("/dev/zero", path)
    return path


INPUT_KINDS = {
    "nested": "nested too deeply",
    "nested-jsonl": ":2:",
    "symlink-loop": "input.jsonl",
    "fifo": "not a regular file",
    "device": "not a regular file",
}

# command name -> how it takes an input file
READERS: dict[str, Callable[[dict[str, Path], Path, Path], list[str]]] = {
    "generate": lambda w, f, t: generate(w, "-o", str(t / "out"), seeds=f),
    "dedup": lambda w, f, t: ["dedup", str(f), "-o", str(t / "out.parquet")],
    "inspect": lambda w, f, t: ["inspect", str(f), "--tokenizer", "none"],
    "export": lambda w, f, t: ["export", str(f), "--format", "alpaca", "-o", str(t / "out"),
                               "--tokenizer", "none"],
    "score": lambda w, f, t: score(w, f, t / "out"),
}


def unwritable_cases() -> list[tuple[str, Callable[[dict[str, Path], Path], list[str]], str]]:
    """(case id, command builder, expected text) for outputs that cannot be written."""
    under_file = "not a directory"
    return [
        ("generate-under-file", lambda w, t: generate(w, "-o", str(w["file"] / "x")),
         under_file),
        ("generate-onto-file", lambda w, t: generate(w, "-o", str(w["file"])),
         "not a directory"),
        ("refilter-under-file", lambda w, t: ["refilter", str(w["ledger_run"]), "-o",
                                              str(w["file"] / "x")], under_file),
        ("refilter-onto-file", lambda w, t: ["refilter", str(w["ledger_run"]), "-o",
                                             str(w["file"])], "not a directory"),
        ("export-under-file", lambda w, t: ["export", str(w["run"]), "--format", "alpaca",
                                            "-o", str(w["file"] / "x"), "--tokenizer", "none"],
         under_file),
        ("export-onto-file", lambda w, t: ["export", str(w["run"]), "--format", "alpaca",
                                           "-o", str(w["file"]), "--tokenizer", "none"],
         "not a directory"),
        ("dedup-under-file", lambda w, t: ["dedup", str(w["records"]), "-o",
                                           str(w["file"] / "x.parquet")], under_file),
        ("dedup-onto-directory", lambda w, t: ["dedup", str(w["records"]), "-o",
                                               str(w["model"])], "directory"),
        ("inspect-report-under-file", lambda w, t: ["inspect", str(w["run"]), "--tokenizer",
                                                    "none", "--report", str(w["file"] / "r")],
         under_file),
        ("inspect-report-onto-file", lambda w, t: ["inspect", str(w["run"]), "--tokenizer",
                                                   "none", "--report", str(w["file"])],
         "not a directory"),
        ("score-under-file", lambda w, t: score(w, w["records"], w["file"] / "x"), under_file),
        ("score-onto-file", lambda w, t: score(w, w["records"], w["file"]), "not a directory"),
    ]


def bad_value_cases() -> list[tuple[str, Callable[[dict[str, Path], Path], list[str]], str]]:
    def toml(t: Path, text: str) -> str:
        (t / "c.toml").write_text(text)
        return str(t / "c.toml")

    return [
        ("dedup-threshold-nan", lambda w, t: ["dedup", str(w["records"]), "-o",
                                              str(t / "o.parquet"), "--threshold", "nan"],
         "threshold"),
        ("generate-temperature-nan", lambda w, t: generate(w, "-o", str(t / "o"),
                                                           "--temperature", "nan"),
         "temperature"),
        ("refilter-threshold-nan", lambda w, t: ["refilter", str(w["ledger_run"]),
                                                 "-o", str(t / "o"),
                                                 "--rouge-threshold", "nan"], "rouge"),
        ("compression-bogus", lambda w, t: generate(w, "-o", str(t / "o"), "--config",
                                                    toml(t, '[shards]\ncompression = "bogus"\n')),
         "c.toml:2: field 'shards.compression'"),
        ("dtype-bogus", lambda w, t: generate(w, "-o", str(t / "o"), "--config",
                                              toml(t, '[engine]\ndtype = "float7"\n')),
         "c.toml:2: field 'engine.dtype'"),
        ("prompt-tasks-bool", lambda w, t: generate(w, "-o", str(t / "o"), "--config",
                                                    toml(t, "[generation]\nprompt_tasks = true\n")),
         "c.toml:2: field 'generation.prompt_tasks'"),
        ("refilter-a-file", lambda w, t: ["refilter", str(w["file"]), "-o", str(t / "o")],
         "afile: not a directory"),
        ("dedup-a-directory-of-nothing", lambda w, t: ["dedup", str(w["model"]), "-o",
                                                       str(t / "o.parquet")], "model"),
        ("score-min-quality-nan", lambda w, t: score(w, w["records"], t / "o", "--min-quality",
                                                     "nan"), "option --min-quality"),
        ("score-keep-best-inf", lambda w, t: score(w, w["records"], t / "o", "--keep-best",
                                                   "inf"), "option --keep-best"),
        ("score-rubric-outside-prompts", lambda w, t: score(w, w["records"], t / "o", "--rubric",
                                                            "../judge"), "option --rubric"),
        ("score-scale-bool", lambda w, t: score(w, w["records"], t / "o", "--config",
                                                toml(t, "[quality]\nscale_max = true\n")),
         "c.toml:2: field 'quality.scale_max'"),
        ("score-a-directory-of-nothing", lambda w, t: score(w, w["model"], t / "o"), "model"),
    ]


def check(t: Path, args: list[str], expected: str) -> None:
    before = snapshot(t)
    try:
        result = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120,
                                cwd=t)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args} did not finish in 120 s (blocked on its input?)")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (args, result.stdout[-500:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert expected in lines[0], lines[0]
    assert snapshot(t) == before, f"{args} wrote something"


@pytest.mark.fast_cases(lambda command, kind: kind == "fifo" or (
    command in ("generate", "score") and kind == "nested-jsonl"))
@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
@pytest.mark.parametrize("command", sorted(READERS))
def test_hostile_input_files(tmp_path, whole_run, command, kind):
    w = workspace(tmp_path, whole_run)
    if kind == "nested-jsonl" and command in ("inspect", "export", "dedup", "score"):
        path = hostile_file(tmp_path, kind)
        path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + NESTED + "\n")
    else:
        path = hostile_file(tmp_path, kind)
    check(tmp_path, READERS[command](w, path, tmp_path), INPUT_KINDS[kind])


@pytest.mark.fast_cases("generate-under-file", "refilter-onto-file", "inspect-report-under-file",
                        "score-onto-file")
@pytest.mark.parametrize("case, build, expected", unwritable_cases(),
                         ids=[c[0] for c in unwritable_cases()])
def test_unwritable_outputs(tmp_path, whole_run, case, build, expected):
    w = workspace(tmp_path, whole_run)
    check(tmp_path, build(w, tmp_path), expected)


@pytest.mark.fast_cases("generate-temperature-nan", "refilter-threshold-nan", "compression-bogus",
                        "dedup-a-directory-of-nothing", "score-scale-bool")
@pytest.mark.parametrize("case, build, expected", bad_value_cases(),
                         ids=[c[0] for c in bad_value_cases()])
def test_values_that_pass_a_first_look_but_fail_later(tmp_path, whole_run, case, build,
                                                      expected):
    w = workspace(tmp_path, whole_run)
    check(tmp_path, build(w, tmp_path), expected)


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty read-only mount (root ignores permission bits); skipped where mounting fails."""
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.fast_cases(lambda command: command in ("generate", "export", "score"))
@pytest.mark.parametrize("command", ["generate", "refilter", "export", "dedup", "inspect",
                                     "score"])
def test_outputs_on_a_read_only_file_system(tmp_path, whole_run, read_only_dir, command):
    w = workspace(tmp_path, whole_run)
    target = read_only_dir / "out"
    args = {
        "generate": generate(w, "-o", str(target)),
        "refilter": ["refilter", str(w["ledger_run"]), "-o", str(target)],
        "export": ["export", str(w["run"]), "--format", "alpaca", "-o", str(target),
                   "--tokenizer", "none"],
        "dedup": ["dedup", str(w["records"]), "-o", str(read_only_dir / "out.parquet")],
        "inspect": ["inspect", str(w["run"]), "--tokenizer", "none", "--report", str(target)],
        "score": score(w, w["records"], target),
    }[command]
    check(tmp_path, args, "read-only")
