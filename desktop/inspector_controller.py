"""Ties the inspector panel to the live chat: which tokens to inspect, the worker that inspects them,
and forking a reply at a token the user picked.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Slot

from desktop.chat_session import ChatSession
from desktop.chat_view import ChatView
from desktop.engine_worker import EngineWorker
from desktop.messages import GenerationResult, PassRequest, frozen_map
from desktop.panels.inspector import InspectorPanel
from desktop.panels.sampling import SamplingPanel
from desktop.remote_controller import NEEDS_LOCAL, RemoteModels
from engine.chat_prompt import render_prompt
from engine.inspection.inspect import Inspection
from engine.remote import remote_inspection

MIN_WIDTH = 620  # the dock's width: room for the tokens beside their alternatives


class InspectorController(QObject):
    """``session``: the conversation inspected and forked; ``chat``: its input (counted in tokens) and its
    Inspect buttons; ``reveal(min_width)``: shows the panel's dock at least that wide."""

    def __init__(
        self,
        panel: InspectorPanel,
        *,
        worker: EngineWorker,
        session: ChatSession,
        chat: ChatView,
        remote: RemoteModels,
        sampling: SamplingPanel,
        show_status: Callable[[str, int], None],
        reveal: Callable[[int], None],
    ) -> None:
        super().__init__(panel)
        self.panel, self.worker, self.session, self.chat = panel, worker, session, chat
        self.remote, self.sampling, self.show_status, self.reveal = remote, sampling, show_status, reveal
        self.cid: int | None = None  # the conversation inspected, and the turn it was inspected up to
        self.turn: int | None = None
        self.ids: list[int] = []
        self.reply_start = 0
        self.busy = False
        panel.inspectRequested.connect(self.inspect_last)
        panel.cancelRequested.connect(worker.cancel)
        panel.lensRequested.connect(worker.requestLens)
        panel.forkRequested.connect(self._on_fork)
        panel.inputTokensRequested.connect(self._on_input_tokens)
        chat.inspectRequested.connect(self.inspect_turn)
        chat.inputChanged.connect(self._on_input_changed)
        worker.inspectionProgress.connect(panel.set_progress)
        worker.inspected.connect(self._on_inspected)
        worker.inspectionFailed.connect(self._on_failed)
        worker.lens.connect(panel.show_lens)
        # A bound slot of this UI-thread object, not a lambda: a lambda would run on the worker's thread.
        worker.generationFinished.connect(self._on_generation_finished)

    def inspect_last(self) -> None:
        messages = self.session.messages()
        if messages:
            self.inspect_turn(messages[-1].turn)
        else:
            self.panel.summary.setText("Nothing to inspect yet: send a message first.")

    @Slot(int)
    def inspect_turn(self, turn: int) -> None:
        """Inspect the conversation up to and including ``turn``; forking is possible in its reply."""
        lm = self.worker.model
        if self.remote.active is not None:
            self._inspect_remote(turn)
            return
        if lm is None or self.session.generating or self.busy:
            self.show_status("The inspector needs a loaded model and no reply being written.", 5000)
            return
        history = self.session.history(upto_turn=turn + 1)
        think = self.session.prompts.thinking()  # rendered as the reply's prompt was
        full = lm.encode_prompt(render_prompt(lm, history, think=think, add_generation_prompt=False))
        self.reply_start = len(full)
        if history and history[-1]["role"] == "assistant":
            prompt = lm.encode_prompt(render_prompt(lm, history[:-1], think=think))
            if full[: len(prompt)] == prompt:
                self.reply_start = len(prompt)
        if len(full) > lm.context_length:
            self.show_status(f"{len(full)} tokens are more than the model's context holds.", 5000)
            return
        self.cid, self.turn, self.ids, self.busy = self.session.cid, turn, full, True
        self.reveal(MIN_WIDTH)
        self.panel.set_busy(True)
        self.panel.summary.setText(f"Inspecting {len(full)} tokens…")
        self.worker.inspect(PassRequest(tuple(full), frozen_map(self.sampling.settings())))

    def _inspect_remote(self, turn: int) -> None:
        """A remote model is in use: show the reply at ``turn`` from the logprobs its server sent, if any."""
        self.reveal(0)
        messages = self.session.messages()
        reply = next((m for m in messages if m.turn == turn and m.role == "assistant"), None)
        try:
            if reply is None:
                raise ValueError("pick a reply")
            result = remote_inspection(reply.meta.get("logprobs") or [])
        except ValueError:
            self.panel.summary.setText(
                "A remote model is in use: the inspector shows a reply's tokens when its server sent their "
                f"probabilities (logprobs), and this {'reply' if reply else 'message'} has none. Attention, the "
                f"logit lens and forking {NEEDS_LOCAL} Go back to a local model in the Model panel to inspect "
                "the whole conversation."
            )
            return
        self.reveal(MIN_WIDTH)
        self.cid, self.turn, self.ids, self.reply_start = self.session.cid, turn, [], len(result.ids)
        self.panel.tabs.setCurrentIndex(0)
        self.panel.show_remote(result, reply.meta.get("model") or "the remote model")

    @Slot(object)
    def _on_inspected(self, result: Inspection) -> None:
        self.busy = False
        self.panel.set_busy(False)
        self.panel.show_inspection(result, self.reply_start)
        if self.reply_start < len(result.ids):
            self.panel.select(self.reply_start)

    @Slot(object)
    def _on_generation_finished(self, _result: GenerationResult) -> None:
        self.panel.mark_stale()

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.busy = False
        self.panel.set_busy(False)
        self.panel.summary.setText(message)

    @Slot(int, int)
    def _on_fork(self, position: int, token_id: int) -> None:
        if self.cid != self.session.cid or self.remote.active is not None:
            self.panel.mark_stale()
            return
        if self.turn is None or not self.reply_start <= position < len(self.ids):
            return
        self.session.fork(self.turn, self.ids[self.reply_start : position] + [token_id])

    @Slot(str)
    def _on_input_changed(self, text: str) -> None:
        lm = self.worker.model
        if lm is not None:
            self.panel.set_input_count(len(lm.tokenizer.encode(text, add_bos=False)) if text.strip() else 0)

    @Slot()
    def _on_input_tokens(self) -> None:
        lm = self.worker.model
        if lm is not None:
            ids = lm.tokenizer.encode(self.chat.input.toPlainText(), add_bos=False)
            self.panel.show_input_tokens([lm.tokenizer.piece(i) for i in ids], ids)
