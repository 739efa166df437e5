"""Prompt building: few-shot prompts rendered from the Jinja2 templates in ``prompts/``.

Four templates, one per model call of the algorithm (Self-Instruct §2.2):

* ``instruction_generation.jinja``: a numbered list of pool tasks (``tasks``), ending
  in the next number so the model continues the list.
* ``classification.jinja``: few-shot yes/no; gets ``instruction``.
* ``instances_input_first.jinja``: examples as input then output; gets ``instruction``.
* ``instances_output_first.jinja``: class label then input, for classification
  tasks; gets ``instruction``.

Templates are looked up in the configured directory, else in the package's
bundled copy. Users edit them without touching code.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from .inputs import InputFileError, check_regular_file
from .seeds import Task

TEMPLATE_NAMES = (
    "instruction_generation",
    "classification",
    "instances_input_first",
    "instances_output_first",
)


class PromptError(ValueError):
    """A missing or broken template; the message names the file."""


def default_prompts_dir() -> Path:
    """The bundled templates: ``selfinstruct/prompts`` in a wheel, ``prompts/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "prompts", here.parent / "prompts"):
        if (candidate / "instruction_generation.jinja").is_file():
            return candidate
    raise PromptError(f"{here}: bundled prompt templates not found")


def one_line(text: str) -> str:
    """Collapse all whitespace runs to single spaces (how tasks appear in list prompts)."""
    return re.sub(r"\s+", " ", text).strip()


class PromptBuilder:
    """Renders the four prompts from a template directory.

    Args:
        directory: holds ``<name>.jinja`` for every name in ``TEMPLATE_NAMES``;
            None = the bundled templates.

    Raises:
        PromptError: a template file is missing, not a regular file
            (:func:`selfinstruct.inputs.check_regular_file`) or not valid Jinja2.
    """

    def __init__(self, directory: Path | None = None):
        import jinja2

        self.directory = (Path(directory).resolve() if directory is not None
                          else default_prompts_dir())
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directory),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )
        self._templates = {}
        for name in TEMPLATE_NAMES:
            path = self.directory / f"{name}.jinja"
            try:
                check_regular_file(path, missing="prompt template not found")
            except InputFileError as exc:
                raise PromptError(str(exc)) from None
            try:
                self._templates[name] = env.get_template(path.name)
            except jinja2.TemplateNotFound:
                raise PromptError(f"{path}: prompt template not found") from None
            except jinja2.TemplateSyntaxError as exc:
                raise PromptError(f"{path}:{exc.lineno}: template error: {exc.message}") from None

    def instruction_generation(self, tasks: Sequence[Task]) -> str:
        """The list-continuation prompt showing ``tasks`` numbered 1..len(tasks).

        The text ends with ``"{len(tasks) + 1}."`` so the completion starts inside
        the next item (Self-Instruct §2.2, instruction generation).
        """
        shown = [{"instruction": one_line(t.instruction), "id": t.id} for t in tasks]
        return self._templates["instruction_generation"].render(tasks=shown).rstrip("\n")

    def classification(self, instruction: str) -> str:
        """The few-shot prompt asking whether ``instruction`` is a classification task (§2.2, classification task identification)."""
        return self._templates["classification"].render(instruction=one_line(instruction)
                                                        ).rstrip("\n")

    def instances(self, instruction: str, is_classification: bool) -> str:
        """The instance-generation prompt: output-first for classification, else input-first (§2.2, instance generation)."""
        name = "instances_output_first" if is_classification else "instances_input_first"
        return self._templates[name].render(instruction=one_line(instruction))


@lru_cache(maxsize=8)
def load_prompts(directory: Path | None = None) -> PromptBuilder:
    """A cached :class:`PromptBuilder` for ``directory`` (None = bundled)."""
    return PromptBuilder(directory)


def instruction_stop(max_list_items: int) -> tuple[str, ...]:
    """Stop strings that end generation before list item ``max_list_items + 1``.

    Self-Instruct §2.2, instruction generation stops before the 16th item (``max_list_items=15``).
    """
    nxt = max_list_items + 1
    return (f"\n{nxt}.", f"\n{nxt} .", f"\n{nxt})")


INSTANCE_STOP = ("\nTask:",)
"""Instance prompts end where the model starts inventing the next task."""


def sample_prompt_tasks(rng: random.Random, human: Sequence[Task], machine: Sequence[Task],
                        total: int = 8, human_count: int = 6) -> list[Task]:
    """Pick the in-context tasks for one instruction-generation prompt.

    ``human_count`` human seed tasks and ``total - human_count`` machine-generated
    ones, all human while fewer than ``total - human_count`` machine tasks exist
    (Self-Instruct §2.2, instruction generation: 6 + 2 of 8). The order is shuffled so seeds are not
    always first. Never returns more tasks than exist.

    Args:
        rng: the source of randomness (seeded by the caller for reproducibility).
        human: the seed tasks.
        machine: the machine-generated tasks in the pool.
        total: tasks per prompt.
        human_count: of which human, when enough machine tasks exist.

    Returns:
        ``min(total, len(human) + len(machine))`` distinct tasks.
    """
    machine_count = total - human_count
    if len(machine) < machine_count:
        chosen = rng.sample(list(human), min(total, len(human)))
    else:
        chosen = (rng.sample(list(human), min(human_count, len(human)))
                  + rng.sample(list(machine), machine_count))
    rng.shuffle(chosen)
    return chosen
