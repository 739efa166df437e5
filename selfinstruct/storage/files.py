"""Atomic writes and hashing: every file a run, an export or a command writes goes through here.

A file is written to a temporary sibling, fsynced and renamed, then its directory
is fsynced, so a reader (or a crash) sees the old file or the new one, never part.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..safety import fsync_dir


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success fsync and rename it.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; finished files are ordinary
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> str:
    """Write ``path`` atomically through ``write(handle)`` (its result is ignored); return the
    file's sha256."""
    with atomic_file(path) as handle:
        write(handle)
    return file_digest(path)


def write_bytes_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; return the file's sha256."""
    return write_atomic(path, lambda handle: handle.write(data))


def file_digest(path: Path) -> str:
    """Hex SHA-256 of a file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_bytes_if_changed(path: Path, data: bytes) -> str:
    """Atomically write ``data`` to ``path`` unless the file already holds exactly it.

    Replayed rounds rebuild shards byte for byte; an identical file is left alone.

    Returns:
        The sha256 of ``data``.
    """
    digest = hashlib.sha256(data).hexdigest()
    if not (path.is_file() and file_digest(path) == digest):
        with atomic_file(path) as handle:
            handle.write(data)
    return digest


def take_lock(path: Path, busy: Callable[[str], BaseException]) -> IO[str]:
    """Open ``path`` (created if absent), take an exclusive ``flock`` on it without
    waiting, and write this process's pid into it; the lock lasts until the
    returned handle is closed (or the process ends, however it ends).

    Raises:
        ``busy(holder)``: another process holds the lock; ``holder`` is the pid it
            wrote ("unknown" when none).
    """
    import fcntl

    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (the caller holds it)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise busy(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def write_json(path: Path, data: Any) -> None:
    """Write JSON (UTF-8, indented, trailing newline) atomically."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))
