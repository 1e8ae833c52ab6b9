"""The compiled decoding step given to a loaded model on a thread of its own, as the app and the CLI's
long-running commands (`chat`, `serve`) do: the model answers uncompiled meanwhile, and every step after
the library is installed (under the model's lock, between replies) runs compiled. `stop` kills the build's
processes within ~0.1 s (`engine.compiled.library.build_in_child`), so none outlives its program."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from engine.compiled.library import compile_decoding
from engine.errors import CompileUnavailableError

log = logging.getLogger(__name__)


class BackgroundCompile:
    """Starts at once. ``progress`` gets the build's progress lines; ``done`` is called on the building
    thread with None once the step is installed, or with why the model stays uncompiled (not after a stop)."""

    def __init__(
        self, lm, progress: Callable[[str], None] | None = None, done: Callable[[str | None], None] | None = None
    ) -> None:
        self._stop = threading.Event()
        self._progress, self._done = progress, done or (lambda reason: None)
        self.thread = threading.Thread(target=self._work, args=(lm,), name="compile-decoding", daemon=True)
        self.thread.start()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self, wait_s: float = 0.0) -> None:
        """Thread-safe: the build stops; ``wait_s``: wait that long for its thread (and so its processes)."""
        self._stop.set()
        if wait_s:
            self.thread.join(wait_s)

    def _work(self, lm) -> None:
        try:
            compile_decoding(lm, self._progress, should_stop=self._stop.is_set)
            reason = None
        except Exception as e:  # noqa: BLE001 (any failure: the model answers uncompiled, and says why)
            if self._stop.is_set():
                return
            if not isinstance(e, CompileUnavailableError):  # a bug, not a missing compiler: its traceback
                log.warning("compiling the decoding step failed", exc_info=True)
            reason = str(e)
        if not self._stop.is_set():
            self._done(reason)
