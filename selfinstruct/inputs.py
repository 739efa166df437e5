"""Checks shared by every reader of user-supplied input files.

Only regular files are read. A character device (``x.jsonl -> /dev/zero``) would
be read until memory runs out, a FIFO blocks its reader forever, and a symlink
loop makes :mod:`pathlib` raise; :func:`check_regular_file` turns each of these
into one line naming the path before anything is opened. It is used for seed
files (and every file of a seed directory), the ``--config`` TOML, prompt
templates, and the dataset files that ``inspect``, ``export`` and ``dedup`` read.

:func:`read_csv_records` reads a CSV table with pandas so that a row with more
fields than the header is an error naming its line, instead of pandas'
default of moving the leading fields into the index (which shifts every value
of the row into the wrong column). It is the CSV step of
:func:`selfinstruct.records.read_records`, the one reader of record files.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


class InputFileError(ValueError):
    """An input path that cannot be read as a file.

    Attributes:
        path: the path as given.
        reason: what is wrong, without the path ("not a regular file (a FIFO)").
        line: 1-based line of the problem inside the file, or None.

    ``str(error)`` is the one-line message ``"<path>[:<line>]: <reason>"``.
    """

    def __init__(self, path: Path | str, reason: str, line: int | None = None) -> None:
        self.path, self.reason, self.line = Path(path), reason, line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


def check_regular_file(path: Path | str, *, missing: str = "no such file or directory"
                       ) -> os.stat_result:
    """Make sure ``path`` names a regular file, following symlinks.

    Args:
        path: the input file as the user gave it.
        missing: the reason reported when nothing is there (callers keep their
            own wording, e.g. "seed file not found").

    Returns:
        The ``os.stat`` result of the file the path resolves to.

    Raises:
        InputFileError: nothing there (or a dangling symlink), a symlink loop,
            a path through a non-directory, a stat failure, or anything that is
            not a regular file (directory, device, FIFO, socket): the reason is
            ``"not a regular file (<kind>)"``.
    """
    try:
        info = os.stat(path)  # follows symlinks: the file that would be read
    except FileNotFoundError:
        raise InputFileError(path, missing) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputFileError(path, "symlink loop") from None
        if exc.errno == errno.ENOTDIR:
            raise InputFileError(path, f"{missing} (a parent is not a directory)") from None
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "unknown type")
        raise InputFileError(path, f"not a regular file ({kind})")
    return info


_PANDAS_LINE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def read_csv_records(path: Path | str) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and rows of a CSV file, every value a string or NaN.

    The file is read by pandas with ``header=None``, so the header line fixes the
    number of fields and pandas itself rejects any later row with more
    (``on_bad_lines="error"``); the python engine fills the fields of a row with
    fewer as NaN (a missing field, left to the caller's field checks). Empty
    cells are ``""`` (``keep_default_na=False``). Lines are counted as pandas
    counts them: the header is line 1 and each record one line (a quoted
    newline inside a field does not start a new one).

    Args:
        path: a regular UTF-8 CSV file (check it with :func:`check_regular_file`).

    Returns:
        ``(columns, records)``: the header's names and one dict per data row, in
        file order; the row of ``records[k]`` is line ``k + 2``.

    Raises:
        InputFileError: a row with more fields than the header (naming its line),
            a duplicate or missing header, or any other pandas parse failure.
        UnicodeDecodeError: the file is not UTF-8 (callers report the line).
    """
    import pandas as pd

    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False,
                            index_col=False, engine="python", on_bad_lines="error",
                            encoding="utf-8-sig")
    except pd.errors.ParserError as exc:
        match = _PANDAS_LINE.search(str(exc))
        if match:
            expected, line, saw = match.groups()
            raise InputFileError(path, f"{saw} fields, but the header has {expected} "
                                       "(a value holding a comma must be quoted)",
                                 int(line)) from None
        raise InputFileError(path, f"cannot read csv table: {exc}".splitlines()[0]) from None
    except pd.errors.EmptyDataError:
        raise InputFileError(path, "file is empty (no header)") from None
    rows = frame.values.tolist()
    if not rows:
        raise InputFileError(path, "file is empty (no header)")
    columns = rows[0]
    for name in columns:
        if columns.count(name) > 1:
            raise InputFileError(path, f"duplicate column '{name}' in the header", 1)
    # Every row of the frame has the header's width (pandas pads short rows).
    return columns, [dict(zip(columns, row, strict=True)) for row in rows[1:]]
