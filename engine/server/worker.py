"""One thread owns the model: requests queue behind each other and run one at a time.

The model has one KV cache: each `Generation` keeps what its prompt shares with the cache's contents (a
client's conversation so far) and rewrites the rest, so generations run one after another never mix two
requests' caches; two at once would.  So the HTTP side never
touches the model: it submits a `Job` to the `ModelWorker`'s bounded queue (refused at once with 429
when full) and reads the job's events from its `JobStream`, an asyncio queue that the worker fills through
``loop.call_soon_threadsafe``.  A job whose client went away is cancelled between tokens.  The desktop
app may serve the model it chats with, so each job also holds the model's lock while it generates
(`engine.model_lock.hold`): requests queue behind the app's replies and inspections, and they behind them.

Slow readers: the worker never waits for a client, since it would wait with the model's lock held and
the desktop's chat (and every queued request) would wait with it.  It generates at the model's pace and
queues every token for the HTTP side, whatever the client has read.  That buffer is bounded by the
request itself: at most ``max_tokens`` token events, and ``max_tokens`` is at most the context length
(with ``top_logprobs``, each event carries at most 20 alternatives).  A client that stops reading is the
HTTP side's business (`engine.server.app.SendTimeout`): after ``stall_timeout`` seconds without
progress its connection is aborted and the reply waiting for it dropped, and if its generation is
still running, that cancels it like any other disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from engine.chat_prompt import render_prompt
from engine.errors import EmberError
from engine.generation.generate import Generation
from engine.loading.loader import LoadedModel
from engine.model_lock import hold
from engine.server.protocol import APIError, CompletionRequest, Outcome, bad_request

log = logging.getLogger(__name__)

# What a job reports, in order: ("tokens", [(TokenEvent, piece), ...]) any number of times, then
# ("done", Outcome) or ("error", APIError).
Event = tuple[str, Any]

STALL_TIMEOUT = 30.0  # seconds a response may make no progress to its client before the client is dropped


class JobStream:
    """The asyncio end of a job.  The worker thread calls `emit`, which never blocks (a job's events are
    bounded by its ``max_tokens``, which the context bounds); `get` awaits the next event on the event
    loop."""

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


class Busy(Exception):
    """The queue is full."""


class ModelWorker:
    """Runs `Job`s on one thread.  ``max_queue`` jobs may wait behind the running one.  ``stall_timeout``
    is kept for the HTTP side (how long a request body, or a client that reads nothing, may take): the
    worker itself never waits for a client."""

    def __init__(self, lm: LoadedModel, *, max_queue: int = 16, stall_timeout: float = STALL_TIMEOUT) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if not stall_timeout > 0:
            raise ValueError(f"stall_timeout must be > 0 seconds, got {stall_timeout}")
        self.lm = lm
        self.stall_timeout = stall_timeout
        self._finished = self._cancelled = 0
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
        )

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the running job, drop waiting ones and stop the thread (again: only wait for it)."""
        with self._closing:  # `_run` registers the job it takes under this lock: none slips past
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
            with self._closing:  # close() either sees this job running and cancels it, or we see it closed
                self._running = job
                closing = self._closed
            try:
                if closing:  # taken just as close() began: it found the queue empty and nothing running
                    job.cancel.set()
                    self._cancelled += 1
                    job.emit(("error", APIError(503, "the server is shutting down", type="server_error")))
                elif job.cancel.is_set():  # its client went away while it waited
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
        text = render_prompt(lm, req.messages, think=req.think) if req.chat else req.prompt
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
            # Never wait for the client here: the model's lock is held (see the module docstring).
            for event in gen:
                job.emit(("tokens", [(event, piece(event.id))]))
        finish = gen.finish_reason or "cancelled"
        if finish == "cancelled":
            self._cancelled += 1
        job.emit(("done", Outcome(finish, len(ids), gen.stats.generated_tokens, gen.seed)))
