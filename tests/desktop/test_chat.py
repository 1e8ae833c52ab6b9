"""Chatting through the real widgets with the real default model: send, stop, regenerate, edit, continue,
delete and copy."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from desktop.code_block import CodeBlock
from tests.desktop.helpers import button, click, greedy, send_and_wait, type_and_send, wait_idle

pytestmark = pytest.mark.gui

LONG_PROMPT = "Write a long story about a dragon who learns to bake bread. Use many paragraphs."


def shown(window) -> list[tuple[str, str]]:
    """(role, text) of every message widget in the chat."""
    return [(w.message.role, w.message.content) for w in window.chat.widgets]


def stored(window) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in window.store.messages(window.cid)]


def test_send_streams_the_reply_into_the_chat_and_the_store(qtbot, window, monkeypatch):
    greedy(window)
    streamed: list[str] = []
    stream_text = window.chat.stream_text
    monkeypatch.setattr(window.chat, "stream_text", lambda text: (streamed.append(text), stream_text(text)))

    type_and_send(qtbot, window, "What is the capital of France?")
    assert window.chat.input.toPlainText() == ""
    assert window.chat.stop.isEnabled() and not window.chat.send.isEnabled()
    wait_idle(qtbot, window)

    assert len(streamed) >= 2, "the reply arrived in one piece, not streamed"
    assert all(b.startswith(a) for a, b in zip(streamed, streamed[1:], strict=False))
    [user, reply] = window.store.messages(window.cid)
    assert (user.role, user.content) == ("user", "What is the capital of France?")
    assert reply.role == "assistant" and reply.status == "complete"
    assert "Paris" in reply.content
    assert reply.content.startswith(streamed[-1]) or streamed[-1].startswith(reply.content)
    assert shown(window) == stored(window)
    assert "Paris" in window.chat.widgets[-1].body.parts[0].toPlainText()
    # What produced the reply, so it can be replayed.
    meta = reply.meta
    assert meta["model"].endswith(".gguf") and meta["model_fingerprint"]
    assert meta["settings"]["temperature"] == 0 and isinstance(meta["seed"], int)
    assert meta["finish_reason"] in ("eos", "length")
    assert "tokens/s" in window.chat.readout.text()
    assert window.store.conversation(window.cid).title == "What is the capital of France?"
    assert window.conversation_list.count() == 1


def test_the_next_turn_reuses_the_conversation_in_the_cache(qtbot, window):
    """The second message's prompt begins with the first turn, which the KV cache still holds: only the
    new tokens run (engine/model/transformer.py `reusable_prefix`), and the readout says so."""
    greedy(window)
    window.worker.model.model.drop_cache()  # nothing left from an earlier test
    type_and_send(qtbot, window, "Name a colour.")
    wait_idle(qtbot, window)
    first = window.store.messages(window.cid)[-1].meta
    assert first["cached_tokens"] == 0 and "reused" not in window.chat.readout.text()
    type_and_send(qtbot, window, "Name another one.")
    wait_idle(qtbot, window)
    second = window.store.messages(window.cid)[-1].meta
    assert first["prompt_tokens"] <= second["cached_tokens"] < second["prompt_tokens"]
    assert f"{second['cached_tokens']:,} prompt tokens reused" in window.chat.readout.text()


def test_a_long_readout_wraps_instead_of_widening_the_window(qtbot, window):
    narrowest = window.minimumSizeHint().width()
    window.chat.set_readout("16 tokens · 20.1 tokens/s · reached the reply length · 1,229 prompt tokens reused")
    qtbot.wait(20)
    assert window.minimumSizeHint().width() == narrowest  # it was 112 px wider before the readout wrapped


def test_shift_enter_adds_a_line_instead_of_sending(qtbot, window):
    window.chat.input.setFocus()
    qtbot.keyClicks(window.chat.input, "one")
    qtbot.keyClick(window.chat.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.chat.input, "two")
    assert window.chat.input.toPlainText() == "one\ntwo"
    assert window.session.reply is None and window.cid is None


def start_long_reply(qtbot, window) -> None:
    greedy(window, 400)  # greedy: a story that is certain to run long
    type_and_send(qtbot, window, LONG_PROMPT)
    qtbot.waitUntil(lambda: len(window.chat.streaming.message.content) > 20, timeout=60_000)


def check_stopped(window) -> None:
    reply = window.store.messages(window.cid)[-1]
    assert reply.role == "assistant" and reply.status == "stopped"
    assert reply.meta["finish_reason"] == "cancelled"
    assert 0 < reply.meta["generated_tokens"] < 400
    assert len(reply.content) > 20
    widget = window.chat.widgets[-1]
    assert widget.message.content == reply.content
    assert widget.tag.text() == "<i>(stopped)</i>"


def test_esc_stops_the_reply_and_keeps_what_was_written(qtbot, window):
    start_long_reply(qtbot, window)
    window.activateWindow()
    qtbot.waitActive(window)
    qtbot.keyClick(window.chat.input, Qt.Key.Key_Escape)
    wait_idle(qtbot, window)
    check_stopped(window)


def test_stop_button_stops_the_reply(qtbot, window):
    start_long_reply(qtbot, window)
    click(qtbot, window.chat.stop)
    wait_idle(qtbot, window)
    check_stopped(window)
    assert window.chat.send.isEnabled() and not window.chat.stop.isEnabled()


def test_regenerate_and_step_between_versions(qtbot, window):
    greedy(window)
    send_and_wait(qtbot, window, "Name a fruit.")
    first = window.store.messages(window.cid)[-1].content
    window.sampling.inputs["temperature"].setValue(1.5)  # another version, most likely other words
    window.sampling.random_seed.setChecked(False)
    window.sampling.seed.setValue(1234)
    click(qtbot, button(window.chat.widgets[-1], "Write another version of this reply"))
    wait_idle(qtbot, window)

    second = window.store.messages(window.cid)[-1]
    assert (second.variant, second.variants) == (1, 2)
    assert second.meta["seed"] == 1234
    assert len(window.chat.widgets) == 2
    assert window.chat.widgets[-1].variant_label.text() == "2/2"

    click(qtbot, button(window.chat.widgets[-1], "Previous version"))
    assert window.chat.widgets[-1].variant_label.text() == "1/2"
    assert window.chat.widgets[-1].message.content == first
    assert window.store.messages(window.cid)[-1].content == first
    assert not button(window.chat.widgets[-1], "Previous version").isEnabled()

    click(qtbot, button(window.chat.widgets[-1], "Next version"))
    assert window.chat.widgets[-1].variant_label.text() == "2/2"
    assert window.chat.widgets[-1].message.content == second.content
    assert not button(window.chat.widgets[-1], "Next version").isEnabled()


def test_regenerate_shortcut_asks_before_deleting_later_messages(qtbot, window, dialogs):
    greedy(window, 8)
    send_and_wait(qtbot, window, "Say hello.")
    send_and_wait(qtbot, window, "Say goodbye.")
    before = stored(window)
    dialogs.question = dialogs.question.No
    click(qtbot, button(window.chat.widgets[1], "Write another version of this reply"))
    assert dialogs.titles("question") == ["Regenerate reply"]
    assert "deletes the 2 messages after it" in dialogs.texts("question")[0]
    assert window.session.reply is None and stored(window) == before

    window.session.regenerate_last()  # Ctrl+R: the last reply, nothing after it to lose
    wait_idle(qtbot, window)
    assert len(dialogs.titles("question")) == 1
    assert window.store.messages(window.cid)[-1].variants == 2
    assert stored(window)[:3] == before[:3]


def test_edit_a_user_message_and_resend(qtbot, window, dialogs):
    greedy(window)
    send_and_wait(qtbot, window, "What is the capital of France?")
    dialogs.text = ("What is the capital of Japan?", True)
    click(qtbot, button(window.chat.widgets[0], "Edit and resend from here"))
    assert dialogs.texts("getMultiLineText") == ["Edit and resend:"]
    wait_idle(qtbot, window)
    [user, reply] = window.store.messages(window.cid)
    assert user.content == "What is the capital of Japan?"
    assert "Tokyo" in reply.content and "Paris" not in reply.content
    assert shown(window) == stored(window)


def test_cancelled_edit_changes_nothing(qtbot, window, dialogs):
    greedy(window, 8)
    send_and_wait(qtbot, window, "Hi")
    before = stored(window)
    dialogs.text = ("ignored", False)
    click(qtbot, button(window.chat.widgets[0], "Edit and resend from here"))
    assert window.session.reply is None and stored(window) == before


def test_continue_a_reply(qtbot, window):
    greedy(window, 8)
    send_and_wait(qtbot, window, LONG_PROMPT)
    first = window.store.messages(window.cid)[-1]
    assert first.meta["finish_reason"] == "length"
    click(qtbot, button(window.chat.widgets[-1], "Continue this reply"))
    wait_idle(qtbot, window)
    messages = window.store.messages(window.cid)
    assert len(messages) == 2
    longer = messages[-1]
    assert longer.id == first.id and longer.variants == 1
    assert longer.content.startswith(first.content) and len(longer.content) > len(first.content)
    assert window.chat.widgets[-1].message.content == longer.content


def test_delete_a_message(qtbot, window):
    greedy(window, 8)
    send_and_wait(qtbot, window, "Hi")
    click(qtbot, button(window.chat.widgets[-1], "Delete this message"))
    assert stored(window) == [("user", "Hi")]
    assert shown(window) == [("user", "Hi")]


def test_copy_a_message_and_a_code_block(qtbot, window):
    cid = window.store.create_conversation("Code")
    window.store.add_message(cid, "user", "Show me code")
    reply = "Here:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nAnd:\n\n```\nls -l\n```\n"
    window.store.add_message(cid, "assistant", reply)
    window.open_conversation(cid)
    clipboard = QGuiApplication.clipboard()

    click(qtbot, button(window.chat.widgets[0], "Copy this message"))
    assert clipboard.text() == "Show me code"
    widget = window.chat.widgets[1]
    click(qtbot, button(widget, "Copy this message"))
    assert clipboard.text() == reply

    first, second = widget.body.findChildren(CodeBlock)
    assert (first.language.text(), second.language.text()) == ("python", "code")
    click(qtbot, button(first, "Copy this code"))  # the Copy at the top of the first code block
    assert clipboard.text() == "def add(a, b):\n    return a + b\n"
    click(qtbot, button(second, "Copy this code"))
    assert clipboard.text() == "ls -l\n"
    assert second.copy.text() == "Copied" and first.copy.text() == "Copied"


def test_model_output_is_not_interpreted_as_html(qtbot, window):
    cid = window.store.create_conversation("Html")
    window.store.add_message(cid, "assistant", "<img src=x onerror=alert(1)> <b>bold?</b>")
    window.open_conversation(cid)
    [text] = window.chat.widgets[0].body.parts
    assert "<img" not in text.toHtml() and "&lt;img" in text.toHtml()
    assert text.toPlainText() == "<img src=x onerror=alert(1)> <b>bold?</b>"  # shown as written, not obeyed
