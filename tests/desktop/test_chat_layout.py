"""The chat's messages on their own (a ChatView, no model): they reflow to the chat's width, code scrolls
inside its block and is highlighted, actions show on hover or focus and not while a reply is written, and an
empty chat greets with starter prompts."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QGuiApplication
from PySide6.QtWidgets import QLabel, QTextEdit, QWidget

from desktop.chat_view import COLUMN_WIDTH, ChatView
from desktop.chat_welcome import STARTERS
from desktop.code_block import CodeBlock
from desktop.store import Message
from tests.desktop.helpers import button, click

pytestmark = pytest.mark.gui

LONG_LINE = "    result = " + " + ".join(f"value_number_{i}" for i in range(40))
URLISH = "https://example.com/" + "a-very-long-path-segment-without-spaces" * 6
REPLY = (
    "Here is a long paragraph that goes on and on about strings, reversing them, slicing them and why the "
    "step of minus one walks backwards through the characters. "
    * 3
    + f"\n\nSee {URLISH} for more.\n\n```python\ndef reverse(s):\n{LONG_LINE}\n    return s[::-1]\n```\n\nDone."
)


def message(turn: int, role: str, content: str, status: str = "complete") -> Message:
    return Message(id=turn + 1, turn=turn, variant=0, role=role, content=content, status=status)


@pytest.fixture
def chat(qtbot) -> ChatView:
    view = ChatView()
    qtbot.addWidget(view)
    view.show()
    qtbot.waitExposed(view)
    return view


def settle(qtbot, view: ChatView, width: int) -> None:
    view.resize(width, 700)
    qtbot.wait(50)  # the text's height follows its width through queued layout requests


def right_edge(widget: QWidget, of: QWidget) -> int:
    return widget.mapTo(of, QPoint(widget.width(), 0)).x()


@pytest.mark.parametrize("width", [560, 1000, 1600])
def test_messages_reflow_to_the_chat_width(qtbot, chat, width):
    chat.set_messages([message(0, "user", f"Please explain {URLISH}"), message(1, "assistant", REPLY)])
    settle(qtbot, chat, width)
    viewport = chat.scroll.viewport()
    texts = [w for w in chat.list_host.findChildren(QWidget) if isinstance(w, (QLabel, QTextEdit)) and w.isVisible()]
    assert len(texts) >= 5
    assert [type(w).__name__ for w in texts if right_edge(w, viewport) > viewport.width()] == []
    assert not chat.scroll.horizontalScrollBar().isVisible()
    assert chat.list_host.width() <= viewport.width()
    [code] = chat.widgets[1].body.findChildren(CodeBlock)
    assert code.view.horizontalScrollBar().maximum() > 0  # the long line scrolls inside its block
    assert code.view.horizontalScrollBar().isVisible()
    # The long paragraph wraps: its text is taller than one line.
    prose = chat.widgets[1].body.parts[0]
    assert prose.height() > 3 * prose.fontMetrics().height()
    # A comfortable line length: the column never grows past COLUMN_WIDTH, and is centred.
    column = chat.widgets[1]
    assert column.width() <= COLUMN_WIDTH
    left = column.mapTo(viewport, QPoint(0, 0)).x()
    assert abs(left - (viewport.width() - right_edge(column, viewport))) <= 2


def test_user_messages_are_bubbles_on_the_right(qtbot, chat):
    chat.set_messages([message(0, "user", "Hi"), message(1, "assistant", "Hello! How can I help?")])
    settle(qtbot, chat, 1000)
    user, reply = chat.widgets
    viewport = chat.scroll.viewport()
    assert user.bubble.objectName() == "userMessage" and reply.bubble.objectName() == "assistantMessage"
    assert user.bubble.width() < reply.bubble.width() / 3  # a short message makes a small bubble
    assert right_edge(user.bubble, viewport) == right_edge(reply.bubble, viewport)  # aligned right


def colours(code: CodeBlock) -> set[str]:
    """The colours of the code's visible characters, as the text document holds them."""
    found = set()
    block = code.view.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            if it.fragment().text().strip():
                found.add(it.fragment().charFormat().foreground().color().name())
            it += 1
        block = block.next()
    return found


