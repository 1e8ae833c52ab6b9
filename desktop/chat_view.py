"""The chat: messages rendered as Markdown with per-message actions, the input box and the live readout.
An empty conversation shows a greeting and starter prompts instead (`desktop.chat_welcome`).

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

import functools

from PySide6.QtCore import QSize, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QKeyEvent, QResizeEvent
from PySide6.QtWidgets import (
    QBoxLayout,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop.chat_icons import icon
from desktop.chat_message import MessageWidget
from desktop.chat_welcome import Welcome
from desktop.store import Message

COLUMN_WIDTH = 760  # the longest comfortable line, as most chat apps and style guides keep it
NARROWEST = 360  # the chat's minimum width: its messages still read well, as on a phone

# key: (label, tooltip)
CONTEXT_POLICIES = {
    "drop_oldest": ("Drop oldest turns", "Leave the oldest messages out (never the system prompt) until it fits"),
    "stop": ("Refuse to send", "Send nothing, and say how much is too much"),
}


class Column(QWidget):
    """The messages in a column at most COLUMN_WIDTH wide, centred in a wider chat."""

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        side = max(8, (event.size().width() - COLUMN_WIDTH) // 2)
        if side != self.layout().contentsMargins().left():  # not when only the height changed
            self.layout().setContentsMargins(side, 12, side, 12)
        super().resizeEvent(event)


class Options(QWidget):
    """The reply's options under the input, in pairs (a label and its control): on one line where the chat has
    room, one pair a line in a narrow chat. Its minimum is the narrow arrangement's, so these options never
    hold the chat (and the window) wider than its messages need."""

    def __init__(self, pairs: list[tuple[str, QWidget]]) -> None:
        super().__init__()
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.lines = QBoxLayout(QBoxLayout.Direction.LeftToRight, self)
        self.lines.setContentsMargins(0, 0, 0, 0)
        self.pairs: list[QHBoxLayout] = []
        for text, control in pairs:
            pair = QHBoxLayout()
            pair.addWidget(QLabel(text))
            pair.addWidget(control)
            self.lines.addLayout(pair)
            self.lines.setAlignment(pair, Qt.AlignmentFlag.AlignLeft)
            self.pairs.append(pair)
        self.lines.addStretch(1)  # on one line, the pairs side by side at the left

    def one_line(self) -> int:
        """The width the pairs need side by side."""
        return sum(p.sizeHint().width() for p in self.pairs) + self.lines.spacing() * (len(self.pairs) - 1)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(max(p.minimumSize().width() for p in self.pairs), super().minimumSizeHint().height())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        wide = event.size().width() >= self.one_line()
        direction = QBoxLayout.Direction.LeftToRight if wide else QBoxLayout.Direction.TopToBottom
        if self.lines.direction() != direction:
            self.lines.setDirection(direction)
        super().resizeEvent(event)


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
        self.setMinimumWidth(NARROWEST)
        self.widgets: list[MessageWidget] = []
        self.icons = functools.cache(icon)  # each action's icon drawn once per colour, and freed with the view
        self.code_background = "#efeee9"
        self.streaming: MessageWidget | None = None
        self.busy = False
        self.list_host = Column()
        self.list_layout = QVBoxLayout(self.list_host)
        self.list_layout.setContentsMargins(8, 12, 8, 12)  # the sides grow in a wide chat (Column)
        self.list_layout.setSpacing(14)
        self.list_layout.addStretch(1)
        self.scroll = QScrollArea(widgetResizable=True, accessibleName="Conversation")
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.list_host)
        self.scroll.verticalScrollBar().rangeChanged.connect(self._on_range)
        self.welcome = Welcome()
        self.welcome.starterChosen.connect(self._on_starter)
        self.list_layout.insertWidget(0, self.welcome, 1)

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
        self.options = Options([("When full:", self.policy), ("Reply up to:", self.max_tokens)])
        status = QHBoxLayout()
        status.addWidget(self.context_note, 1)
        status.addWidget(self.readout)
        layout = QVBoxLayout(self)
        layout.addWidget(self.scroll, 1)
        layout.addLayout(status)
        layout.addLayout(row)
        layout.addWidget(self.options)

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
        """While a reply is written: Stop instead of Send, and no action that would change the conversation."""
        self.busy = busy
        self.send.setEnabled(not busy)
        self.stop.setEnabled(busy)
        for w in self.widgets:
            w.set_busy(busy)

    def set_messages(self, messages: list[Message]) -> None:
        """Shows ``messages``, keeping the widgets of the leading ones that are shown as they are already (the
        whole conversation is set again after every reply); a new code background (the theme) redraws all."""
        kept = 0
        for w, m in zip(self.widgets, messages, strict=False):
            if w.message != m or w.body.code_background != self.code_background:
                break
            kept += 1
        while len(self.widgets) > kept:
            self.drop_last()
        self.streaming = None
        for m in messages[kept:]:
            self._add(m)
        self.welcome.setVisible(not messages)
        self._follow = True

    def drop_last(self) -> None:
        """Take the last message off the view at once (its deletion waits: a button of it may be calling)."""
        w = self.widgets.pop()
        w.hide()
        w.deleteLater()

    def _add(self, message: Message) -> MessageWidget:
        w = MessageWidget(self, message)
        w.set_busy(self.busy)
        self.list_layout.insertWidget(self.list_layout.count() - 1, w)
        w.watch_focus()
        self.widgets.append(w)
        self.welcome.setVisible(False)
        return w

    def begin_stream(self, message: Message) -> None:
        """Show ``message`` (an assistant turn being written) and follow it as text arrives."""
        self.busy = True
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

    @Slot(str)
    def _on_starter(self, text: str) -> None:
        self.input.setPlainText(text)
        self._on_submit()

    @Slot()
    def _on_submit(self) -> None:
        text = self.input.toPlainText().strip()
        if text and self.send.isEnabled():
            self.input.clear()
            self.sendRequested.emit(text)
