"""One message in the chat: the user's as a bubble on the right, the assistant's across the column, with
actions that show while the pointer is over the message or the keyboard focus is in it. A reasoning model's
thought shows folded above its answer (`desktop.chat_thought`); Copy copies the answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, QSize, Qt, Slot
from PySide6.QtGui import QEnterEvent, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QInputDialog, QLabel, QToolButton, QVBoxLayout, QWidget

from desktop.chat_body import MessageBody
from desktop.chat_thought import Thought, header_text
from desktop.code_block import CodeBlock
from desktop.store import Message
from engine.text.thinking import split_thinking

if TYPE_CHECKING:
    from desktop.chat_view import ChatView

STATUS_TAGS = {"stopped": "<i>(stopped)</i>", "interrupted": "<i>(interrupted)</i>", "streaming": "<i>writing…</i>"}


class MessageWidget(QWidget):
    """``actions``: the message's buttons, shown on hover or focus; ``changing``: those that change the
    conversation (edit, regenerate, continue, delete, another version), hidden while a reply is written."""

    def __init__(self, view: ChatView, message: Message) -> None:
        super().__init__()
        self.view = view
        self.message = message
        self.hovered = False
        self.focused = False
        user = message.role == "user"
        self.bubble = QFrame(objectName="userMessage" if user else "assistantMessage")
        self.tag = QLabel(accessibleName="Message status")
        self.body = MessageBody(f"{message.role} message", view.code_background, hug=user)
        self.thought = Thought(self)  # in the layout of an assistant's message only
        self.thought.hide()
        self.answer: str | None = None  # the text the body shows: the reply without its thought
        self.actions = QWidget()
        keep_place = self.actions.sizePolicy()
        keep_place.setRetainSizeWhenHidden(True)  # showing them never moves the text
        self.actions.setSizePolicy(keep_place)
        bar = QHBoxLayout(self.actions)
        bar.setContentsMargins(0, 0, 0, 0)
        bar.setSpacing(0)
        self.changing: list[QToolButton] = []
        turn = message.turn
        if user:
            steps = [("edit", "Edit and resend from here", self._edit)]
        else:
            steps = [
                ("regenerate", "Write another version of this reply", lambda: view.regenerateRequested.emit(turn)),
                ("continue", "Continue this reply", lambda: view.continueRequested.emit(turn)),
            ]
        for name, tip, slot in [
            ("copy", "Copy this message", lambda: QGuiApplication.clipboard().setText(self.answer)),
            *steps,
            ("inspect", "See the tokens, probabilities and attention up to this message", self._inspect),
            ("delete", "Delete this message", lambda: view.deleteRequested.emit(turn)),
        ]:
            bar.addWidget(self._button(name, tip, slot, changes=name not in ("copy", "inspect")))

        inside = QVBoxLayout(self.bubble)
        if user:
            inside.setContentsMargins(12, 8, 12, 8)
            inside.addWidget(self.body)
            row = QHBoxLayout(self)
            row.setContentsMargins(0, 0, 0, 0)  # the actions on its left keep the bubble off the left edge
            row.addStretch(1)
            row.addWidget(self.actions, 0, Qt.AlignmentFlag.AlignBottom)
            row.addWidget(self.bubble)
        else:
            header = QHBoxLayout()
            header.addWidget(QLabel("<b>Assistant</b>"))
            header.addWidget(self.tag)
            if message.variants > 1:
                self._add_versions(header)
            header.addStretch(1)
            header.addWidget(self.actions)
            inside.setContentsMargins(12, 6, 12, 10)
            inside.addLayout(header)
            inside.addWidget(self.thought)
            inside.addWidget(self.body)
            column = QVBoxLayout(self)
            column.setContentsMargins(0, 0, 0, 0)
            column.addWidget(self.bubble)
        self.set_content(message.content, message.status)
        self._update_actions()

    def _add_versions(self, header: QHBoxLayout) -> None:
        m = self.message
        prev = self._button("", "Previous version", lambda: self._variant(-1), changes=True, text="←")
        nxt = self._button("", "Next version", lambda: self._variant(+1), changes=True, text="→")
        prev.setEnabled(m.variant > 0)
        nxt.setEnabled(m.variant < m.variants - 1)
        self.variant_label = QLabel(f"{m.variant + 1}/{m.variants}", accessibleName="Version")
        for w in (prev, self.variant_label, nxt):
            header.addWidget(w)

    def _button(self, icon_name: str, tip: str, slot, *, changes: bool = False, text: str = "") -> QToolButton:
        b = QToolButton(toolTip=tip, accessibleName=tip, autoRaise=True, text=text)
        if icon_name:
            b.setIcon(self.view.icons(icon_name, self.palette().color(QPalette.ColorRole.ButtonText).name()))
            b.setIconSize(QSize(16, 16))
        b.clicked.connect(slot)
        if changes:
            self.changing.append(b)
        return b

    def set_content(self, text: str, status: str = "complete") -> None:
        self.message.content = text
        self.message.status = status
        tag = STATUS_TAGS.get(status, "")
        if tag != self.tag.text():  # a streaming reply comes here ~30 times a second
            self.tag.setText(tag)
        meta = self.message.meta
        split = split_thinking(text, opened=meta.get("thought_opened", False)) if self.message.role != "user" else None
        answer = text if split is None or split.thought is None else split.answer
        thinks = split is not None and split.thought is not None and (bool(split.thought) or split.thinking)
        comes_or_goes = thinks == self.thought.isHidden()  # an empty thought (thinking switched off) shows none
        if thinks:
            self.thought.show_thought(split.thought, header_text(split, meta, status == "streaming"))
        self.thought.setVisible(thinks)
        self.body.setVisible(bool(answer) or not (thinks and split.thinking))  # no "…" under a coming thought
        changed = answer != self.answer and self.body.set_markdown(answer)
        self.answer = answer
        if changed or comes_or_goes:
            self.watch_focus()

    def watch_focus(self) -> None:
        """Tab goes through the text, then the actions, which show while the focus is in the message. Again
        after the message joins the chat: taking a new parent reorders its widgets' place in the chain."""
        stops: list[QWidget] = [] if self.thought.isHidden() else [self.thought.header]
        for part in self.body.parts:
            stops += [part.copy, part.view] if isinstance(part, CodeBlock) else [part]
        stops += self.actions.findChildren(QToolButton)
        for a, b in zip(stops, stops[1:], strict=False):
            QWidget.setTabOrder(a, b)
        for stop in stops:
            stop.installEventFilter(self)  # once: Qt drops an earlier install of the same filter

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if event.type() in (QEvent.Type.FocusIn, QEvent.Type.FocusOut):
            now = QApplication.focusWidget()  # already the widget that takes the focus
            self.focused = now is not None and self.isAncestorOf(now)
            self._update_actions()
        return False

    def set_busy(self, busy: bool) -> None:
        """While a reply is written, the actions that would change the conversation are hidden."""
        for b in self.changing:
            b.setVisible(not busy)

    def _update_actions(self) -> None:
        self.actions.setVisible(self.hovered or self.focused)

    def enterEvent(self, event: QEnterEvent) -> None:  # noqa: N802 (Qt override)
        self.hovered = True
        self._update_actions()
        super().enterEvent(event)

    def leaveEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt override)
        self.hovered = False
        self._update_actions()
        super().leaveEvent(event)

    def _inspect(self) -> None:
        self.view.inspectRequested.emit(self.message.turn)

    def _variant(self, step: int) -> None:
        self.view.variantRequested.emit(self.message.turn, self.message.variant + step)

    @Slot()
    def _edit(self) -> None:
        text, ok = QInputDialog.getMultiLineText(self, "Edit message", "Edit and resend:", self.message.content)
        if ok and text.strip():
            self.view.editRequested.emit(self.message.turn, text)
