"""A cooperative cancel: a `threading.Event` or any callable that says whether to stop, checked between
steps (tokens, layers, training steps) by whoever runs the work."""

from __future__ import annotations

import threading
from collections.abc import Callable

StopSignal = Callable[[], bool] | threading.Event | None


def is_stopped(signal: StopSignal) -> bool:
    if signal is None:
        return False
    return signal.is_set() if isinstance(signal, threading.Event) else bool(signal())
