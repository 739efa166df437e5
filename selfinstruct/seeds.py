"""Seed tasks: the human-written tasks the task pool starts from (Self-Instruct §2).

Accepted inputs are those of :func:`selfinstruct.records.read_records` (a file,
a directory of such files read in name order, or a ``datasets`` ``save_to_disk``
directory, every split of a DatasetDict in order), holding records of one of
two shapes:

* Self-Instruct: ``{id, name, instruction, instances: [{input, output}],
  is_classification}``, the format of the paper's 175 seed tasks (JSON Lines).
* Alpaca-style ``{instruction, input, output}`` (optionally ``id``, ``name``,
  ``is_classification``), as a JSON array (``.json``), JSON Lines (``.jsonl``,
  ``.ndjson``), Parquet, CSV or Arrow; rows of one file sharing an instruction
  become one task with several instances, so selfinstruct's own shards and
  exports load as seeds.

Only regular files are read (a FIFO, a device or a symlink loop is refused, in
a directory as well). A CSV row with more fields than the header is an error
naming its line.

Every problem raises :class:`SeedError`, whose message is one line naming the
file, the line (or row) and the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .records import SUFFIXES  # noqa: F401 (the seed file suffixes)
from .records import TABULAR, Position, Records, RecordsError, input_files, read_records
from .tasks import Instance, Task

_MISSING_SEEDS = "seed file not found"


class SeedError(RecordsError):
    """A seed file that cannot be used.

    Args:
        where: a :class:`selfinstruct.records.Position` or the path.
        message: what is wrong.
        field: the offending field, or None.

    Attributes:
        path: the file.
        line: 1-based line (JSON/JSONL/CSV), row (Parquet, Arrow) or record (a
            one-line JSON array), or None.
        field: the offending field, or None.
    """

    def __init__(self, where: Position | Path | str, message: str,
                 field: str | None = None) -> None:
        super().__init__(where, message, field)

    @property
    def line(self) -> int | None:
        """The position's number (line, row or record), or None."""
        return self.position.number if self.position is not None else None

    @classmethod
    def of(cls, error: RecordsError) -> SeedError:
        """The same problem as a :class:`SeedError`."""
        return cls(error.where, error.reason, error.field)


def _clean_text(value: Any, where: Position, field: str, required: bool = True) -> str:
    """A required non-empty string, or "" for an absent optional one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise SeedError(where, "missing", field)
        return ""
    if not isinstance(value, str):
        raise SeedError(where, f"expected a string, got {type(value).__name__}", field)
    if required and not value.strip():
        raise SeedError(where, "empty", field)
    return value.strip()


def _classification_flag(value: Any, where: Position) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SeedError(where, f"expected true or false, got {value!r}", "is_classification")


def _parse_record(record: dict[str, Any], where: Position) -> Task:
    """One record (Self-Instruct or Alpaca shape) to a single-source :class:`Task`."""
    if "instruction" not in record:
        raise SeedError(where, "missing", "instruction")
    instruction = _clean_text(record["instruction"], where, "instruction")
    if "instances" in record:
        raw_instances = record["instances"]
        if not isinstance(raw_instances, list) or not raw_instances:
            raise SeedError(where, "must be a non-empty list", "instances")
        instances = []
        for k, inst in enumerate(raw_instances):
            if not isinstance(inst, dict):
                raise SeedError(where, "must be an object", f"instances[{k}]")
            instances.append(Instance(
                input=_clean_text(inst.get("input"), where, f"instances[{k}].input",
                                  required=False),
                output=_clean_text(inst.get("output"), where, f"instances[{k}].output"),
            ))
    else:
        instances = [Instance(
            input=_clean_text(record.get("input"), where, "input", required=False),
            output=_clean_text(record.get("output"), where, "output"),
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
        is_classification=_classification_flag(record.get("is_classification"), where),
    )


def _source_tasks(source: Records) -> list[tuple[Position, Task]]:
    """Tasks of one source, each with the position of its first record."""
    if source.format in TABULAR and "instruction" not in source.columns:
        raise SeedError(source.path, "missing column", "instruction")
    grouped: dict[str, Task] = {}
    first: dict[str, Position] = {}
    for record in source:
        task = _parse_record(record.data, record.position)
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
            task = Task(f"{source.path.stem}-{record.position.number}", task.name,
                        task.instruction, task.instances, task.is_classification)
        grouped[key], first[key] = task, record.position
    if not grouped:
        raise SeedError(source.path, "no seed tasks in file")
    return [(first[key], task) for key, task in grouped.items()]


def default_seeds_dir() -> Path:
    """The bundled seed tasks: ``selfinstruct/seeds`` in a wheel, ``seeds/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "seeds", here.parent / "seeds"):
        if candidate.is_dir() and any(candidate.glob("*.jsonl")):
            return candidate
    raise SeedError(here, "bundled seed tasks not found")


def seed_files(path: Path | str) -> list[Path]:
    """The files :func:`load_seed_tasks` reads for ``path``, in reading order
    (:func:`selfinstruct.records.input_files`: a file itself, a directory's
    record files in name order, every file of a ``save_to_disk`` directory).

    Raises:
        SeedError: ``path`` does not exist, is a symlink loop, is not a regular
            file or directory, is a directory with no seed files, or holds an
            entry that is not a regular file.
    """
    try:
        return input_files(path, missing=_MISSING_SEEDS)
    except RecordsError as exc:
        raise SeedError.of(exc) from None


def load_seed_tasks(path: Path | str, max_instruction_words: int | None = None,
                    too_long: str = "") -> list[Task]:
    """Load seed tasks from a file or a directory.

    Args:
        path: a ``.jsonl``/``.ndjson``/``.json``/``.parquet``/``.csv`` file, a
            directory whose files with those suffixes are read in name order,
            or a ``save_to_disk`` directory (see
            :func:`selfinstruct.records.read_records`).
        max_instruction_words: refuse a task whose instruction has more words
            (whitespace-separated, as ``filters.word_count`` counts them and as
            ``prompts.one_line`` shows them); None = no limit.
        too_long: why the limit exists, appended to that error message.

    Returns:
        Tasks in file order, one per distinct instruction of each file; ids are
        the records' own or ``<file stem>-<line, row or record number>``.

    Raises:
        SeedError: missing/empty/non-UTF-8/malformed file, a record without an
            instruction, an instance without an output, a duplicate id, or a
            directory holding no seed files, a file that is not a regular file,
            or an instruction over ``max_instruction_words``. The message names
            file, line and field.
    """
    try:
        sources = read_records(path, missing=_MISSING_SEEDS)
    except RecordsError as exc:
        raise SeedError.of(exc) from None
    tasks: list[Task] = []
    ids: dict[str, Position] = {}
    for source in sources:
        for where, task in _source_tasks(source):
            words = len(task.instruction.split())
            if max_instruction_words is not None and words > max_instruction_words:
                raise SeedError(where, f"{words} words, more than {max_instruction_words}"
                                + (f": {too_long}" if too_long else ""), "instruction")
            if task.id in ids:
                raise SeedError(where, f"duplicate id '{task.id}' (first at {ids[task.id]})",
                                "id")
            ids[task.id] = where
            tasks.append(task)
    return tasks
