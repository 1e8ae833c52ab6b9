"""Facts in the user's prose: sentences, the section they sit under, and the phrases a question can ask for.

No parser, no model: a sentence is split at ``.``, ``!`` or ``?`` before a capital or a line break; a key
phrase is a name (capitalised words not at the sentence's start, with small joining words such as "of"),
a year, another number with its unit, or a quoted phrase. That is enough to ask "who", "when", "how many"
and "what" about the sentence, which is what `engine.finetune.lessons` and `engine.finetune.probes` need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_JOIN = {"of", "the", "de", "van", "von", "der", "la", "le", "and", "da", "di"}
_WORD = r"[A-Z][\w'’-]*"
_NAME = re.compile(rf"{_WORD}(?:\s+(?:(?:{'|'.join(sorted(_JOIN))})\s+)?{_WORD})*")
_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")
NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand"
).split()
_NUMBER_WORD = "(?:" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + ")"
# a number with its unit when one follows ("612 grams", "three days"); "one" alone is rarely a quantity
_NUMBER = re.compile(
    rf"\b(?P<n>\d[\d,.]*\d|\d|{_NUMBER_WORD}(?:[\s-]{_NUMBER_WORD})*)\b(?:\s+[a-z]+s\b)?",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"[\"“]([^\"”]{3,60})[\"”]")
_MONTHS = set("january february march april may june july august september october november december".split())
_DAYS = set("monday tuesday wednesday thursday friday saturday sunday".split())
_STOP_STARTS = {"the", "a", "an", "it", "its", "this", "that", "these", "those", "each", "every", "most", "new"}
MIN_WORDS, MAX_WORDS = 5, 60


@dataclass(frozen=True)
class Key:
    """A phrase of a sentence that a question can ask for."""

    text: str
    kind: str  # "name", "year", "number", "quote", "when" (a month or a day)


@dataclass(frozen=True)
class Fact:
    sentence: str
    topic: str  # the heading it sits under, or the document's first name-like phrase
    keys: tuple[Key, ...]


def sentences(text: str) -> list[tuple[str, str]]:
    """(heading, sentence) pairs in order; headings (Markdown ``#`` lines) are not sentences themselves."""
    out: list[tuple[str, str]] = []
    heading = ""
    for block in re.split(r"\n\s*\n", text):
        lines = []
        for line in block.splitlines():
            m = _HEADING.match(line)
            if m:
                heading = m.group(1).strip()
            elif line.strip():
                lines.append(line.strip())
        joined = " ".join(lines)
        for s in _SENTENCE_END.split(joined):
            s = s.strip()
            if MIN_WORDS <= len(s.split()) <= MAX_WORDS:
                out.append((heading, s))
    return out


def _is_time_word(word: str) -> bool:
    word = word.lower()
    return word in _MONTHS or word.rstrip("s") in _DAYS or word in _JOIN


def key_phrases(sentence: str) -> tuple[Key, ...]:
    """The sentence's names, years, numbers, times and quoted phrases, in order of first appearance."""
    found: list[tuple[int, Key]] = []
    taken: list[range] = []

    def add(start: int, end: int, text: str, kind: str) -> None:
        span = range(start, end)
        if text and not any(set(span) & set(t) for t in taken):
            taken.append(span)
            found.append((start, Key(text, kind)))

    for m in _QUOTED.finditer(sentence):
        add(m.start(1), m.end(1), m.group(1), "quote")
    for m in _YEAR.finditer(sentence):
        add(m.start(), m.end(), m.group(), "year")
    for m in _NAME.finditer(sentence):
        words = m.group().split()
        start = m.start()
        # a sentence's first word is capitalised anyway: drop it when it is an ordinary word
        if start == 0 and words[0].lower() in _STOP_STARTS | {"on", "in", "at", "every", "after", "before"}:
            start += len(words[0]) + 1
            words = words[1:]
        while words and words[-1].lower() in _JOIN:
            words = words[:-1]
        if not words or (start == 0 and len(words) == 1):
            continue
        text = " ".join(words)
        add(start, start + len(text), text, "when" if all(map(_is_time_word, words)) else "name")
    for m in _NUMBER.finditer(sentence):
        if m.group("n").lower() != "one":
            add(m.start(), m.end(), m.group().strip(), "number")
    return tuple(k for _, k in sorted(found, key=lambda p: p[0]))


def facts(text: str) -> list[Fact]:
    """The document's sentences that hold at least one key phrase, each with its topic."""
    pairs = sentences(text)
    default_topic = ""
    for _, s in pairs:
        names = [k.text for k in key_phrases(s) if k.kind == "name"]
        if names:
            default_topic = names[0]
            break
    out = []
    for heading, s in pairs:
        keys = key_phrases(s)
        if keys:
            out.append(Fact(s, heading or default_topic, keys))
    return out
