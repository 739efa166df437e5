"""Leading verbs and their direct objects (Self-Instruct §3.2, Figure 3).

The paper parses each instruction and counts the root verb with its first direct
object. :func:`verb_statistics` does so with spaCy's dependency parse when an
English spaCy model is installed (never downloaded), and otherwise with a
first-word heuristic (:func:`heuristic_verb_object`); its output names the
method used.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

TOP_VERBS = 20
OBJECTS_PER_VERB = 4
"""Self-Instruct Figure 3 shows the 20 commonest root verbs and 4 objects each."""

# The word lists are kept as running text, one theme a line (SIM905 would make them
# hundreds of quoted literals).
_NOT_VERB = frozenset("""
a an the this that these those what which who whom whose why how when where
is are was were be been am do does did can could would should will shall may might must
i you he she it we they my your our their its his her there here
if in on at for from with by of to as into about after before during while since than
given based using according following below above assuming yes no not hi hello dear
""".split())  # noqa: SIM905
_LEAD_FILLERS = frozenset({"please", "kindly", "now", "also", "then", "simply", "just"})
_OBJECT_FILLERS = frozenset("""
a an the this that these those me us him her them it my your our their its his
some any each every all both either neither another other such
one two three four five six seven eight nine ten few several many more most
short brief new simple good creative detailed original interesting funny unique possible
given following above below next first last same different appropriate relevant suitable
best worst main top key correct right whole entire famous popular common potential important
major various specific similar basic current recent effective alternative typical
up out down back
""".split())  # noqa: SIM905
_DEGREE = frozenset({"most", "least", "more", "less", "very"})
_OBJECT_STOPS = frozenset("""
of for to in on at with by from about into as than that if whether
how what why which who when where and or but so because while then is are be
""".split())  # noqa: SIM905
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def heuristic_verb_object(instruction: str) -> tuple[str | None, str | None]:
    """Leading verb and its object by a first-word heuristic (no parser needed).

    The verb is the first word (after "Please"-like fillers), lowercased, unless
    it is a question word, auxiliary, pronoun, article or preposition ("What
    is...", "Given a...": no verb-object structure, as many instructions in the
    paper's Figure 3 analysis); "come up with" counts as one verb. The object
    is the first later word that is not an article, pronoun, number or common
    adjective, scanning at most six words and stopping at a preposition or
    conjunction.

    Returns:
        ``(verb, object)``; either may be None.
    """
    words = instruction.split()
    k = 0
    while k < len(words) and words[k].strip(",.:;!").lower() in _LEAD_FILLERS:
        k += 1
    if k >= len(words):
        return None, None
    match = _WORD.fullmatch(words[k].strip(",.:;!?\"'()"))
    verb = match.group(0).lower() if match else None
    if verb is None or verb in _NOT_VERB or len(verb) < 2 or words[k].endswith((",", ":")):
        return None, None
    if verb == "come" and [w.lower() for w in words[k + 1:k + 3]] == ["up", "with"]:
        verb, k = "come up with", k + 2  # the one phrasal verb common in instructions
    skip_next = False
    for word in words[k + 1:k + 7]:
        token = word.strip(",.:;!?\"'()[]").lower()
        token = token.removesuffix("'s")
        if token in _OBJECT_STOPS:
            break
        if skip_next or token in _DEGREE:  # "the most expensive item": skip the adjective
            skip_next = token in _DEGREE
            continue
        if token in _OBJECT_FILLERS or not _WORD.fullmatch(token or "-"):
            continue
        return verb, token
    return verb, None


def _spacy_parser() -> tuple[Any, str] | None:
    """An installed English spaCy pipeline and its name, or None (never downloads)."""
    try:
        import spacy
    except ImportError:
        return None
    for name in ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf"):
        if spacy.util.is_package(name):
            try:
                return spacy.load(name, disable=["ner"]), name
            except Exception:  # a broken model install: fall back to the heuristic
                return None
    return None


def resolve_verb_parser(parser: Any) -> Any:
    """The parser :func:`verb_statistics` would use for ``parser``: ``"auto"`` becomes
    the installed spaCy pipeline (a ``(nlp, name)`` pair) or None (the heuristic);
    any other value is returned as it is. Resolve once to parse several lists of
    instructions with one loaded model."""
    return _spacy_parser() if parser == "auto" else parser


def spacy_verb_object(doc: Any) -> tuple[str | None, str | None]:
    """Root verb lemma and its first direct-object lemma from a spaCy ``Doc``
    (Self-Instruct §3.2 uses a constituency parser for the same pair)."""
    root = next((t for t in doc if t.dep_ == "ROOT"), None)
    if root is None or root.pos_ != "VERB":
        return None, None
    obj = next((c for c in root.children if c.dep_ in ("dobj", "obj")), None)
    return root.lemma_.lower(), (obj.lemma_.lower() if obj is not None else None)


def verb_statistics(instructions: Sequence[str], top: int = TOP_VERBS,
                    per_verb: int = OBJECTS_PER_VERB, parser: Any = "auto") -> dict[str, Any]:
    """Commonest leading verbs and their direct objects (Self-Instruct §3.2, Figure 3).

    Args:
        instructions: one per task.
        top: verbs to list; per_verb: objects per verb.
        parser: ``"auto"`` (spaCy if an English model is installed, else the
            heuristic), None (heuristic), or a ``(callable, name)`` pair where
            ``callable(texts)`` yields spaCy-like Docs.

    Returns:
        ``{"method", "instructions", "with_verb", "with_verb_object", "top":
        [{"verb", "count", "objects": [{"object", "count"}]}]}``.
    """
    parser = resolve_verb_parser(parser)
    if parser is not None:
        nlp, name = parser
        pipe = nlp.pipe if hasattr(nlp, "pipe") else nlp
        pairs = [spacy_verb_object(doc) for doc in pipe(list(instructions))]
        method = f"spaCy dependency parse ({name}): root verb and its direct object"
    else:
        pairs = [heuristic_verb_object(t) for t in instructions]
        method = ("first-word heuristic (no English spaCy model installed): leading word as "
                  "verb, next content word as object")
    verbs = Counter(v for v, _ in pairs if v)
    objects: dict[str, Counter[str]] = {}
    for verb, obj in pairs:
        if verb and obj:
            objects.setdefault(verb, Counter())[obj] += 1
    return {
        "method": method,
        "instructions": len(instructions),
        "with_verb": sum(1 for v, _ in pairs if v),
        "with_verb_object": sum(1 for v, o in pairs if v and o),
        "top": [{"verb": verb, "count": count,
                 "objects": [{"object": o, "count": c}
                             for o, c in objects.get(verb, Counter()).most_common(per_verb)]}
                for verb, count in sorted(verbs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]],
    }

