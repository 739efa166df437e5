"""Review labels: each reviewer's answers, one Parquet file per reviewer, rewritten
atomically on every answer.

``RUN_DIR/review/labels-<reviewer>.parquet`` holds one row per example the
reviewer has touched, with the columns of :data:`LABEL_SCHEMA`: the three answers
of Self-Instruct §3.3 (true = yes, false = no, null = not answered yet), a free
note and the time of the last change. Rows are matched to the run's examples by
``example_key`` (:func:`selfinstruct.quality.example_key`, a hash of the
example's content), so labels survive a ``refilter`` that renumbers rows. A
reviewer's file is locked (``labels-<reviewer>.lock``) while a review server
writes it, so two servers never interleave one reviewer's answers.
"""

from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from ..quality import QUESTIONS
from ..storage.files import take_lock, write_bytes_atomic
from . import REVIEW_DIR, ReviewError, check_plain_file

LABEL_SCHEMA = pa.schema([
    ("reviewer", pa.string()),
    ("example_id", pa.string()),
    ("example_key", pa.string()),
    *[(q, pa.bool_()) for q in QUESTIONS],
    ("note", pa.string()),
    ("updated_at", pa.timestamp("ms", tz="UTC")),
])
"""Columns of a labels file: ``reviewer``, ``example_id`` (the row id when
answered), ``example_key``, the answers ``instruction`` / ``input`` / ``output``
(bool, null until answered), ``note`` and ``updated_at``."""

REVIEWER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A reviewer name: letters, digits, ``.``, ``_``, ``-``; at most 64; it names a file."""

NOTE_LIMIT = 4000
"""Longest note kept, in characters."""


class Answers(BaseModel):
    """One example's answers as the review page sends them (``PUT /api/labels/<id>``).

    ``instruction``, ``input``, ``output``: true (yes), false (no) or null (not
    answered); ``note``: free text, at most :data:`NOTE_LIMIT` characters.
    Unknown fields are refused.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    instruction: bool | None = None
    input: bool | None = None
    output: bool | None = None
    note: str = Field(default="", max_length=NOTE_LIMIT)

    @property
    def complete(self) -> bool:
        """All three questions answered."""
        return all(getattr(self, q) is not None for q in QUESTIONS)


@dataclass(frozen=True)
class Label:
    """A stored label: the answers and where and when they were given."""

    example_id: str
    example_key: str
    answers: Answers
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        """The label as the review page reads it."""
        return {**self.answers.model_dump(), "complete": self.answers.complete,
                "updated_at": self.updated_at.isoformat(timespec="seconds")}


