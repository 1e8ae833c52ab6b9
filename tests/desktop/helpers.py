"""Driving the main window the way a person does: typing, pressing Enter, clicking buttons."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QToolButton, QWidget

from desktop.main_window import MainWindow

REPLY_TIMEOUT_MS = 60_000


def greedy(window: MainWindow, max_tokens: int = 24) -> None:
    """Temperature 0 (through the Sampling panel's widget) and a short reply limit."""
    window.sampling.inputs["temperature"].setValue(0)
    window.chat.max_tokens.setValue(max_tokens)


def type_and_send(qtbot, window: MainWindow, text: str) -> None:
    window.chat.input.setFocus()
    qtbot.keyClicks(window.chat.input, text)
    qtbot.keyClick(window.chat.input, Qt.Key.Key_Return)


def wait_idle(qtbot, window: MainWindow) -> None:
    """Until the reply being written (if any) is finished and saved."""
    qtbot.waitUntil(lambda: window.session.reply is None and window.chat.send.isEnabled(), timeout=REPLY_TIMEOUT_MS)


def send_and_wait(qtbot, window: MainWindow, text: str) -> None:
    type_and_send(qtbot, window, text)
    assert window.session.reply is not None, "the message was not sent"
    wait_idle(qtbot, window)


def button(widget: QWidget, accessible_name: str) -> QToolButton:
    """The tool button in ``widget`` with that accessible name (what a screen reader announces)."""
    found = [b for b in widget.findChildren(QToolButton) if b.accessibleName() == accessible_name]
    assert len(found) == 1, f"{len(found)} buttons named {accessible_name!r}"
    return found[0]


def click(qtbot, widget: QWidget) -> None:
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton)


def open_panel(qtbot, window: MainWindow, key: str) -> None:
    """Widen the window enough for the panel beside the chat, then open it from the rail, as a person does."""
    window.resize(max(window.width(), 1400), window.height())
    qtbot.waitUntil(lambda: window.width() >= 1400)
    if not window.docks[key].isVisible():
        window.rail.buttons[key].click()
    qtbot.waitUntil(window.docks[key].isVisible)
