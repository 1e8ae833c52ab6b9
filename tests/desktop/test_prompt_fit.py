"""Fitting a conversation into the context window (no Qt, no weights: a stand-in model counts words)."""

from __future__ import annotations

from dataclasses import dataclass, field

from desktop.prompt_fit import fit_prompt
from engine.errors import TemplateError
from engine.text.chat_template import ChatTemplate


@dataclass
class WordModel:
    """One token per word; the template insists that user and assistant alternate, as Llama 2's does."""

    context_length: int
    template: ChatTemplate = field(default_factory=lambda: ChatTemplate(None))  # thoughts: ChatML keeps them

    def render_chat(self, messages, add_generation_prompt=True):
        roles = [m["role"] for m in messages if m["role"] != "system"]
        if roles[:1] != ["user"] or any(a == b for a, b in zip(roles, roles[1:], strict=False)):
            raise TemplateError("Conversation roles must alternate user/assistant/user/assistant/...")
        return " ".join(f"{m['role']}: {m['content']}" for m in messages) + " assistant:"

    def encode_prompt(self, text):
        return text.split()


def conversation(exchanges: int, system: bool = True) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "be brief"}] if system else []
    for i in range(exchanges):
        messages += [
            {"role": "user", "content": f"question {i} " + "word " * 6},
            {"role": "assistant", "content": f"answer {i} " + "word " * 6},
        ]
    return messages + [{"role": "user", "content": "last question"}]


def test_a_conversation_that_fits_is_sent_whole():
    fit = fit_prompt(WordModel(1000), conversation(3), reserve=100, policy="drop_oldest")
    assert (fit.dropped, fit.refused, fit.note) == (0, False, "")
    assert fit.ids == fit.text.split()


def test_drop_oldest_leaves_out_whole_exchanges_and_keeps_the_system_prompt():
    messages = conversation(3)  # 3 + 3 × 18 + 3 + 1 = 61 words
    fit = fit_prompt(WordModel(50), messages, reserve=10, policy="drop_oldest")
    assert not fit.refused and fit.dropped == 4 and len(fit.ids) == 25
    assert fit.note == "The 4 oldest messages will be left out to fit the context."
    assert fit.text.startswith("system: be brief user: question 2")


def test_reserve_is_at_most_half_the_context():
    fit = fit_prompt(WordModel(120), conversation(3), reserve=10_000, policy="drop_oldest")
    assert not fit.refused and len(fit.ids) <= 60


def test_stop_policy_refuses_and_says_by_how_much():
    fit = fit_prompt(WordModel(60), conversation(3), reserve=10, policy="stop")
    assert fit.refused and fit.dropped == 0
    assert "needs 61 tokens but only 50 fit" in fit.note and "drop the oldest turns" in fit.note


def test_a_last_message_too_long_alone_is_refused_by_either_policy():
    messages = [{"role": "user", "content": "word " * 100}]
    fit = fit_prompt(WordModel(60), messages, reserve=10, policy="drop_oldest")
    assert fit.refused and "lower the reply length" in fit.note


def test_a_template_error_is_a_refusal_with_the_templates_message():
    messages = [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hello"}]
    fit = fit_prompt(WordModel(1000), messages, reserve=10, policy="drop_oldest")
    assert fit.refused and "must alternate" in fit.note and fit.ids == []


def test_earlier_turns_thoughts_are_left_out_before_fitting():
    messages = conversation(2, system=False)
    messages[1]["content"] = "<think>a long thought " + "word " * 40 + "</think>answer 0"
    fit = fit_prompt(WordModel(60), messages, reserve=10, policy="stop")
    assert not fit.refused and "thought" not in fit.text and "answer 0" in fit.text
