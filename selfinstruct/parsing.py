"""Parsing model completions: numbered instruction lists, yes/no answers, instances,
the Alpaca recipe's numbered example blocks, and the judge's verdicts.

Pure functions of text. Anything that cannot be read is reported, never raised:
the pipeline counts it as a rejected candidate with reason ``unparseable``
(Self-Instruct's released code likewise drops what it cannot split), and an
unreadable verdict as ``judge_unparseable``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .quality import QUESTIONS, SCORES, Judgement
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


_BLOCK_SEPARATOR = re.compile(r"^[ \t]*###[ \t]*$", re.MULTILINE)
_BLOCK_FIELD = re.compile(r"(\d{1,3})[ \t]*\.\s+(instruction|input|output)[ \t]*:",
                          re.IGNORECASE)
_FIELDS = ("instruction", "input", "output")

EXAMPLE_REASONS = {
    "truncated": "the last block of a completion cut at max_tokens",
    "missing_instruction": "no 'N. Instruction:' label",
    "missing_input": "no 'N. Input:' label",
    "missing_output": "no 'N. Output:' label",
    "repeated_field": "an input or output label appears twice in one block",
    "fields_out_of_order": "the labels are not in the order instruction, input, output",
    "misnumbered": "the labels of one block carry different numbers",
    "empty_output": "the output label is followed by nothing",
}
"""Reason codes of :func:`parse_example_blocks` for a malformed block."""


@dataclass(frozen=True)
class ParsedExample:
    """One numbered block of an Alpaca-recipe completion.

    Attributes:
        number: the block's place in the list (the first is one past the tasks shown).
        instruction: whitespace collapsed; "" when the block has none.
        input: "" for ``<noinput>`` or an empty input.
        output: surrounding whitespace stripped.
        reason: None for a well-formed block, else a code of :data:`EXAMPLE_REASONS`.
    """

    number: int
    instruction: str
    input: str
    output: str
    reason: str | None = None


def _split_blocks(text: str) -> list[tuple[str, list[re.Match[str]]]]:
    """The blocks of ``text`` with their labels: a block ends at a ``###`` line or
    where the next ``N. Instruction:`` label starts (text before a chunk's first
    label belongs to no block)."""
    blocks: list[tuple[str, list[re.Match[str]]]] = []
    for chunk in _BLOCK_SEPARATOR.split(text):
        labels = list(_BLOCK_FIELD.finditer(chunk))
        starts = [k for k, m in enumerate(labels) if m.group(2).lower() == "instruction"]
        if not labels:
            if chunk.strip():
                blocks.append((chunk, []))
            continue
        cuts = sorted({0, *[k for k in starts if k > 0]})
        for n, first in enumerate(cuts):
            last = cuts[n + 1] if n + 1 < len(cuts) else len(labels)
            begin = 0 if n == 0 else labels[first].start()
            end = labels[last].start() if last < len(labels) else len(chunk)
            sub = chunk[begin:end]
            blocks.append((sub, list(_BLOCK_FIELD.finditer(sub))))
    return blocks


def parse_example_blocks(completion: str, first_number: int, cut_at_length: bool = False
                         ) -> list[ParsedExample]:
    """Split an Alpaca-recipe completion into its blocks (Stanford Alpaca,
    ``generate_instruction.py``, ``post_process_gpt3_response``).

    The prompt ends with ``"{first_number}. Instruction:"``, so the completion is
    read as if that label preceded it. A block holds ``N. Instruction:``,
    ``N. Input:`` and ``N. Output:`` once each, in this order, with one number N;
    labels are matched in any case, text before a block's first label is ignored,
    and an input of ``<noinput>`` (any case) is an empty input. Blocks holding only
    whitespace (after the last ``###``) are skipped.

    Where this differs from the reference, and why:

    * A block ends at a line of ``###`` alone or where the next
      ``N. Instruction:`` starts. The reference splits at any ``###`` (so a
      Markdown heading in an output broke its block) and only there, so a model
      that leaves out the separators (small open models often do) lost every
      block but the first.
    * A block's number need not be its place in the list (the reference dropped
      a block numbered otherwise, so one skipped number lost the rest of the
      list); its three labels must agree (``misnumbered``).
    * An empty output is reported (``empty_output``) where the reference kept
      it, and the labels' order is checked (the reference assumed it).

    Args:
        completion: the generated text, stop string excluded.
        first_number: the number of the block the prompt opened.
        cut_at_length: the engine stopped at ``max_tokens``: the last block is
            reported as ``truncated`` whatever it holds (the reference drops it).

    Returns:
        One :class:`ParsedExample` per non-blank block, in order, numbered by
        place from ``first_number``; malformed blocks carry their reason and
        whatever fields could be read. An empty list for a blank completion (the
        caller reports ``unparseable``).
    """
    from .prompts import NO_INPUT

    if not completion.strip():
        return []
    blocks = _split_blocks(f"{first_number}. Instruction:{completion}")
    parsed: list[ParsedExample] = []
    for position, (block, labels) in enumerate(blocks):
        fields: dict[str, str] = {}
        for k, label in enumerate(labels):
            end = labels[k + 1].start() if k + 1 < len(labels) else len(block)
            fields.setdefault(label.group(2).lower(), block[label.end():end])
        instruction = " ".join(fields.get("instruction", "").split())
        input_text = fields.get("input", "").strip()
        if input_text.lower() == NO_INPUT:
            input_text = ""
        output = fields.get("output", "").strip()
        names = [label.group(2).lower() for label in labels]
        reason = None
        if position == len(blocks) - 1 and cut_at_length:
            reason = "truncated"
        elif len(set(names)) < len(names):
            reason = "repeated_field"
        elif (missing := next((f for f in _FIELDS if f not in names), None)) is not None:
            reason = f"missing_{missing}"
        elif names != list(_FIELDS):
            reason = "fields_out_of_order"
        elif len({int(label.group(1)) for label in labels}) > 1:
            reason = "misnumbered"
        elif not output:
            reason = "empty_output"
        parsed.append(ParsedExample(first_number + position, instruction, input_text,
                                    output, reason))
    return parsed


RATIONALE_MAX_CHARS = 500
"""A verdict's rationales are cut to this many characters when parsed."""

