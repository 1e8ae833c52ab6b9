"""A message's Markdown body: prose and code blocks stacked, updated in place as a reply streams in."""

from __future__ import annotations

from PySide6.QtWidgets import QVBoxLayout, QWidget

from desktop.chat_text import ChatText
from desktop.code_block import CodeBlock
from desktop.markdown import Code, render


class MessageBody(QWidget):
    """``parts``: a `ChatText` for each stretch of prose and a `CodeBlock` for each top-level code block.
    Re-rendering keeps the widgets whose kind is unchanged, so a streaming reply does not flicker."""

    def __init__(self, accessible_name: str, code_background: str, *, hug: bool = False) -> None:
        super().__init__(accessibleName=accessible_name)
        self.code_background = code_background
        self.hug = hug
        self.parts: list[ChatText | CodeBlock] = []
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.layout_.setSpacing(6)

    def set_markdown(self, text: str) -> bool:
        """Shows ``text``; True when the parts changed (a widget came or went), not only their text."""
        rendered = render(text, self.code_background) if text else ["<i>…</i>"]
        kinds = [type(p) for p in self.parts]
        for i, part in enumerate(rendered):
            kind = CodeBlock if isinstance(part, Code) else ChatText
            if i < len(self.parts) and not isinstance(self.parts[i], kind):
                self._drop_from(i)
            if i == len(self.parts):
                widget = (
                    CodeBlock(part.text, part.language, self.code_background)
                    if isinstance(part, Code)
                    else ChatText(self.accessibleName(), hug=self.hug)
                )
                self.layout_.addWidget(widget)
                self.parts.append(widget)
            if isinstance(part, Code):
                self.parts[i].set_code(part.text, part.language)
            else:
                self.parts[i].set_html(part)
        self._drop_from(len(rendered))
        return kinds != [type(p) for p in self.parts]

    def _drop_from(self, index: int) -> None:
        for stale in self.parts[index:]:
            stale.hide()
            stale.deleteLater()
        del self.parts[index:]
