"""Ties the "How it works" panel (`desktop.panels.how_it_works`) to the engine worker and the chat."""

from __future__ import annotations

import re
from collections.abc import Callable

from PySide6.QtCore import QObject, Slot

from desktop.chat_session import ChatSession
from desktop.chat_view import ChatView
from desktop.engine_worker import EngineWorker
from desktop.messages import PassRequest, frozen_map
from desktop.panels.how_it_works import EXAMPLE, HowItWorksPanel
from desktop.panels.sampling import SamplingPanel
from engine.inspection.explain import Explanation, WordOrder
from engine.text.tokenizer import Tokenizer

WALK_TOKENS = 48  # a message from the chat is walked through its last sentences up to this many tokens
SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n+")


def tail_to_walk(tokenizer: Tokenizer, text: str, limit: int = WALK_TOKENS) -> str:
    """The end of ``text`` that the walk can show whole: as many of its last sentences as fit in
    ``limit`` tokens, else the last words of its last sentence. The walk reads best on a sentence; a
    reply of a hundred tokens would fill every step."""
    text = text.strip()
    if len(tokenizer.encode(text)) <= limit:
        return text
    starts = [0] + [m.end() for m in SENTENCE_END.finditer(text)]
    for start in starts:  # the longest tail of whole sentences that fits
        tail = text[start:].strip()
        if tail and len(tokenizer.encode(tail)) <= limit:
            return tail
    words = text[starts[-1] :].split(" ")
    for cut in range(len(words)):  # the last sentence alone is too long: its last words
        tail = " ".join(words[cut:]).strip()
        if tail and len(tokenizer.encode(tail)) <= limit:
            return tail
    return text[-limit:]  # one word longer than the limit: its last characters


class HowItWorksController(QObject):
    """Ties the panel to the engine worker: tokenizes on the UI thread (the tokenizer only), computes on
    the worker, keeps the ids being walked through so a generated token is appended, not re-tokenized."""

    def __init__(
        self,
        panel: HowItWorksPanel,
        *,
        worker: EngineWorker,
        session: ChatSession,
        chat: ChatView,
        sampling: SamplingPanel,
        reveal: Callable[[], None],
    ) -> None:
        """``chat``'s message being typed, else the last message of ``session``'s conversation, is what the
        Chat menu walks through; ``reveal()`` shows the panel's dock."""
        super().__init__(panel)
        self.panel, self.worker, self.session, self.chat = panel, worker, session, chat
        self.sampling, self.reveal = sampling, reveal
        self.ids: list[int] = []
        self.busy = False
        self.note = ""  # said with the next walk (that a message was cut to its end)
        panel.explainRequested.connect(self.explain_text)
        panel.generateRequested.connect(self.generate_one)
        panel.compareRequested.connect(self._on_compare)
        # Bound slots of this UI-thread object (a lambda would run on the worker's thread).
        worker.explained.connect(self._on_explained)
        worker.explainFailed.connect(self._on_failed)
        worker.wordOrderCompared.connect(self._on_word_order)

    def open(self, text: str | None = None) -> None:
        """Show the view; with ``text``, walk through it."""
        self.reveal()
        if text:
            self.panel.text.setText(text)
            self.explain_text(text)

    def open_from_chat(self) -> None:
        """The message being typed, else the last message of the conversation, else the example; of a long
        message only the end (`tail_to_walk`), which the text box then holds: the walk shows what it walks."""
        text = self.chat.input.toPlainText().strip()
        if not text:
            messages = self.session.messages()
            text = messages[-1].content.strip() if messages else ""
        lm = self.worker.model
        if text and lm is not None:
            tail = tail_to_walk(lm.tokenizer, text)
            self.note = "" if tail == text else "The message is long: this walks through its end only."
            text = tail
        self.open(text or self.panel.text.text() or EXAMPLE)

    @Slot(str)
    def explain_text(self, text: str) -> None:
        lm = self.worker.model
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
        lm = self.worker.model
        if e is None or lm is None or self.busy:
            return
        ids = e.ids + [e.sampled_id]
        self.panel.text.setText(lm.tokenizer.decode(ids, skip_special=True))
        self._request(ids[-(lm.context_length - 1) :])

    def _request(self, ids: list[int]) -> None:
        self.ids, self.busy = ids, True
        self.panel.set_busy(True)
        self.panel.status.setText(f"Running the model over {len(ids)} tokens…")
        self.worker.requestExplain.emit(PassRequest(tuple(ids), frozen_map(self.sampling.settings())))

    @Slot(str, str)
    def _on_compare(self, a: str, b: str) -> None:
        if self.worker.model is not None and a.strip() and b.strip():
            self.panel.set_busy(True)
            self.worker.requestWordOrder.emit(a, b)

    @Slot(object)
    def _on_explained(self, e: Explanation) -> None:
        self.busy = False
        self.panel.show_explanation(e, self.note)
        self.note = ""

    @Slot(object)
    def _on_word_order(self, w: WordOrder) -> None:
        self.panel.show_word_order(w)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.busy, self.note = False, ""
        self.panel.show_error(message)
