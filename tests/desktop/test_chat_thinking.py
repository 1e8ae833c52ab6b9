"""A reasoning model's reply through the real window: its thought streams as "Thinking…", then folds above
the answer and opens on a click or a key; Copy takes the answer; the next prompt leaves the thought out
while the store keeps it; the "Think before answering" switch shows for templates that take it.

The model's words are scripted (a stand-in for `Generation`: the default model does not think); everything
from the worker thread to the widgets is the app's own, and the prompts are its real renderings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from desktop import engine_worker
from engine.generation.generate import TokenEvent
from engine.text.chat_template import ChatTemplate
from tests.desktop.helpers import button, click, send_and_wait, type_and_send, wait_idle
from tests.engine.text.reasoning_templates import QWEN3, R1_DISTILL

pytestmark = pytest.mark.gui

THOUGHT = "The user says hello. A greeting back, short and friendly."
ANSWER = "Hello! How can I help you today?"
REPLY = f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"


@dataclass
class Stats:
    prompt_tokens: int
    generated_tokens: int
    cached_tokens: int = 0
    prefill_tokens_per_second: float = 100.0
    decode_tokens_per_second: float = 50.0


@dataclass
class Script:
    """What the stand-in model writes next, and the prompts it was given (decoded)."""

    reply: str = REPLY
    prompts: list[str] = field(default_factory=list)


class ScriptedGeneration:
    """`Generation`'s face to the worker: iterated for tokens (a word at a time, a few batches a second so
    the reply streams), then read for its text, finish reason and stats."""

    def __init__(self, script: Script, model, tokenizer, prompt_ids, settings, **_options) -> None:
        script.prompts.append(tokenizer.decode(list(prompt_ids)))
        self.pieces = [piece for word in script.reply.split(" ") for piece in (word, " ")][:-1]
        self.text, self.finish_reason, self.seed = "", "eos", 0
        self.stats = Stats(len(prompt_ids), len(self.pieces))

    def __iter__(self):
        for i, piece in enumerate(self.pieces):
            time.sleep(0.02)
            self.text += piece
            yield TokenEvent(i, piece, -0.1, ())


@pytest.fixture
def script(monkeypatch) -> Script:
    s = Script()
    monkeypatch.setattr(engine_worker, "Generation", lambda *args, **kwargs: ScriptedGeneration(s, *args, **kwargs))
    return s


def with_template(monkeypatch, lm, source: str) -> None:
    """The shared default model answers through ``source`` for this test."""
    template = ChatTemplate(source, bos_token=lm.tokenizer.bos_token or "", eos_token=lm.tokenizer.eos_token or "")
    monkeypatch.setattr(lm, "template", template)


def watch_stream(window, monkeypatch) -> list[tuple[str, str, bool]]:
    """(header, answer shown, answer visible) after each streamed update of the reply."""
    seen: list[tuple[str, str, bool]] = []
    stream_text = window.chat.stream_text

    def stream(text: str) -> None:
        stream_text(text)
        w = window.chat.streaming
        seen.append((w.thought.header.text(), w.answer, w.body.isVisible()))

    monkeypatch.setattr(window.chat, "stream_text", stream)
    return seen


def test_a_streamed_thought_folds_above_the_answer_and_opens_on_click(qtbot, window, script, monkeypatch):
    seen = watch_stream(window, monkeypatch)
    send_and_wait(qtbot, window, "Hi")

    thinking = [s for s in seen if s[0] == "Thinking…"]
    assert thinking and all(answer == "" and not visible for _, answer, visible in thinking)
    assert seen[-1][0].startswith("Thought for") and seen[-1][2], "the answer shows once the thought closes"
    widget = window.chat.widgets[-1]
    qtbot.waitUntil(widget.isVisible)  # a widget added to a shown chat shows at the next turn of the loop
    assert widget.thought.isVisible() and not widget.thought.text.isVisible()
    reply = window.store.messages(window.cid)[-1]
    assert reply.content == REPLY, "the store keeps the whole reply, thought included"
    tokens = reply.meta["thought_tokens"]
    assert tokens == len(f"<think>\n{THOUGHT}\n</think>".split(" ")) * 2 - 1  # words and the spaces between
    assert widget.thought.header.text() == f"Thought for 1 second · {tokens} tokens"
    assert widget.body.parts[0].toPlainText() == ANSWER

    click(qtbot, widget.thought.header)
    assert widget.thought.text.isVisible() and widget.thought.text.toPlainText() == THOUGHT
    assert widget.thought.header.accessibleName().endswith("fold the thought")
    widget.thought.header.setFocus()
    qtbot.keyClick(widget.thought.header, Qt.Key.Key_Return)
    assert not widget.thought.text.isVisible()
    qtbot.keyClick(widget.thought.header, Qt.Key.Key_Space)
    assert widget.thought.text.isVisible()

    click(qtbot, button(widget, "Copy this message"))
    assert QGuiApplication.clipboard().text() == ANSWER


def test_the_next_prompt_leaves_the_thought_out(qtbot, window, script):
    send_and_wait(qtbot, window, "Hi")
    script.reply = "Four."
    send_and_wait(qtbot, window, "What is 2+2?")
    second = script.prompts[-1]
    assert ANSWER in second and "What is 2+2?" in second
    assert "greeting back" not in second and "<think>" not in second
    assert "greeting back" not in window.prompts.preview.toPlainText()
    assert window.store.messages(window.cid)[1].content == REPLY


def test_a_prompt_that_opens_the_thought(qtbot, window, script, monkeypatch):
    """DeepSeek-R1's template ends its prompt with ``<think>``: the reply starts inside the thought."""
    with_template(monkeypatch, window.worker.model, R1_DISTILL)
    script.reply = f"{THOUGHT}\n</think>\n\n{ANSWER}"
    seen = watch_stream(window, monkeypatch)
    send_and_wait(qtbot, window, "Hi")
    assert seen[0][0] == "Thinking…" and seen[0][1] == ""
    reply = window.store.messages(window.cid)[-1]
    assert reply.meta["thought_opened"] and reply.content == script.reply
    widget = window.chat.widgets[-1]
    assert widget.thought.header.text().startswith("Thought for") and widget.answer == ANSWER
    window.open_conversation(window.cid)  # shown again from the store
    assert window.chat.widgets[-1].answer == ANSWER


