"""Seed tasks: the human-written tasks the task pool starts from (Self-Instruct §2).

Accepted inputs (a file, or a directory of such files, read in name order):

* Self-Instruct JSONL: ``{id, name, instruction, instances: [{input, output}],
  is_classification}`` per line, the format of the paper's 175 seed tasks.
* Alpaca-style records ``{instruction, input, output}`` as a JSON array (``.json``)
  or JSON Lines (``.jsonl``); rows sharing an instruction become one task with
  several instances.
* Parquet (``.parquet``) or CSV (``.csv``) tables with ``instruction``, ``input``
  and ``output`` columns (optionally ``id``, ``name``, ``is_classification``);
  the same grouping applies, so selfinstruct's own shards load as seeds.

Only regular files are read (:func:`selfinstruct.inputs.check_regular_file`): a
FIFO, a device or a symlink loop is refused, in a directory as well. A CSV row with
more fields than the header is an error naming its line.

Every problem raises :class:`SeedError`, whose message is one line naming the file,
the line (or row) and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .inputs import InputFileError, check_regular_file, read_csv_records
from .tasks import Instance, Task

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class SeedError(ValueError):
    """A seed file that cannot be used.

    Attributes:
        path: the file.
        line: 1-based line (JSON/JSONL/CSV) or row (Parquet), or None.
        field: the offending field, or None.
    """

    def __init__(self, path: Path | str, message: str, line: int | None = None,
                 field: str | None = None, unit: str = "line") -> None:
        self.path, self.line, self.field = Path(path), line, field
        where = str(path) + (f":{line}" if line is not None and unit == "line" else "")
        if line is not None and unit != "line":
            where += f" ({unit} {line})"
        prefix = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {prefix}{message}")


def _clean_text(value: Any, path: Path, line: int, field: str, unit: str,
                required: bool = True) -> str:
    """A required non-empty string, or "" for an absent optional one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise SeedError(path, "missing", line, field, unit)
        return ""
    if not isinstance(value, str):
        raise SeedError(path, f"expected a string, got {type(value).__name__}", line, field, unit)
    if required and not value.strip():
        raise SeedError(path, "empty", line, field, unit)
    return value.strip()


def _classification_flag(value: Any, path: Path, line: int, unit: str) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return value
    if hasattr(value, "item") and isinstance(value.item(), bool):  # numpy.bool_
        return bool(value.item())
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SeedError(path, f"expected true or false, got {value!r}", line, "is_classification", unit)


