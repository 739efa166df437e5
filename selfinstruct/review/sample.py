"""The review sample: which of a run's examples a reviewer reads, drawn once and kept.

The sample is drawn with a seed (``random.Random(seed)``), optionally stratified
so every round, score or classification kind is represented in proportion, and
written to ``RUN_DIR/review/sample.json`` so every reviewer, every day, reads the
same examples in the same order. Examples are named by their row ``id`` and by
:func:`selfinstruct.quality.example_key` (a hash of instruction, input and
output), which is what labels are matched by.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from ..quality import column, example_key
from ..storage.files import write_json
from . import DEFAULT_SAMPLE, REVIEW_DIR, STRATA, ReviewError, check_plain_file

SAMPLE_FILE = "sample.json"
"""The sample's file inside ``RUN_DIR/review/``."""

Stratify = Literal["round", "score", "classification"]


class SampledExample(BaseModel):
    """One sampled example: its row ``id``, content ``key`` and stratum label."""

    model_config = ConfigDict(extra="forbid")

    id: str
    key: str
    stratum: str | None = None


class Sample(BaseModel):
    """The contents of ``sample.json``.

    Attributes:
        format: 1.
        seed: the seed the sample was drawn with.
        requested: the ``--sample`` size asked for (``len(examples)`` is smaller
            when the run had fewer rows).
        stratify: what the run was split by, or None for a simple random sample.
        rows_in_run: the run's row count when the sample was drawn.
        examples: the sampled examples, in the order they are reviewed.
        drawn_at: ISO 8601 UTC time of drawing.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    seed: int
    requested: int
    stratify: Stratify | None = None
    rows_in_run: int
    examples: list[SampledExample]
    drawn_at: str

    def describe(self) -> str:
        """The options that draw this sample again, e.g. ``--sample 20 --seed 0``."""
        text = f"--sample {self.requested} --seed {self.seed}"
        return text + (f" --stratify {self.stratify}" if self.stratify else "")


def keys_of(frame: pd.DataFrame) -> list[str]:
    """:func:`~selfinstruct.quality.example_key` of every row of ``frame`` (columns
    ``instruction``, ``input``, ``output``), in row order."""
    return [example_key(i, x, o) for i, x, o in
            zip(frame["instruction"], frame["input"], frame["output"], strict=True)]


def strata_of(frame: pd.DataFrame, stratify: str) -> list[str]:
    """Each row's stratum label under ``stratify``.

    - ``round``: ``"round 3"`` (``"round ?"`` when unknown; seeds are round 0);
    - ``classification``: ``"classification"`` / ``"generation"`` / ``"unknown"``;
    - ``score``: the judge's overall score rounded down, ``"overall 4"``, or
      ``"unscored"`` (a judge answer that could not be read).

    Raises:
        ReviewError: ``score`` on a run that was not judged, or an unknown name.
    """
    if stratify == "round":
        return [f"round {int(v)}" if _known(v) else "round ?" for v in frame["round"]]
    if stratify == "classification":
        return ["unknown" if not _known(v) else "classification" if bool(v) else "generation"
                for v in frame["is_classification"]]
    if stratify == "score":
        name = column("overall")
        if name not in frame.columns:
            raise ReviewError("--stratify score: the run was not judged (no quality_overall "
                              "column); stratify by round or classification instead")
        return [f"overall {math.floor(v)}" if _known(v) else "unscored" for v in frame[name]]
    raise ReviewError(f"--stratify: unknown value {stratify!r}; one of {', '.join(STRATA)}")


def _known(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Proportional allocation of ``total`` draws over strata of ``sizes`` rows
    (largest remainder, ties to the earlier stratum in sorted order), each at most
    its size; every stratum gets at least one draw while ``total`` allows.

    Args:
        sizes: stratum label -> rows in it (each > 0).
        total: draws, at most ``sum(sizes.values())``.

    Returns:
        stratum label -> draws; the values sum to ``total``.
    """
    names = sorted(sizes)
    rows = sum(sizes.values())
    shares = {name: total * sizes[name] / rows for name in names}
    counts = {name: min(sizes[name], math.floor(shares[name])) for name in names}
    if total >= len(names):  # every stratum is seen at least once
        for name in names:
            counts[name] = max(counts[name], 1)
    # hand out what is left by largest remainder; take back by smallest when over
    while sum(counts.values()) < total:
        open_ = [n for n in names if counts[n] < sizes[n]]
        best = max(open_, key=lambda n: (shares[n] - counts[n], -names.index(n)))
        counts[best] += 1
    while sum(counts.values()) > total:
        over = [n for n in names if counts[n] > 1]
        worst = min(over, key=lambda n: (shares[n] - counts[n], -names.index(n)))
        counts[worst] -= 1
    return counts


