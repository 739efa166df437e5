"""Prompt building: few-shot prompts rendered from the Jinja2 templates in ``prompts/``.

Each recipe (``Config.recipe``) has its templates. Self-Instruct's four, one per
model call of the algorithm (Self-Instruct §2.2):

* ``instruction_generation.jinja``: a numbered list of pool tasks (``tasks``), ending
  in the next number so the model continues the list.
* ``classification.jinja``: few-shot yes/no; gets ``instruction``.
* ``instances_input_first.jinja``: examples as input then output; gets ``instruction``.
* ``instances_output_first.jinja``: class label then input, for classification
  tasks; gets ``instruction``.

The Alpaca recipe's one (Stanford Alpaca, ``prompt.txt`` and ``generate_instruction.py``):

* ``alpaca_generation.jinja``: rules for a list of ``list_size`` whole tasks, then
  ``tasks`` (seed tasks with ``instruction``, ``input``, ``output``) as numbered
  "Instruction / Input / Output" blocks between ``###`` lines; it ends in the next
  block's ``N. Instruction:`` so the model writes the rest of the list.

And, when quality scoring is on, a rubric (``judge.jinja`` by default,
``quality.rubric``): one example (``instruction``, ``input``, ``output``) and the
three questions of Self-Instruct §3.3 scored from ``scale_min`` to ``scale_max``.

Templates are looked up in the configured directory, else in the package's
bundled copy. Users edit them without touching code.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

from .inputs import InputFileError, check_regular_file
from .tasks import Task

TEMPLATE_NAMES = (
    "instruction_generation",
    "classification",
    "instances_input_first",
    "instances_output_first",
)
"""The Self-Instruct recipe's templates."""

RECIPE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "self-instruct": TEMPLATE_NAMES,
    "alpaca": ("alpaca_generation",),
}
"""The templates each recipe (``Config.recipe``) loads, and a run's identity records."""

NO_INPUT = "<noinput>"
"""How the Alpaca prompt shows an empty input, and what its parser reads as one
(Stanford Alpaca, ``prompt.txt``)."""


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


TEMPLATE_VARIABLES = {
    "instruction_generation": {"tasks"},
    "classification": {"instruction"},
    "instances_input_first": {"instruction"},
    "instances_output_first": {"instruction"},
    "alpaca_generation": {"tasks", "list_size"},
}
"""The variables each template is rendered with; any other is an error when loading."""

RUBRIC_VARIABLES = {"instruction", "input", "output", "scale_min", "scale_max"}
"""The variables a rubric template is rendered with (:meth:`PromptBuilder.judge`)."""

RUBRIC_REQUIRED = ("instruction", "input", "output")
"""The variables a rubric must use: the judge has to see the whole example
(Self-Instruct §3.3 asks about all three fields)."""

_SAMPLES: dict[str, object] = {
    "tasks": [{"instruction": "Name a colour.", "id": "sample", "input": NO_INPUT,
               "output": "Blue."}] * 2,
    "list_size": 20,
    "instruction": "Name a colour.",
    "input": "",
    "output": "Blue.",
    "scale_min": 1,
    "scale_max": 5,
}