def test_the_switch_shows_for_templates_that_take_it(qtbot, make_window, shared_default_model, monkeypatch):
    window = make_window()
    think = window.prompts.think
    assert not think.isEnabled() and "no thinking switch" in think.toolTip()  # SmolLM2's template
    window.close()

    with_template(monkeypatch, shared_default_model, QWEN3)
    window = make_window()
    think = window.prompts.think
    assert think.isEnabled() and think.isChecked()
    window.chat.input.setPlainText("Hi")
    window.session.refresh_preview()
    assert window.prompts.preview.toPlainText().endswith("<|im_start|>assistant\n")
    think.click()
    assert window.settings.get("chat/think") is False
    assert window.prompts.preview.toPlainText().endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_a_thought_stopped_midway_shows_as_unfinished(qtbot, window, script):
    script.reply = "<think>\n" + "hmm " * 200
    type_and_send(qtbot, window, "Hi")
    qtbot.waitUntil(lambda: window.chat.streaming is not None and window.chat.streaming.thought.isVisible())
    click(qtbot, window.chat.stop)
    wait_idle(qtbot, window)
    widget = window.chat.widgets[-1]
    assert widget.thought.header.text().endswith("(unfinished)") and widget.answer == ""


def test_an_empty_thought_shows_no_block(qtbot, window):
    """Qwen3 with thinking off may still write an empty ``<think></think>``: only the answer shows."""
    cid = window.store.create_conversation("Empty thought")
    window.store.add_message(cid, "user", "Hi")
    window.store.add_message(cid, "assistant", "<think>\n\n</think>\n\nHello!")
    window.open_conversation(cid)
    widget = window.chat.widgets[-1]
    assert widget.thought.isHidden() and widget.body.parts[0].toPlainText() == "Hello!"
    click(qtbot, button(widget, "Copy this message"))
    assert QGuiApplication.clipboard().text() == "Hello!"