def check_reviewer(name: str) -> str:
    """``name`` if it is a valid reviewer name (:data:`REVIEWER_PATTERN`).

    Raises:
        ReviewError: it is not.
    """
    if not REVIEWER_PATTERN.fullmatch(name):
        raise ReviewError(f"--reviewer {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                          "(it names the labels file)")
    return name


def default_reviewer() -> str:
    """The login name when it is a valid reviewer name, else ``"reviewer"``."""
    import getpass

    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"
    return name if REVIEWER_PATTERN.fullmatch(name) else "reviewer"


def labels_path(run_dir: Path, reviewer: str) -> Path:
    """``RUN_DIR/review/labels-<reviewer>.parquet``."""
    return run_dir / REVIEW_DIR / f"labels-{reviewer}.parquet"


def read_label_file(path: Path) -> pd.DataFrame:
    """One labels file as a DataFrame with the columns of :data:`LABEL_SCHEMA`.

    Raises:
        ReviewError: not Parquet, a missing column or one of another type, or a
            repeated ``example_key`` (one line naming the path).
    """
    check_plain_file(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise ReviewError(f"{path}: not a readable labels file: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          ) from None
    for field in LABEL_SCHEMA:
        if field.name not in table.schema.names:
            raise ReviewError(f"{path}: field '{field.name}': missing column; not a labels file")
        have = table.schema.field(field.name).type
        if have != field.type and not (pa.types.is_null(have)):
            raise ReviewError(f"{path}: field '{field.name}': type {have}, expected "
                              f"{field.type}; not a labels file")
    table = table.select(LABEL_SCHEMA.names).cast(LABEL_SCHEMA)
    frame: pd.DataFrame = table.to_pandas()
    repeated = frame["example_key"][frame["example_key"].duplicated()]
    if len(repeated):
        raise ReviewError(f"{path}: field 'example_key': {repeated.iloc[0]} appears twice; "
                          "not a labels file this tool wrote")
    if frame["example_key"].isna().any():
        raise ReviewError(f"{path}: field 'example_key': null; not a labels file this tool wrote")
    return frame


def load_labels(run_dir: Path) -> pd.DataFrame:
    """Every reviewer's labels in ``run_dir`` as one DataFrame (columns of
    :data:`LABEL_SCHEMA`; empty with those columns when there are none).

    Raises:
        ReviewError: a labels file that cannot be read (see :func:`read_label_file`).
    """
    frames = [read_label_file(p) for p in sorted((run_dir / REVIEW_DIR).glob("labels-*.parquet"))]
    if not frames:
        empty: pd.DataFrame = LABEL_SCHEMA.empty_table().to_pandas()
        return empty
    return pd.concat(frames, ignore_index=True)


def invalid_keys(run_dir: Path) -> set[str]:
    """The ``example_key`` of every example some reviewer answered "no" to on any
    question (what ``--drop-reviewed-invalid`` drops).

    Raises:
        ReviewError: see :func:`load_labels`.
    """
    labels = load_labels(run_dir)
    bad = labels[list(QUESTIONS)].eq(False).any(axis=1)
    return set(labels.loc[bad, "example_key"].tolist())


class LabelStore:
    """One reviewer's labels file, held for writing by one process.

    ``open()`` takes the reviewer's lock and reads the file; ``put()`` changes one
    example's label and rewrites the whole file atomically before it returns, so
    a kill at any moment leaves the previous answers or the new ones. Thread-safe
    (the review server answers requests from threads).
    """

    def __init__(self, run_dir: Path, reviewer: str) -> None:
        self.reviewer = check_reviewer(reviewer)
        self.path = labels_path(run_dir, reviewer)
        self.labels: dict[str, Label] = {}
        self._lock = threading.Lock()
        self._lock_handle: IO[str] | None = None

    def open(self) -> LabelStore:
        """Take the reviewer's lock and read their labels.

        Raises:
            ReviewError: another process holds the lock (naming its pid), or the
                labels file is damaged (it is then never written).
        """
        if self.path.parent.is_symlink():
            raise ReviewError(f"{self.path.parent}: a symbolic link; refusing to write the "
                              "review outside the run directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_suffix(".lock")
        check_plain_file(lock)
        check_plain_file(self.path)
        handle = take_lock(lock, lambda holder: ReviewError(
            f"{self.path}: reviewer {self.reviewer!r} is already reviewing this run "
            f"(pid {holder}); stop that server or pass another --reviewer"))
        try:
            if self.path.exists():
                frame = read_label_file(self.path)
                for row in frame.to_dict("records"):
                    answers = Answers(
                        **{q: None if pd.isna(row[q]) else bool(row[q]) for q in QUESTIONS},
                        note="" if pd.isna(row["note"]) else str(row["note"])[:NOTE_LIMIT])
                    self.labels[row["example_key"]] = Label(
                        str(row["example_id"]), row["example_key"], answers,
                        row["updated_at"].to_pydatetime())
        except BaseException:
            handle.close()
            raise
        self._lock_handle = handle
        return self

    def close(self) -> None:
        """Release the lock (the file is always up to date)."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def get(self, key: str) -> Label | None:
        """The label of the example with content key ``key``, or None."""
        return self.labels.get(key)

    def put(self, example_id: str, key: str, answers: Answers) -> Label:
        """Store ``answers`` as the label of example ``key`` and rewrite the file.

        Raises:
            OSError: the file cannot be written (the previous one is intact, and
                so is the in-memory state).
        """
        with self._lock:
            label = Label(example_id, key, answers, datetime.now(UTC))
            changed = {**self.labels, key: label}
            write_bytes_atomic(self.path, _parquet_bytes(self.reviewer, changed.values()))
            self.labels = changed
            return label


def _parquet_bytes(reviewer: str, labels: Any) -> bytes:
    labels = list(labels)
    columns: dict[str, list[Any]] = {
        "reviewer": [reviewer] * len(labels),
        "example_id": [x.example_id for x in labels],
        "example_key": [x.example_key for x in labels],
        **{q: [getattr(x.answers, q) for x in labels] for q in QUESTIONS},
        "note": [x.answers.note for x in labels],
        "updated_at": [x.updated_at for x in labels],
    }
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns, schema=LABEL_SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()
