"""One thread owns the model: requests queue behind each other and run one at a time.

The model's KV cache is rebuilt from position 0 by every `Generation`, so running generations one
after another never mixes two requests' caches; running two at once would.  So the HTTP side never
touches the model: it submits a `Job` to the `ModelWorker`'s bounded queue (refused at once with 429
when full) and reads the job's events from an asyncio queue that the worker fills through
``loop.call_soon_threadsafe``.  A job whose client went away is cancelled between tokens.  The desktop
app may serve the model it chats with, so each job also holds the model's lock while it generates
(`engine.model_lock.hold`): requests queue behind the app's replies and inspections, and they behind them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import EmberError
from engine.generate import Generation
from engine.loader import LoadedModel
from engine.model_lock import hold
from engine.server.protocol import APIError, CompletionRequest, Outcome, bad_request

log = logging.getLogger(__name__)

# What a job reports, in order: ("tokens", [(TokenEvent, piece), ...]) any number of times, then
# ("done", Outcome) or ("error", APIError).
Event = tuple[str, Any]


@dataclass
class Job:
    request: CompletionRequest
    emit: Callable[[Event], None]
    cancel: threading.Event = field(default_factory=threading.Event)


class Busy(Exception):
    """The queue is full."""


class ModelWorker:
    """Runs `Job`s on one thread.  ``max_queue`` jobs may wait behind the running one."""

    def __init__(self, lm: LoadedModel, *, max_queue: int = 16) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.lm = lm
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue + 1)
        self._slots = threading.BoundedSemaphore(max_queue + 1)  # waiting + running
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._run, name="ember-server-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job or raise `Busy` at once."""
        if not self._slots.acquire(blocking=False):
            raise Busy
        self._jobs.put_nowait(job)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the running job, drop waiting ones and stop the thread."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel.set()
                job.emit(("error", APIError(503, "the server is shutting down", type="server_error")))
        running = self._running
        if running is not None:
            running.cancel.set()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._running = job
            try:
                if not job.cancel.is_set():
                    self._serve(job)
            except APIError as e:
                job.emit(("error", e))
            except (EmberError, ValueError) as e:
                job.emit(("error", bad_request(str(e))))
            except Exception as e:  # a bug: report it to the client and keep serving
                log.exception("generation failed")
                job.emit(("error", APIError(500, f"generation failed: {e}", type="server_error")))
            finally:
                self._running = None
                self._slots.release()

    def _prompt_ids(self, req: CompletionRequest) -> list[int]:
        lm = self.lm
        text = lm.render_chat(req.messages) if req.chat else req.prompt
        ids = lm.encode_prompt(text)
        if not ids:
            raise bad_request("the prompt is empty")
        if len(ids) >= lm.context_length:
            raise bad_request(
                f"the prompt has {len(ids)} tokens; this model's context holds {lm.context_length}",
                "messages" if req.chat else "prompt",
                "context_length_exceeded",
            )
        return ids

    def _serve(self, job: Job) -> None:
        req, lm = job.request, self.lm
        ids = self._prompt_ids(req)
        room = lm.context_length - len(ids)
        gen = Generation(
            lm.model,
            lm.tokenizer,
            ids,
            req.settings,
            max_tokens=min(req.max_tokens or room, room),
            stop_strings=req.stop,
            should_stop=job.cancel,
            top_n=max(req.top_logprobs or 0, 1),
            context_length=lm.context_length,
        )
        piece = lm.tokenizer.piece
        with hold(lm, job.cancel) as held:  # the desktop app may be using the same model: take turns
            if not held:
                raise APIError(503, "the request was cancelled while it waited for the model", type="server_error")
            for event in gen:
                job.emit(("tokens", [(event, piece(event.id))]))
        job.emit(("done", Outcome(gen.finish_reason or "stop", len(ids), gen.stats.generated_tokens, gen.seed)))


class JobStream:
    """The asyncio end of a job: `emit` may be called from any thread; `get` awaits the next event."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening
            pass

    async def get(self) -> Event:
        return await self._queue.get()
