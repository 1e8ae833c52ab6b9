"""Reasoning models' thoughts: the ``<think>…</think>`` section a reply starts with, apart from its answer.

Qwen3, SmolLM3 and the DeepSeek-R1 distills think aloud before they answer. A template may pre-fill
``<think>`` in the generation prompt (`prompt_opens_thought`): the reply then starts inside its thought and
only closes it. Earlier turns' thoughts are left out of the next prompt, as Qwen3's and DeepSeek-R1's
templates do themselves (`prompt_messages`); a template that does is left to do it, so the prompt is the
template's own. Templates that take ``enable_thinking`` (`takes_thinking_switch`) let the user turn
thinking off.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from engine.errors import EmberError
from engine.text.chat_template import ChatTemplate

OPEN, CLOSE = "<think>", "</think>"
SWITCH = "enable_thinking"
_PROBE = "\x1fEmber thought\x1f"  # a thought no template writes by itself


@dataclass(frozen=True)
class Split:
    """A reply as its thought and its answer. ``thought`` is None when the reply has none; ``thinking``:
    the thought is not closed yet (streaming, or stopped while thinking), so there is no answer yet."""

    thought: str | None
    answer: str
    thinking: bool


def split_thinking(text: str, *, opened: bool = False) -> Split:
    """``text`` as thought and answer. ``opened``: the prompt pre-filled ``<think>``, so ``text`` starts
    inside the thought. A reply still streaming its opening tag (``<thi``) is already a thought."""
    head = text.lstrip()
    if not opened:
        if head and OPEN.startswith(head):
            return Split("", "", True)
        if not head.startswith(OPEN):
            return Split(None, text, False)
        head = head[len(OPEN) :]
    thought, closed, answer = head.partition(CLOSE)
    if not closed:
        return Split(thought.strip(), "", True)
    return Split(thought.strip(), answer.lstrip(), False)


def without_thought(content: str) -> str:
    """An assistant message as the next prompt holds it: what follows its last ``</think>`` (as Qwen3's and
    DeepSeek-R1's templates cut it), nothing of a thought never closed."""
    if CLOSE in content:
        return content.rpartition(CLOSE)[2].lstrip()
    head = content.lstrip()
    return "" if head.startswith(OPEN) else content


def prompt_opens_thought(prompt: str) -> bool:
    """The rendered prompt ends with ``<think>``: the reply starts inside its thought."""
    return prompt.rstrip().endswith(OPEN)


def takes_thinking_switch(template: ChatTemplate) -> bool:
    """The template reads ``enable_thinking`` (from its parsed source: nothing runs)."""
    return SWITCH in template.variables


@functools.lru_cache(maxsize=8)
def strips_thoughts(template: ChatTemplate) -> bool:
    """The template leaves earlier turns' thoughts out by itself: a probe conversation rendered without
    them. A template that cannot render the probe is taken not to."""
    probe = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": f"{OPEN}\n{_PROBE}\n{CLOSE}\n\nHello"},
        {"role": "user", "content": "Bye"},
    ]
    try:
        return _PROBE not in template.render(probe)
    except EmberError:
        return False


def prompt_messages(template: ChatTemplate, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` for the next prompt: the assistant turns before the last user message without their
    thoughts, unless ``template`` leaves them out itself. Later ones (a reply being continued) keep them."""
    if strips_thoughts(template):
        return messages
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return [
        {**m, "content": without_thought(m["content"])} if m["role"] == "assistant" and i < last_user else m
        for i, m in enumerate(messages)
    ]
