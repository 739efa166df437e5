"""Names and limits of what ``export`` and ``inspect --report`` write, defined once.

This module imports nothing, so the command line can use these values in its
options, help texts and checks (``selfinstruct --help`` loads no pandas), while
:mod:`selfinstruct.analysis.export`, :mod:`selfinstruct.analysis.chat_check` and
:mod:`selfinstruct.analysis.report`, which do the writing, read the same definitions.
"""

FORMATS = ("alpaca", "sharegpt", "messages", "parquet", "datasets")
"""The ``export --format`` values, in the order the help lists them."""

DEFAULT_MAX_LENGTH = 2048
"""``export --max-length`` (tokens) when the tokenizer states none below it (its
model_max_length is often a placeholder of ~1e30)."""

REPORT_INDEX = "index.html"
"""The self-contained page of ``inspect --report DIR``."""

REPORT_STATS = "stats.json"
"""Every statistic of ``inspect --report DIR``, as ``inspect --json`` prints it."""

REPORT_FIGURE_SUFFIX = ".png"
"""The suffix of each figure file of ``inspect --report DIR`` (``<figure name>.png``)."""

REPORT_FILES = ("*" + REPORT_FIGURE_SUFFIX, REPORT_INDEX, REPORT_STATS)
"""Glob patterns of every file ``inspect --report DIR`` writes in DIR (the
``writes`` of :func:`selfinstruct.safety.check_output_apart`)."""
