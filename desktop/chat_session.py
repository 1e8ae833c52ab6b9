"""One conversation's turns: the prompt built and fitted, the reply streamed in, saved, finished or stopped.

`ChatSession` is what the Chat view's buttons and the Chat menu act on. A sent message is saved, the
history is rendered and fitted to the context (`desktop.prompt_fit`), the reply's row is written before the
worker starts, the streaming text is written at most every `SAVE_PARTIAL_SECONDS`, and the finished,
failed or stopped reply is written once with what produced it. Every final write goes through
`save_pending`: when the disk is full the reply stays on screen (`messages` shows it) and is written before
the next change, or when the window closes. A reasoning model's reply notes in its meta whether its prompt
opened its thought (``thought_opened``) and, once the thought closes, how many tokens and seconds it took
(``thought_tokens``, ``thought_seconds``), for the chat's folded thought.

Signals:
    conversationsChanged()  -- a title changed: the list of conversations is shown again
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QMessageBox

from desktop.chat_view import ChatView
from desktop.engine_worker import EngineWorker
from desktop.messages import GenerateRequest, GenerationResult, GenerationStarted, ModelInfo, Token, frozen_map
from desktop.panels.prompts import PromptsPanel
from desktop.panels.sampling import SamplingPanel
from desktop.prompt_fit import Fit, fit_prompt
from desktop.remote_controller import PREVIEW_NEEDS_LOCAL, RemoteFit, RemoteModels
from desktop.saving import Saver
from desktop.store import Message, Store
from engine.text.thinking import CLOSE, prompt_opens_thought, split_thinking

SAVE_PARTIAL_SECONDS = 2.0  # a streaming reply is written to disk at most this often
FINISHED = {  # the engine's finish_reason, for the readout
    "eos": "done",
    "stop": "hit a stop string",
    "length": "reached the reply length",
    "context": "context full",
    "cancelled": "stopped",
}


@dataclass(frozen=True)
class FinalReply:
    """A reply's last write: its row's content, status and provenance."""

    message_id: int
    content: str
    status: str  # "complete", "stopped" or "interrupted"
    meta: dict[str, Any]


@dataclass
class Reply:
    """The reply being written (UI thread only): its row, the text it starts with, what has streamed in."""

    message_id: int
    prefix: str  # a fork's chosen tokens, or the reply being continued
    meta: dict[str, Any]  # provenance: the model (or endpoint), template, sampler settings
    prompt_tokens: int
    text: str = ""
    tokens: int = 0
    context_length: int = 0  # 0: a remote model, whose context is not known here
    started: float = field(default_factory=time.monotonic)
    saved: float = field(default_factory=time.monotonic)

    @property
    def content(self) -> str:
        return self.prefix + self.text

    def final(self, status: str, meta: dict[str, Any] | None = None, text: str | None = None) -> FinalReply:
        body = self.text if text is None else text
        return FinalReply(self.message_id, self.prefix + body, status, self.meta if meta is None else meta)


class ChatSession(QObject):
    conversationsChanged = Signal()

    def __init__(
        self,
        *,
        store: Store,
        worker: EngineWorker,
        chat: ChatView,
        prompts: PromptsPanel,
        sampling: SamplingPanel,
        remote: RemoteModels,
        saving: Saver,
        show_status: Callable[[str, int], None],
        model_info: Callable[[], ModelInfo | None],
        training: Callable[[], bool],
        new_conversation: Callable[[], None],
    ) -> None:
        super().__init__()
        self.store, self.worker, self.chat = store, worker, chat
        self.prompts, self.sampling, self.remote = prompts, sampling, remote
        self.saving, self.show_status = saving, show_status
        self._model_info, self._training, self._new_conversation = model_info, training, new_conversation
        self.cid: int | None = None
        self.reply: Reply | None = None
        self._unsaved: FinalReply | None = None  # a final write the disk had no room for
        self.loading = False  # a model load is under way: prompts tokenized now could be for the wrong model
        self.closed = False  # the store is closed
        worker.generationStarted.connect(self._on_generation_started)
        worker.tokens.connect(self._on_tokens)
        worker.generationFinished.connect(self._on_generation_finished)
        worker.generationFailed.connect(self._on_generation_failed)
        chat.sendRequested.connect(self.send)
        chat.stopRequested.connect(self.stop)
        chat.regenerateRequested.connect(self.regenerate)
        chat.continueRequested.connect(self.continue_reply)
        chat.editRequested.connect(self.edit_and_resend)
        chat.deleteRequested.connect(self.delete_turn)
        chat.variantRequested.connect(self.select_variant)

    @property
    def generating(self) -> bool:
        return self.reply is not None

    # The messages and the prompt

    def messages(self) -> list[Message]:
        """The conversation's messages as saved, with a finished reply the disk had no room for."""
        messages = self.store.messages(self.cid) if self.cid is not None else []
        u = self._unsaved
        if u is None:
            return messages
        return [
            replace(m, content=u.content, status=u.status, meta=u.meta) if m.id == u.message_id else m for m in messages
        ]

    def show_messages(self) -> None:
        self.chat.set_messages(self.messages())
        self.refresh_preview()

    def history(self, upto_turn: int | None = None) -> list[dict[str, str]]:
        messages = self.messages()
        if upto_turn is not None:
            messages = [m for m in messages if m.turn < upto_turn]
        system = self.prompts.system_prompt().strip()
        head = [{"role": "system", "content": system}] if system else []
        return head + [{"role": m.role, "content": m.content} for m in messages]

    def fit(self, messages: list[dict[str, str]]) -> Fit:
        model, reserve = self.worker.model, self.chat.max_tokens.value()
        return fit_prompt(model, messages, reserve, self.chat.policy_key(), self.prompts.thinking())

    def refresh_preview(self) -> None:
        if self.remote.active is not None:
            if self.reply is None and not self.closed:
                self.prompts.show_unavailable(PREVIEW_NEEDS_LOCAL)
                self.chat.set_context_note("")
            return
        lm = self.worker.model
        if lm is None or self.reply is not None or self.closed:  # closed: a late typing timer
            return
        messages = self.history()
        pending = self.chat.input.toPlainText().strip()
        if pending:
            messages.append({"role": "user", "content": pending})
        fit = self.fit(messages)
        self.prompts.show_preview(fit.text, len(fit.ids), lm.context_length)
        self.chat.set_context_note(fit.note)

    def _ready(self, messages: list[dict[str, str]]) -> Fit | None:
        """``messages`` rendered and fitted to the context, or None (the user is told why) when they cannot
        be sent. Checked before anything is saved or deleted, so a refusal changes nothing."""
        if self.remote.active is not None:  # sent as is: the server applies its template and limits
            return RemoteFit("", [], 0, False, "", messages=tuple(messages))
        if self.worker.model is None or self.loading:
            QMessageBox.information(self.chat, "No model", "Wait for the model to finish loading.")
            return None
        if self._training():  # the run holds the model: a reply would wait for the whole run
            QMessageBox.information(
                self.chat, "Training", "The model is being fine-tuned: stop the run or wait for it."
            )
            return None
        fit = self.fit(messages)
        if fit.refused:
            QMessageBox.warning(self.chat, "Cannot send", fit.note)
            return None
        return fit

    def _provenance(self, settings: dict) -> dict:
        if self.remote.active is not None:  # the endpoint and model id; never the key
            active = self.remote.active
            return {"model": active["model"], "endpoint": active["base_url"], "settings": settings}
        info = self._model_info()
        return {
            "model": info and info.path,
            "model_fingerprint": info and info.fingerprint,
            "template": info and info.template,
            "settings": settings,
        }

    # Starting a reply

    def _start(
        self, fit: Fit, turn: int | None, prefix_ids: list[int] | None = None, extend_last: bool = False
    ) -> None:
        """Generate a reply to the fitted prompt: a new turn, or a new variant of ``turn``. With ``prefix_ids``
        the reply starts with those tokens (a fork from the inspector); with ``extend_last`` it continues the
        last reply, whose text they are. Nothing starts when the reply's row cannot be written."""
        max_tokens = self.chat.max_tokens.value()
        prefix_ids = prefix_ids or []
        prefix = self.worker.model.tokenizer.decode(prefix_ids, skip_special=True) if prefix_ids else ""
        ids = fit.ids + prefix_ids
        settings = self.sampling.settings()
        meta = self._provenance(settings)
        if prompt_opens_thought(fit.text):
            meta["thought_opened"] = True
        with self.saving("the reply") as saved:
            if extend_last:
                message_id = self.store.messages(self.cid)[-1].id
                self.store.update_message(message_id, status="interrupted")  # until it is complete again
            else:
                message_id = self.store.add_message(
                    self.cid, "assistant", prefix, status="interrupted", meta=meta, turn=turn
                )
        if not saved.ok:
            self.show_messages()
            return
        self.reply = Reply(message_id, prefix, meta, prompt_tokens=len(ids))
        if extend_last or turn is not None:
            self.show_messages()
            self.chat.drop_last()
        # The shown message's meta is the reply's own: it learns the thought's length as the reply streams.
        self.chat.begin_stream(replace(self.store.messages(self.cid)[-1], meta=meta))
        self.chat.set_busy(True)
        if isinstance(fit, RemoteFit):
            self.worker.generate_remote(self.remote.request(fit.messages, settings, max_tokens))
        else:
            self.worker.generate(GenerateRequest(tuple(ids), frozen_map(settings), max_tokens))

    @Slot(str)
    def send(self, text: str) -> None:
        if self.reply:
            return
        fit = self._ready(self.history() + [{"role": "user", "content": text}])
        if fit is None or not self.save_pending():
            self.chat.input.setPlainText(text)  # nothing was sent: give the text back
            return
        if self.cid is None:
            self._new_conversation()
            if self.cid is None:  # the disk had no room for it
                self.chat.input.setPlainText(text)
                return
        with self.saving("your message") as saved:
            if self.store.conversation(self.cid).title == "New chat":
                self.store.update_conversation(self.cid, title=text.splitlines()[0][:48])
            self.store.add_message(self.cid, "user", text)
        if not saved.ok:
            self.chat.input.setPlainText(text)  # given back, to send again once there is room
            self.conversationsChanged.emit()
            return
        self.show_messages()
        self.conversationsChanged.emit()
        self._start(fit, None)

    @Slot(int)
    def regenerate(self, turn: int) -> None:
        self._new_version(turn, "Regenerate reply", "Writing another version of this reply")

    def fork(self, turn: int, prefix_ids: list[int]) -> None:
        """A new version of the reply at ``turn`` that starts with ``prefix_ids`` (the reply's tokens up to
        a point, then the one the user picked in the inspector) and continues from there."""
        self._new_version(turn, "Fork reply", "Forking this reply", prefix_ids)

    def _new_version(self, turn: int, title: str, doing: str, prefix_ids: list[int] | None = None) -> None:
        """Write a new version of the reply at ``turn``, after asking before deleting the messages after it."""
        if self.reply or not self.save_pending():
            return
        later = sum(m.turn > turn for m in self.store.messages(self.cid))
        if later and (
            QMessageBox.question(
                self.chat, title, f"{doing} deletes the {later} message{'s' if later != 1 else ''} after it. Go on?"
            )
            != QMessageBox.StandardButton.Yes
        ):
            return
        fit = self._ready(self.history(upto_turn=turn))
        if fit is None:
            return
        with self.saving("the change") as saved:
            self.store.truncate(self.cid, turn + 1)
        if saved.ok:
            self._start(fit, turn, prefix_ids=prefix_ids)

    def regenerate_last(self) -> None:
        messages = self.store.messages(self.cid) if self.cid is not None else []
        if messages and messages[-1].role == "assistant":
            self.regenerate(messages[-1].turn)

    @Slot(int)
    def continue_reply(self, turn: int) -> None:
        if self.reply or not self.save_pending():
            return
        messages = self.store.messages(self.cid)
        if not messages or messages[-1].turn != turn:
            self.show_status("Only the last reply can be continued.", 5000)
            return
        if self.remote.active is not None:
            self.show_status(
                "Continuing a reply needs a local model: the chat API cannot resume an assistant message.", 8000
            )
            return
        fit = self._ready(self.history(upto_turn=turn))
        if fit is not None:
            content = self.worker.model.tokenizer.encode(messages[-1].content, add_bos=False)
            self._start(fit, turn, prefix_ids=content, extend_last=True)

    @Slot(int, str)
    def edit_and_resend(self, turn: int, text: str) -> None:
        if self.reply:
            return
        fit = self._ready(self.history(upto_turn=turn) + [{"role": "user", "content": text}])
        if fit is None or not self.save_pending():
            return
        with self.saving("your edited message") as saved:
            self.store.truncate(self.cid, turn)
            self.store.add_message(self.cid, "user", text)
        self.show_messages()
        if saved.ok:
            self._start(fit, None)
        else:
            self.chat.input.setPlainText(text)  # the edit is not lost: send it once there is room

    @Slot(int)
    def delete_turn(self, turn: int) -> None:
        if self.reply or not self.save_pending():
            return
        with self.saving("the deletion"):
            self.store.delete_turn(self.cid, turn)
        self.show_messages()

    @Slot(int, int)
    def select_variant(self, turn: int, variant: int) -> None:
        if self.reply or not self.save_pending():
            return
        with self.saving("the choice of version"):
            self.store.select_variant(self.cid, turn, variant)
        self.show_messages()

    @Slot()
    def stop(self) -> None:
        if self.reply:
            self.worker.cancel()

    # The reply streaming in

    @Slot(object)
    def _on_generation_started(self, started: GenerationStarted) -> None:
        if self.reply is not None:
            self.reply.context_length = started.context_length

    @Slot(object)
    def _on_tokens(self, batch: tuple[Token, ...]) -> None:
        r = self.reply
        if r is None:
            return
        start = len(r.text)
        r.text += "".join(t.text for t in batch)
        r.tokens += len(batch)
        self._time_thought(r, batch, start)
        self.chat.stream_text(r.content)
        elapsed = max(time.monotonic() - r.started, 1e-6)
        used = r.prompt_tokens + r.tokens
        where = f"context {used:,}/{r.context_length:,}" if r.context_length else "remote"
        self.chat.set_readout(f"{r.tokens / elapsed:.1f} tokens/s · {where}")
        if time.monotonic() - r.saved > SAVE_PARTIAL_SECONDS:
            # The reply goes on when the disk is full; the status bar says so, the final save tries again.
            with self.saving("the reply so far", dialog=False):
                self.store.update_message(r.message_id, content=r.content)
            r.saved = time.monotonic()

    @staticmethod
    def _time_thought(r: Reply, batch: tuple[Token, ...], start: int) -> None:
        """When the reply's thought closes in ``batch`` (its text from ``start`` in ``r.text``): the tokens
        up to the closing tag and the seconds since the reply started, in its meta."""
        if "thought_tokens" in r.meta:
            return
        close = r.text.find(CLOSE, max(0, start - len(CLOSE) + 1))
        if close < 0 or split_thinking(r.content, opened=r.meta.get("thought_opened", False)).thought is None:
            return
        size, tokens = start, r.tokens - len(batch)
        for token in batch:
            size, tokens = size + len(token.text), tokens + 1
            if size >= close + len(CLOSE):
                break
        r.meta["thought_tokens"] = tokens
        r.meta["thought_seconds"] = round(time.monotonic() - r.started, 1)

    @Slot(object)
    def _on_generation_finished(self, result: GenerationResult) -> None:
        r = self.reply
        if r is None:
            return
        status = "stopped" if result.finish_reason == "cancelled" else "complete"
        meta = {
            **r.meta,
            "seed": result.seed,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "cached_tokens": result.cached_tokens,
            "generated_tokens": result.generated_tokens,
            "decode_tps": round(result.decode_tps, 2),
        }
        if result.logprobs:  # a remote reply's per-token logprobs, for the inspector
            meta["logprobs"] = list(result.logprobs)
        self._finish(r.final(status, meta, result.text))
        reused = f" · {result.cached_tokens:,} prompt tokens reused" if result.cached_tokens else ""
        self.chat.set_readout(
            f"{result.generated_tokens} tokens · {result.decode_tps:.1f} tokens/s · "
            + FINISHED.get(result.finish_reason, result.finish_reason)
            + reused
        )

    @Slot(str)
    def _on_generation_failed(self, message: str) -> None:
        if self.reply is not None:
            self._finish(self.reply.final("interrupted"))
        QMessageBox.warning(self.chat, "Generation failed", message)

    def _finish(self, final: FinalReply) -> None:
        self._unsaved = final
        self.save_pending()  # when the disk is full, kept on screen and saved before the next write
        self.reply = None
        self.chat.set_busy(False)
        self.show_messages()

    # The one save path of a finished reply

    def save_pending(self, *, dialog: bool = True) -> bool:
        """Write a finished reply that could not be saved before; False while it still cannot be."""
        u = self._unsaved
        if u is None:
            return True
        with self.saving("the last reply", dialog=dialog) as saved:
            self.store.update_message(u.message_id, content=u.content, status=u.status, meta=u.meta)
        if saved.ok:
            self._unsaved = None
        return saved.ok

    def close(self) -> None:
        """The window closes (the worker has stopped and its last signals were handled): the reply being
        written is saved as stopped, and a finished one still unsaved is tried once more, without a dialog."""
        if self.reply is not None:
            self._unsaved = self.reply.final("stopped")
            self.reply = None
        self.save_pending(dialog=False)
        self.closed = True