def _parse_record(record: Any, path: Path, line: int, unit: str) -> Task:
    """One record (Self-Instruct or Alpaca shape) to a single-source :class:`Task`."""
    if not isinstance(record, dict):
        raise SeedError(path, f"record is a {type(record).__name__}, expected an object", line,
                        unit=unit)
    if "instruction" not in record:
        raise SeedError(path, "missing", line, "instruction", unit)
    instruction = _clean_text(record["instruction"], path, line, "instruction", unit)
    if "instances" in record:
        raw_instances = record["instances"]
        if hasattr(raw_instances, "tolist"):  # a list column read by pyarrow/pandas
            raw_instances = raw_instances.tolist()
        if not isinstance(raw_instances, list) or not raw_instances:
            raise SeedError(path, "must be a non-empty list", line, "instances", unit)
        instances = []
        for k, inst in enumerate(raw_instances):
            if not isinstance(inst, dict):
                raise SeedError(path, "must be an object", line, f"instances[{k}]", unit)
            instances.append(Instance(
                input=_clean_text(inst.get("input"), path, line, f"instances[{k}].input", unit,
                                  required=False),
                output=_clean_text(inst.get("output"), path, line, f"instances[{k}].output",
                                   unit),
            ))
    else:
        instances = [Instance(
            input=_clean_text(record.get("input"), path, line, "input", unit, required=False),
            output=_clean_text(record.get("output"), path, line, "output", unit),
        )]
    raw_id = record.get("id")
    task_id = (str(raw_id) if raw_id is not None and not (isinstance(raw_id, float)
               and math.isnan(raw_id)) else "")
    name = record.get("name")
    return Task(
        id=task_id,
        name=name if isinstance(name, str) else "",
        instruction=instruction,
        instances=tuple(instances),
        is_classification=_classification_flag(record.get("is_classification"), path, line, unit),
    )


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SeedError(path, "seed file not found") from None
    except IsADirectoryError:
        raise SeedError(path, "is a directory") from None
    except OSError as exc:
        raise SeedError(path, f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SeedError(path, "not valid UTF-8", raw[: exc.start].count(b"\n") + 1) from None
    if not text.strip():
        raise SeedError(path, "file is empty: no seed tasks")
    return text


NESTED_TOO_DEEPLY = "invalid JSON: nested too deeply"
"""The message for a document whose nesting exhausts the json module's recursion."""


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(_decode(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SeedError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", number) from None
        except RecursionError:
            raise SeedError(path, NESTED_TOO_DEEPLY, number) from None
        yield number, record


def _json_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Records of a JSON array, each with the line its value starts on."""
    text = _decode(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeedError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise SeedError(path, NESTED_TOO_DEEPLY) from None
    if isinstance(data, dict):
        yield 1, data
        return
    if not isinstance(data, list):
        raise SeedError(path, "expected a JSON array of records", 1)
    # The document is valid; walk it once more with raw_decode only to learn the
    # line each element starts on, so record errors can name their line.
    decoder, pos, line = json.JSONDecoder(), text.index("[") + 1, 1
    line += text.count("\n", 0, pos)
    for record in data:
        while text[pos] in " \t\r\n,":
            if text[pos] == "\n":
                line += 1
            pos += 1
        try:
            _, end = decoder.raw_decode(text, pos)
        except RecursionError:
            raise SeedError(path, NESTED_TOO_DEEPLY, line) from None
        yield line, record
        line += text.count("\n", pos, end)
        pos = end


def _table_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a CSV or Parquet table, each with its line (CSV) or 1-based row (Parquet).

    CSV goes through :func:`selfinstruct.inputs.read_csv_records`: a row with more
    fields than the header is an error naming its line; a row with fewer has its
    missing fields as NaN, which the field checks report as missing.
    """
    import pandas as pd

    csv = path.suffix.lower() == ".csv"
    try:
        if csv:
            _decode(path)
            columns, records = read_csv_records(path)
        else:
            frame = pd.read_parquet(path)
            columns, records = list(frame.columns), frame.to_dict("records")
    except SeedError:
        raise
    except InputFileError as exc:
        raise SeedError(path, exc.reason, exc.line) from None
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable tables
        raise SeedError(path, f"cannot read {path.suffix[1:]} table: {exc}".splitlines()[0]) from None
    if "instruction" not in columns:
        raise SeedError(path, "missing column", None, "instruction")
    # CSV: header is line 1, so row k is line k + 2; Parquet rows are 1-based.
    offset = 2 if csv else 1
    for k, record in enumerate(records):
        yield k + offset, record


def _read_file(path: Path) -> list[tuple[int, str, Task]]:
    """Tasks of one file, each with the line (or row) it starts on and that unit's name."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records, unit = _jsonl_records(path), "line"
    elif suffix == ".json":
        records, unit = _json_records(path), "line"
    elif suffix in (".parquet", ".csv"):
        records, unit = _table_records(path), ("line" if suffix == ".csv" else "row")
    else:
        raise SeedError(path, f"unsupported seed format '{suffix}' (use {', '.join(SUFFIXES)})")
    grouped: dict[str, Task] = {}
    first_line: dict[str, int] = {}
    for line, record in records:
        task = _parse_record(record, path, line, unit)
        key = task.instruction
        if key in grouped:
            # Alpaca-style tables: one row per instance; merge rows of one instruction.
            prior = grouped[key]
            grouped[key] = Task(prior.id, prior.name, prior.instruction,
                                prior.instances + task.instances,
                                prior.is_classification if prior.is_classification is not None
                                else task.is_classification)
            continue
        if not task.id:
            task = Task(f"{path.stem}-{line}", task.name, task.instruction, task.instances,
                        task.is_classification)
        grouped[key], first_line[key] = task, line
    if not grouped:
        raise SeedError(path, "no seed tasks in file")
    return [(first_line[key], unit, task) for key, task in grouped.items()]


def default_seeds_dir() -> Path:
    """The bundled seed tasks: ``selfinstruct/seeds`` in a wheel, ``seeds/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "seeds", here.parent / "seeds"):
        if candidate.is_dir() and any(candidate.glob("*.jsonl")):
            return candidate
    raise SeedError(here, "bundled seed tasks not found")


def seed_files(path: Path | str) -> list[Path]:
    """The files :func:`load_seed_tasks` reads for ``path``, in reading order.

    Every file, given or found in the directory by its suffix, must be a regular
    file after following symlinks (:func:`selfinstruct.inputs.check_regular_file`).

    Raises:
        SeedError: ``path`` does not exist, is a symlink loop, is not a regular
            file or directory, is a directory with no seed files, or a directory
            with a seed-suffixed entry that is not a regular file.
    """
    path = Path(path)
    if path.is_dir():
        try:
            entries = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        except OSError as exc:
            raise SeedError(path, f"cannot list directory: {exc.strerror}") from None
        for entry in entries:
            try:
                check_regular_file(entry, missing="seed file not found (a dangling symlink?)")
            except InputFileError as exc:
                raise SeedError(entry, exc.reason) from None
        if not entries:
            raise SeedError(path, f"no seed files ({', '.join(SUFFIXES)}) in directory")
        return entries
    try:
        check_regular_file(path, missing="seed file not found")
    except InputFileError as exc:
        raise SeedError(path, exc.reason) from None
    return [path]


def load_seed_tasks(path: Path | str, max_instruction_words: int | None = None,
                    too_long: str = "") -> list[Task]:
    """Load seed tasks from a file or a directory of files.

    Args:
        path: a ``.jsonl``/``.json``/``.parquet``/``.csv`` file, or a directory whose
            files with those suffixes are read in name order.
        max_instruction_words: refuse a task whose instruction has more words
            (whitespace-separated, as ``filters.word_count`` counts them and as
            ``prompts.one_line`` shows them); None = no limit.
        too_long: why the limit exists, appended to that error message.

    Returns:
        Tasks in file order, one per distinct instruction; ids are the records'
        own or ``<file stem>-<line>``.

    Raises:
        SeedError: missing/empty/non-UTF-8/malformed file, a record without an
            instruction, an instance without an output, a duplicate id, or a
            directory holding no seed files, a file that is not a regular file,
            or an instruction over ``max_instruction_words``. The message names
            file, line and field.
    """
    tasks: list[Task] = []
    ids: dict[str, str] = {}
    for file in seed_files(path):
        for line, unit, task in _read_file(file):
            words = len(task.instruction.split())
            if max_instruction_words is not None and words > max_instruction_words:
                raise SeedError(file, f"{words} words, more than {max_instruction_words}"
                                + (f": {too_long}" if too_long else ""), line, "instruction", unit)
            if task.id in ids:
                raise SeedError(file, f"duplicate id '{task.id}' (first at {ids[task.id]})",
                                line, "id", unit)
            ids[task.id] = f"{file}:{line}"
            tasks.append(task)
    return tasks
