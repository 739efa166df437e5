"""Issue 10, defect classes 8 and 12: what reaches the terminal, and SIGTERM.

* Terminal escapes from data: control characters (ESC sequences that clear the
  screen or set the window title, BEL, C1 controls, DEL), bidi overrides and
  rich markup in rows, paths, reasons and error messages are shown escaped,
  never obeyed (selfinstruct.terminal.terminal_safe), by ``inspect`` (tables and
  ``--json``), ``export --check-template``, ``generate``'s summary and every
  ``Error:`` line.
* SIGTERM (``timeout``, Slurm, Kubernetes) stops ``generate`` like Ctrl-C: the
  checkpoint is kept, one line says how to resume, exit status 143, no
  traceback, and the same command resumes. The fast test runs ``generate``
  against a slow fake OpenAI server; the engine-marked one against vLLM.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from selfinstruct.storage.manifest import MANIFEST
from selfinstruct.storage.shards import ShardWriter, messages_for
from selfinstruct.storage.files import write_json
from selfinstruct.terminal import rich_safe, terminal_safe

from .http_fakes import FakeOpenAI
from .small_run import write_small_run
from .engine_sizes import engine_test_config

BIN = Path(sys.executable).parent / "selfinstruct"
REPO = Path(__file__).resolve().parent.parent

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
    writer.add([*rows(), hostile])
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
    from selfinstruct.analysis.chat_check import describe_check

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
    from selfinstruct import progress as report
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
    from selfinstruct import progress as report
    from selfinstruct.pipeline import RunStats

    stats = RunStats(rejections=Counter({"blacklist:[/]\x1b[2J": 1}))
    text = report._top_reasons(stats)
    assert unsafe_chars(text) == []
    from rich.text import Text

    assert Text.from_markup(text).plain == "blacklist:[/]\\u001b[2J 1"


# -- SIGTERM ------------------------------------------------------------------------------------


MAX_ROUNDS = 8


def generate_args(seeds: Path, out: Path, url: str) -> list[str]:
    # the fake server echoes prompts: nearly every instruction is a ROUGE-L duplicate, so
    # the run goes to --max-rounds, two instruction requests a round
    return [str(BIN), "generate", "--seeds", str(seeds), "--base-url", url, "-n", "6",
            "--prompts-per-round", "2", "--max-rounds", str(MAX_ROUNDS), "--seed", "5",
            "-o", str(out)]


@pytest.fixture
def seeds12(tmp_path) -> Path:
    from selfinstruct.seeds import default_seeds_dir

    path = tmp_path / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        path.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    return path


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def committed(out: Path) -> dict[str, str]:
    """commit.json of each committed round -> its sha256."""
    return {p.parent.name: sha256(p) for p in sorted((out / "ledger").glob("*/commit.json"))}


def check_stopped_cleanly(result_code: int, stderr: str, out: Path) -> None:
    """Exit 143, no traceback, the resume line last and alone, a consistent checkpoint."""
    assert result_code == 143, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    resume = [ln for ln in lines if "run the same command again" in ln]
    assert len(resume) == 1 and resume[0] == lines[-1], stderr
    assert resume[0] == (f"Stopped (SIGTERM). Committed rounds and finished stages are saved "
                         f"in {out}; run the same command again to resume.")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "running"
    rounds = len(committed(out))
    assert rounds - 1 <= manifest["rounds"] <= rounds  # the manifest follows each commit
    for f in manifest["files"]:  # the commit record names only complete shards
        assert sha256(out / f["path"]) == f["sha256"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "temporary files left behind"


@pytest.mark.slow
@pytest.mark.parametrize("whole_group", [False, True], ids=["process", "process-group"])
def test_sigterm_mid_stage_keeps_the_checkpoint_and_resumes(tmp_path, seeds12, whole_group):
    out = tmp_path / "run"
    with FakeOpenAI(delay=0.4) as slow:
        proc = subprocess.Popen(generate_args(seeds12, out, slow.url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            # let round 1 commit, then stop with requests of a later round in flight
            wait_for(lambda: committed(out) and len(slow.bodies) > 4 and slow.concurrent > 0,
                     90, "requests in flight after round 1")
            if whole_group:  # Slurm, Kubernetes: the whole process group
                os.killpg(proc.pid, signal.SIGTERM)
            else:  # `timeout`, `kill`: our process only
                proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    check_stopped_cleanly(proc.returncode, stderr, out)
    before = committed(out)
    assert 1 <= len(before) < MAX_ROUNDS

    with FakeOpenAI() as fast:  # the same command, against another endpoint
        again = subprocess.run(generate_args(seeds12, out, fast.url), capture_output=True,
                               text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "Resuming the run in" in again.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["rounds"] == MAX_ROUNDS
    after = committed(out)
    assert {k: after[k] for k in before} == before  # committed rounds were not redone
    assert len(after) == MAX_ROUNDS


def test_a_second_signal_while_stopping_prints_no_traceback(tmp_path, seeds12):
    out = tmp_path / "run"
    with FakeOpenAI(delay=0.4) as slow:
        proc = subprocess.Popen(generate_args(seeds12, out, slow.url), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: slow.concurrent > 0, 90, "a request in flight")
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.01)
            proc.send_signal(signal.SIGINT)  # Ctrl-C while it stops: ignored
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    check_stopped_cleanly(proc.returncode, stderr, out)


def test_a_third_signal_ends_a_hanging_stop_at_once():
    script = textwrap.dedent("""
        import sys, time
        from selfinstruct import signals

        with signals.graceful_stop():
            try:
                print("ready", flush=True)
                time.sleep(60)
            except signals.Terminated:
                print("stopping", flush=True)
                time.sleep(60)  # a clean-up that hangs
        print("not reached", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "stopping\n"
        proc.send_signal(signal.SIGTERM)  # ignored
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # the third: out at once
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and stdout == ""
    assert stderr == "Stopped at once (third signal); run the same command again to resume.\n"


def test_sigterm_in_refilter_leaves_no_partial_output(tmp_path):
    """refilter is stopped by SIGTERM before its end: its half-made output is removed."""
    script = textwrap.dedent("""
        import os, signal, sys
        from pathlib import Path
        import selfinstruct.run as run

        def slow_refilter(source, output, overrides, names, **paths):
            (output / "ledger").mkdir(parents=True)
            (output / "ledger" / "partial").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop refilter")

        run.refilter = slow_refilter
        from selfinstruct.cli import main
        sys.argv = ["selfinstruct", "refilter", sys.argv[1], "-o", sys.argv[2]]
        main()
    """)
    out = tmp_path / "new"
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "src"), str(out)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Stopped (SIGTERM); no output was kept in {out}: run the same command again."]
    assert not out.exists()


