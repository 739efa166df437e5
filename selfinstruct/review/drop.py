"""What ``--drop-reviewed-invalid`` drops: the examples reviewers marked invalid.

Self-Instruct's authors judged an example by three yes/no questions (Wang et al.
2023, §3.3); ``selfinstruct review`` asks them of a sample of a run, and an
example some reviewer answered "no" to on any question is invalid
(:func:`~selfinstruct.review.labels.invalid_keys`). ``refilter`` drops those
examples from the kept set and ``export`` leaves them out of the files, both by
``example_key`` (:func:`selfinstruct.quality.example_key`), with reason code
:data:`~selfinstruct.quality.REVIEWED_INVALID`. :func:`reviewed_invalid` reads the
labels once, before anything is written, and says which files it read, so the
output can record what produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..storage.files import file_digest
from . import REVIEW_DIR, ReviewError


@dataclass(frozen=True)
class ReviewedInvalid:
    """The labels of a run, as ``--drop-reviewed-invalid`` uses them.

    Attributes:
        keys: ``example_key`` of every example some reviewer answered "no" to
            (possibly empty: nobody said "no").
        labelled: distinct examples (by key) with a label in any file.
        files: ``(path relative to the run directory, sha256)`` of every labels
            file read, in name order.
        reviewers: the reviewers' names (from the file names), in name order.
    """

    keys: frozenset[str]
    labelled: int
    files: tuple[tuple[str, str], ...]
    reviewers: tuple[str, ...]

    def record(self, rows_dropped: int, tasks_dropped: int) -> dict[str, Any]:
        """The JSON record of a drop (a manifest's ``stats.review``): the labels
        files and their sha256, the reviewers, how many examples they marked
        invalid, and how many rows and whole tasks were dropped."""
        return {
            "drop_reviewed_invalid": True,
            "labels": [{"path": path, "sha256": digest} for path, digest in self.files],
            "reviewers": list(self.reviewers),
            "labelled": self.labelled,
            "invalid_examples": len(self.keys),
            "rows_dropped": rows_dropped,
            "tasks_dropped": tasks_dropped,
        }


def no_labels_message(run_dir: Path) -> str:
    """The one-line error of a run directory that has no review labels."""
    return f"{run_dir} has no review labels (run selfinstruct review first)"


def reviewed_invalid(run_dir: Path) -> ReviewedInvalid:
    """Read the review labels of ``run_dir`` (``review/labels-*.parquet``).

    Raises:
        ReviewError: no labels file, or files holding no label
            (:func:`no_labels_message`); a labels file that cannot be read (one
            line naming it, from :func:`~selfinstruct.review.labels.read_label_file`).
    """
    from .labels import invalid_keys, read_label_file

    paths = sorted(p for p in (run_dir / REVIEW_DIR).glob("labels-*.parquet") if p.is_file())
    if not paths:
        raise ReviewError(no_labels_message(run_dir))
    files, labelled = [], set()
    for path in paths:
        labelled.update(read_label_file(path)["example_key"].tolist())
        files.append((path.relative_to(run_dir).as_posix(), file_digest(path)))
    if not labelled:
        raise ReviewError(no_labels_message(run_dir))
    keys = frozenset(invalid_keys(run_dir))
    reviewers = tuple(p.name[len("labels-"):-len(".parquet")] for p in paths)
    return ReviewedInvalid(keys, len(labelled), tuple(files), reviewers)
