"""Quality filters for instructions and instances, each rejection with a reason code.

Instruction filters (Self-Instruct §2.2, "Filtering and Postprocessing", and its
released code), checked in this order, the first failure being the reason; the
settings are fields of :class:`~selfinstruct.config.FilterConfig`:

============================  ===============================================
reason code                   rule
============================  ===============================================
``too_short``                 fewer than ``min_words`` words
``too_long``                  more than ``max_words`` words
``blacklist:<word>``          a blacklisted word or phrase, whole-word, any case
``bad_prefix``                starts with one of ``bad_prefixes``, any case
``punctuation_start``         first character is ASCII punctuation
``non_ascii_start``           first character is not ASCII (switchable)
============================  ===============================================

The ROUGE-L filter (``rouge_l``) needs the pool and lives in :mod:`selfinstruct.dedup`.

Instance filters (the same step of Self-Instruct §2.2): ``empty_output``,
``input_equals_output``, ``ends_with_colon`` (input or output), ``duplicate_instance``
(exact repeat), and ``conflicting_outputs``: one non-empty input with different outputs
drops the whole task.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from .config import FilterConfig
from .tasks import Instance


def word_count(text: str) -> int:
    """Words as whitespace-separated tokens (the paper's ``len(text.split())``)."""
    return len(text.split())


@lru_cache(maxsize=32)
def _blacklist_pattern(words: tuple[str, ...]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
    return re.compile(rf"(?<!\w)({alternatives})(?!\w)", re.IGNORECASE)


def instruction_rejection(instruction: str, config: FilterConfig) -> str | None:
    """The reason code rejecting ``instruction``, or None when it passes.

    Covers every instruction filter except ROUGE-L (see the module table).
    """
    words = word_count(instruction)
    if words < config.min_words:
        return "too_short"
    if words > config.max_words:
        return "too_long"
    pattern = _blacklist_pattern(tuple(config.blacklist))
    if pattern is not None and (hit := pattern.search(instruction)):
        return "blacklist:" + " ".join(hit.group(1).lower().split())
    lowered = instruction.lower()
    if any(lowered.startswith(prefix.lower()) for prefix in config.bad_prefixes):
        return "bad_prefix"
    first = instruction[:1]
    if config.reject_punctuation_start and first in string.punctuation:
        return "punctuation_start"
    if config.reject_non_ascii_start and first and not first.isascii():
        return "non_ascii_start"
    return None


@dataclass(frozen=True)
class InstanceVerdict:
    """What the instance filters made of one task's generated instances.

    Attributes:
        kept: the surviving instances, in generation order, at most ``max_instances``.
        rejected: ``(instance, reason)`` for each dropped instance.
        task_reason: set when the whole task is dropped (``conflicting_outputs``,
            or ``no_instances`` when nothing survived).
    """

    kept: tuple[Instance, ...]
    rejected: tuple[tuple[Instance, str], ...]
    task_reason: str | None


def instance_rejection(instance: Instance) -> str | None:
    """The reason code rejecting a single instance on its own, or None."""
    if not instance.output.strip():
        return "empty_output"
    if instance.input.strip() == instance.output.strip():
        return "input_equals_output"
    if instance.input.rstrip().endswith(":") or instance.output.rstrip().endswith(":"):
        return "ends_with_colon"
    return None


def filter_instances(instances: Sequence[Instance], max_instances: int) -> InstanceVerdict:
    """Apply the instance filters to one task's instances (Self-Instruct §2.2,
    "Filtering and Postprocessing").

    Args:
        instances: as parsed from the completion, in order.
        max_instances: keep at most this many (``instances.max_instances``); the
            rest are rejected with ``over_limit``.

    Returns:
        An :class:`InstanceVerdict`. If two valid instances share a non-empty
        input but differ in output, the task is dropped (``conflicting_outputs``)
        and nothing is kept; tasks without input may have many outputs.
    """
    kept: list[Instance] = []
    rejected: list[tuple[Instance, str]] = []
    seen: set[Instance] = set()
    outputs_by_input: dict[str, str] = {}
    for instance in instances:
        reason = instance_rejection(instance)
        if reason is None and instance in seen:
            reason = "duplicate_instance"
        if reason is not None:
            rejected.append((instance, reason))
            continue
        seen.add(instance)
        key = instance.input.strip()
        output = instance.output.strip()
        if key and outputs_by_input.setdefault(key, output) != output:
            return InstanceVerdict((), tuple(rejected) + tuple(
                (i, "conflicting_outputs") for i in [*kept, instance]), "conflicting_outputs")
        kept.append(instance)
    rejected.extend((i, "over_limit") for i in kept[max_instances:])
    kept = kept[:max_instances]
    return InstanceVerdict(tuple(kept), tuple(rejected), None if kept else "no_instances")
