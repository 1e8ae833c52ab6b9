"""Questions and answers made from the user's prose, so facts read once can be asked for in chat.

A model trained only on the prose learns to continue it, not to answer about it. Each `Fact`
(`engine.finetune.facts`) becomes a few short chats whose answer states the fact: "what do my notes say
about <name>?", a question asking for one of its key phrases ("... was founded by who in 1887?"), and a
completion of the sentence. The loss falls on the answers only (`engine.finetune.data._chat_example`).
The phrasings are fixed templates, chosen by seed; `engine.finetune.probes` asks with other words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

from engine.finetune.facts import NUMBER_WORDS, Fact, Key

ABOUT = (
    "What do my notes say about {k}?",
    "Tell me what you know about {k}.",
    "What is {k}?",
)
ASK = ("{q}", "From my notes: {q}", "Do you know this? {q}")


def wh_word(key: Key, sentence: str) -> str:
    """The question word for ``key``: "when", "what year", "how many <unit>", "who" or "what"."""
    if key.kind == "year":
        return "what year"
    if key.kind == "when":
        return "when"
    if key.kind == "number":
        last = key.text.split()[-1]
        unit = last if len(key.text.split()) > 1 and last.lower() not in NUMBER_WORDS else ""
        return f"how many {unit}".strip()
    if key.kind == "name":
        before = sentence[: sentence.find(key.text)].split()[-1:] or [""]
        if before[0].lower() in ("by", "named", "was", "is", "been", "be") and len(key.text.split()) >= 2:
            return "who"
    return "what"


def question(fact: Fact, key: Key) -> str:
    """The sentence with ``key`` replaced by its question word: "The society was founded by who in 1887?"."""
    s = fact.sentence.rstrip(".!? ")
    i = s.find(key.text)
    q = s[:i] + wh_word(key, fact.sentence) + s[i + len(key.text) :]
    q = re.sub(r"\s+", " ", q).strip()
    return q[0].upper() + q[1:] + "?"


def cloze(fact: Fact, key: Key) -> tuple[str, str] | None:
    """("Complete this from my notes: <sentence up to the key>…", the rest) or None if the key opens it."""
    i = fact.sentence.find(key.text)
    if i < 12:
        return None
    return f"Complete this from my notes: {fact.sentence[:i].rstrip()} …", fact.sentence[i:]


def lessons(fact: Fact, rng: random.Random) -> Iterator[list[dict[str, str]]]:
    """Chats (user question, assistant answer) that teach ``fact``."""
    answer = fact.sentence
    for key in fact.keys:
        if key.kind == "name":
            yield _chat(rng.choice(ABOUT).format(k=key.text), answer)
        yield _chat(rng.choice(ASK).format(q=question(fact, key)), answer)
        c = cloze(fact, key)
        if c is not None:
            yield _chat(c[0], c[1])
    if fact.topic:
        yield _chat(f"What do my notes say about {fact.topic}?", answer)


def _chat(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