RATIONALE_SCHEMA_MAX_LENGTH = 160
"""``maxLength`` of a rationale in :func:`judgement_schema` (one sentence)."""

_RATIONALE_KEYS = ("rationale", "reason", "explanation")
_NUMBER = re.compile(r"\s*([+-]?\d{1,6}(?:\.\d{1,6})?)\s*(?:/\s*(\d{1,6}(?:\.\d{1,6})?)\s*)?")
_JSON_OBJECT_START = re.compile(r"\{\s*\"")
_SCORE_LINE = re.compile(
    r"""^[\s>*#•-]*                     # bullets, quotes, markdown emphasis
        (?:\(?[a-d]\)\s*|[1-4][.)]\s*)?   # (a) / a) / 1. numbering
        \**\s*(instruction|input|output|overall)\b
        [\w ()]{0,24}?                  # " score", " (a)", " validity"
        \**\s*[:=]\s*\**\s*
        ([+-]?\d{1,6}(?:\.\d{1,6})?)      # the score
        (?:\s*/\s*(\d{1,6}(?:\.\d{1,6})?))?  # out of
        (?![\d.]*\d)\**
        (.*)$""",
    re.IGNORECASE | re.MULTILINE | re.VERBOSE)


def judgement_schema(scale_min: int, scale_max: int) -> dict[str, Any]:
    """The JSON Schema of the verdict the rubric asks for (Self-Instruct §3.3's three
    questions, each a score and a one-sentence rationale, plus an overall score)::

        {"instruction": {"score": N, "rationale": "..."},
         "input": {"score": N, "rationale": "..."},
         "output": {"score": N, "rationale": "..."}, "overall": N}

    Scores are integers in ``[scale_min, scale_max]``; every key is required and no
    other is allowed. Only plain keywords are used (``type``, ``properties``,
    ``required``, ``minimum``, ``maximum``, ``maxLength``, ``additionalProperties``)
    so vLLM's structured-output backends (xgrammar, guidance) accept it.

    Raises:
        ValueError: ``scale_min >= scale_max``, or a boolean end.
    """
    if isinstance(scale_min, bool) or isinstance(scale_max, bool) or scale_min >= scale_max:
        raise ValueError(f"scale {scale_min!r}-{scale_max!r}: needs integers with "
                         "scale_min < scale_max")
    score = {"type": "integer", "minimum": scale_min, "maximum": scale_max}
    question = {
        "type": "object",
        "properties": {"score": dict(score),
                       "rationale": {"type": "string", "maxLength": RATIONALE_SCHEMA_MAX_LENGTH}},
        "required": ["score", "rationale"],
        "additionalProperties": False,
    }
    properties: dict[str, Any] = {q: json.loads(json.dumps(question)) for q in QUESTIONS}
    properties["overall"] = dict(score)
    return {"type": "object", "properties": properties, "required": list(SCORES),
            "additionalProperties": False}


def _score(value: object, scale_min: int, scale_max: int) -> float | None:
    """A score as a float in ``[scale_min, scale_max]``, or None: an int, a finite
    float, a numeric string (``"4"``, ``"3.5"``, ``"4/5"`` when 5 is ``scale_max``),
    or ``{"score": ...}`` of one; booleans are not scores."""
    if isinstance(value, dict):
        inner = _lower_keys(value)
        if "score" not in inner or isinstance(inner["score"], dict):
            return None
        value = inner["score"]
    if isinstance(value, str):
        match = _NUMBER.fullmatch(value)
        if match is None or (match.group(2) is not None
                             and float(match.group(2)) != scale_max):
            return None
        value = float(match.group(1))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not scale_min <= value <= scale_max:
        return None
    return float(value)


