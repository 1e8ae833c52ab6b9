""" "What did it learn?": questions built from the user's files, asked before and after a run.

Each probe asks for one key phrase of one fact (a name, a year, a number; `engine.finetune.facts`) in
words the training chats do not use (`engine.finetune.lessons` asks with other framings), and is
answered greedily in chat. A reply counts as recalled when it holds the expected phrase (every word of
it, case and punctuation aside). Facts are invented by the user's own notes more often than not, so the
base model should score near zero and the tuned one should not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.finetune.facts import Fact, Key, facts
from engine.finetune.lessons import question
from engine.generation.generate import Generation
from engine.generation.sampler_settings import SamplerSettings

FRAME = "Answer from what you have learned: {q}"
PREFERRED = ("name", "year", "number", "when", "quote")
MAX_PROBES = 8
MAX_TOKENS = 48


@dataclass(frozen=True)
class Probe:
    question: str
    expected: str
    source: str  # the file's name


@dataclass(frozen=True)
class Answer:
    probe: Probe
    reply: str
    recalled: bool


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace(",", ""))


def recalled(reply: str, expected: str) -> bool:
    """Every word of ``expected`` appears among the reply's words ("1,887" and "1887" alike)."""
    have = set(_words(reply))
    return all(w in have for w in _words(expected))


def _best_key(fact: Fact) -> Key:
    """A name, year or number inside the sentence: asking for the sentence's subject reads badly."""

    def opens(k: Key) -> bool:
        return len(fact.sentence[: fact.sentence.find(k.text)].split()) <= 1

    return min(fact.keys, key=lambda k: (opens(k), PREFERRED.index(k.kind)))


def build_probes(documents: Iterable[tuple[str, str]], limit: int = MAX_PROBES) -> list[Probe]:
    """Up to ``limit`` probes from (file name, text) pairs, taken in turn from each file's facts."""
    per_file = [[(name, f) for f in facts(text)] for name, text in documents]
    probes: list[Probe] = []
    while len(probes) < limit and any(per_file):
        for found in per_file:
            if found and len(probes) < limit:
                name, fact = found.pop(0)
                key = _best_key(fact)
                probes.append(Probe(FRAME.format(q=question(fact, key)), key.text, Path(name).name))
    return probes


def ask(lm, probes: list[Probe], should_stop: Callable[[], bool] | None = None) -> list[Answer]:
    """Each probe asked in chat, greedily, on ``lm`` as it is now (adapters and all)."""
    answers = []
    was_training = lm.model.training
    lm.model.eval()
    try:
        for p in probes:
            if should_stop is not None and should_stop():
                break
            ids = lm.tokenizer.encode(lm.render_chat([{"role": "user", "content": p.question}]))
            gen = Generation(lm.model, lm.tokenizer, ids, SamplerSettings.greedy(), max_tokens=MAX_TOKENS)
            with torch.no_grad():
                for _ in gen:
                    pass
            answers.append(Answer(p, gen.text.strip(), recalled(gen.text, p.expected)))
    finally:
        lm.model.train(was_training)
    return answers


@dataclass(frozen=True)
class Recall:
    """The probes' answers before and after a run (the fine-tune worker sends it across threads as it is)."""

    pairs: tuple[tuple[Answer, Answer], ...]  # (before, after) for each probe

    def to_json(self) -> dict:
        """What run.json and the app's runs file keep, and `report` reads: counts and every question."""
        return {
            "recalled_before": sum(b.recalled for b, _ in self.pairs),
            "recalled_after": sum(a.recalled for _, a in self.pairs),
            "probes": [
                {
                    "question": b.probe.question,
                    "expected": b.probe.expected,
                    "source": b.probe.source,
                    "before": b.reply,
                    "before_recalled": b.recalled,
                    "after": a.reply,
                    "after_recalled": a.recalled,
                }
                for b, a in self.pairs
            ],
        }


def report(recall: dict) -> str:
    """`Recall.to_json` as text: the counts, then each question with its expected answer and both replies."""
    n = len(recall["probes"])
    before, after = recall["recalled_before"], recall["recalled_after"]
    lines = [f"Recall of facts from your files: {before}/{n} before, {after}/{n} after"]
    for p in recall["probes"]:
        lines.append(f"  Q: {p['question']}  (expected: {p['expected']}; from {p['source']})")
        for when in ("before", "after"):
            mark = "✓" if p[f"{when}_recalled"] else "✗"
            lines.append(f"    {mark} {when}: {' '.join(p[when].split())[:160]}")
    return "\n".join(lines)
