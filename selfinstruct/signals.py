"""SIGTERM handled like Ctrl-C: stop at the next safe point, with one line and no traceback.

``timeout``, Slurm, Kubernetes and container runtimes stop a job with SIGTERM
(then SIGKILL after a grace period). Python's default for SIGTERM is to die on
the spot, without running ``finally`` blocks: no resume message, the engine not
shut down, temporary files left. Inside :func:`graceful_stop`, the first
SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``, so every path that
already handles Ctrl-C handles it) in the main thread, and the first SIGINT
raises ``KeyboardInterrupt`` as usual. A second Ctrl-C or SIGTERM while the
run is being stopped is ignored, so it cannot break the clean-up with a second
traceback; a third ends the process at once (``os._exit``) with one line, for
a clean-up that hangs or an interrupt some library swallowed. The run
directory is consistent at every moment anyway (it survives SIGKILL).

While a stop is under way, exceptions in other threads and "Exception
ignored" reports (``threading.excepthook``, ``sys.unraisablehook``) are not
printed either: they are the engine's threads and objects noticing the stop.

:func:`stopping` says whether a stop has begun: the offline engine reads it to
discard what its worker processes print from then on (see
:mod:`selfinstruct.engines.base`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from contextlib import contextmanager

EXIT_SIGTERM = 128 + signal.SIGTERM
"""Exit status after a SIGTERM (143), as a shell reports a process killed by it."""

EXIT_SIGINT = 128 + signal.SIGINT
"""Exit status after Ctrl-C (130)."""

_stopping = threading.Event()
_signals_seen: list[int] = []

_FORCED = b"Stopped at once (third signal); run the same command again to resume.\n"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the first SIGTERM inside :func:`graceful_stop`."""

    signum = signal.SIGTERM


def stopping() -> bool:
    """Whether a SIGTERM or SIGINT has started stopping this process."""
    return _stopping.is_set()


def _handler(signum: int, frame: FrameType | None) -> None:
    _signals_seen.append(signum)
    if _stopping.is_set():
        if len(_signals_seen) >= 3:
            try:
                os.write(2, _FORCED)
            except OSError:
                pass
            os._exit(EXIT_SIGTERM if _signals_seen[0] == signal.SIGTERM else EXIT_SIGINT)
        return
    _stopping.set()
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` and ignore repeated signals, for the block.

    The previous handlers are restored on exit, unless a stop has begun: the
    process is then on its way out, its clean-up done, and both signals are
    ignored from there on (interpreter shutdown would otherwise reset them to
    their defaults, and a late Ctrl-C would kill it with a different status).
    Outside the main thread (where Python cannot set handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook

    def quiet_thread_hook(args: threading.ExceptHookArgs) -> None:
        if not _stopping.is_set():
            thread_hook(args)

    def quiet_unraisable_hook(args: sys.UnraisableHookArgs) -> None:
        if not _stopping.is_set():
            unraisable_hook(args)

    _stopping.clear()
    _signals_seen.clear()
    for sig in previous:
        signal.signal(sig, _handler)
    threading.excepthook, sys.unraisablehook = quiet_thread_hook, quiet_unraisable_hook
    try:
        yield
    finally:
        if _stopping.is_set():
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
        else:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook


__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "Terminated", "graceful_stop", "stopping"]
