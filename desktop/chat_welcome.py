"""What an empty chat shows: a greeting and a few prompts to start with."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

STARTERS = (
    "Explain what a language model is, in two sentences.",
    "Write a Python function that reverses a string.",
    "Give me three ideas for a weekend project.",
    "Summarize the story of Romeo and Juliet.",
)


class Welcome(QWidget):
    """Signals: starterChosen(str) -- a starter prompt was clicked."""

    starterChosen = Signal(str)

    def __init__(self) -> None:
        super().__init__(accessibleName="Start a conversation")
        greeting = QLabel("<h2>What shall we talk about?</h2>", alignment=Qt.AlignmentFlag.AlignCenter)
        hint = QLabel(
            "Ask anything below, or start with one of these. Enter sends, Shift+Enter adds a line, Esc stops.",
            alignment=Qt.AlignmentFlag.AlignCenter,
            wordWrap=True,
        )
        hint.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        layout.addWidget(greeting)
        layout.addWidget(hint)
        layout.addSpacing(12)
        self.starters: list[QPushButton] = []
        for text in STARTERS:
            b = QPushButton(text, accessibleName=f"Ask: {text}", toolTip="Send this to the model")
            b.setObjectName("starterPrompt")
            b.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Fixed)
            b.clicked.connect(lambda _checked=False, t=text: self.starterChosen.emit(t))
            layout.addWidget(b, 0, Qt.AlignmentFlag.AlignHCenter)
            self.starters.append(b)
        layout.addStretch(2)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
