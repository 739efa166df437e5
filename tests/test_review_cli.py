"""`selfinstruct review` on bad input (one line, exit 2, nothing written) and as a
server: a sample larger than the run is noted and served, SIGTERM and Ctrl-C stop it
with its summary and exit 0, a second run goes on where the first stopped; and
`--help` / `review --help` load no engine or pandas."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from selfinstruct.cli import main
from selfinstruct.review.labels import labels_path
from selfinstruct.review.sample import sample_path
from selfinstruct.storage.files import write_json
from tests.small_run import TASKS, write_small_run

BIN = Path(sys.executable).parent / "selfinstruct"
ROOT = Path(__file__).resolve().parent.parent
ROWS = sum(len(t[4]) for t in TASKS)  # 9


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    return write_small_run(tmp_path_factory.mktemp("review-cli"))


@pytest.fixture
def run(small_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(small_run, copy)
    return copy


def review(*args: str):
    return CliRunner().invoke(main, ["review", *args], catch_exceptions=False)


def one_line_error(result, *parts: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def test_a_run_without_rows_is_one_line_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_json(empty / "manifest.json", {"format": "selfinstruct-shards/1", "files": [],
                                         "rows": 0, "tasks": 0, "status": "complete"})
    one_line_error(review(str(empty), "--reviewer", "x"), str(empty), "no rows to review")
    assert sorted(p.name for p in empty.iterdir()) == ["manifest.json"]


def test_a_plain_records_file_is_refused_in_one_line(tmp_path):
    records = tmp_path / "data.jsonl"
    records.write_text(json.dumps({"instruction": "Add 1 and 2.", "input": "",
                                   "output": "3"}) + "\n")
    one_line_error(review(str(records), "--reviewer", "x"), str(records),
                   "not a run directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


@pytest.mark.parametrize("make, expected", [
    (lambda t: t / "absent", "no such file or directory"),
    (lambda t: (t / "notes.txt", (t / "notes.txt").write_text("hi"))[0], "notes.txt"),
    (lambda t: (t / "dir", (t / "dir").mkdir())[0], "no manifest.json"),
])
def test_other_paths_that_are_not_runs_are_refused_in_one_line(tmp_path, make, expected):
    path = make(tmp_path)
    one_line_error(review(str(path), "--reviewer", "x"), expected)
    assert not (tmp_path / "review").exists() and not (path / "review").exists()


def test_a_port_in_use_is_one_line_and_writes_nothing(run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        one_line_error(review(str(run), "--reviewer", "x", "--port", str(port)),
                       f"127.0.0.1:{port}", "port is in use")
    assert not (run / "review").exists()


def test_a_corrupt_labels_file_is_refused_with_its_path_and_kept(run):
    path = labels_path(run, "x")
    path.parent.mkdir()
    path.write_bytes(b"PAR1 damaged \x00\xff")
    one_line_error(review(str(run), "--reviewer", "x"), str(path),
                   "not a readable labels file")
    assert path.read_bytes() == b"PAR1 damaged \x00\xff"
    pq.write_table(pa.table({"example_key": ["k"]}), path)
    before = path.read_bytes()
    one_line_error(review(str(run), "--reviewer", "x"), str(path), "missing column")
    assert path.read_bytes() == before


def test_a_bad_reviewer_name_is_refused_in_one_line(run):
    one_line_error(review(str(run), "--reviewer", "../x"), "--reviewer '../x'")
    assert not (run / "review").exists()


def test_stratify_score_on_an_unjudged_run_is_refused_in_one_line(run):
    one_line_error(review(str(run), "--reviewer", "x", "--stratify", "score"), "not judged")
    assert not (run / "review").exists()


def test_a_kept_sample_with_other_options_is_refused_in_one_line(run):
    from selfinstruct.analysis.loading import load_run
    from selfinstruct.review.sample import open_sample

    open_sample(run, load_run(run).frame, 5, 1, None)
    before = sample_path(run).read_bytes()
    one_line_error(review(str(run), "--reviewer", "x", "--seed", "2"),
                   str(sample_path(run)), "--sample 5 --seed 1", "--seed 2", "--resample")
    assert sample_path(run).read_bytes() == before
    assert not labels_path(run, "x").exists()


# -- serving -----------------------------------------------------------------------------

class Server:
    """`review` as a subprocess; ``url`` is the address it printed. A thread reads its
    stdout from the start, so the pipe never fills and no line is lost."""

    def __init__(self, run: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [str(BIN), "review", str(run), "--port", "0", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self._next(deadline - time.monotonic())
            if line is None:
                break
            if line.startswith("Open http://"):
                self.url = line.split()[1]
                return
        self.process.kill()
        pytest.fail(f"no address printed: {''.join(self.out)}{self.process.stderr.read()}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _next(self, timeout: float) -> str | None:
        try:
            line = self.lines.get(timeout=max(0.1, timeout))
        except queue.Empty:
            return None
        if line is not None:
            self.out.append(line)
        return line

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, signum: int) -> tuple[int, str, str]:
        """Send ``signum``; return the exit status and all it printed (stdout, stderr)."""
        self.process.send_signal(signum)
        started = time.monotonic()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        assert time.monotonic() - started < 10, "the server took too long to stop"
        while self._next(10) is not None:
            pass
        return self.process.returncode, "".join(self.out), self.process.stderr.read()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def put_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_sample_larger_than_the_run_is_noted_served_and_stopped_by_sigterm(run):
    server = Server(run, "--sample", "500", "--reviewer", "x")
    try:
        url = server.url
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        session = get_json(url + "api/session")
        assert session["size"] == ROWS and session["answered"] == 0
        assert session["reviewer"] == "x" and session["judged"] is False
        first = session["examples"][0]["id"]
        put_json(url + f"api/labels/{first}", {"instruction": True, "input": True,
                                               "output": False})
    finally:
        status, out, err = server.stop(signal.SIGTERM)
    assert status == 0, (out, err)
    assert f"--sample 500 is more than the run's {ROWS} rows: reviewing all {ROWS}" in err
    assert f"Reviewing {ROWS} examples of {run} as x (0 answered)" in out
    assert f"Stopped: 1 of {ROWS} answered, in {labels_path(run, 'x')}" in out
    assert "Traceback" not in err and "Aborted" not in err
    assert labels_path(run, "x").is_file() and sample_path(run).is_file()

    # the same command goes on with the kept sample and answers; Ctrl-C stops it too
    server = Server(run, "--reviewer", "x")
    try:
        session = get_json(server.url + "api/session")
        assert session["answered"] == 1 and session["first_open"] == 1
        assert session["examples"][0] == {"id": first, "complete": True}
    finally:
        status, out, err = server.stop(signal.SIGINT)
    assert status == 0, (out, err)
    assert "(1 answered)" in out and f"Stopped: 1 of {ROWS} answered" in out
    assert "more than the run" not in err and "Traceback" not in err


def test_a_second_server_for_the_same_reviewer_is_refused_while_the_first_runs(run):
    server = Server(run, "--reviewer", "x")
    try:
        result = subprocess.run([str(BIN), "review", str(run), "--reviewer", "x", "--port", "0"],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 2 and "already reviewing" in result.stderr
        assert f"pid {server.pid}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        status, out, err = server.stop(signal.SIGTERM)
    assert status == 0, (out, err)


# -- start-up stays light ------------------------------------------------------------------

def test_help_and_review_help_load_no_engine_and_no_pandas():
    probe = ("import sys\nfrom selfinstruct.cli import main\n"
             "for args in (['--help'], ['review', '--help']):\n"
             "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
             "bad = [m for m in ('vllm', 'torch', 'transformers', 'pandas', 'pyarrow', "
             "'starlette', 'uvicorn') if m in sys.modules]\n"
             "print('LOADED', bad)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "LOADED []" in result.stdout, result.stdout + result.stderr
    assert "review" in result.stdout and "--stratify" in result.stdout
    assert "--resample" in result.stdout and "--reviewer" in result.stdout


def test_review_help_in_a_fresh_process_imports_no_pandas():
    result = subprocess.run([sys.executable, "-X", "importtime", str(BIN), "review", "--help"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and "Review a sample" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0]
                for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "click" in imported  # the probe sees imports at all
    assert not imported & {"vllm", "torch", "pandas", "pyarrow"}, imported
