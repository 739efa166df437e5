"""Human review of a sample of a run: the sample, the labels, and the local review page.

Self-Instruct's authors read 200 random generated examples and answered three
questions of each (Wang et al. 2023, §3.3, Table 2: valid task 92%, appropriate
input 79%, acceptable output 58%, all three 54%). ``selfinstruct review RUN_DIR``
does the same in a browser, offline:

- :mod:`.sample` draws the sample (by seed, optionally stratified) and keeps it
  in ``RUN_DIR/review/sample.json``;
- :mod:`.labels` keeps each reviewer's answers in
  ``RUN_DIR/review/labels-<reviewer>.parquet``, rewritten atomically on every
  answer;
- :mod:`.server` serves the page (Starlette, bound to 127.0.0.1) that shows one
  example at a time and takes the answers.

``inspect`` turns the labels into the paper's quality table and, for a judged
run, the judge's agreement with the reviewers (:mod:`selfinstruct.analysis.review`).
"""

from __future__ import annotations

from pathlib import Path

REVIEW_DIR = "review"
"""The review's directory inside a run directory."""

REVIEW_QUESTIONS = {
    "instruction": "Does the instruction describe a valid task?",
    "input": "Is the input appropriate for the instruction?",
    "output": "Is the output a correct and acceptable response to the instruction and input?",
}
"""The reviewer's three yes/no questions, keyed like the judge's
(:data:`selfinstruct.quality.QUESTIONS`), as Self-Instruct §3.3 asked them."""

STRATA = ("round", "score", "classification")
"""What ``review --stratify`` may split a run by (:func:`.sample.strata_of`)."""

DEFAULT_SAMPLE = 200
"""Examples reviewed when ``--sample`` is not given: Self-Instruct §3.3 read 200."""

PAPER_QUALITY = {"instruction": 0.92, "input": 0.79, "output": 0.58, "all": 0.54}
"""Self-Instruct's reported shares of its 200 reviewed examples (Table 2) that were
valid on each question and on all three, shown next to a run's for reference."""


class ReviewError(ValueError):
    """A review that cannot start or a file it cannot read; one line naming the file
    (and field) where there is one."""


def check_plain_file(path: Path) -> None:
    """Refuse a review file that is a symbolic link or not a regular file: a run
    directory may come from someone else, and reading it must not read (nor a
    review write) outside it.

    Raises:
        ReviewError: ``path`` is a link, a directory or another special file.
    """
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ReviewError(f"{path}: not a regular file (a link, a directory or a device); "
                          "refusing to read or write it")
