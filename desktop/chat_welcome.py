"""What an empty chat shows: a greeting and a few prompts to start with."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontMetrics, QResizeEvent
from PySide6.QtWidgets import QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

STARTERS = (
    "Explain what a language model is, in two sentences.",
    "Write a Python function that reverses a string.",
    "Give me three ideas for a weekend project.",
    "Summarize the story of Romeo and Juliet.",
)
BUTTON_PADDING = 24  # the style's room around a push button's text, with some to spare
STARTER_WIDTH = 460  # the starters' width where the chat has room; narrower, they take the chat's width


def wrap(text: str, metrics: QFontMetrics, width: int) -> str:
    """``text`` broken into lines at spaces, each line no wider than ``width`` where a word allows."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and metrics.horizontalAdvance(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


class Welcome(QWidget):
    """Signals: starterChosen(str) -- a starter prompt was clicked.

    The starters are as wide as the chat, up to STARTER_WIDTH, and centred: their width comes from the layout,
    never from their text, so none is ever wider than the chat, even before it is laid out again. Their text
    wraps onto more lines in a narrow chat (a push button's text does not wrap by itself)."""

    starterChosen = Signal(str)

    def __init__(self) -> None:
        super().__init__(accessibleName="Start a conversation")
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        for text in (
            "<h2>What shall we talk about?</h2>",
            "Ask anything below, or start with one of these. Enter sends, Shift+Enter adds a line, Esc stops.",
        ):
            label = QLabel(text, alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            layout.addWidget(label)
        layout.addSpacing(12)
        self.starters: list[QPushButton] = []
        for text in STARTERS:
            b = QPushButton(text, accessibleName=f"Ask: {text}", toolTip="Send this to the model")
            b.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            b.setMaximumWidth(STARTER_WIDTH)  # without an alignment, a box layout centres a narrower widget
            b.clicked.connect(lambda _checked=False, t=text: self.starterChosen.emit(t))
            layout.addWidget(b)
            self.starters.append(b)
        layout.addStretch(2)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        margins = self.layout().contentsMargins()
        room = min(STARTER_WIDTH, event.size().width() - margins.left() - margins.right()) - BUTTON_PADDING
        for b, text in zip(self.starters, STARTERS, strict=True):
            b.setText(wrap(text, b.fontMetrics(), room))
        super().resizeEvent(event)