def draw(frame: pd.DataFrame, size: int, seed: int, stratify: str | None = None
         ) -> tuple[list[int], list[str | None]]:
    """Draw ``min(size, len(frame))`` row positions of ``frame`` without replacement.

    Simple random sampling, or with ``stratify`` proportional stratified sampling
    (:func:`allocate`) with a random draw inside each stratum; the result is
    shuffled so strata are not reviewed in blocks. The same frame, size, seed and
    stratify give the same sample.

    Returns:
        ``(positions, strata)``: row positions in review order, and each one's
        stratum label (None without ``stratify``).

    Raises:
        ReviewError: see :func:`strata_of`.
    """
    rng = random.Random(seed)
    n = len(frame)
    take = min(size, n)
    if stratify is None:
        return rng.sample(range(n), take), [None] * take
    labels = strata_of(frame, stratify)
    members: dict[str, list[int]] = {}
    for position, label in enumerate(labels):
        members.setdefault(label, []).append(position)
    counts = allocate({k: len(v) for k, v in members.items()}, take)
    chosen = [p for name in sorted(members) for p in rng.sample(members[name], counts[name])]
    rng.shuffle(chosen)
    return chosen, [labels[p] for p in chosen]


def sample_path(run_dir: Path) -> Path:
    """``RUN_DIR/review/sample.json``."""
    return run_dir / REVIEW_DIR / SAMPLE_FILE


def read_sample(run_dir: Path) -> Sample | None:
    """The run's kept sample, or None when none was drawn.

    Raises:
        ReviewError: the file is not valid JSON or not a sample (naming the path
            and the first field at fault).
    """
    path = sample_path(run_dir)
    check_plain_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewError(f"{path}: cannot read: {exc}") from None
    try:
        return Sample.model_validate_json(text)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "(document)"
        raise ReviewError(f"{path}: field '{where}': {error['msg']}; not a review sample "
                          "(move it away to draw a new one)") from None


def open_sample(run_dir: Path, frame: pd.DataFrame, size: int | None, seed: int | None,
                stratify: str | None, resample: bool = False, default_size: int = DEFAULT_SAMPLE
                ) -> tuple[Sample, list[int], list[str]]:
    """The run's sample: the kept one, or a new one drawn and written.

    Args:
        run_dir: the run directory (``review/`` is made in it when drawing).
        frame: the run's rows (columns of
            :class:`selfinstruct.analysis.loading.RunData`).
        size, seed, stratify: what the user asked for; None where they did not
            say (a kept sample is then taken as it is; a new one uses
            ``default_size``, seed 0 and no strata).
        resample: draw a new sample even when one is kept (labels are kept: they
            are matched by content).

    Returns:
        ``(sample, positions, notes)``: the sample, each sampled example's row
        position in ``frame``, and remarks to show the user (a sample smaller than
        asked for).

    Raises:
        ReviewError: a run without rows; a kept sample drawn with other options
            than given; a kept sample naming examples the run no longer has; a
            damaged ``sample.json``; ``--stratify score`` on an unjudged run.
    """
    path = sample_path(run_dir)
    if len(frame) == 0:
        raise ReviewError(f"{run_dir}: the run has no rows to review")
    keys = keys_of(frame)
    kept = None if resample else read_sample(run_dir)
    notes: list[str] = []
    if kept is not None:
        asked = {"--sample": size, "--seed": seed, "--stratify": stratify}
        have = {"--sample": kept.requested, "--seed": kept.seed, "--stratify": kept.stratify}
        differ = [f"{k} {v}" for k, v in asked.items() if v is not None and v != have[k]]
        if differ:
            raise ReviewError(f"{path}: the kept sample was drawn with {kept.describe()}, not "
                              f"{', '.join(differ)}; leave the options out to go on with it, or "
                              "add --resample to draw a new one (answers are kept)")
        where = {key: k for k, key in enumerate(keys)}
        missing = [e.id for e in kept.examples if e.key not in where]
        if missing:
            raise ReviewError(f"{path}: {len(missing)} sampled examples (first {missing[0]}) are "
                              "no longer in the run; add --resample to draw a new sample")
        return kept, [where[e.key] for e in kept.examples], notes
    size = default_size if size is None else size
    seed = 0 if seed is None else seed
    if size > len(frame):
        notes.append(f"--sample {size} is more than the run's {len(frame)} rows: "
                     f"reviewing all {len(frame)}")
    positions, strata = draw(frame, size, seed, stratify)
    ids = frame["id"].astype(str).tolist()
    sample = Sample(seed=seed, requested=size, stratify=stratify,
                    rows_in_run=len(frame),
                    examples=[SampledExample(id=ids[p], key=keys[p], stratum=s)
                              for p, s in zip(positions, strata, strict=True)],
                    drawn_at=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json(path, sample.model_dump(mode="json"))
    return sample, positions, notes


def sampled_keys(sample: Sample | None) -> Sequence[str]:
    """The content keys of a sample's examples (empty for None)."""
    return [] if sample is None else [e.key for e in sample.examples]
