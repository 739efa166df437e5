"""Issue 10, defect classes 8 and 12: what reaches the terminal, and SIGTERM.

* Terminal escapes from data: control characters (ESC sequences that clear the
  screen or set the window title, BEL, C1 controls, DEL), bidi overrides and
  rich markup in rows, paths, reasons and error messages are shown escaped,
  never obeyed (selfinstruct.terminal.terminal_safe), by ``inspect`` (tables and
  ``--json``), ``export --check-template``, ``generate``'s summary and every
  ``Error:`` line.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from selfinstruct.shards import MANIFEST, ShardWriter, messages_for, write_json
from selfinstruct.terminal import rich_safe, terminal_safe

from .small_run import write_small_run

BIN = Path(sys.executable).parent / "selfinstruct"

# What a hostile row may hold: clear screen, set the window title, a C1 CSI,
# DEL, a right-to-left override and an isolate, rich markup (a closing tag with
# nothing to close raises rich's MarkupError when read as markup).
HOSTILE = ("clear\x1b[2J title\x1b]0;pwned\x07 c1\x9b31m del\x7f "
           "rlo\u202eevil\u202c lri\u2066x\u2069 [bold red]red[/] [/]")

# Characters a terminal acts on (other than LF and TAB), as in terminal.py.
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def unsafe_chars(text: str) -> list[str]:
    return sorted({f"U+{ord(c):04X}" for c in UNSAFE.findall(text)})


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # bytes, decoded strictly: a lone surrogate or raw control must not hide in a decode error;
    # wide enough that rich wraps table cells only at spaces
    result = subprocess.run([str(BIN), *args], capture_output=True, timeout=timeout,
                            env={**os.environ, "COLUMNS": "300"})
    result.stdout = result.stdout.decode("utf-8")
    result.stderr = result.stderr.decode("utf-8")
    return result


# -- terminal_safe itself -----------------------------------------------------------------


def test_terminal_safe_escapes_controls_bidi_and_surrogates_visibly():
    text = terminal_safe(HOSTILE + " cr\r lf\n tab\t nul\x00 surrogate\ud800 é 中")
    assert unsafe_chars(text) == []
    for shown in ("clear\\u001b[2J", "title\\u001b]0;pwned\\u0007", "c1\\u009b31m",
                  "del\\u007f", "rlo\\u202eevil\\u202c", "lri\\u2066x\\u2069", "cr\\r",
                  "lf\n", "tab\t", "nul\\u0000", "surrogate\\ud800", "é 中",
                  "[bold red]red[/]"):
        assert shown in text
    assert "\n" not in terminal_safe("a\nb", newlines=False)
    assert terminal_safe("a\nb", newlines=False) == "a\\nb"
    assert terminal_safe(None) == "None"
    text.encode("utf-8")  # no lone surrogate left


def test_terminal_safe_keeps_json_valid_and_equal():
    value = {"k": HOSTILE + "\ud800\r\n", "\u202e": [1, "\x85"]}
    dumped = json.dumps(value, ensure_ascii=False, indent=2)
    safe = terminal_safe(dumped)
    assert unsafe_chars(safe) == []
    assert json.loads(safe) == json.loads(dumped)


def test_rich_safe_shows_markup_as_text():
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, force_terminal=False, width=200).print(
        f"[bold]row:[/bold] {rich_safe(HOSTILE)}")
    printed = out.getvalue()
    assert "[bold red]red[/] [/]" in printed
    assert unsafe_chars(printed) == []


# -- inspect -------------------------------------------------------------------------------


def write_hostile_run(base: Path) -> Path:
    """The small run with one more task whose instruction, input and output are hostile."""
    out = write_small_run(base)
    from .small_run import rows

    hostile = {
        "id": "r0003-0000-0", "task_id": "r0003-0000", "instruction": "Say " + HOSTILE,
        "input": "in " + HOSTILE, "output": "out " + HOSTILE,
        "messages": messages_for("Say " + HOSTILE, "in " + HOSTILE, "out " + HOSTILE),
        "is_classification": False, "model": "TinyTest", "round": 3,
        "prompt_task_ids": ["seed_1"], "nearest_instruction": None, "nearest_rouge_l": None,
    }
    manifest = json.loads((out / MANIFEST).read_text())
    for f in manifest["files"]:
        (out / f["path"]).unlink()
    writer = ShardWriter(out, shard_size=4)
    writer.add(rows() + [hostile])
    shards = writer.close()
    manifest["files"] = [{"path": s.path, "rows": s.rows, "sha256": s.sha256} for s in shards]
    manifest["rows"] = sum(s.rows for s in shards)
    manifest["tasks"] += 1
    write_json(out / MANIFEST, manifest)
    return out


@pytest.fixture
def hostile_jsonl(tmp_path) -> Path:
    path = tmp_path / "hostile.jsonl"
    rows = [{"instruction": "Say " + HOSTILE, "input": "in " + HOSTILE,
             "output": "out " + HOSTILE},
            {"instruction": "Name a colour.", "input": "", "output": "blue"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_inspect_tables_show_hostile_rows_escaped(tmp_path):
    run = write_hostile_run(tmp_path)
    result = run_cli("inspect", str(run), "--tokenizer", "none", "--sample", "20",
                     "--where", "round>=3")
    assert result.returncode == 0, result.stderr
    assert unsafe_chars(result.stdout + result.stderr) == []
    assert "Traceback" not in result.stderr
    sample = result.stdout[result.stdout.index("Sample rows"):]
    for shown in ("clear\\u001b[2J", "title\\u001b]0;pwned\\u0007", "c1\\u009b31m",
                  "del\\u007f", "rlo\\u202eevil\\u202c", "[bold red]red[/]"):
        assert sample.count(shown) == 3, shown  # instruction, input, output


def test_inspect_plain_file_with_hostile_rows(hostile_jsonl):
    result = run_cli("inspect", str(hostile_jsonl), "--tokenizer", "none", "--sample", "5")
    assert result.returncode == 0, result.stderr
    assert unsafe_chars(result.stdout + result.stderr) == []
    assert result.stdout.count("title\\u001b]0;pwned\\u0007") == 3


def test_inspect_json_escapes_what_json_dumps_leaves_raw(hostile_jsonl):
    result = run_cli("inspect", str(hostile_jsonl), "--tokenizer", "none", "--sample", "5",
                     "--json")
    assert result.returncode == 0, result.stderr
    assert unsafe_chars(result.stdout) == []
    stats = json.loads(result.stdout)  # still JSON, and the data are intact
    instructions = [r["instruction"] for r in stats["samples"]["rows"]]
    assert "Say " + HOSTILE in instructions


def test_error_lines_quoting_data_are_escaped_and_one_line(tmp_path):
    bad = tmp_path / ("title\x1b]0;pwned\x07\u202e[bold]x[/]\nsecond line\x9b.jsonl")
    result = run_cli("inspect", str(bad))
    assert result.returncode == 2
    assert unsafe_chars(result.stderr) == []
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "title\\u001b]0;pwned\\u0007\\u202e[bold]x[/]\\nsecond line\\u009b" in lines[0]


@pytest.mark.parametrize("args", [["dedup", "x.jsonl", "-o", "y.parquet", "--threshold",
                                   "\x1b]0;pwned\x07"],
                                  ["inspect", "--x\x1b]0;pwned\x07\u202e"]])
def test_click_usage_errors_quoting_arguments_stay_escaped(args):
    # click 8.5 quotes values with repr(); the command group escapes whatever it does not
    result = run_cli(*args)
    assert result.returncode == 2
    assert unsafe_chars(result.stderr) == [] and "]0;pwned" in result.stderr


# -- export --check-template, generate's summary ---------------------------------------------


def test_describe_check_lines_are_escaped():
    from selfinstruct.export import describe_check

    result = {"examples": 2, "model": "m\x1b]0;pwned\x07",
              "lengths": {"p50": 1, "p99": 2, "max": 3}, "max_length": 10,
              "too_long": {"rows": 1, "ids": ["id\x1b[2J"]},
              "render_errors": {"rows": 1, "ids": ["e\u202e"], "first": "bad\nline\x9b"},
              "leaks": {"<|im_end|>": {"rows": 1, "ids": ["leak\x07"]}}, "leak_rows": 1,
              "markers": ["<|im_end|>"], "ok": False}
    lines = describe_check(result)
    assert all(unsafe_chars(line) == [] and "\n" not in line for line in lines), lines
    joined = "\n".join(lines)
    assert "m\\u001b]0;pwned\\u0007" in joined and "bad\\nline\\u009b" in joined


def test_generate_summary_shows_hostile_reasons_and_paths_as_text(capsys):
    from selfinstruct import report
    from selfinstruct.pipeline import RunStats

    stats = RunStats(rounds=1, candidates=3, kept_instructions=1, tasks_written=1,
                     rows_written=1,
                     rejections=Counter({"blacklist:[bold]x\x1b[2J": 2}),
                     instance_rejections=Counter({"dup[/]": 1}))
    report.print_summary(stats, Path("/tmp/out[/]\x1b]0;pwned\x07"), 0.0, "http [x]")
    printed = capsys.readouterr().out
    assert unsafe_chars(printed) == []
    assert "blacklist:[bold]x\\u001b[2J" in printed and "dup[/]" in printed
    assert "/tmp/out[/]\\u001b]0;pwned\\u0007/" in printed and "http [x]" in printed


def test_progress_status_line_shows_markup_in_reasons_as_text():
    from selfinstruct import report
    from selfinstruct.pipeline import RunStats

    stats = RunStats(rejections=Counter({"blacklist:[/]\x1b[2J": 1}))
    text = report._top_reasons(stats)
    assert unsafe_chars(text) == []
    from rich.text import Text

    assert Text.from_markup(text).plain == "blacklist:[/]\\u001b[2J 1"
