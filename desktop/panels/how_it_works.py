""" "How it works": a guided walk through the model's steps on the user's own text, from tokens to the
sampled next token, each step with a short plain-language caption. The pages are in
`desktop.panels.how_it_works_steps`; the numbers come from `engine.explain` on the engine worker.

HowItWorksPanel signals:
    explainRequested(str text)         -- walk through this text
    generateRequested()                -- append the sampled token and walk again
    compareRequested(str a, str b)     -- the next-token predictions after two word orders
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal, Slot
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

if TYPE_CHECKING:
    from desktop.main_window import MainWindow

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


class HowItWorksController(QObject):
    """Ties the panel to the engine worker: tokenizes on the UI thread (the tokenizer only), computes on
    the worker, keeps the ids being walked through so a generated token is appended, not re-tokenized."""

    def __init__(self, window: MainWindow, panel: HowItWorksPanel) -> None:
        super().__init__(window)
        self.window, self.panel = window, panel
        self.ids: list[int] = []
        self.busy = False
        worker = window.worker
        panel.explainRequested.connect(self.explain_text)
        panel.generateRequested.connect(self.generate_one)
        panel.compareRequested.connect(self._on_compare)
        # Bound slots of this UI-thread object (a lambda would run on the worker's thread).
        worker.explained.connect(self._on_explained)
        worker.explainFailed.connect(self._on_failed)
        worker.wordOrderCompared.connect(self._on_word_order)

    def open(self, text: str | None = None) -> None:
        """Show the view; with ``text``, walk through it."""
        dock = self.window.docks["how_it_works"]
        dock.show()
        dock.raise_()
        if text:
            self.panel.text.setText(text)
            self.explain_text(text)

    def open_from_chat(self) -> None:
        """The message being typed, else the last message of the conversation, else the example."""
        w = self.window
        text = w.chat.input.toPlainText().strip()
        if not text and w.cid is not None:
            messages = w.store.messages(w.cid)
            text = messages[-1].content.strip() if messages else ""
        self.open(text or self.panel.text.text() or EXAMPLE)

    @Slot(str)
    def explain_text(self, text: str) -> None:
        lm = self.window.worker.model
        if lm is None:
            self.panel.show_error("Wait for the model to finish loading.")
            return
        ids = lm.tokenizer.encode(text)
        if not ids:
            self.panel.show_error("There is nothing to walk through: write some text first.")
            return
        self._request(ids[: lm.context_length - 1])

    @Slot()
    def generate_one(self) -> None:
        e = self.panel.explanation
        lm = self.window.worker.model
        if e is None or lm is None or self.busy:
            return
        ids = e.ids + [e.sampled_id]
        self.panel.text.setText(lm.tokenizer.decode(ids, skip_special=True))
        self._request(ids[-(lm.context_length - 1) :])

    def _request(self, ids: list[int]) -> None:
        self.ids, self.busy = ids, True
        self.panel.set_busy(True)
        self.panel.status.setText(f"Running the model over {len(ids)} tokens…")
        self.window.worker.requestExplain.emit(ids, self.window.sampling.settings())

    @Slot(str, str)
    def _on_compare(self, a: str, b: str) -> None:
        if self.window.worker.model is not None and a.strip() and b.strip():
            self.panel.set_busy(True)
            self.window.worker.requestWordOrder.emit(a, b)

    @Slot(object)
    def _on_explained(self, e: Explanation) -> None:
        self.busy = False
        self.panel.show_explanation(e)

    @Slot(object)
    def _on_word_order(self, w: WordOrder) -> None:
        self.panel.show_word_order(w)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.busy = False
        self.panel.show_error(message)
