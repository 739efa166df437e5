"""Output-path safety: no command writes over, into or around its own inputs.

Every command that writes (``generate``, ``refilter``, ``dedup``, ``inspect
--report``; ``export`` can use the same helpers) checks its output path before
it does any work:

* :func:`check_output_apart`: the output is not one of the inputs, does not lie
  inside an input directory, and does not contain an input (paths compared
  after :meth:`pathlib.Path.resolve`, so relative paths, ``..`` and symlinks are
  followed; existing files are also compared by device and inode, so a hard
  link or a bind mount of an input is caught too);
* :func:`check_writable_file` / :func:`check_writable_dir`: the output can be
  created where it is asked for (no regular file on the way, no directory
  where a file is expected or the reverse, no read-only directory or mount),
  so the mistake is one line at the start rather than a traceback at the end;
* :func:`atomic_files`: several files that belong together (``dedup``'s kept
  and dropped rows) written to temporary names and renamed only when all of
  them are complete.

Each check raises :class:`OutputPathError`, whose message is one line naming
the path and the option; the CLI prints it as ``Error: ...`` with exit status 2.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "OutputPathError",
    "atomic_files",
    "check_not_in_run",
    "check_output_apart",
    "check_writable_dir",
    "check_writable_file",
    "enclosing_run",
    "fsync_dir",
    "overlap",
    "resolved",
]


class OutputPathError(ValueError):
    """An output path that would overwrite an input or cannot be written (one line)."""


def resolved(path: str | os.PathLike[str], option: str = "output") -> Path:
    """``path`` made absolute with every symlink followed (missing tails kept as given).

    Raises:
        OutputPathError: a symlink loop on the way.
    """
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 on a symlink loop
        raise OutputPathError(f"{path}: {option}: symlink loop in the path") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (or cannot be looked at)
        return False


def overlap(output: str | os.PathLike[str], source: str | os.PathLike[str],
            writes: Iterable[str] | None = None) -> str | None:
    """How ``output`` overlaps ``source``, or None when they are apart.

    Args:
        output: the file or directory a command writes.
        source: a file or directory it reads.
        writes: for an output *directory*: glob patterns of the top-level names
            the command writes in it (``inspect --report`` writes ``*.png``,
            ``index.html``, ``stats.json``). A source inside the output
            directory overlaps only when its first component below the
            directory matches one of them. None: the command owns the whole
            directory, so any source inside it overlaps.

    Returns:
        ``"is"`` (the same path, or the same file by device and inode),
        ``"inside"`` (output lies inside the source directory), ``"contains"``
        (the source lies inside the output, where the command writes), or None.

    Raises:
        OutputPathError: a symlink loop in the output path (one in the source
            is left to the command's reader, which names it as an input).
    """
    out = resolved(output)
    try:
        src = resolved(source, "input")
    except OutputPathError:  # an input that cannot be resolved is its reader's error
        return None
    if out == src or _same_file(out, src):
        return "is"
    if src in out.parents:
        return "inside"
    for parent in out.parents:  # a bind mount or hard-linked directory of the source
        if _same_file(parent, src):
            return "inside"
    if out in src.parents:
        if writes is None:
            return "contains"
        first = src.relative_to(out).parts[0]
        if any(fnmatch.fnmatchcase(first, pattern) for pattern in writes):
            return "contains"
    return None


_RELATION = {"is": "is", "inside": "lies inside", "contains": "contains"}


def check_output_apart(output: str | os.PathLike[str],
                       inputs: Mapping[str, str | os.PathLike[str] | None],
                       option: str = "--output",
                       writes: Iterable[str] | None = None,
                       name: str | None = None) -> None:
    """Refuse an output that is, lies inside, or contains one of the inputs.

    Writing over an input destroys it; writing inside an input directory adds
    files that the next read of that directory takes for input (a seeds
    directory, a run directory); an output directory that contains an input
    has it overwritten or mixed into the command's own files.

    Args:
        output: the path the command writes (a file or a directory).
        inputs: a label for each input, as the user knows it (``"INPUT"``,
            ``"--seeds"``, ``"the run directory"``) -> its path; None values
            (an option not given) are skipped.
        option: the output's option, for the message.
        writes: see :func:`overlap`.
        name: what the output is, for the message (default: ``option``), e.g.
            ``"the dropped-rows file of --output"`` for a companion file.

    Raises:
        OutputPathError: one line, e.g. ``g.jsonl: --output is INPUT g.jsonl;
            choose another --output``.
    """
    writes = None if writes is None else tuple(writes)
    for label, source in inputs.items():
        if source is None:
            continue
        relation = overlap(output, source, writes)
        if relation is not None:
            raise OutputPathError(f"{output}: {name or option} {_RELATION[relation]} {label} "
                                  f"{source}; choose another {option}")


def enclosing_run(path: str | os.PathLike[str]) -> Path | None:
    """``path`` or its nearest ancestor that is a selfinstruct run directory, or None.

    A run directory holds a ``manifest.json``, or a ``ledger/`` with ``round-*``
    records (a run that crashed before its first manifest).
    """
    from .storage.ledger import LEDGER_DIR
    from .storage.manifest import MANIFEST

    start = resolved(path)
    for directory in (start, *start.parents):
        ledger = directory / LEDGER_DIR
        if (directory / MANIFEST).is_file() or (ledger.is_dir() and any(ledger.glob("round-*"))):
            return directory
    return None


def check_not_in_run(output: str | os.PathLike[str], option: str = "--output",
                     allow_run: bool = False) -> None:
    """Refuse an output inside a run directory: only ``generate`` writes a run, and only
    the one it is resuming (``allow_run``: ``output`` itself may be a run).

    Raises:
        OutputPathError: ``output`` is a run directory (unless ``allow_run``), or lies
            inside one.
    """
    run = enclosing_run(output)
    if run is None or (allow_run and run == resolved(output)):
        return
    where = "is" if run == resolved(output) else f"lies inside {run}, which is"
    raise OutputPathError(f"{output}: {option} {where} a selfinstruct run directory; "
                          f"choose another {option}")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (lstat: a dangling link counts)."""
    for candidate in (path, *path.parents):
        try:
            os.lstat(candidate)
            return candidate
        except FileNotFoundError:
            continue
        except NotADirectoryError:  # a regular file somewhere above: keep climbing to it
            continue
    return Path(path.anchor or ".")


def _check_creatable(path: Path, option: str) -> None:
    """The closest existing ancestor of ``path`` must be a writable directory."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputPathError(f"{path}: {option}: cannot create it, {base} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputPathError(f"{path}: {option}: cannot write in {base} (read-only or no "
                              "permission)")


def check_writable_file(path: str | os.PathLike[str], option: str = "--output") -> None:
    """Refuse a file output that cannot be written: ``path`` is an existing directory,
    has a regular file among its ancestors, or its directory is read-only.

    Missing parent directories are fine (they are created on writing). A check
    now is not a guarantee later; writers still turn ``OSError`` into one line.

    Raises:
        OutputPathError: one line naming ``path`` and ``option``.
    """
    path = Path(path)
    resolved(path, option)
    if path.is_dir():
        raise OutputPathError(f"{path}: {option}: is a directory, expected a file name")
    _check_creatable(path, option)


def check_writable_dir(path: str | os.PathLike[str], option: str = "--output") -> None:
    """Refuse a directory output that cannot be written: ``path`` exists and is not a
    directory, has a regular file among its ancestors, or is (or would be created
    in) a read-only directory.

    Raises:
        OutputPathError: one line naming ``path`` and ``option``.
    """
    path = Path(path)
    resolved(path, option)
    if path.exists():
        if not path.is_dir():
            raise OutputPathError(f"{path}: {option}: exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputPathError(f"{path}: {option}: directory is read-only (or no "
                                  "permission)")
        return
    _check_creatable(path, option)


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so that renames into it survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_files(*paths: Path, mode: str = "wb") -> Iterator[list[IO[Any]]]:
    """Write several files that belong together: all of them, or none.

    Yields one open handle per path, on a temporary sibling (``.<name>.*.tmp``,
    as :func:`selfinstruct.storage.files.atomic_file` names them). When the block
    ends without an exception every file is flushed and fsynced, then they
    are renamed over their targets *in the order given*, so pass the file
    readers look at first (the primary) last: it appears only once its
    companions are in place. If a rename fails, the targets already renamed
    are put back as they were (an older version is restored from a hard-linked
    backup, a new one removed), and on any exception the temporary files are
    removed: the targets are then untouched. (A crash between two renames can
    still leave a new companion beside an old primary; renames in one
    directory take microseconds.)

    Raises:
        OSError: from creating, writing or renaming; nothing is left behind.
    """
    from .storage.files import current_umask

    paths = tuple(Path(p) for p in paths)
    temps: list[Path] = []
    handles: list[IO[Any]] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append(Path(tmp))
            os.chmod(tmp, 0o666 & ~current_umask())
            handles.append(os.fdopen(fd, mode))
        yield handles
        for handle in handles:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        _rename_all(temps, list(paths))
    finally:
        for handle in handles:
            handle.close()
        for temp in temps:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
    for directory in {p.parent for p in paths}:
        fsync_dir(directory)


def _rename_all(temps: list[Path], targets: list[Path]) -> None:
    """Rename each temp over its target in order; undo the done ones on failure."""
    done: list[tuple[Path, Path | None]] = []  # (target, backup of its old version)
    try:
        for tmp, target in zip(temps, targets, strict=True):
            backup = None
            if target.is_file() and not target.is_symlink():
                backup = target.with_name(f".{target.name}.{os.getpid()}.bak.tmp")
                try:
                    os.link(target, backup)
                except OSError:  # no hard links here: the old version cannot be kept
                    backup = None
            try:
                os.replace(tmp, target)
            except BaseException:
                if backup is not None:
                    os.unlink(backup)
                raise
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):
            try:
                if backup is not None:
                    os.replace(backup, target)
                else:
                    os.unlink(target)
            except OSError:
                pass
        raise
    for _, backup in done:
        if backup is not None:
            os.unlink(backup)
