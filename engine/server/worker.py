"""One thread owns the model: requests queue behind each other and run one at a time.

The model's KV cache is rebuilt from position 0 by every `Generation`, so running generations one
after another never mixes two requests' caches; running two at once would.  So the HTTP side never
touches the model: it submits a `Job` to the `ModelWorker`'s bounded queue (refused at once with 429
when full) and reads the job's events from its `JobStream`, an asyncio queue that the worker fills through
``loop.call_soon_threadsafe``.  A job whose client went away is cancelled between tokens.  The desktop
app may serve the model it chats with, so each job also holds the model's lock while it generates
(`engine.model_lock.hold`): requests queue behind the app's replies and inspections, and they behind them.

Slow readers: at most ``STREAM_BUFFER`` token events wait in a job's stream for its client; past that the
worker pauses the generation until the client takes some.  A client that takes nothing for
``stall_timeout`` seconds has its generation cancelled (and its stream ends with a 408 error), so a client
that stops reading holds the model for that long at most, and its buffered reply never grows past the limit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
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

STREAM_BUFFER = 64  # token events a job may have waiting for its client before the generation pauses
STALL_TIMEOUT = 30.0  # seconds a paused generation waits for its client to take an event before it is cancelled
POLL_SECONDS = 0.05  # how often a paused generation looks at its cancel flag


class JobStream:
    """The asyncio end of a job.  The worker thread calls `emit` (never blocks: the last event) and
    `emit_tokens` (blocks while ``limit`` token events wait unread); `get` awaits the next event on the
    event loop and makes room for another."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = STREAM_BUFFER) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._room = threading.Semaphore(limit)
        self.limit = limit

    def emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening
            pass

    def emit_tokens(self, tokens: list, cancel: threading.Event, timeout: float) -> bool:
        """Queue a ("tokens", ...) event once there is room; False (nothing queued) when ``cancel`` is set
        first or no room came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._room.acquire(timeout=POLL_SECONDS):
            if cancel.is_set() or time.monotonic() > deadline:
                return False
        self.emit(("tokens", tokens))
        return True

    @property
    def waiting(self) -> int:
        """Events queued and not yet taken (read on the event loop's thread)."""
        return self._queue.qsize()

    async def get(self) -> Event:
        event = await self._queue.get()
        if event[0] == "tokens":
            self._room.release()
        return event


@dataclass
class Job:
    request: CompletionRequest
    stream: JobStream
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: Event) -> None:
        self.stream.emit(event)


@dataclass(frozen=True)
class WorkerStats:
    """A snapshot of what the worker has done: for tests and for anyone watching a running server."""

    running: bool  # a job holds the worker now
    waiting: int  # jobs queued behind it
    finished: int  # jobs that ran to an end (done, error or cancelled)
    cancelled: int  # jobs stopped, or never started, because the client went away (or the server is closing)
    stalled: int  # generations stopped because the client took nothing for stall_timeout seconds


class Busy(Exception):
    """The queue is full."""


class ModelWorker:
    """Runs `Job`s on one thread.  ``max_queue`` jobs may wait behind the running one; a generation
    whose client takes nothing for ``stall_timeout`` seconds is cancelled."""

    def __init__(self, lm: LoadedModel, *, max_queue: int = 16, stall_timeout: float = STALL_TIMEOUT) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if not stall_timeout > 0:
            raise ValueError(f"stall_timeout must be > 0 seconds, got {stall_timeout}")
        self.lm = lm
        self.stall_timeout = stall_timeout
        self._finished = self._cancelled = self._stalled = 0
        self._closing = threading.Lock()  # submit and close, one at a time
        self._closed = False
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue + 1)
        self._slots = threading.BoundedSemaphore(max_queue + 1)  # waiting + running
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._run, name="ember-server-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job or raise `Busy` at once (`APIError` 503 once the worker is closing: a job queued
        behind the end would wait for ever)."""
        with self._closing:
            if self._closed:
                raise APIError(503, "the server is shutting down", type="server_error")
            if not self._slots.acquire(blocking=False):
                raise Busy
            self._jobs.put_nowait(job)

    def stats(self) -> WorkerStats:
        return WorkerStats(
            running=self._running is not None,
            waiting=self._jobs.qsize(),
            finished=self._finished,
            cancelled=self._cancelled,
            stalled=self._stalled,
        )

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the running job, drop waiting ones and stop the thread (again: only wait for it)."""
        with self._closing:
            if not self._closed:
                self._closed = True
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
                self._jobs.put_nowait(None)  # room: the waiting jobs are gone, and no more come
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._running = job
            try:
                if job.cancel.is_set():  # its client went away while it waited
                    self._cancelled += 1
                    job.emit(("error", APIError(499, "the client closed the connection")))
                else:
                    self._serve(job)
            except APIError as e:
                job.emit(("error", e))
            except (EmberError, ValueError) as e:
                job.emit(("error", bad_request(str(e))))
            except Exception as e:  # a bug: report it to the client and keep serving
                log.exception("generation failed")
                job.emit(("error", APIError(500, f"generation failed: {e}", type="server_error")))
            finally:
                self._finished += 1
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
                self._cancelled += 1
                raise APIError(503, "the request was cancelled while it waited for the model", type="server_error")
            for event in gen:
                if not job.stream.emit_tokens([(event, piece(event.id))], job.cancel, self.stall_timeout):
                    break
            gen_finish = gen.finish_reason
        if gen_finish is None and not job.cancel.is_set():  # no room came: the client stopped reading
            job.cancel.set()
            self._stalled += 1
            raise APIError(
                408,
                f"the client took nothing for {self.stall_timeout:g} s: the generation was stopped",
                type="timeout_error",
                code="client_stalled",
            )
        if gen_finish is None or gen_finish == "cancelled":
            self._cancelled += 1
        job.emit(("done", Outcome(gen_finish or "cancelled", len(ids), gen.stats.generated_tokens, gen.seed)))
