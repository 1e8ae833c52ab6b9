"""One boundary per worker slot: whatever a slot lets out becomes its failure signal.

A slot that raised on a worker thread would emit neither its result nor its failure, and the window would
wait for good (a chat stuck at "writing…"). ``@boundary("generationFailed", "the reply")`` under
``@Slot(...)`` wraps a slot so that any exception ends in that signal, with a message a person can read:

- `EmberError` and `OSError` are problems the user can act on (a bad file, a full disk), `ValueError` a
  value out of range, `RuntimeError` what torch raises when memory runs out or a device fails: their own
  message, as it is (the traceback of the last two is logged too: they are also what a bug raises).
- Anything else is a bug: its traceback goes to the crash log (`desktop.crash.record`), and the message
  names the error and where the details are. The worker thread lives on and takes the next request.

While a slot runs, full garbage collections wait (`desktop.ui_gc.worker_job`): one that reclaims a lot
would stall the UI thread in the middle of a streaming reply or a training run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from desktop import crash
from desktop.ui_gc import worker_job
from engine.errors import EmberError

log = logging.getLogger(__name__)


def failure_message(error: BaseException, what: str) -> str:
    """What to tell the user about ``error``, raised while doing ``what`` ("the reply", say)."""
    if isinstance(error, (EmberError, OSError)):
        return str(error)
    if isinstance(error, (ValueError, RuntimeError)):
        log.info("%s failed", what, exc_info=error)
        return str(error)
    log.warning("%s failed unexpectedly", what, exc_info=error)
    path = crash.record(error, f"worker: {what}")
    summary = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    where = f" The details were written to {path}." if path is not None else ""
    return f"Something went wrong with {what} ({summary}).{where} Ember goes on; try again."


def boundary(signal: str, what: str) -> Callable:
    """Decorate a worker slot: an exception it raises is emitted through the worker's ``signal`` as a
    `failure_message` about ``what``."""

    def wrap(slot: Callable) -> Callable:
        @functools.wraps(slot)
        def guarded(self, *args: Any) -> None:
            try:
                with worker_job():
                    slot(self, *args)
            except Exception as e:  # noqa: BLE001 (the thread boundary: every failure reaches the UI)
                getattr(self, signal).emit(failure_message(e, what))

        return guarded

    return wrap
