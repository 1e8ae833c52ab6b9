""" "How it works": a guided walk through the model's steps on the user's own text, from tokens to the
sampled next token, each step with a short plain-language caption. The pages are in
`desktop.panels.how_it_works_steps`; the numbers come from `engine.inspection.explain` on the engine worker.

The panel fits its dock at any width: the text box and the step buttons wrap, and each step stacks its
parts when narrow.

HowItWorksPanel signals:
    explainRequested(str text)         -- walk through this text
    generateRequested()                -- append the sampled token and walk again
    compareRequested(str a, str b)     -- the next-token predictions after two word orders
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QKeyEvent, QResizeEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from desktop import wheel_guard
from desktop.panels.how_it_works_steps import (
    AttentionStep,
    EmbeddingsStep,
    FlowBox,
    LayersStep,
    NextTokenStep,
    PositionsStep,
    Step,
    TokensStep,
)
from engine.inspection.explain import Explanation, WordOrder

EXAMPLE = "The cat chased the mouse because it was"


class WalkText(QPlainTextEdit):
    """The text to walk through, wrapped and as tall as its lines, so all of it shows (up to `MAX_LINES`,
    then it scrolls); Enter walks, Shift+Enter starts a new line.

    Signals:
        returnPressed()
    """

    returnPressed = Signal()
    MAX_LINES = 10

    def __init__(self, text: str) -> None:
        super().__init__(text, accessibleName="Text to walk through", tabChangesFocus=True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # it wraps
        self.textChanged.connect(self._fit_height)
        self.document().documentLayout().documentSizeChanged.connect(self._fit_height)  # rewrapped
        self._fit_height()

    @Slot()
    def _fit_height(self, *_args) -> None:
        """As many lines as the text takes (`MAX_LINES` at most): the larger of the document's own count
        and an estimate from the font that leaves room for a scroll bar (before the first layout)."""
        margin = round(self.document().documentMargin())
        width = max(1, self.viewport().width() - 2 * margin - self.verticalScrollBar().sizeHint().width())
        metrics = self.fontMetrics()
        estimate = metrics.boundingRect(0, 0, width, 10**6, Qt.TextFlag.TextWordWrap, self.text()).height()
        lines = max(round(estimate / metrics.lineSpacing()), round(self.document().size().height()))
        lines = max(2, min(self.MAX_LINES, lines))
        margins = 2 * (self.frameWidth() + margin) + metrics.lineSpacing()  # a spare line: no scroll bar
        self.setFixedHeight(lines * metrics.lineSpacing() + margins)

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():  # rewrapped
            self._fit_height()

    def text(self) -> str:
        return self.toPlainText()

    def setText(self, text: str) -> None:  # noqa: N802 (the QLineEdit name the controller uses)
        self.setPlainText(text)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt override)
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.returnPressed.emit()
            return
        super().keyPressEvent(event)


class HowItWorksPanel(QWidget):
    explainRequested = Signal(str)
    generateRequested = Signal()
    compareRequested = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.explanation: Explanation | None = None
        self.text = WalkText(EXAMPLE)
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
        top.addWidget(self.explain_button, 0, Qt.AlignmentFlag.AlignTop)

        self.pages: list[Step] = [TokensStep(), EmbeddingsStep(), PositionsStep(), AttentionStep(), LayersStep()]
        self.pages.append(NextTokenStep())
        self.stack = QStackedWidget()
        self.step_buttons = QButtonGroup(self)
        steps_row = FlowBox(gap=2)
        for i, page in enumerate(self.pages):
            self.stack.addWidget(page)
            b = QPushButton(f"{i + 1} {page.title}", checkable=True, accessibleName=f"Step {i + 1}: {page.title}")
            b.setStyleSheet("QPushButton:checked { background: #d9622b; color: #ffffff; }")
            self.step_buttons.addButton(b, i)
            steps_row.add(b)
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
        layout.addWidget(steps_row)
        body = QWidget()
        bl = QVBoxLayout(body)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(self.caption)
        bl.addWidget(self.stack, 1)
        scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the steps wrap instead
        scroll.setWidget(body)  # a caption and step taller than the dock scroll
        layout.addWidget(scroll, 1)
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

    def show_explanation(self, e: Explanation, note: str = "") -> None:
        """``note``: said first (what was walked, when it is not all that was asked for)."""
        self.explanation = e
        for page in self.pages:
            page.show_explanation(e)
        self.set_busy(False)
        self.status.setText(
            (f"{note} " if note else "")
            + f"The walk for <b>{len(e.ids)}</b> tokens. Go through the steps in order with Next, or jump to one."
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
        empty again, at step 1; the text to walk through stays. The steps are rebuilt only when a walk is
        shown: that takes a tenth of a second, and a first message starts a conversation."""
        if self.explanation is not None:
            for i, page in enumerate(self.pages):
                fresh = type(page)()
                wheel_guard.guard(fresh)
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
