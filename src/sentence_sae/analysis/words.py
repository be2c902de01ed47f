"""The words of a text, as the labeler and the lexical label scorer read them: stop words out,
lower-cased, plurals folded by Harman's S-stemmer, and candidate terms (words and two-word phrases)
from a text's first MAX_WORDS words; and the tokens highlighting removes in turn (also the first
MAX_WORDS)."""

from __future__ import annotations

import re
from typing import Iterable

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each either else etc even ever every few for from
further had has have having he her here hers herself him himself his how however i if in into is it its itself
just less let like made make many may me might more most much must my myself neither no nor not now of off
often on once one only or other others otherwise our ours ourselves out over own per rather same shall she
should since so some such than that the their theirs them themselves then there therefore these they this those
though through thus to too under until up upon us used using very via was we were what when where whether which
while who whom whose why will with within without would yet you your yours yourself yourselves especially
something someone usually sometimes typically often etc e g ie eg
""".split())

WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]")


def stem(word: str) -> str:
    """Harman's S-stemmer: plural forms folded ("cats" -> "cat", "cities" -> "city", "horses" -> "horse")."""
    if len(word) > 4 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


def content_words(text: str) -> list[str]:
    """The text's words of 3+ letters that are not stop words, lower-cased and stemmed."""
    return [stem(w) for w in (m.lower() for m in WORD.findall(text)) if w not in STOP_WORDS and len(w) >= 3]


def spellings(texts: Iterable[str]) -> dict[str, str]:
    """The first spelling seen of each stemmed word, to show words as the texts write them."""
    found: dict[str, str] = {}
    for text in texts:
        for word in WORD.findall(text):
            found.setdefault(stem(word.lower()), word.lower())
    return found


MAX_WORDS = 64
"""Candidates come from a text's first MAX_WORDS words, so labelling cost stops growing with length."""


TOKEN = re.compile(r"\w+(?:['\-]\w+)*")
"""A word as highlighting removes it: digits and names included, unlike WORD."""


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the text's first MAX_WORDS tokens (the words highlighting removes in turn)."""
    return [match.span() for match in TOKEN.finditer(text)][:MAX_WORDS]


def candidates(text: str) -> list[str]:
    """Words (3+ letters) and two-word phrases of ``text`` (its first MAX_WORDS words) without stop
    words or a word twice ("vlc vlc" where a synopsis ends with the name the description starts with),
    lower-cased, unique."""
    words = [w.lower() for w in WORD.findall(text)[:MAX_WORDS]]
    found: dict[str, None] = {}
    for i, word in enumerate(words):
        if word in STOP_WORDS or len(word) < 3:
            continue
        found[word] = None
        if (i + 1 < len(words) and words[i + 1] not in STOP_WORDS and len(words[i + 1]) >= 3
                and words[i + 1] != word):
            found[f"{word} {words[i + 1]}"] = None
    return list(found)