def _rationale(value: object) -> str:
    if not isinstance(value, dict):
        return ""
    inner = _lower_keys(value)
    for key in _RATIONALE_KEYS:
        text = inner.get(key)
        if isinstance(text, str):
            return text.strip()
    return ""


def _lower_keys(mapping: dict[Any, Any]) -> dict[str, Any]:
    return {k.strip().lower(): v for k, v in mapping.items() if isinstance(k, str)}


def _judgement(scores: dict[str, float], rationales: dict[str, str]) -> Judgement:
    return Judgement(instruction=scores["instruction"], input=scores["input"],
                     output=scores["output"], overall=scores["overall"],
                     instruction_rationale=rationales["instruction"][:RATIONALE_MAX_CHARS],
                     input_rationale=rationales["input"][:RATIONALE_MAX_CHARS],
                     output_rationale=rationales["output"][:RATIONALE_MAX_CHARS])


def _from_mapping(verdict: dict[str, Any], scale_min: int, scale_max: int) -> Judgement | None:
    scores = {}
    for name in SCORES:
        score = _score(verdict[name], scale_min, scale_max)
        if score is None:
            return None
        scores[name] = score
    return _judgement(scores, {q: _rationale(verdict[q]) for q in QUESTIONS})


def _from_lines(text: str, scale_min: int, scale_max: int) -> Judgement | None:
    found: dict[str, tuple[str, str | None, str]] = {}
    for match in _SCORE_LINE.finditer(text):
        # the last line of a name wins: a judge that first echoes the example
        # ("Output: 5") gives its verdict after it
        found[match.group(1).lower()] = (match.group(2), match.group(3), match.group(4))
    if set(found) != set(SCORES):
        return None
    scores = {}
    rationales = {}
    for name, (number, out_of, rest) in found.items():
        score = _score(number if out_of is None else f"{number}/{out_of}", scale_min, scale_max)
        if score is None:
            return None
        scores[name] = score
        rationales[name] = rest.strip().lstrip("-\u2013\u2014:;,.)*").strip()
    return _judgement(scores, rationales)


def parse_judgement(text: str, scale_min: int, scale_max: int) -> Judgement | None:
    """The judge's verdict on one example, read from its answer to the rubric
    (Self-Instruct §3.3's three questions: a valid task, an appropriate input, a
    correct output; each scored, plus an overall score).

    The answer is read tolerantly:

    * a JSON object with the keys ``instruction``, ``input``, ``output`` and
      ``overall`` (any case), alone, inside a ```` ```json ```` fence or inside prose:
      candidates are decoded at every ``{`` and the first object carrying all four
      keys decides (an object nested in a wrapper counts);
    * a question is ``{"score": N, "rationale": "..."}`` or a bare score;
    * a score is an int, a finite float (fractions within the scale, such as 3.5,
      are kept), or a numeric string (``"4"``, ``"4/5"`` when 5 is ``scale_max``);
      booleans are not scores;
    * with no JSON object in the text at all, one line per score, such as
      ``Instruction: 4 - the task is clear`` / ``Input: 3/5 ...`` / ``Overall: 3``
      (the last line of each name counts).

    Rationales are stripped and cut to :data:`RATIONALE_MAX_CHARS` characters; ""
    when absent.

    Args:
        text: the judge's completion.
        scale_min, scale_max: the score scale (``quality.scale_min``/``scale_max``).

    Returns:
        The :class:`~selfinstruct.quality.Judgement`, or None (never raises) for an
        empty answer, no verdict, a truncated one (no complete object with all four
        scores), a missing, non-numeric, non-finite or out-of-scale score, or JSON
        nested too deep to decode. The caller records ``judge_unparseable``.
    """
    if not text.strip():
        return None
    decoder = json.JSONDecoder()
    position = text.find("{")
    try:
        while position != -1:
            try:
                candidate, _ = decoder.raw_decode(text, position)
            except ValueError:  # JSONDecodeError, or an integer too long to convert
                candidate = None
            if isinstance(candidate, dict):
                verdict = _lower_keys(candidate)
                if all(name in verdict for name in SCORES):
                    return _from_mapping(verdict, scale_min, scale_max)
            position = text.find("{", position + 1)
    except RecursionError:
        return None
    if _JSON_OBJECT_START.search(text):
        return None  # a JSON verdict was begun but never completed: truncated
    return _from_lines(text, scale_min, scale_max)
