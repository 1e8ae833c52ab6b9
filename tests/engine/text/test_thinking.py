"""Thoughts told apart from answers, left out of the next prompt as each template expects, and the
thinking switch found in the templates that take it (Qwen3-style templates, rendered as transformers does)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.chat_prompt import render_prompt
from engine.text.chat_template import ChatTemplate
from engine.text.thinking import (
    Split,
    prompt_messages,
    prompt_opens_thought,
    split_thinking,
    strips_thoughts,
    takes_thinking_switch,
    without_thought,
)
from tests.engine.text.reasoning_templates import NO_SWITCH, QWEN3, R1_DISTILL
from tests.engine.text.test_chat_template import _oracle

REPLY = "<think>\nThe user greets me.\nI greet back.\n</think>\n\nHello! How can I help?"
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": REPLY},
    {"role": "user", "content": "What is 2+2?"},
]


@pytest.mark.parametrize(
    ("text", "opened", "expected"),
    [
        (REPLY, False, Split("The user greets me.\nI greet back.", "Hello! How can I help?", False)),
        ("Just an answer.", False, Split(None, "Just an answer.", False)),
        ("<think>\nStill wondering", False, Split("Still wondering", "", True)),
        ("<thi", False, Split("", "", True)),  # the opening tag still streaming in
        ("", False, Split(None, "", False)),
        ("Pre-filled thought\n</think>\n\nAnswer", True, Split("Pre-filled thought", "Answer", False)),
        ("Pre-filled and open", True, Split("Pre-filled and open", "", True)),
        ("An answer that mentions <think> later", False, Split(None, "An answer that mentions <think> later", False)),
    ],
)
def test_split_thinking(text, opened, expected):
    assert split_thinking(text, opened=opened) == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (REPLY, "Hello! How can I help?"),
        ("thought of a pre-filled prompt</think>\nAnswer", "Answer"),
        ("<think>never closed", ""),
        ("No thought", "No thought"),
    ],
)
def test_without_thought(content, expected):
    assert without_thought(content) == expected


def test_the_switch_is_found_in_the_parsed_template_not_its_text():
    assert takes_thinking_switch(ChatTemplate(QWEN3))
    assert not takes_thinking_switch(ChatTemplate(R1_DISTILL))
    assert not takes_thinking_switch(ChatTemplate(None))
    # Named in a comment or a string only, or set by the template itself: not a variable it takes.
    assert not takes_thinking_switch(ChatTemplate("{# enable_thinking #}{{ 'enable_thinking' }}"))
    assert not takes_thinking_switch(ChatTemplate("{% set enable_thinking = true %}{{ enable_thinking }}"))


def test_qwen3_template_renders_as_transformers_with_the_switch():
    template = ChatTemplate(QWEN3)
    for think in (True, False):
        ours = template.render(CONVERSATION, enable_thinking=think)
        assert ours == _oracle(QWEN3, CONVERSATION, True, enable_thinking=think)
    assert template.render(CONVERSATION, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert template.render(CONVERSATION).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("source", [QWEN3, R1_DISTILL])
def test_a_template_that_cuts_thoughts_itself_gets_the_conversation_as_it_is(source):
    template = ChatTemplate(source)
    assert strips_thoughts(template)
    assert prompt_messages(template, CONVERSATION) is CONVERSATION
    prompt = template.render(CONVERSATION)
    assert "greets" not in prompt and "Hello! How can I help?" in prompt
    # The prompt is the template's own: cut twice, R1's would lose the blank line it keeps after </think>.
    assert render_prompt(stand_in(source), CONVERSATION) == prompt


@pytest.mark.parametrize("source", [NO_SWITCH, None])
def test_a_template_that_keeps_thoughts_gets_earlier_turns_without_them(source):
    template = ChatTemplate(source)
    assert not strips_thoughts(template)
    prompt = template.render(prompt_messages(template, CONVERSATION))
    assert "greets" not in prompt and "<think>" not in prompt and "Hello! How can I help?" in prompt


def test_a_reply_after_the_last_user_message_keeps_its_thought():
    """Continuing a reply: the reply is the model's own text so far, thought included."""
    messages = [*CONVERSATION[:3]]
    assert prompt_messages(ChatTemplate(NO_SWITCH), messages)[-1]["content"] == REPLY


def test_a_template_that_cannot_render_the_probe_is_taken_to_keep_thoughts():
    assert not strips_thoughts(ChatTemplate("{{ raise_exception('no') }}"))


def test_prefilled_thought_is_seen_in_the_prompt():
    template = ChatTemplate(R1_DISTILL)
    assert prompt_opens_thought(template.render(CONVERSATION))
    assert not prompt_opens_thought(ChatTemplate(QWEN3).render(CONVERSATION, enable_thinking=False))
    assert not prompt_opens_thought(ChatTemplate(QWEN3).render(CONVERSATION))


def stand_in(source: str | None) -> SimpleNamespace:
    """What `render_prompt` uses of a loaded model: its template and its `render_chat`."""
    template = ChatTemplate(source)
    return SimpleNamespace(template=template, render_chat=template.render)


def test_render_prompt_passes_the_switch_only_to_templates_that_take_it():
    qwen = stand_in(QWEN3)
    off = render_prompt(qwen, CONVERSATION, think=False)
    assert off == _oracle(QWEN3, CONVERSATION, True, enable_thinking=False)
    assert render_prompt(qwen, CONVERSATION, think=True) == _oracle(QWEN3, CONVERSATION, True, enable_thinking=True)
    assert render_prompt(qwen, CONVERSATION) == _oracle(QWEN3, CONVERSATION, True)
    plain = stand_in(NO_SWITCH)
    assert render_prompt(plain, CONVERSATION, think=False) == render_prompt(plain, CONVERSATION, think=True)
    assert "greets" not in render_prompt(plain, CONVERSATION)
