"""ROUGE-L as Self-Instruct's reference code computes it: tokenizers and F1.

Self-Instruct (Wang et al., ACL 2023; method section, paragraph "Filtering
and Postprocessing") adds a generated instruction to the task pool only if
its ROUGE-L similarity with every instruction already there is below 0.7.
The reference code (yizhongw/self-instruct, and Stanford Alpaca which copies
it) scores each candidate against the whole pool with Google's
``rouge_score`` package, ``rouge_scorer.RougeScorer(["rougeL"])`` ->
``fmeasure``, and drops the candidate when the maximum is ``> 0.7`` (so
exactly 0.7 is kept).

This module holds what every ROUGE-L decision is built from: the tokenizers
(:func:`rouge_tokenize`: rouge_score's own, or a Unicode-aware one), the F1 in
rouge_score's floating-point form, :func:`rouge_l` for one pair and
:func:`empty_fraction`. :mod:`selfinstruct.dedup.index` searches a pool with
them. Imports numpy and rapidfuzz only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
from rapidfuzz.distance import LCSseq

from ..config import FilterConfig

#: Self-Instruct ("Filtering and Postprocessing") and its code, as copied by
#: Alpaca: a candidate whose ROUGE-L F1 with any pool instruction is above 0.7
#: is dropped (exactly 0.7 is kept). Read from the config model, where it is stated.
DEFAULT_THRESHOLD: float = FilterConfig.model_fields["rouge_threshold"].default

#: Names accepted by the ``tokenizer`` arguments.
TOKENIZERS = ("rouge", "unicode")

# Safety margin (absolute, on the F1 scale) for every pruning bound.  Float
# F1 values differ from the exact rational F1 by a few ulps (~1e-16), so
# pruning only what is at least 1e-9 below the decision value can never
# remove a pair that the reference float computation would keep or select.
_EPS = 1e-9


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------

# rouge_score.tokenize.tokenize (no stemmer, the RougeScorer default):
#   text.lower(); every char outside [a-z0-9] -> space; split on whitespace;
#   keep tokens matching ^[a-z0-9]+$.
# The result is exactly the maximal runs of [a-z0-9] in text.lower().
_ROUGE_WORD = re.compile(r"[a-z0-9]+")

# CJK ideographs, kana, hangul (and iteration marks / radicals): one token
# per character in the "unicode" tokenizer.
_CJK = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u2e80-\u2fdf"  # CJK radicals, Kangxi radicals
    "\u3005-\u3007"  # iteration mark 々, closing mark 〆, ideographic zero (U+3007)
    "\u3021-\u3029\u3038-\u303b"  # Hangzhou numerals, more iteration marks
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK Ext A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\ua960-\ua97f"  # Hangul Jamo Ext A
    "\uac00-\ud7af"  # Hangul syllables
    "\ud7b0-\ud7ff"  # Hangul Jamo Ext B
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # halfwidth Katakana
    "\U0001b000-\U0001b16f"  # Kana supplement / extended
    "\U00020000-\U0003134f"  # CJK Ext B..G
)


@lru_cache(maxsize=1)
def combining_marks() -> str:
    """Every Unicode combining mark (category M*) as the ranges of a regex character
    class (U+0300-U+036F and the others; built once: it scans the Unicode database,
    ~0.2 s). The ``unicode`` tokenizer here and the decontamination n-grams keep
    marks inside words, so Devanagari, Thai, ... words are not split at vowel signs."""
    ranges: list[str] = []
    start = prev = -2
    for cp in range(0x110000):
        if unicodedata.category(chr(cp))[0] == "M":
            if cp != prev + 1:
                if start >= 0:
                    ranges.append(_range(start, prev))
                start = cp
            prev = cp
    if start >= 0:
        ranges.append(_range(start, prev))
    return "".join(ranges)


@lru_cache(maxsize=1)
def _unicode_word_re() -> re.Pattern[str]:
    """Compile the "unicode" tokenizer regex (built lazily, see :func:`combining_marks`)."""
    marks = combining_marks()
    # A CJK/kana/hangul character alone, or a word: a letter/digit (\w
    # without "_", not CJK) followed by letters, digits and combining marks
    # (so Devanagari, Thai, ... words are not split at vowel signs).
    pattern = f"[{_CJK}]|[^\\W_{_CJK}](?:[^\\W_{_CJK}]|[{marks}])*"
    return re.compile(pattern)


def _range(a: int, b: int) -> str:
    return re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"


def _check_tokenizer(tokenizer: str) -> None:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")


def rouge_tokenize(text: str, tokenizer: str = "rouge") -> list[str]:
    """Tokenize ``text`` the way ROUGE-L deduplication sees it.

    Args:
        text: any string.
        tokenizer: ``"rouge"`` (default) is exactly the default tokenizer of
            Google's ``rouge_score`` (``RougeScorer(["rougeL"])``, no
            stemming): ``text.lower()``, every character outside ``[a-z0-9]``
            becomes a separator, empty pieces are dropped.  Non-Latin text
            therefore yields no tokens.  ``"unicode"`` is Unicode-aware:
            NFKC normalisation then ``str.casefold``; every CJK ideograph,
            kana and hangul character is its own token (Chinese splits per
            character); other tokens are maximal runs of Unicode letters and
            digits (``\\w`` without ``_``), combining marks included.

    Returns:
        The list of tokens (possibly empty), in text order.

    Raises:
        ValueError: unknown ``tokenizer``.
    """
    if tokenizer == "rouge":
        return _ROUGE_WORD.findall(text.lower())
    _check_tokenizer(tokenizer)
    return _unicode_word_re().findall(unicodedata.normalize("NFKC", text).casefold())


# rouge_score's tokenizer on ASCII bytes: A-Z lowered, a-z and 0-9 kept, every
# other byte (NUL aside: the text boundary) a separator.
_ASCII_FOLD = bytes(c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122 or c == 0)
                    else 32 for c in range(256))
#: Marks the end of one text in :func:`_rouge_tokens_joined`.
TEXT_MARK = b"\x00"
# The only characters outside ASCII whose lowercase holds an ASCII letter or
# digit (checked over all code points): the dotted I and the Kelvin sign.
_LOWER_TO_ASCII = ("\u0130", "\u212a")


def _rouge_tokens_joined(texts: Sequence[str]) -> list[bytes] | None:
    """The rouge tokenizer's tokens of all texts in one pass, as ASCII bytes,
    the texts separated by :data:`TEXT_MARK`; None when no text may hold NUL,
    the dotted I or the Kelvin sign (then tokenize text by text).

    Same tokens as :func:`rouge_tokenize` for each text: outside ASCII only
    those two characters lowercase to ``[a-z0-9]``, so every other one is a
    separator, and ASCII lowercases byte by byte.
    """
    joined = " \x00 ".join(texts)
    if joined.count("\x00") != len(texts) - 1 or any(c in joined for c in _LOWER_TO_ASCII):
        return None
    return joined.encode("ascii", "replace").translate(_ASCII_FOLD).split()


def _f1(lcs: int, len_target: int, len_prediction: int) -> float:
    """ROUGE-L F1 in rouge_score's own floating-point form.

    ``rouge_scorer._score_lcs``: precision = lcs / len(prediction), recall =
    lcs / len(target), ``scoring.fmeasure``: 2*P*R/(P+R) if P+R > 0 else 0;
    0 when either side has no tokens.  (Algebraically 2*lcs/(la+lb), but that
    differs in the last bit on many pairs, which matters at exact ties.)
    """
    if len_target == 0 or len_prediction == 0:
        return 0.0
    p = lcs / len_prediction
    r = lcs / len_target
    if p + r > 0:
        return 2 * p * r / (p + r)
    return 0.0


def _f1_array(lcs: np.ndarray, len_target: int, len_prediction: np.ndarray) -> np.ndarray:
    """Vectorised :func:`_f1` (bit-identical: same IEEE operations, same order)."""
    lcs = lcs.astype(np.float64)
    p = lcs / len_prediction
    r = lcs / len_target
    s = p + r
    with np.errstate(invalid="ignore", divide="ignore"):
        f = 2 * p * r / s
    return np.where(s > 0, f, 0.0)


def _char(i: int) -> str:
    """Token id -> a single code point (skipping the surrogate block)."""
    return chr(i if i < 0xD800 else i + 0x800)


_MAX_TOKENS = 0x110000 - 0x800


def rouge_l(a: str, b: str, tokenizer: str = "rouge") -> float:
    """ROUGE-L F1 between two texts, identical to ``rouge_score``.

    Equals ``RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure``
    (target ``a``, prediction ``b``) bit for bit when ``tokenizer="rouge"``:
    same tokens, LCS length over tokens, F1 = 2PR/(P+R) with P = lcs/len(b),
    R = lcs/len(a).  The value is symmetric in ``a`` and ``b``.

    Returns:
        A float in [0, 1]; 0.0 if either text has no tokens.

    Raises:
        ValueError: unknown ``tokenizer``.
    """
    ta = rouge_tokenize(a, tokenizer)
    tb = rouge_tokenize(b, tokenizer)
    if not ta or not tb:
        return 0.0
    ids: dict[str, str] = {}
    sa = "".join([ids.setdefault(t, _char(len(ids))) for t in ta])
    sb = "".join([ids.setdefault(t, _char(len(ids))) for t in tb])
    return _f1(LCSseq.similarity(sa, sb), len(ta), len(tb))


def empty_fraction(texts: Iterable[str], tokenizer: str = "rouge") -> float:
    """Fraction (0.0-1.0) of ``texts`` that tokenize to nothing.

    Such texts have ROUGE-L 0 with everything, so they are never dropped as
    duplicates; with the ``"rouge"`` tokenizer that is the case for any text
    without ASCII letters or digits (e.g. Chinese).  ``generate`` uses this
    to warn when more than a few percent of a pool is invisible to dedup.
    Returns 0.0 for an empty iterable.

    Raises:
        ValueError: unknown ``tokenizer``.
    """
    _check_tokenizer(tokenizer)
    n = empty = 0
    for text in texts:
        n += 1
        if not rouge_tokenize(text, tokenizer):
            empty += 1
    return empty / n if n else 0.0
