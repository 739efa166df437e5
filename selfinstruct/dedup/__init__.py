"""Exact ROUGE-L deduplication of instructions at pool scale, and near-duplicate examples.

Self-Instruct (Wang et al., ACL 2023, "Filtering and Postprocessing") keeps a
generated instruction only if its ROUGE-L F1 with every pool instruction is at
most 0.7, scored with Google's ``rouge_score`` as the reference code does.
This package takes exactly those decisions without the quadratic scan:

* :mod:`.rouge`: the tokenizers (:func:`rouge_tokenize`), :func:`rouge_l`,
  :func:`empty_fraction`, :data:`DEFAULT_THRESHOLD`, :data:`TOKENIZERS`;
* :mod:`.index`: :class:`RougeIndex` (an incremental pool searched by prefix
  filtering, verified with the exact LCS) and its :class:`Decision`;
* :mod:`.near`: :class:`NearDuplicateIndex` and :func:`near_duplicates`
  (rapidfuzz character similarity over whole examples);
* :mod:`.files`: the ``dedup`` command: :func:`dedup_records`,
  :func:`dedup_file` (with :func:`dropped_path`, :func:`output_format`),
  :class:`DroppedRecord` and :class:`DedupInputError`.

Importing the package is cheap: numpy and rapidfuzz are imported at module
level; pandas / pyarrow only inside :func:`dedup_file`. It never imports vLLM
or torch.
"""

from __future__ import annotations

from .files import (OUTPUT_FORMATS, DedupInputError, DroppedRecord,
                    dedup_file, dedup_records, dropped_path, output_format)
from .index import Decision, RougeIndex
from .near import NearDuplicateIndex, near_duplicates
from .rouge import DEFAULT_THRESHOLD, TOKENIZERS, empty_fraction, rouge_l, rouge_tokenize

__all__ = [
    "DEFAULT_THRESHOLD",
    "OUTPUT_FORMATS",
    "TOKENIZERS",
    "Decision",
    "DedupInputError",
    "DroppedRecord",
    "NearDuplicateIndex",
    "RougeIndex",
    "dedup_file",
    "dedup_records",
    "dropped_path",
    "empty_fraction",
    "near_duplicates",
    "output_format",
    "rouge_l",
    "rouge_tokenize",
]
