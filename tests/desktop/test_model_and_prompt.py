"""The Model panel (a failed load keeps the previous model), the Prompts panel's preview, and the visible
context policy when a conversation outgrows the model's window."""

from __future__ import annotations

import pytest

from tests.desktop.helpers import click, greedy, send_and_wait, type_and_send, wait_idle

pytestmark = pytest.mark.gui


def test_prompt_preview_shows_the_rendered_template_and_its_token_count(qtbot, window):
    lm = window.worker.model
    window.prompts.preset_box.setCurrentText("Concise")
    click(qtbot, [b for b in window.prompts.findChildren(type(window.chat.send)) if b.text() == "Use"][0])
    system = window.prompts.system_prompt()
    assert system.startswith("You are a helpful assistant. Answer in as few words")
    qtbot.keyClicks(window.chat.input, "Hello there")
    qtbot.waitUntil(lambda: "Hello there" in window.prompts.preview.toPlainText())

    text = window.prompts.preview.toPlainText()
    assert text == lm.render_chat([{"role": "system", "content": system}, {"role": "user", "content": "Hello there"}])
    assert text.startswith("<|im_start|>system\n" + system) and text.endswith("<|im_start|>assistant\n")
    n = len(lm.tokenizer.encode(text))
    assert window.prompts.token_count.text() == f"{n:,} tokens of {lm.context_length:,} in the context"

    window.prompts.system.setPlainText("Be kind.")
    assert window.prompts.preview.toPlainText().startswith("<|im_start|>system\nBe kind.<|im_end|>")


def seed_long_conversation(window) -> int:
    cid = window.store.create_conversation("Long", system_prompt="Be brief.", settings=window.sampling.settings())
    for i in range(3):
        window.store.add_message(cid, "user", f"Question {i}: tell me about the history of bread in Europe, please.")
        window.store.add_message(cid, "assistant", f"Answer {i}: bread was baked in Europe for thousands of years.")
    window.open_conversation(cid)
    return cid


@pytest.fixture
def tiny_context(window, monkeypatch):
    """The loaded model's window cut to 160 tokens (put back after the test)."""
    monkeypatch.setattr(window.worker.model, "context_length", 160)
    greedy(window, 24)


def test_drop_oldest_says_what_is_left_out_before_sending(qtbot, window, tiny_context):
    cid = seed_long_conversation(window)
    assert window.chat.policy_key() == "drop_oldest"
    qtbot.keyClicks(window.chat.input, "And what about rye bread in Germany?")
    qtbot.waitUntil(lambda: window.chat.context_note.text() != "")
    # Whole exchanges go, so what is kept still starts with a question.
    assert window.chat.context_note.text() == "The 2 oldest messages will be left out to fit the context."
    assert window.chat.context_note.isVisibleTo(window)
    preview = window.prompts.preview.toPlainText()
    assert preview.startswith("<|im_start|>system\nBe brief.")  # the system prompt is never dropped
    assert "Question 0" not in preview and "Answer 0" not in preview and "rye bread" in preview
    assert preview.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQuestion 1")

    type_and_send(qtbot, window, "")  # Enter sends what was typed
    wait_idle(qtbot, window)
    messages = window.store.messages(cid)
    assert len(messages) == 8 and messages[-1].role == "assistant" and messages[-1].content
    assert messages[-1].meta["prompt_tokens"] <= 160 - 24


def test_refuse_policy_warns_and_generates_nothing(qtbot, window, dialogs, tiny_context):
    cid = seed_long_conversation(window)
    window.chat.set_policy("stop")
    before = [m.content for m in window.store.messages(cid)]
    text = "And what about rye bread in Germany?"
    qtbot.keyClicks(window.chat.input, text)
    qtbot.waitUntil(lambda: "fit with room for the reply" in window.chat.context_note.text())

    type_and_send(qtbot, window, "")
    assert dialogs.titles("warning") == ["Cannot send"]
    assert "tokens but only 136 fit" in dialogs.texts("warning")[0]
    assert window.session.reply is None and window.chat.send.isEnabled()
    assert [m.content for m in window.store.messages(cid)] == before  # not even the question was saved
    assert window.chat.input.toPlainText() == text  # given back to edit


def test_a_failed_load_shows_the_engine_message_and_keeps_the_previous_model(qtbot, window, dialogs, tmp_path):
    greedy(window)
    previous = window.model_info
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)
    dialogs.open_path = str(broken)

    click(qtbot, window.model_panel.open_file)
    qtbot.waitUntil(lambda: dialogs.titles("warning") == ["Could not load the model"], timeout=30_000)
    message = dialogs.texts("warning")[0]
    assert "broken.gguf" in message and "truncated GGUF header" in message
    status = window.model_panel.status.text()
    assert "truncated GGUF header" in status and "previous model is still loaded" in status
    assert window.model_panel.open_file.isEnabled() and not window.model_panel.progress.isVisible()
    assert window.model_info == previous
    assert window.settings.get("model/path") == ""  # a restart still opens the model that works

    send_and_wait(qtbot, window, "What is the capital of France?")
    assert "Paris" in window.store.messages(window.cid)[-1].content


def test_loading_another_model_shows_progress_facts_and_recent(qtbot, window, dialogs, default_model):
    """Opening a model file by path loads it for real (not the shared copy), with progress and facts."""
    percents: list[int] = []
    window.model_panel.progress.valueChanged.connect(percents.append)
    window.model_panel.request(str(default_model.path))
    type_and_send(qtbot, window, "Hi")  # a prompt tokenized now could be for the wrong model
    assert dialogs.titles("information") == ["No model"]
    assert window.session.reply is None and window.cid is None and window.chat.input.toPlainText() == "Hi"
    qtbot.waitUntil(lambda: window.settings.get("model/path") == str(default_model.path), timeout=60_000)
    assert window.worker.model is not default_model
    assert window.model_panel.open_file.isEnabled() and not window.model_panel.progress.isVisible()
    assert percents and percents[-1] == 100
    facts = window.model_panel.facts.text()
    assert "Architecture: llama" in facts and "Context: 8,192 tokens" in facts
    assert "Decode attention: sdpa" in facts and " rows (" in facts.split("Prompt projections: ")[1]
    assert window.model_panel.recent_paths() == [str(default_model.path)]
    assert "MiB needed" in window.model_panel.estimate.text()
