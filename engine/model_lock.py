"""Taking turns on one loaded model.

A `LoadedModel` has one KV cache; a generation rewrites it from where its prompt departs from what
the cache holds and an inspection runs its own pass over the weights, so two passes at once on two
threads would corrupt each other.  Everything that runs the model (the desktop's engine worker, the
server's model worker, installing a compiled step) holds ``lm.lock`` around the whole pass, through
`hold`, which keeps watching a cancel signal while it waits: a reply stopped while it waits for another
one never starts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from engine.stop_signal import StopSignal, is_stopped

POLL_SECONDS = 0.05


class HasLock(Protocol):
    lock: threading.Lock


@contextmanager
def hold(lm: HasLock, should_stop: StopSignal = None) -> Iterator[bool]:
    """``with hold(lm, cancel) as held:`` -- ``held`` is True with the model's lock held for the block,
    False (lock not taken) when ``should_stop`` fired while waiting for it."""
    lock = lm.lock
    while not lock.acquire(timeout=POLL_SECONDS):
        if is_stopped(should_stop):
            yield False
            return
    try:
        yield True
    finally:
        lock.release()
