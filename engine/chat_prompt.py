"""The next turn's prompt: a conversation in the model's chat template, thoughts handled as the template
expects. The desktop chat, ``ember-cli generate``/``chat`` and the server all render through here."""

from __future__ import annotations

from engine.errors import UnsafeTemplateError
from engine.loading.loader import LoadedModel
from engine.text.thinking import SWITCH, prompt_messages, takes_thinking_switch


def render_prompt(
    lm: LoadedModel, messages: list[dict[str, str]], *, think: bool | None = None, add_generation_prompt: bool = True
) -> str:
    """``messages`` rendered for the model: earlier turns' thoughts left out (`prompt_messages`), and
    ``think`` passed as ``enable_thinking`` to a template that reads it (None: the template's default)."""
    messages = prompt_messages(lm.template, messages)
    if think is None or not takes_thinking_switch(lm.template):
        return lm.render_chat(messages, add_generation_prompt=add_generation_prompt)
    try:
        return lm.template.render(messages, add_generation_prompt=add_generation_prompt, **{SWITCH: think})
    except UnsafeTemplateError:  # the model replaces a template stopped for what it tried (with a warning)
        return lm.render_chat(messages, add_generation_prompt=add_generation_prompt)
