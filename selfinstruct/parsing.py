"""Parsing model completions: numbered instruction lists, yes/no answers, instances.

Pure functions of text. Anything that cannot be read is reported, never raised:
the pipeline counts it as a rejected candidate with reason ``unparseable``
(Self-Instruct's released code likewise drops what it cannot split).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .tasks import Instance

_ITEM = re.compile(r"^\s*(\d{1,3})\s*[.)]\s*(.*)$")
_LABEL_PREFIX = re.compile(r"^(?:task|instruction)\s*\d*\s*:\s*", re.IGNORECASE)
_EXAMPLE_HEADER = re.compile(r"^\s*example\s*\d*\s*[:.]?\s*$", re.IGNORECASE | re.MULTILINE)
_INPUT = re.compile(r"^\s*input\s*:", re.IGNORECASE | re.MULTILINE)
_OUTPUT = re.compile(r"^\s*output\s*:", re.IGNORECASE | re.MULTILINE)
_CLASS_LABEL = re.compile(r"^\s*class\s*label\s*:", re.IGNORECASE | re.MULTILINE)
_NO_INPUT = {"", "none", "n/a", "na", "<noinput>", "no input", "null", "-"}


@dataclass(frozen=True)
class ParsedItem:
    """One list item read from an instruction-generation completion.

    Attributes:
        number: the item's number in the list (the first is the prompt's last number).
        text: the instruction, whitespace collapsed; "" if the item was empty.
        truncated: True for the last item of a completion cut at its token limit
            and likely unfinished; the filters drop it (Self-Instruct §2.2,
            "Filtering and Postprocessing").
    """

    number: int
    text: str
    truncated: bool = False


def parse_instruction_list(completion: str, first_number: int, cut_at_length: bool = False
                           ) -> list[ParsedItem]:
    """Split a list continuation into its items.

    The prompt ends with ``"{first_number}."``, so the completion's first line is
    the body of item ``first_number``; later items start with ``N.`` or ``N)``.
    Lines that do not start a new item continue the current one; a blank line
    ends it, and unnumbered text after a blank line is ignored (models often add
    remarks after the list). A leading ``Task:``/``Instruction:`` label is removed.

    Args:
        completion: the generated text, stop string excluded.
        first_number: the number the prompt ended with.
        cut_at_length: the engine stopped at ``max_tokens``; the last item is
            marked truncated.

    Returns:
        Items in order; an empty list when nothing could be read.
    """
    lines = completion.splitlines() or [""]
    items: list[tuple[int, list[str]]] = [(first_number, [lines[0]])]
    open_item = True
    for line in lines[1:]:
        match = _ITEM.match(line)
        if match:
            items.append((int(match.group(1)), [match.group(2)]))
            open_item = True
        elif not line.strip():
            open_item = not "".join(items[-1][1]).strip()
        elif open_item:
            items[-1][1].append(line)
    parsed = [ParsedItem(number, _LABEL_PREFIX.sub("", " ".join(" ".join(body).split())))
              for number, body in items]
    while parsed and not parsed[-1].text:
        parsed.pop()
    if parsed and cut_at_length:
        last = parsed[-1]
        parsed[-1] = ParsedItem(last.number, last.text, truncated=True)
    return parsed


def parse_yes_no(completion: str) -> bool | None:
    """The answer of the classification prompt: True for yes, False for no, None otherwise."""
    words = re.findall(r"[a-z]+", completion.lower())
    if not words:
        return None
    if words[0] == "yes":
        return True
    if words[0] == "no":
        return False
    return None


def _normalise_input(text: str) -> str:
    text = text.strip()
    return "" if text.lower().strip(".") in _NO_INPUT else text


def parse_input_first(completion: str) -> list[Instance]:
    """Instances from an input-first completion (Self-Instruct §2.2, "Instance Generation").

    Examples are separated by ``Example N`` lines; each has an optional
    ``Input:`` and a required ``Output:``. An example without ``Output:`` is
    skipped; a completion with no ``Example`` header is read as one example.

    Returns:
        The instances in order (possibly empty: the caller reports ``unparseable``).
    """
    blocks = [b for b in _EXAMPLE_HEADER.split(completion) if b.strip()]
    instances = []
    for block in blocks:
        out = _OUTPUT.search(block)
        if out is None:
            continue
        inp = _INPUT.search(block, 0, out.start())
        input_text = block[inp.end():out.start()] if inp else ""
        instances.append(Instance(input=_normalise_input(input_text),
                                  output=block[out.end():].strip()))
    return instances


def parse_output_first(completion: str) -> list[Instance]:
    """Instances from an output-first completion, for classification tasks
    (Self-Instruct §2.2, "Instance Generation").

    Each ``Class label: L`` line is followed by ``Input: X``; the instance is
    ``(input=X, output=L)``. A label without an input is skipped.

    Returns:
        The instances in order (possibly empty).
    """
    starts = list(_CLASS_LABEL.finditer(completion))
    instances = []
    for k, match in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(completion)
        block = completion[match.end():end]
        inp = _INPUT.search(block)
        if inp is None:
            continue
        label = block[:inp.start()].strip()
        instances.append(Instance(input=_normalise_input(block[inp.end():]), output=label))
    return instances
