"""Fitting a conversation into the model's context window, with a visible policy.

``drop_oldest`` leaves out the oldest exchanges (never the system prompt) until the prompt plus room for
the reply fits; ``stop`` refuses to send. Either way the note says what happens, before sending. What is
kept still starts with a user message, as strict chat templates (Llama 2, Mistral) require.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.chat_prompt import render_prompt
from engine.errors import TemplateError
from engine.loading.loader import LoadedModel


@dataclass(frozen=True)
class Fit:
    text: str
    ids: list[int]
    dropped: int  # messages left out
    refused: bool
    note: str


def fit_prompt(
    lm: LoadedModel, messages: list[dict[str, str]], reserve: int, policy: str, think: bool | None = None
) -> Fit:
    """Render ``messages`` with the model's template (`engine.chat_prompt.render_prompt`, ``think`` its
    thinking switch); ``reserve`` tokens are kept free for the reply."""
    reserve = min(reserve, lm.context_length // 2)
    budget = lm.context_length - reserve
    first = 1 if messages and messages[0]["role"] == "system" else 0
    kept = list(messages)
    dropped = 0
    while True:
        try:
            text = render_prompt(lm, kept, think=think)
        except TemplateError as e:
            return Fit("", [], dropped, True, f"The model's chat template cannot render this conversation. {e}")
        ids = lm.encode_prompt(text)
        if len(ids) <= budget:
            break
        if policy == "stop" or len(kept) - first <= 1:
            advice = "or choose to drop the oldest turns" if policy == "stop" else "or lower the reply length"
            return Fit(
                text,
                ids,
                dropped,
                True,
                f"The conversation needs {len(ids):,} tokens but only {budget:,} fit with room for the "
                f"reply. Start a new chat, shorten the message, {advice}.",
            )
        del kept[first]
        dropped += 1
        while len(kept) - first > 1 and kept[first]["role"] != "user":
            del kept[first]
            dropped += 1
    note = (
        f"The {dropped} oldest message{'s' if dropped != 1 else ''} will be left out to fit the context."
        if dropped
        else ""
    )
    return Fit(text, ids, dropped, False, note)
