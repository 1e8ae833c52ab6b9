"""A reasoning model's thought above its answer, folded under a one-line header that opens it.

The thought is the reply's ``<think>…</think>`` section (`engine.text.thinking.split_thinking`). While it
streams, the header says "Thinking…"; once it closes, how long it took, from the reply's meta (the session
notes the tokens and seconds when the thought closes) or, for a reply without them, its length in words.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QFrame, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from desktop.chat_text import ChatText
from engine.text.thinking import Split


def header_text(split: Split, meta: Mapping[str, Any], streaming: bool) -> str:
    """What the folded thought says of itself."""
    if split.thinking and streaming:
        return "Thinking…"
    tokens = meta.get("thought_tokens")
    if tokens is not None:
        seconds = max(1, round(meta.get("thought_seconds", 0)))
        return f"Thought for {seconds} second{'s' if seconds != 1 else ''} · {tokens:,} tokens"
    words = len((split.thought or "").split())
    return f"Thought for {words:,} word{'s' if words != 1 else ''}" + (" (unfinished)" if split.thinking else "")


class Header(QToolButton):
    """The thought's header: a button that opens and folds it, from the mouse or the keyboard (Space, as
    every button, and Enter)."""

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt override)
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.toggle()
            return
        super().keyPressEvent(event)


class Thought(QFrame):
    """Folded at first. While folded the thought's text is only kept, not laid out, so each streamed batch
    costs at most a new header; open, it is plain text that wraps at any width."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, objectName="thought", frameShape=QFrame.Shape.StyledPanel)  # drawn by the theme
        self._thought = ""
        self.header = Header(
            checkable=True,
            autoRaise=True,
            objectName="thoughtHeader",
            toolButtonStyle=Qt.ToolButtonStyle.ToolButtonTextBesideIcon,
            arrowType=Qt.ArrowType.RightArrow,
            focusPolicy=Qt.FocusPolicy.StrongFocus,
            toolTip="Show or fold what the model thought before answering",
        )
        self.header.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Fixed)
        self.text = ChatText("Thought")
        self.text.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 0, 0, 2)
        layout.setSpacing(2)
        layout.addWidget(self.header)
        layout.addWidget(self.text)
        self.header.toggled.connect(self._on_toggled)

    @property
    def opened(self) -> bool:
        return self.header.isChecked()

    def show_thought(self, thought: str, header: str) -> None:
        self._thought = thought
        if header != self.header.text():
            self.header.setText(header)
            self.header.setAccessibleName(f"{header}: {'fold' if self.opened else 'show'} the thought")
        if self.opened:
            self.text.set_html(_html(thought))

    @Slot(bool)
    def _on_toggled(self, opened: bool) -> None:
        self.header.setArrowType(Qt.ArrowType.DownArrow if opened else Qt.ArrowType.RightArrow)
        self.header.setAccessibleName(f"{self.header.text()}: {'fold' if opened else 'show'} the thought")
        if opened:
            self.text.set_html(_html(self._thought))
        self.text.setVisible(opened)


def _html(thought: str) -> str:
    """The thought as written: the model's text escaped, its line breaks kept."""
    return html.escape(thought or "…").replace("\n", "<br>")