def test_sigterm_in_another_command_is_one_line_and_143(tmp_path):
    script = textwrap.dedent("""
        import os, signal, sys
        import selfinstruct.analysis.loading as loading

        def load_run(path):
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop inspect")

        loading.load_run = load_run
        from selfinstruct.cli import main
        sys.argv = ["selfinstruct", "inspect", "anything.jsonl"]
        main()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip() == "Stopped (SIGTERM)."


def test_engine_output_is_relayed_until_a_stop_then_discarded(tmp_path):
    """The offline engine's processes write into relay pipes: copied to our stderr while
    running, dropped once SIGTERM has started the stop (their shutdown tracebacks)."""
    script = textwrap.dedent("""
        import subprocess, sys, time
        from selfinstruct import signals
        from selfinstruct.engines.offline import _EngineOutput

        child = ("import sys, time\\n"
                 "print('engine says hello', file=sys.stderr, flush=True)\\n"
                 "time.sleep(1.5)\\n"
                 "print('Traceback (most recent call last): noise', file=sys.stderr, "
                 "flush=True)\\n"
                 "print('RuntimeError: cancelled', flush=True)\\n")
        output = _EngineOutput()
        with signals.graceful_stop():
            with output.capture():  # as vllm.LLM() starts EngineCore
                proc = subprocess.Popen([sys.executable, "-c", child])
            print("parent after start", file=sys.stderr, flush=True)
            time.sleep(0.8)
            try:
                signals._handler(15, None)  # what SIGTERM does
            except signals.Terminated:
                pass
            proc.wait()
            time.sleep(0.3)
            print("parent done", file=sys.stderr, flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["engine says hello", "parent after start",
                                          "parent done"] or \
        result.stderr.splitlines() == ["parent after start", "engine says hello",
                                       "parent done"], result.stderr
    assert result.stdout == ""


def test_engine_watchdog_survives_sigterm_to_the_group():
    from selfinstruct.engines.offline import _WATCHDOG

    assert "signal.signal(signal.SIGTERM, signal.SIG_IGN)" in _WATCHDOG


# -- the real engine (run by the lead; never in the fast tier) ------------------------------------


def engine_started(pid: int) -> bool:
    """Whether ``generate`` (pid) has its vLLM engine up: the orphan watchdog, started
    right after ``vllm.LLM()`` returns, is among its children."""
    import psutil

    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return False
    for child in children:
        try:
            if "getppid" in " ".join(child.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


@pytest.mark.engine
def test_sigterm_to_a_vllm_run_is_one_line_and_resumes(tmp_path, seeds12, whole_group=True):
    """SIGTERM to a vLLM run in its first stage, to the process group as Slurm and
    Kubernetes send it (the harder case: the engine's processes get it too; SIGTERM
    to the process alone is covered against a fake server above): exit 143, the
    resume line, no traceback from us or from vLLM's EngineCore/workers, no engine
    process left; the same command then resumes and completes."""
    import psutil

    out = tmp_path / "run"
    args = [str(BIN), "generate", "--config", str(engine_test_config(tmp_path)),
            "--seeds", str(seeds12), "-n", "2",
            "--prompts-per-round", "2", "--max-tokens", "64", "--seed", "5", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: engine_started(proc.pid) or proc.poll() is not None, 900,
                 "the engine to start")
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(2)  # into the first stage's requests
        engine = psutil.Process(proc.pid).children(recursive=True)
        if whole_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    check_stopped_cleanly(proc.returncode, stderr, out)
    assert "Traceback" not in stdout, stdout
    assert "RuntimeError" not in stdout + stderr, stdout + stderr
    _, alive = psutil.wait_procs(engine, timeout=30)
    assert not alive, f"engine processes left: {alive}"

    again = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr
    assert "Resuming the run in" in again.stderr
    assert json.loads((out / MANIFEST).read_text())["status"] == "complete"
