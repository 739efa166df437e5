"""Help texts from the configuration model: every default and description is stated once.

The command line's options show what :class:`~selfinstruct.config.Config`
declares (its fields' defaults, descriptions and ``Literal`` choices), read here
at import time; only pydantic is imported, so ``selfinstruct --help`` stays fast.
"""

from __future__ import annotations

from functools import cache
from typing import Any, get_args

from pydantic.fields import FieldInfo

from .config import RECIPE_DEFAULTS, Config


@cache
def config_field(key: str) -> FieldInfo:
    """The field of :class:`~selfinstruct.config.Config` at a dotted key.

    Args:
        key: e.g. ``"generation.temperature"``; each part before the last names
            a section (a nested model).

    Raises:
        KeyError: no such field or section.
    """
    model: Any = Config
    *sections, leaf = key.split(".")
    for name in sections:
        model = model.model_fields[name].annotation
    info: FieldInfo = model.model_fields[leaf]
    return info


def default_of(key: str) -> Any:
    """The default value of the configuration field at ``key`` (dotted), as
    :mod:`selfinstruct.config` declares it (a default factory is called).

    Raises:
        KeyError: no such field.
    """
    return config_field(key).get_default(call_default_factory=True)


def choices_of(key: str) -> list[str]:
    """The allowed values of a ``Literal`` configuration field, in declared order.

    Raises:
        KeyError: no such field.
    """
    return [str(value) for value in get_args(config_field(key).annotation)]


def shown(value: Any) -> str:
    """A default as help texts print it: ``0.7``, ``600`` (a whole float without
    ``.0``), ``outputs/run``, ``'\\n\\n'`` (strings in a list quoted, escapes visible)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(repr(item) for item in value) or "none"
    return str(value)


def description_of(key: str) -> str:
    """The description of the configuration field at ``key`` as a sentence:
    capitalised, with a full stop.

    Raises:
        KeyError: no such field; ValueError: the field has no description.
    """
    description = config_field(key).description
    if not description:
        raise ValueError(f"configuration field {key} has no description")
    return description[0].upper() + description[1:] + "."


def config_help(key: str, text: str | None = None, default: str | None = None) -> str:
    """The help text of the option setting the configuration field at ``key``.

    Args:
        key: the dotted field, e.g. ``"filters.min_words"``.
        text: the sentence; None = :func:`description_of` the field.
        default: what to print as the default; None = the field's default
            (:func:`shown`).

    Returns:
        ``"<text>  [default: <default>]"`` (click's layout of a default), with
        ``"; alpaca recipe: <value>"`` where a recipe has its own default
        (:data:`~selfinstruct.config.RECIPE_DEFAULTS`); long values (lists) are
        not repeated.

    Raises:
        KeyError: no such field; ValueError: no ``text`` and the field has no
            description.
    """
    if text is None:
        text = description_of(key)
    given = shown(default_of(key)) if default is None else default
    for recipe, defaults in RECIPE_DEFAULTS.items():
        if key in defaults and not isinstance(defaults[key], list):
            given += f"; {recipe} recipe: {shown(defaults[key])}"
    return f"{text}  [default: {given}]"
