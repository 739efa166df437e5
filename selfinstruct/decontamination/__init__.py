"""Decontamination: no generated example may repeat an evaluation benchmark.

A model that saw a benchmark in pre-training can reproduce it when it writes
synthetic data, and SFT on that data inflates the scores later reported on the
benchmark (Yang et al. 2023, "Rethinking Benchmark and Contamination for
Language Models with Rephrased Samples"). Every example is checked against the
evaluation sets the user names (``--against FILE[:FIELD,...]``) by:

1. **n-gram overlap** (:mod:`.ngrams`) on normalized text: an example sharing an
   n-gram with an evaluation item is flagged (n = 13 by default, the rule of
   GPT-3, Brown et al. 2020, Appendix C); the longest shared span and the share
   of the item covered are reported, the longest match being the most reliable
   single signal in Singh et al. 2024 ("Evaluation data contamination in LLMs:
   how do we measure it and (when) does it matter?", ConTAM);
2. **ROUGE-L** F1 of the instruction (and input) against each evaluation item,
   exact, with the dedup stage's index (:class:`selfinstruct.dedup.index.RougeIndex`),
   flagged above 0.7, which catches light paraphrases n-grams miss;
3. optionally, embedding similarity with a local embedding model.

:mod:`.benchmarks` reads the evaluation sets; the check runs in
``selfinstruct decontaminate`` and, with ``[decontamination]`` in the config,
inside ``generate`` and ``refilter``.
"""

from __future__ import annotations

CONTAMINATED = "contaminated"
"""Prefix of the reason code of a flagged instruction or example:
``contaminated:<benchmark name>``."""

METHODS = ("ngram", "rouge", "embedding")
"""The checks, in the order they run and are reported."""

DEFAULT_NGRAM = 13
"""n of the n-gram check: GPT-3's 13-gram rule (Brown et al. 2020, Appendix C)."""

MIN_ITEM_TOKENS = 8
"""An evaluation item shorter than n tokens is matched as a whole when it has at
least this many tokens, and skipped (too short to tell from chance) below: GPT-3
used n from 8 to 13 by benchmark (Brown et al. 2020, Appendix C)."""

DEFAULT_ROUGE_THRESHOLD = 0.7
"""ROUGE-L F1 above which an instruction matches an evaluation item: the dedup
stage's Self-Instruct threshold (§2.2)."""


def reason(benchmark: str) -> str:
    """The reason code of a match with ``benchmark``: ``contaminated:<benchmark>``."""
    return f"{CONTAMINATED}:{benchmark}"


class DecontaminationError(ValueError):
    """A bad evaluation set or setting: one line naming the file, line and field
    (or the option) where there is one."""