class PromptBuilder:
    """Renders the four prompts, and the judge's rubric, from a template directory.

    Templates are data, possibly from someone else's run: they are read once,
    hashed, compiled from those bytes in a sandboxed Jinja environment (no
    attribute access to Python internals, no file access: only the loaded
    templates can include each other) with undefined variables as errors, and
    rendered once with sample values, so every mistake surfaces here, before a
    run creates anything.

    Args:
        directory: holds ``<name>.jinja`` for every template of the recipe
            (and ``<rubric>.jinja`` when ``rubric`` is given); None = the bundled
            templates.
        expected_sha256: template name -> the hex sha256 it must have (a run's
            ``identity.prompts_sha256``), or None to accept any content.
        rubric: the rubric template's name (``quality.rubric``, e.g. ``"judge"``)
            to load as well, for :meth:`judge`; None = no rubric, and
            ``sha256`` holds exactly the recipe's templates.
        recipe: ``Config.recipe``: which templates to load
            (:data:`RECIPE_TEMPLATES`).

    Attributes:
        sha256: template name -> hex sha256 of the bytes in use (the rubric's
            name included when one is loaded).
        rubric: the rubric's name, or None.

    Raises:
        PromptError: a template file is missing or not a regular file
            (:func:`selfinstruct.inputs.check_regular_file`), is not valid
            Jinja2, uses a variable it is not given, fails its sample render (a
            sandbox violation included), or does not match ``expected_sha256``;
            a rubric name that is not a plain file stem or is a generation
            template of a recipe; an unknown recipe; a rubric that does not use ``instruction``,
            ``input`` and ``output``.
    """

    def __init__(self, directory: Path | None = None,
                 expected_sha256: dict[str, str] | None = None,
                 rubric: str | None = None, recipe: str = "self-instruct"):
        import hashlib

        import jinja2
        from jinja2 import meta
        from jinja2.sandbox import SandboxedEnvironment

        try:
            self.directory = (Path(directory).resolve() if directory is not None
                              else default_prompts_dir())
        except (RuntimeError, OSError):  # Path.resolve() on a symlink loop
            raise PromptError(f"{directory}: symlink loop") from None
        if rubric is not None and (Path(rubric).name != rubric or rubric in ("", ".", "..")
                                   or "\\" in rubric):
            raise PromptError(f"{self.directory}: rubric {rubric!r} is not a template name "
                              "(a file name without .jinja)")
        if recipe not in RECIPE_TEMPLATES:
            raise PromptError(f"unknown recipe {recipe!r} (one of "
                              f"{', '.join(RECIPE_TEMPLATES)})")
        self.recipe = recipe
        if rubric is not None and any(rubric in names for names in RECIPE_TEMPLATES.values()):
            raise PromptError(f"{self.directory / f'{rubric}.jinja'}: rubric {rubric!r} is one "
                              "of the generation templates, not a rubric")
        self.rubric = rubric
        variables = {name: TEMPLATE_VARIABLES[name] for name in RECIPE_TEMPLATES[recipe]}
        if rubric is not None:
            variables[rubric] = RUBRIC_VARIABLES
        sources: dict[str, str] = {}
        self.sha256: dict[str, str] = {}
        for name in variables:
            path = self.directory / f"{name}.jinja"
            try:
                check_regular_file(path, missing="prompt template not found")
            except InputFileError as exc:
                raise PromptError(str(exc)) from None
            data = path.read_bytes()
            self.sha256[name] = hashlib.sha256(data).hexdigest()
            if expected_sha256 is not None and expected_sha256.get(name) != self.sha256[name]:
                raise PromptError(f"{path}: prompt template differs from the one the run "
                                  "recorded (sha256 mismatch); refusing to use it")
            try:
                sources[path.name] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PromptError(f"{path}: not UTF-8 text ({exc.reason})") from None
        env = SandboxedEnvironment(
            loader=jinja2.DictLoader(sources),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )
        self._templates = {}
        for name, given in variables.items():
            path = self.directory / f"{name}.jinja"
            try:
                used = meta.find_undeclared_variables(env.parse(sources[path.name]))
                unknown = used - given
                if unknown:
                    raise PromptError(f"{path}: template uses undefined variable "
                                      f"'{min(unknown)}' (it is given: "
                                      f"{', '.join(sorted(given))})")
                template = env.get_template(path.name)
                sample = {k: _SAMPLES[k] for k in given}
                template.render(**sample)
                if name == rubric:
                    missing = [v for v in RUBRIC_REQUIRED if v not in used]
                    if missing:
                        raise PromptError(f"{path}: rubric template does not use required "
                                          f"variable '{missing[0]}'")
                    # both branches of an "is there an input" test must render
                    template.render(**{**sample, "input": "The sky is blue."})
            except jinja2.TemplateSyntaxError as exc:
                raise PromptError(f"{path}:{exc.lineno}: template error: {exc.message}") from None
            except jinja2.TemplateNotFound as exc:
                raise PromptError(f"{path}: includes {exc.name!r}, which is not one of the "
                                  "prompt templates") from None
            except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError,
                    ValueError, RecursionError) as exc:
                if isinstance(exc, PromptError):
                    raise
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise PromptError(f"{path}: template fails to render: {message}") from None
            self._templates[name] = template

    def instruction_generation(self, tasks: Sequence[Task]) -> str:
        """The list-continuation prompt showing ``tasks`` numbered 1..len(tasks).

        The text ends with ``"{len(tasks) + 1}."`` so the completion starts inside
        the next item (Self-Instruct §2.2, "Instruction Generation").
        """
        shown = [{"instruction": one_line(t.instruction), "id": t.id} for t in tasks]
        return self._templates["instruction_generation"].render(tasks=shown).rstrip("\n")

    def alpaca_generation(self, tasks: Sequence[Task], list_size: int) -> str:
        """The Alpaca prompt: rules for ``list_size`` tasks, then ``tasks`` as blocks
        1..len(tasks), each showing its first instance (Stanford Alpaca,
        ``generate_instruction.py``: whitespace of the instruction collapsed, a
        trailing colon dropped, an empty input shown as :data:`NO_INPUT`).

        The text ends with ``"{len(tasks) + 1}. Instruction:"``, so the completion
        starts inside the next block's instruction.

        Raises:
            PromptError: a task without instances, or the builder was made for
                another recipe.
        """
        if "alpaca_generation" not in self._templates:
            raise PromptError(f"{self.directory}: the {self.recipe} recipe's templates "
                              "were loaded, not the alpaca recipe's")
        shown = []
        for task in tasks:
            if not task.instances:
                raise PromptError(f"seed task {task.id!r} has no instance to show")
            first = task.instances[0]
            shown.append({"instruction": one_line(task.instruction).rstrip(":"),
                          "input": first.input if first.input.strip() else NO_INPUT,
                          "output": first.output, "id": task.id})
        return self._templates["alpaca_generation"].render(
            tasks=shown, list_size=list_size).rstrip("\n")

    def classification(self, instruction: str) -> str:
        """The few-shot prompt asking whether ``instruction`` is a classification task
        (Self-Instruct §2.2, "Classification Task Identification")."""
        return self._templates["classification"].render(instruction=one_line(instruction)
                                                        ).rstrip("\n")

    def instances(self, instruction: str, is_classification: bool) -> str:
        """The instance-generation prompt: output-first for classification, else input-first
        (Self-Instruct §2.2, "Instance Generation")."""
        name = "instances_output_first" if is_classification else "instances_input_first"
        return self._templates[name].render(instruction=one_line(instruction))

    def judge(self, instruction: str, input_text: str, output: str, scale_min: int,
              scale_max: int) -> str:
        """The judge prompt for one example: the rubric rendered with the example's
        three fields as they are (no whitespace collapsing: layout matters in an
        output) and the scale, trailing newlines removed. It asks Self-Instruct
        §3.3's three questions (valid task, appropriate input, correct output),
        each scored from ``scale_min`` to ``scale_max``, plus an overall score.

        Args:
            instruction, input_text, output: the example (``input_text`` is ""
                when the task takes no input).
            scale_min, scale_max: the ends of the score scale
                (``quality.scale_min`` / ``quality.scale_max``).

        Raises:
            PromptError: the builder was made without ``rubric``.
        """
        if self.rubric is None:
            raise PromptError(f"{self.directory}: no rubric template loaded (PromptBuilder "
                              "was made without rubric=...)")
        return self._templates[self.rubric].render(
            instruction=instruction, input=input_text, output=output,
            scale_min=scale_min, scale_max=scale_max).rstrip("\n")


