"""The compare view of a fine-tuning run: the same prompt to the base and the tuned model, their replies
side by side, and the per-token log-probability difference between them on the tuned reply or on any
text the user pastes.

`CompareDialog` is widgets only (non-modal; the fine-tune controller opens one per run and wires it to
`desktop.finetune_worker.FinetuneWorker`, which does the work on its thread). Replies are greedy, so a
difference between them comes from the weights, not from sampling.

Signals:
    compareRequested(str prompt, int max_tokens, bool chat)
    scoreRequested(str text)
    stopRequested()
"""

from __future__ import annotations

import html
import math

from PySide6.QtCore import QUrl, Signal, Slot
from PySide6.QtGui import QColor, QCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTextBrowser,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from desktop.messages import Compared, Scored, ScoredToken
from desktop.panels.token_display import visible

SCALE = 3.0  # a difference of this many nats (or more) gets the strongest colour


def diff_color(diff: float) -> str:
    """Green where the tuned model found the token likelier than the base, red where less likely, pale
    near zero."""
    strength = min(1.0, abs(diff) / SCALE)
    hue = 120 if diff >= 0 else 0
    return QColor.fromHsv(hue, int(30 + 170 * strength), 240).name()


def diff_html(tokens: tuple[ScoredToken, ...]) -> str:
    parts = []
    for i, t in enumerate(tokens):
        text = html.escape(visible(t.text))
        parts.append(
            f'<a href="tok:{i}" style="text-decoration:none;color:#111;background-color:{diff_color(t.diff)}">'
            f"{text}</a>"
        )
    return " ".join(parts)


def token_details(t: ScoredToken) -> str:
    return (
        f"“{visible(t.text)}” (id {t.id}): base {t.base:.2f}, tuned {t.tuned:.2f}, "
        f"difference {t.diff:+.2f} nats (×{math.exp(t.diff):.3g} as likely)"
    )


class CompareDialog(QDialog):
    compareRequested = Signal(str, int, bool)
    scoreRequested = Signal(str)
    stopRequested = Signal()

    def __init__(self, run_name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Compare base and tuned: {run_name}")
        self.setModal(False)
        self.resize(900, 640)
        self.tokens: tuple[ScoredToken, ...] = ()
        layout = QVBoxLayout(self)

        self.prompt = QPlainTextEdit(accessibleName="Prompt for both models")
        self.prompt.setPlaceholderText("A prompt to send to both models…")
        self.prompt.setMaximumHeight(80)
        layout.addWidget(self.prompt)
        row = QHBoxLayout()
        self.chat = QCheckBox("As a chat message", checked=True, accessibleName="Use the chat template")
        self.max_tokens = QSpinBox(minimum=1, maximum=2048, value=96, accessibleName="Reply length in tokens")
        self.max_tokens.setPrefix("up to ")
        self.max_tokens.setSuffix(" tokens")
        self.compare = QPushButton("Compare", accessibleName="Send the prompt to both models")
        self.stop = QPushButton("Stop", accessibleName="Stop comparing", enabled=False)
        row.addWidget(self.chat)
        row.addWidget(self.max_tokens)
        row.addStretch(1)
        row.addWidget(self.compare)
        row.addWidget(self.stop)
        layout.addLayout(row)

        replies = QSplitter()
        self.base_reply = QPlainTextEdit(readOnly=True, accessibleName="Reply of the base model")
        self.tuned_reply = QPlainTextEdit(readOnly=True, accessibleName="Reply of the tuned model")
        for title, edit in (("Base model", self.base_reply), (f"Tuned ({run_name})", self.tuned_reply)):
            box = QWidget()
            box_layout = QVBoxLayout(box)
            box_layout.setContentsMargins(0, 0, 0, 0)
            box_layout.addWidget(QLabel(f"<b>{html.escape(title)}</b>"))
            box_layout.addWidget(edit)
            replies.addWidget(box)
        layout.addWidget(replies, 3)

        layout.addWidget(
            QLabel(
                "<b>Log-probability difference, tuned − base</b> (green: the tuned model finds "
                "the token likelier; red: less likely; hover a token for the numbers)"
            )
        )
        row = QHBoxLayout()
        self.score_text = QPlainTextEdit(accessibleName="Text to score under both models")
        self.score_text.setPlaceholderText("Or paste any text and press Score…")
        self.score_text.setMaximumHeight(60)
        self.score = QPushButton("Score", accessibleName="Score the text under both models")
        row.addWidget(self.score_text, 1)
        row.addWidget(self.score)
        layout.addLayout(row)
        self.diff_view = QTextBrowser(accessibleName="Per-token log-probability difference")
        self.diff_view.setOpenLinks(False)
        layout.addWidget(self.diff_view, 2)
        self.details = QLabel("")
        self.details.setWordWrap(True)
        layout.addWidget(self.details)
        self.status = QLabel("Greedy replies, so a difference comes from the weights, not from sampling.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        self.compare.clicked.connect(self._on_compare)
        self.stop.clicked.connect(self.stopRequested)
        self.score.clicked.connect(self._on_score)
        self.diff_view.highlighted.connect(self._on_token_hovered)

    # Requests

    @Slot()
    def _on_compare(self) -> None:
        prompt = self.prompt.toPlainText().strip()
        if not prompt:
            self.status.setText("Write a prompt first.")
            return
        self.base_reply.clear()
        self.tuned_reply.clear()
        self.set_busy(True, "Writing the base model's reply, then the tuned model's…")
        self.compareRequested.emit(prompt, self.max_tokens.value(), self.chat.isChecked())

    @Slot()
    def _on_score(self) -> None:
        text = self.score_text.toPlainText()
        if not text.strip():
            self.status.setText("Paste some text to score first.")
            return
        self.set_busy(True, "Scoring the text under both models…")
        self.scoreRequested.emit(text)

    # Results

    def set_busy(self, busy: bool, message: str = "") -> None:
        self.compare.setEnabled(not busy)
        self.score.setEnabled(not busy)
        self.stop.setEnabled(busy)
        if message:
            self.status.setText(message)

    def append(self, side: str, text: str) -> None:
        edit = self.base_reply if side == "base" else self.tuned_reply
        edit.moveCursor(edit.textCursor().MoveOperation.End)
        edit.insertPlainText(text)

    def show_done(self, result: Compared) -> None:
        self.set_busy(False, "Stopped." if result.cancelled else "Done: the tuned reply's tokens are scored below.")
        self.base_reply.setPlainText(result.base)
        self.tuned_reply.setPlainText(result.tuned)
        if result.scored:
            self.show_scored(result.scored, "the tuned reply")

    def show_scored(self, scored: Scored, what: str = "the text") -> None:
        self.set_busy(False)
        self.tokens = scored.tokens
        self.diff_view.setHtml(diff_html(self.tokens))
        if self.tokens:
            self.details.setText(
                f"{len(self.tokens)} tokens of {what}; mean difference {scored.mean_diff:+.3f} nats a token "
                f"(perplexity ×{math.exp(-scored.mean_diff):.3g} under the tuned model)."
            )

    def show_error(self, message: str) -> None:
        self.set_busy(False, f"Could not compare: {message}")

    @Slot(QUrl)
    def _on_token_hovered(self, url: QUrl) -> None:
        index = int(url.toString().partition(":")[2] or -1) if url.toString() else -1
        if not 0 <= index < len(self.tokens):
            QToolTip.hideText()
            return
        text = token_details(self.tokens[index])
        self.details.setText(text)
        QToolTip.showText(QCursor.pos(), html.escape(text), self.diff_view)