def contrast(a: str, b: str) -> float:
    """WCAG's contrast ratio of two colours."""

    def luminance(name: str) -> float:
        c = [v / 255 for v in QColor(name).getRgb()[:3]]
        r, g, b = (v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("background", ["#efeee9", "#111214"])
def test_code_is_highlighted_in_colours_that_suit_the_background(qtbot, chat, background):
    chat.code_background = background
    chat.set_messages([message(0, "assistant", "```python\nimport os\n\ndef f(x):\n    return 'a' + x  # add\n```")])
    [code] = chat.widgets[0].body.findChildren(CodeBlock)
    found = colours(code)
    assert len(found) >= 3, found  # keywords, strings, comments
    assert min(contrast(c, background) for c in found) >= 3, found
    assert code.language.text() == "python"
    assert background in code.styleSheet()


def test_a_fence_in_a_list_wraps_inside_the_text(qtbot, chat):
    chat.set_messages([message(0, "assistant", f"1. Run this:\n\n   ```\n{LONG_LINE}\n   ```\n")])
    settle(qtbot, chat, 560)
    [prose] = chat.widgets[0].body.parts
    assert "white-space: pre-wrap" in prose.toHtml() or "pre-wrap" in prose.document().toHtml()
    assert right_edge(prose, chat.scroll.viewport()) <= chat.scroll.viewport().width()
    assert prose.height() > 2 * prose.fontMetrics().height()


def test_images_are_links_never_fetched(qtbot, chat):
    chat.set_messages([message(0, "assistant", "Look: ![cat](http://e.vil/c.png)")])
    [prose] = chat.widgets[0].body.parts
    assert "<img" not in prose.toHtml() and 'href="http://e.vil/c.png"' in prose.toHtml()
    assert prose.toPlainText() == "Look: [image: cat]"


def test_actions_show_on_hover_and_on_keyboard_focus(qtbot, chat):
    chat.set_messages([message(0, "user", "Hi"), message(1, "assistant", "Hello there.")])
    settle(qtbot, chat, 800)
    user, reply = chat.widgets
    assert not user.actions.isVisible() and not reply.actions.isVisible()
    qtbot.mouseMove(reply.body.parts[0])
    qtbot.waitUntil(reply.actions.isVisible)
    assert not user.actions.isVisible()
    qtbot.mouseMove(chat.input)
    qtbot.waitUntil(lambda: not reply.actions.isVisible())

    chat.activateWindow()
    qtbot.waitActive(chat)
    user.body.parts[0].setFocus(Qt.FocusReason.TabFocusReason)
    assert user.actions.isVisible() and not reply.actions.isVisible()
    names = []
    for _ in range(4):  # Tab walks from the text to the message's actions, each named for a screen reader
        qtbot.keyClick(QGuiApplication.focusObject(), Qt.Key.Key_Tab)
        names.append(QGuiApplication.focusObject().accessibleName())
    assert names == ["Copy this message", "Edit and resend from here", *names[2:]]
    assert "Delete this message" in names and user.actions.isVisible()


def test_actions_that_change_the_conversation_wait_for_the_reply(qtbot, chat):
    chat.set_messages([message(0, "user", "Hi"), message(1, "assistant", "Hello.")])
    chat.begin_stream(message(2, "assistant", ""))
    chat.set_busy(True)
    chat.stream_text("Still writ")
    changing = [b for w in chat.widgets for b in w.changing]
    assert len(changing) == 2 + 3 + 3 and all(b.isHidden() for b in changing)  # even on hover or focus
    assert not any(button(w, "Copy this message").isHidden() for w in chat.widgets)
    assert chat.widgets[2].tag.text() == "<i>writing…</i>"

    chat.set_busy(False)  # the reply ended
    for name in ("Write another version of this reply", "Continue this reply", "Delete this message"):
        assert not button(chat.widgets[1], name).isHidden()
    assert not button(chat.widgets[0], "Edit and resend from here").isHidden()
    signals = []
    chat.regenerateRequested.connect(signals.append)
    click(qtbot, button(chat.widgets[1], "Write another version of this reply"))
    assert signals == [1]


@pytest.mark.parametrize("large", [False, True])
def test_empty_chat_greets_with_starter_prompts(qtbot, chat, large):
    if large:  # text too wide for one line in a 560 px chat (a style sheet: the app's sets every font size)
        chat.welcome.setStyleSheet("QPushButton { font-size: 26pt; }")
    settle(qtbot, chat, 560)
    assert chat.welcome.isVisible() and len(chat.welcome.starters) == len(STARTERS)
    viewport = chat.scroll.viewport()
    assert all(right_edge(b, viewport) <= viewport.width() for b in chat.welcome.starters)
    assert ("\n" in chat.welcome.starters[0].text()) == large  # the text wraps when it must
    starter = chat.welcome.starters[1]
    assert starter.accessibleName() == f"Ask: {STARTERS[1]}"
    with qtbot.waitSignal(chat.sendRequested) as sent:
        click(qtbot, starter)
    assert sent.args == [STARTERS[1]]
    assert chat.input.toPlainText() == ""
    chat.set_messages([message(0, "user", starter.text())])
    assert not chat.welcome.isVisible()
    chat.set_messages([])
    assert chat.welcome.isVisible()


def test_a_streaming_reply_updates_its_parts_in_place(qtbot, chat):
    chat.begin_stream(message(0, "assistant", ""))
    chat.stream_text("Here is")
    [first] = chat.widgets[0].body.parts
    chat.stream_text("Here is code:\n\n```py")
    text, code = chat.widgets[0].body.parts
    assert code.language.text() == "py"
    chat.stream_text("Here is code:\n\n```python\nx = 1")
    assert chat.widgets[0].body.parts == [text, code] and code.language.text() == "python"
    assert text is first and isinstance(code, CodeBlock) and code.code == "x = 1"  # the fence still open
    chat.stream_text("Here is code:\n\n```python\nx = 1\ny = 2\n```\n\nDone.")
    assert chat.widgets[0].body.parts[:2] == [text, code] and code.code == "x = 1\ny = 2\n"
    assert chat.widgets[0].body.parts[2].toPlainText() == "Done."


def test_setting_the_same_messages_again_keeps_their_widgets(qtbot, chat):
    """The session sets the whole conversation again after each reply: only what changed is drawn again."""
    history = [message(0, "user", "Hi"), message(1, "assistant", "Hello.")]
    chat.set_messages(history)
    first = list(chat.widgets)
    chat.begin_stream(message(2, "assistant", ""))
    chat.stream_text("Done")
    streamed = chat.widgets[2]
    chat.set_messages([*history, message(2, "assistant", "Done")])
    assert chat.widgets[:2] == first and chat.widgets[2] is not streamed
    assert chat.widgets[2].tag.text() == "" and chat.widgets[2].body.parts[0].toPlainText() == "Done"
    chat.set_messages([history[0], message(1, "assistant", "Hello again.")])
    assert chat.widgets[0] is first[0] and chat.widgets[1] is not first[1] and len(chat.widgets) == 2
    chat.code_background = "#111214"  # another theme: everything is drawn again in its colours
    chat.set_messages([history[0], message(1, "assistant", "Hello again.")])
    assert chat.widgets[0] is not first[0]