def instruction_stop(max_list_items: int) -> tuple[str, ...]:
    """Stop strings that end generation before list item ``max_list_items + 1``.

    Self-Instruct's released code stops instruction generation before the 16th
    item (``max_list_items=15``, the default of ``generation.max_list_items``).
    """
    nxt = max_list_items + 1
    return (f"\n{nxt}.", f"\n{nxt} .", f"\n{nxt})")


INSTANCE_STOP = ("\nTask:",)
"""Instance prompts end where the model starts inventing the next task."""


def alpaca_stop(max_list_items: int) -> tuple[str, ...]:
    """Stop strings of the Alpaca recipe: before block ``max_list_items + 1``.

    Stanford Alpaca's script stops at ``"\n20"`` and ``"20."`` (so the model writes
    blocks 4 to 19 after 3 shown, 16 new tasks); the same two forms for any size.
    """
    nxt = max_list_items + 1
    return (f"\n{nxt}", f"{nxt}.")


def instance_stop(max_instances: int) -> tuple[str, ...]:
    """Stop strings of instance generation: the next task, or one example too many.

    The reference implementation (``generate_instances.py``) stops at ``"Task:"``
    and at ``"Example 6"`` when it keeps 5 instances.
    """
    return (*INSTANCE_STOP, f"Example {max_instances + 1}")


def sample_prompt_tasks(rng: random.Random, human: Sequence[Task], machine: Sequence[Task],
                        total: int, human_count: int) -> list[Task]:
    """Pick the in-context tasks for one instruction-generation prompt.

    ``human_count`` human seed tasks and ``total - human_count`` machine-generated
    ones, all human while fewer than ``total - human_count`` machine tasks exist
    (Self-Instruct §2.2, "Instruction Generation": 6 human and 2 machine tasks of 8,
    the defaults of ``generation.prompt_human_tasks`` and ``generation.prompt_tasks``).
    The order is shuffled so seeds are not always first. Never returns more tasks
    than exist.

    Args:
        rng: the source of randomness (seeded by the caller for reproducibility).
        human: the seed tasks.
        machine: the machine-generated tasks in the pool.
        total: tasks per prompt (``generation.prompt_tasks``).
        human_count: of which human, when enough machine tasks exist
            (``generation.prompt_human_tasks``).

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
