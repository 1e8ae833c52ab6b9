""" "How it works": a guided walk through the model's steps on the user's own text, from tokens to the
sampled next token, each step with a short plain-language caption. The pages are in
`desktop.panels.how_it_works_steps`; the numbers come from `engine.inspection.explain` on the engine worker.

HowItWorksPanel signals:
    explainRequested(str text)         -- walk through this text
    generateRequested()                -- append the sampled token and walk again
    compareRequested(str a, str b)     -- the next-token predictions after two word orders
"""

from __future__ import annotations

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from desktop.panels.how_it_works_steps import (
    AttentionStep,
    EmbeddingsStep,
    LayersStep,
    NextTokenStep,
    PositionsStep,
    Step,
    TokensStep,
)
from engine.inspection.explain import Explanation, WordOrder

EXAMPLE = "The cat chased the mouse because it was"


class HowItWorksPanel(QWidget):
    explainRequested = Signal(str)
    generateRequested = Signal()
    compareRequested = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.explanation: Explanation | None = None
        self.text = QLineEdit(EXAMPLE, accessibleName="Text to walk through", clearButtonEnabled=True)
        self.text.setPlaceholderText("Write a sentence, e.g. “The cat chased the mouse because it was”")
        self.explain_button = QPushButton("Explain ▶", accessibleName="Explain this text")
        self.explain_button.setToolTip("Run the model on this text and walk through what it does")
        self.status = QLabel(
            "Write a sentence and press Explain to see, step by step, how the model reads it and picks the next word.",
            wordWrap=True,
            accessibleName="How it works status",
        )
        top = QHBoxLayout()
        top.addWidget(self.text, 1)
        top.addWidget(self.explain_button)

        self.pages: list[Step] = [TokensStep(), EmbeddingsStep(), PositionsStep(), AttentionStep(), LayersStep()]
        self.pages.append(NextTokenStep())
        self.stack = QStackedWidget()
        self.step_buttons = QButtonGroup(self)
        steps_row = QHBoxLayout()
        steps_row.setSpacing(2)
        for i, page in enumerate(self.pages):
            self.stack.addWidget(page)
            b = QPushButton(f"{i + 1} {page.title}", checkable=True, accessibleName=f"Step {i + 1}: {page.title}")
            b.setStyleSheet("QPushButton:checked { background: #d9622b; color: #ffffff; }")
            self.step_buttons.addButton(b, i)
            steps_row.addWidget(b)
        self.caption = QLabel(wordWrap=True, accessibleName="What this step does", objectName="stepCaption")
        self.caption.setFrameShape(QFrame.Shape.StyledPanel)
        self.caption.setMargin(8)
        self.back = QPushButton("◀ Back", accessibleName="Previous step")
        self.next = QPushButton("Next ▶", accessibleName="Next step")
        self.where = QLabel()
        nav = QHBoxLayout()
        nav.addWidget(self.back)
        nav.addStretch(1)
        nav.addWidget(self.where)
        nav.addStretch(1)
        nav.addWidget(self.next)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.status)
        layout.addLayout(steps_row)
        layout.addWidget(self.caption)
        layout.addWidget(self.stack, 1)
        layout.addLayout(nav)

        self.explain_button.clicked.connect(self._on_explain)
        self.text.returnPressed.connect(self._on_explain)
        self.step_buttons.idClicked.connect(self.go_to)
        self.back.clicked.connect(lambda: self.go_to(self.step - 1))
        self.next.clicked.connect(lambda: self.go_to(self.step + 1))
        self.pages[2].compareRequested.connect(self.compareRequested)
        self.pages[5].generateRequested.connect(self.generateRequested)
        self.set_busy(False)
        self.go_to(0)

    @property
    def step(self) -> int:
        return self.stack.currentIndex()

    @Slot(int)
    def go_to(self, step: int) -> None:
        step = max(0, min(len(self.pages) - 1, step))
        self.stack.setCurrentIndex(step)
        self.step_buttons.button(step).setChecked(True)
        page = self.pages[step]
        self.caption.setText(f"<b>Step {step + 1} of {len(self.pages)} · {page.title}.</b> {page.caption}")
        self.where.setText(f"Step {step + 1} of {len(self.pages)}")
        self.back.setEnabled(step > 0)
        self.next.setEnabled(step < len(self.pages) - 1)

    def set_busy(self, busy: bool) -> None:
        self.explain_button.setEnabled(not busy)
        self.pages[5].generate.setEnabled(not busy and self.explanation is not None)
        self.pages[2].compare.setEnabled(not busy and self.explanation is not None)

    def show_explanation(self, e: Explanation) -> None:
        self.explanation = e
        for page in self.pages:
            page.show_explanation(e)
        self.set_busy(False)
        self.status.setText(
            f"The walk for <b>{len(e.ids)}</b> tokens. Go through the steps in order with Next, or jump to one."
        )

    def show_word_order(self, w: WordOrder) -> None:
        self.pages[2].show_word_order(w)
        self.set_busy(False)

    def show_error(self, message: str) -> None:
        self.set_busy(False)
        self.status.setText(message)

    @Slot()
    def _on_explain(self) -> None:
        if self.text.text().strip() and self.explain_button.isEnabled():
            self.explainRequested.emit(self.text.text())

    def clear(self) -> None:
        """Forget the walk shown (another conversation was opened, or a new one begun): every step starts
        empty again, at step 1; the text to walk through stays."""
        for i, page in enumerate(self.pages):
            fresh = type(page)()
            self.stack.insertWidget(i, fresh)
            self.stack.removeWidget(page)
            page.deleteLater()
            self.pages[i] = fresh
        self.pages[2].compareRequested.connect(self.compareRequested)
        self.pages[5].generateRequested.connect(self.generateRequested)
        self.explanation = None
        self.status.setText(
            "Write a sentence and press Explain to see, step by step, how the model reads it and picks the next word."
        )
        self.set_busy(False)
        self.go_to(0)
