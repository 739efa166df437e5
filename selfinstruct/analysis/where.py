"""Choosing rows: the ``--where`` filter language of ``inspect`` and its sample rows.

An expression is ``COLUMN OP VALUE`` with OP one of ``= != < <= > >= ~``
(``~``: a case-insensitive regular-expression search); values are converted to
the column's type (numbers, ``true``/``false``). Several expressions must all
hold. Bad expressions raise :class:`~selfinstruct.analysis.loading.InspectError`
with the expression quoted.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .loading import InspectError

SAMPLE_COLUMNS = ("id", "task_id", "round", "is_classification", "instruction", "input",
                  "output", "nearest_instruction", "nearest_rouge_l", "quality_overall")
"""Columns of ``inspect``'s sample rows, those the rows have (``quality_overall``: the
judge's overall score, in a judged run)."""


_WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(!=|>=|<=|=|>|<|~)\s*(.*?)\s*$", re.DOTALL)


def parse_where(expression: str, columns: Iterable[str]) -> tuple[str, str, str]:
    """Split ``COLUMN OP VALUE`` (OP: ``= != < <= > >= ~``) into its parts.

    Raises:
        InspectError: malformed expression or unknown column.
    """
    match = _WHERE.match(expression)
    if not match:
        raise InspectError(f"--where '{expression}': expected COLUMN OP VALUE with OP one of "
                           "= != < <= > >= ~")
    column, op, value = match.groups()
    columns = list(columns)
    if column not in columns:
        raise InspectError(f"--where '{expression}': unknown column '{column}' "
                           f"(columns: {', '.join(columns)})")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return column, op, value


def filter_rows(frame: pd.DataFrame, expressions: Sequence[str]) -> pd.DataFrame:
    """Rows satisfying every ``--where`` expression.

    ``~`` is a case-insensitive regular-expression search; ``=``/``!=`` on text
    compare exactly; on numeric and boolean columns values are converted
    (``true``/``false`` for booleans). Null values match only ``!=``.

    Raises:
        InspectError: bad expression, unknown column, bad regex or a value that
            does not convert to the column's type.
    """
    mask = pd.Series(True, index=frame.index)
    for expression in expressions:
        column, op, raw = parse_where(expression, frame.columns)
        series = frame[column]
        if op == "~":
            try:
                pattern = re.compile(raw, re.IGNORECASE)
            except re.error as exc:
                raise InspectError(f"--where '{expression}': bad regular expression: {exc}") \
                    from None
            hit = _search(series, pattern)
        else:
            value: Any = raw
            numeric = pd.to_numeric(series, errors="coerce")
            is_bool = series.dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all() and \
                series.notna().any()
            if is_bool:
                if raw.lower() not in ("true", "false"):
                    raise InspectError(f"--where '{expression}': '{column}' is true or false")
                value, series = raw.lower() == "true", series.map(
                    lambda v: None if v is None or v is pd.NA else bool(v))
            elif numeric.notna().any() and series.map(lambda v: not isinstance(v, str)).all():
                try:
                    value = float(raw)
                except ValueError:
                    raise InspectError(f"--where '{expression}': '{column}' is numeric") from None
                series = numeric
            hit = _compare(series, op, value)
        mask &= hit.astype(bool)
    return frame[mask]


def _search(series: pd.Series[Any], pattern: re.Pattern[str]) -> pd.Series[bool]:
    """True where the cell is text and ``pattern`` is found in it."""
    return series.map(lambda v: isinstance(v, str) and pattern.search(v) is not None)


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
    "<": operator.lt, "<=": operator.le}


def _compare(series: pd.Series[Any], op: str, value: Any) -> pd.Series[bool]:
    """``cell OP value`` per cell; a null cell matches only ``!=``, a cell that does not
    compare with ``value`` (TypeError) matches nothing."""
    compare = _COMPARE[op]

    def test(v: Any) -> bool:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return op == "!="
        try:
            return bool(compare(v, value))
        except TypeError:
            return False

    return series.map(test)


def json_ready(value: Any) -> Any:
    """``value`` with numpy/pandas scalars and arrays (nested in lists, tuples and
    dicts too) turned into plain Python values; NaN and ``pd.NA`` become None."""
    if isinstance(value, np.ndarray):
        return [json_ready(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def sample_rows(frame: pd.DataFrame, n: int, where: Sequence[str] = (), seed: int = 0
                ) -> dict[str, Any]:
    """Up to ``n`` rows matching ``where``, drawn with a fixed seed, in row order.

    Returns:
        ``{"where", "matched", "rows": [{column: value}]}`` with the columns of
        :data:`SAMPLE_COLUMNS` that the frame has.
    """
    matched = filter_rows(frame, where)
    picked = matched.sample(n=min(n, len(matched)), random_state=seed).sort_index() \
        if n > 0 and len(matched) else matched.iloc[:0]
    columns = [c for c in SAMPLE_COLUMNS if c in frame.columns]
    return {"where": list(where), "matched": len(matched),
            "rows": [{c: json_ready(row[c]) for c in columns}
                     for row in picked.to_dict("records")]}

