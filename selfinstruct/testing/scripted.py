"""A scripted stand-in for a model, for tests and benchmarks only (never used by a run).

:class:`ScriptedEngine` answers each request by its stage and key, never by
reading the prompt's wording, so template edits do not change what it says:

* ``instructions``: a numbered list continuing the prompt, drawn from a fixed
  list of topics by the request's seed, with items the filters must catch (a
  too-short one, one about an image, one truncated at the token limit);
* ``examples`` (the Alpaca recipe): numbered blocks 4 to 8 continuing a prompt
  of 3 seed tasks (see :func:`scripted_examples`), cut mid-block as if at the
  token limit;
* ``classification``: " Yes" when the instruction (the key) has the word
  "Decide", " No" otherwise;
* ``instances``: two class-labelled instances (output-first) for those, one
  input-first example for the rest;
* ``judging``: a JSON verdict whose scores come from the key (an example's hash,
  see :func:`scripted_verdict`), or prose no parser can read for one key in 16;
* any other stage: :attr:`ScriptedEngine.other` (a callable of the request).

Completions depend only on the request, so it is batch-invariant like vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..engines.base import Capabilities, Completion, Done, Progress, Request

TOPICS = ["volcanoes", "jazz music", "tax returns", "chess openings", "bread baking",
          "solar panels", "ocean tides", "poetry meters", "city planning", "honey bees",
          "railway history", "knitting patterns", "cloud types", "credit scores"]


def scripted_instructions(seed: int) -> str:
    """The instruction-list continuation for a request seed (items 9 to 13 of a list
    whose prompt ended at "9."), cut mid-item as if at the token limit."""
    a, b = TOPICS[seed % len(TOPICS)], TOPICS[(seed // 7) % len(TOPICS)]
    return (f" Write a short essay about {a} for {seed % 97} readers.\n"
            f"10. Decide whether the claim about {b} number {seed % 89} is true.\n"
            f"11. Describe the image of {a}.\n12. Short.\n13. Summarize the report about")


def scripted_examples(seed: int) -> str:
    """The Alpaca-recipe continuation for a request seed, after a prompt ending in
    "4. Instruction:": a task with an input, one with ``<noinput>``, one about a
    diagram (Alpaca's blacklist), one without an output, and block 8 cut off."""
    a, b = TOPICS[seed % len(TOPICS)], TOPICS[(seed // 7) % len(TOPICS)]
    return (f" Summarize the notes about {a} for {seed % 97} readers.\n"
            f"4. Input:\nNotes on {a}: part {seed % 89} of the survey.\n"
            f"4. Output:\nA summary of {a}.\n###\n"
            f"5. Instruction: Explain why {b} matter to case {seed % 83}.\n"
            f"5. Input:\n<noinput>\n5. Output:\nThey matter because of {b}.\n###\n"
            f"6. Instruction: Draw a diagram of {a} and label it.\n6. Input:\n<noinput>\n"
            f"6. Output:\nNo.\n###\n"
            f"7. Instruction: List three facts about {b} in order.\n7. Input:\n<noinput>\n"
            f"###\n8. Instruction: Compare the two")


def is_scripted_classification(instruction: str) -> bool:
    """Whether the scripted engine calls an instruction a classification task."""
    return "Decide" in instruction


def scripted_verdict(key: str) -> str:
    """The judge answer for an example key: scores 1-5 from its hex digits (overall the
    rounded mean of the three), or an unreadable refusal when the key starts with "f"."""
    if key.startswith("f"):
        return "I am unable to rate this example."
    a, b, c = (int(ch, 16) % 5 + 1 for ch in key[:3])
    return json.dumps({"instruction": {"score": a, "rationale": "Clear task."},
                       "input": {"score": b, "rationale": "Fits."},
                       "output": {"score": c, "rationale": "Plausible."},
                       "overall": round((a + b + c) / 3)})


class ScriptedEngine:
    """An :class:`~selfinstruct.engines.base.Engine` answering by stage and key.

    Attributes:
        batches: every batch it was given, in order (tests count requests).
        other: answers requests of stages it does not know (default: "").
    """

    model_name = "scripted"
    version = "0"
    # Its answers are scripted: a request's json_schema is not looked at.
    capabilities = Capabilities(batch_invariant=True, loads_weights=False,
                                finish_reasons=frozenset({"stop", "length"}),
                                structured_output=False)

    def __init__(self, other: Callable[[Request], Completion] | None = None):
        self.batches: list[list[Request]] = []
        self.other = other or (lambda request: Completion("", 10, 0, "stop"))

    def answer(self, request: Request) -> Completion:
        """The completion of one request."""
        if request.stage == "instructions":
            return Completion(scripted_instructions(request.seed or 0), 100, 40, "length")
        if request.stage == "examples":
            return Completion(scripted_examples(request.seed or 0), 400, 160, "length")
        if request.stage == "classification":
            text = " Yes" if is_scripted_classification(request.key) else " No"
            return Completion(text, 50, 10, "stop")
        if request.stage == "instances":
            if is_scripted_classification(request.key):
                text = "Class label: A\nInput: first\nClass label: B\nInput: second\n"
            else:
                text = "Example 1\nInput: some input\nOutput: some output\n"
            return Completion(text, 50, 10, "stop")
        if request.stage == "judging":
            return Completion(scripted_verdict(request.key), 200, 60, "stop")
        return self.other(request)

    def generate(self, requests: Sequence[Request], progress: Progress | None = None,
                 on_done: Done | None = None) -> list[Completion]:
        """Answer a batch in request order, reporting each completion to ``on_done``
        and ticking ``progress`` once per request as it is answered."""
        self.batches.append(list(requests))
        out = []
        for index, request in enumerate(requests):
            out.append(self.answer(request))
            if on_done:
                on_done(index, out[-1])
            if progress:
                progress(1)
        return out

    def describe(self) -> dict[str, Any]:
        """The backend for the manifest."""
        return {"backend": "scripted", "version": self.version}

    def close(self) -> None:
        pass
