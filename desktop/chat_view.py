"""The chat: messages rendered as Markdown with per-message actions, the input box and the live readout.

Signals (ChatView):
    sendRequested(str)             -- Enter in the input box or the Send button
    stopRequested()                -- Esc or the Stop button
    regenerateRequested(int turn)
    continueRequested(int turn)
    editRequested(int turn, str)   -- the user message at `turn`, edited, to resend
    deleteRequested(int turn)
    variantRequested(int turn, int variant)
    inputChanged(str)
    inspectRequested(int turn)     -- open the inspector on the conversation up to `turn`
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QGuiApplication, QKeyEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.markdown import COPY_SCHEME, render
from desktop.store import Message

# key: (label, tooltip)
CONTEXT_POLICIES = {
    "drop_oldest": ("Drop oldest turns", "Leave the oldest messages out (never the system prompt) until it fits"),
    "stop": ("Refuse to send", "Send nothing, and say how much is too much"),
}


class MessageWidget(QFrame):
    """One message: role, status, variant navigation, actions and the Markdown body."""

    def __init__(self, view: ChatView, message: Message) -> None:
        super().__init__()
        self.view = view
        self.message = message
        self.blocks: list[str] = []
        self.setObjectName("assistantMessage" if message.role == "assistant" else "userMessage")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.role = QLabel(f"<b>{'You' if message.role == 'user' else 'Assistant'}</b>")
        self.tag = QLabel(accessibleName="Message status")
        header = QHBoxLayout()
        header.addWidget(self.role)
        header.addWidget(self.tag)
        header.addStretch(1)
        if message.role == "assistant" and message.variants > 1:
            prev = self._button("←", "Previous version", lambda: self._variant(-1))
            nxt = self._button("→", "Next version", lambda: self._variant(+1))
            prev.setEnabled(message.variant > 0)
            nxt.setEnabled(message.variant < message.variants - 1)
            self.variant_label = QLabel(f"{message.variant + 1}/{message.variants}", accessibleName="Version")
            for w in (prev, self.variant_label, nxt):
                header.addWidget(w)
        # Actions sit under the message, so a narrow chat (the inspector open beside it) never clips them.
        actions = QHBoxLayout()
        actions.addWidget(
            self._button("Copy", "Copy this message", lambda: QGuiApplication.clipboard().setText(self.message.content))
        )
        if message.role == "user":
            actions.addWidget(self._button("Edit", "Edit and resend from here", self._edit))
        else:
            actions.addWidget(
                self._button(
                    "Regenerate",
                    "Write another version of this reply",
                    lambda: view.regenerateRequested.emit(message.turn),
                )
            )
            actions.addWidget(
                self._button("Continue", "Continue this reply", lambda: view.continueRequested.emit(message.turn))
            )
        actions.addWidget(
            self._button(
                "Inspect",
                "See the tokens, probabilities and attention up to this message",
                lambda: view.inspectRequested.emit(message.turn),
            )
        )
        actions.addWidget(
            self._button("Delete", "Delete this message", lambda: view.deleteRequested.emit(message.turn))
        )
        actions.addStretch(1)
        self.body = QLabel(accessibleName=f"{message.role} message")
        self.body.setWordWrap(True)
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.body.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.body.linkActivated.connect(self._on_link)
        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addWidget(self.body)
        layout.addLayout(actions)
        self.set_content(message.content, message.status)

    def _button(self, text: str, tip: str, slot) -> QToolButton:
        b = QToolButton(text=text, toolTip=tip, accessibleName=tip, autoRaise=True)
        b.clicked.connect(slot)
        return b

    def set_content(self, text: str, status: str = "complete") -> None:
        self.message.content = text
        self.message.status = status
        body, self.blocks = render(text, self.view.code_background) if text else ("<i>…</i>", [])
        self.body.setText(body)
        self.tag.setText(
            {"stopped": "<i>(stopped)</i>", "interrupted": "<i>(interrupted)</i>", "streaming": "<i>writing…</i>"}.get(
                status, ""
            )
        )

    def _variant(self, step: int) -> None:
        self.view.variantRequested.emit(self.message.turn, self.message.variant + step)

    def _edit(self) -> None:
        text, ok = QInputDialog.getMultiLineText(self, "Edit message", "Edit and resend:", self.message.content)
        if ok and text.strip():
            self.view.editRequested.emit(self.message.turn, text)

    @Slot(str)
    def _on_link(self, link: str) -> None:
        scheme, _, index = link.partition(":")
        if scheme == COPY_SCHEME and index.isdigit() and int(index) < len(self.blocks):
            QGuiApplication.clipboard().setText(self.blocks[int(index)])


class ChatInput(QPlainTextEdit):
    """Enter sends, Shift+Enter inserts a newline."""

    submitted = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt override)
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class ChatView(QWidget):
    sendRequested = Signal(str)
    stopRequested = Signal()
    regenerateRequested = Signal(int)
    continueRequested = Signal(int)
    editRequested = Signal(int, str)
    deleteRequested = Signal(int)
    variantRequested = Signal(int, int)
    inputChanged = Signal(str)
    inspectRequested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.widgets: list[MessageWidget] = []
        self.code_background = "#efeee9"
        self.streaming: MessageWidget | None = None
        self.list_host = QWidget()
        self.list_layout = QVBoxLayout(self.list_host)
        self.list_layout.addStretch(1)
        self.scroll = QScrollArea(widgetResizable=True, accessibleName="Conversation")
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.list_host)
        self.scroll.verticalScrollBar().rangeChanged.connect(self._on_range)
        self.empty = QLabel(
            "Start the conversation below. Enter sends, Shift+Enter adds a line, Esc stops.",
            alignment=Qt.AlignmentFlag.AlignCenter,
            wordWrap=True,
        )
        self.list_layout.insertWidget(0, self.empty)

        self.context_note = QLabel(accessibleName="Context note", wordWrap=True)
        self.context_note.setObjectName("contextNote")
        self.input = ChatInput(accessibleName="Message input")
        self.input.setPlaceholderText("Message the model…")
        self.input.setMaximumHeight(110)
        self.send = QPushButton("Send", accessibleName="Send message", toolTip="Send (Enter)")
        self.stop = QPushButton("Stop", accessibleName="Stop generating", toolTip="Stop (Esc)", enabled=False)
        self.policy = QComboBox(
            accessibleName="Context policy",
            toolTip="What happens when the conversation no longer fits in the model's context window",
        )
        for key, (label, tip) in CONTEXT_POLICIES.items():
            self.policy.addItem(label, key)
            self.policy.setItemData(self.policy.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.max_tokens = QSpinBox(
            accessibleName="Maximum reply length",
            toolTip="The longest reply the model may write, in tokens; room for it is kept in the context",
            suffix=" tokens",
            minimum=1,
            maximum=32768,
            singleStep=64,
        )
        self.readout = QLabel(accessibleName="Generation readout")
        self.readout.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.readout.setWordWrap(True)  # a long readout wraps; it never widens the window
        buttons = QVBoxLayout()
        buttons.addWidget(self.send)
        buttons.addWidget(self.stop)
        buttons.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.input, 1)
        row.addLayout(buttons)
        bottom = QHBoxLayout()
        bottom.addWidget(QLabel("When full:"))
        bottom.addWidget(self.policy)
        bottom.addWidget(QLabel("Reply up to:"))
        bottom.addWidget(self.max_tokens)
        bottom.addStretch(1)
        status = QHBoxLayout()
        status.addWidget(self.context_note, 1)
        status.addWidget(self.readout)
        layout = QVBoxLayout(self)
        layout.addWidget(self.scroll, 1)
        layout.addLayout(status)
        layout.addLayout(row)
        layout.addLayout(bottom)

        self.input.submitted.connect(self._on_submit)
        self.send.clicked.connect(self._on_submit)
        self.stop.clicked.connect(self.stopRequested)
        self._input_timer = QTimer(self, singleShot=True, interval=250)
        self.input.textChanged.connect(self._input_timer.start)
        self._input_timer.timeout.connect(lambda: self.inputChanged.emit(self.input.toPlainText()))
        self._follow = True

    def policy_key(self) -> str:
        return self.policy.currentData()

    def set_policy(self, key: str) -> None:
        index = self.policy.findData(key)
        self.policy.setCurrentIndex(max(index, 0))

    def set_busy(self, busy: bool) -> None:
        self.send.setEnabled(not busy)
        self.stop.setEnabled(busy)

    def set_messages(self, messages: list[Message]) -> None:
        while self.widgets:
            self.drop_last()
        self.streaming = None
        for m in messages:
            self._add(m)
        self.empty.setVisible(not messages)
        self._follow = True

    def drop_last(self) -> None:
        """Take the last message off the view at once (its deletion waits: a button of it may be calling)."""
        w = self.widgets.pop()
        w.hide()
        w.deleteLater()

    def _add(self, message: Message) -> MessageWidget:
        w = MessageWidget(self, message)
        self.list_layout.insertWidget(self.list_layout.count() - 1, w)
        self.widgets.append(w)
        self.empty.setVisible(False)
        return w

    def begin_stream(self, message: Message) -> None:
        """Show ``message`` (an assistant turn being written) and follow it as text arrives."""
        self.streaming = self._add(message)
        self.streaming.set_content(message.content, "streaming")
        self._follow = True

    def stream_text(self, text: str) -> None:
        if self.streaming is not None:
            bar = self.scroll.verticalScrollBar()
            self._follow = bar.value() >= bar.maximum() - 4
            self.streaming.set_content(text, "streaming")

    def set_readout(self, text: str) -> None:
        self.readout.setText(text)

    def set_context_note(self, text: str) -> None:
        self.context_note.setText(text)
        self.context_note.setVisible(bool(text))

    @Slot(int, int)
    def _on_range(self, _low: int, high: int) -> None:
        if self._follow:
            self.scroll.verticalScrollBar().setValue(high)

    @Slot()
    def _on_submit(self) -> None:
        text = self.input.toPlainText().strip()
        if text and self.send.isEnabled():
            self.input.clear()
            self.sendRequested.emit(text)
