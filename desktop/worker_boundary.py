"""One boundary per worker slot: whatever a slot lets out becomes its failure signal.

A slot that raised on a worker thread would emit neither its result nor its failure, and the window would
wait for good (a chat stuck at "writing…"). ``@boundary("generationFailed")`` under ``@Slot(...)`` wraps a
slot so that any exception ends in that signal, with a message a person can read:

- `EmberError`, `ValueError` and `OSError` are problems the user can act on (a bad file, a value out of
  range, a full disk): their own message, as it is.
- Anything else is a bug: its traceback goes to the crash log (`desktop.crash.record`), and the message
  names the error and where the details are. The worker thread lives on and takes the next request.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from desktop import crash
from engine.errors import EmberError

log = logging.getLogger(__name__)


def failure_message(error: BaseException, what: str) -> str:
    """What to tell the user about ``error``, raised while doing ``what`` ("the reply", say)."""
    if isinstance(error, (EmberError, ValueError, OSError)):
        return str(error)
    log.warning("%s failed unexpectedly", what, exc_info=error)
    path = crash.record(error, f"worker: {what}")
    summary = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    where = f" The details were written to {path}." if path is not None else ""
    return f"Something went wrong with {what} ({summary}).{where} Ember goes on; try again."


def boundary(signal: str, what: str, *, echo_first: bool = False) -> Callable:
    """Decorate a worker slot: an exception it raises is emitted through the worker's ``signal`` (a
    `failure_message`), preceded by the slot's first argument when ``echo_first`` (e.g. a run's folder)."""

    def wrap(slot: Callable) -> Callable:
        @functools.wraps(slot)
        def guarded(self, *args: Any) -> None:
            try:
                slot(self, *args)
            except Exception as e:  # noqa: BLE001 (the thread boundary: every failure reaches the UI)
                message = failure_message(e, what)
                getattr(self, signal).emit(*((args[0],) if echo_first else ()), message)

        return guarded

    return wrap
