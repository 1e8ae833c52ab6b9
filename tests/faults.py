"""Fault injection at random points: an exception no handler expects, raised as the n-th call into the
project's code (a function of `engine/` or `desktop/` starting, or a generator of theirs resuming) while
a chosen function runs, on whatever thread runs it.

It models a bug anywhere in the engine or the workers. The trial picks n uniformly from the calls a clean
run of the same request makes (`Injector.count`), so the faults land at random points along the whole
request, not only where a test author thought of putting one. `desktop/worker_boundary.py` and
`desktop/crash.py` are not traced: they are the handlers under test.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRACED = tuple(f"{ROOT / package}/" for package in ("engine", "desktop"))
HANDLERS = tuple(str(ROOT / "desktop" / name) for name in ("worker_boundary.py", "crash.py"))


class InjectedFault(Exception):
    """The injected error: a type no code in the project catches by name."""


class Injector:
    """``monkeypatch.setattr(obj, name, injector.wrap(getattr(obj, name)))``; then per trial
        ``injector.arm(n)`` (None: count only), run the request, ``disarm()``. ``fired`` says where it struck,
    ``calls`` how many calls the request made (up to the fault)."""

    def __init__(self) -> None:
        self.at: int | None = None
        self.calls = 0
        self.fired: str | None = None

    def arm(self, at: int | None) -> None:
        self.at, self.calls, self.fired = at, 0, None

    def disarm(self) -> None:
        """No fault from now on; ``calls`` and ``fired`` still tell what the last request did."""
        self.at = None

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def traced(*args: Any, **kwargs: Any) -> Any:
            previous = sys.gettrace()
            sys.settrace(self._on_call)
            try:
                return fn(*args, **kwargs)
            finally:
                sys.settrace(previous)

        return traced

    def _on_call(self, frame, event: str, _arg) -> None:
        name = frame.f_code.co_filename
        if event != "call" or not name.startswith(TRACED) or name in HANDLERS:
            return None
        self.calls += 1
        if self.calls == self.at:
            self.fired = f"{Path(name).relative_to(ROOT)}:{frame.f_lineno} ({frame.f_code.co_name})"
            raise InjectedFault(f"injected into {self.fired}")
        return None


def fault_points(rng: random.Random, calls: int, trials: int) -> list[int]:
    """``trials`` call numbers spread uniformly over a clean run's ``calls``."""
    return [rng.randint(1, max(calls, 1)) for _ in range(trials)]
