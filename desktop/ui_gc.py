"""Python's cyclic garbage collector, run on the UI thread only.

Automatic collection runs in whichever thread happens to allocate. When that is a worker thread and the
garbage holds a Qt widget's Python wrapper, the widget is destroyed on the worker thread, which Qt does
not allow; in the test suite it deadlocked (a QObject destructor on the inspection thread waiting for
the GIL while the UI thread waited for the inspection). So automatic collection is switched off and a
timer on the UI thread collects instead: the young generations often, everything now and then.

A full collection walks every tracked object, and with torch, transformers and Qt imported that took
0.15 s here, long enough to stall a streaming reply (0.5 s once in CI). So the collector works like a
fourth generation: what survives a full collection is frozen out of later walks (`gc.freeze`), and
only every THAW_EVERY full collections is everything thawed and walked, so that cycles among old
objects (a closed dialog, an unloaded model) are still reclaimed.

Reclaiming is the expensive part: a full collection that frees a few closed windows' widget trees took
1.2 s in CI, and it ran in the middle of a streaming reply. So a full collection waits while any worker
job runs (`worker_job`: every worker slot enters it, through `desktop.worker_boundary` or directly) and runs at the
first tick after; young collections go on meanwhile and keep what a reply allocates in check.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PySide6.QtCore import QCoreApplication, QTimer

YOUNG_EVERY_MS = 1000
FULL_EVERY = 30  # young collections per full one (30 s)
THAW_EVERY = 20  # full collections per walk of everything (10 min)

_jobs = 0
_jobs_lock = threading.Lock()


@contextmanager
def worker_job() -> Iterator[None]:
    """Around a worker's job (any thread): no full collection starts until every job has ended."""
    global _jobs
    with _jobs_lock:
        _jobs += 1
    try:
        yield
    finally:
        with _jobs_lock:
            _jobs -= 1


def collect_on_ui_thread() -> None:
    """Idempotent: the first call (on the UI thread, with a QApplication) sets it up for the process."""
    app = QCoreApplication.instance()
    if app is None or app.property("ember_ui_gc"):
        return
    gc.disable()
    gc.collect()
    gc.freeze()
    ticks = fulls = 0
    full_due = False

    def collect() -> None:
        nonlocal ticks, fulls, full_due
        ticks += 1
        full_due = full_due or ticks % FULL_EVERY == 0
        if not full_due or _jobs:
            gc.collect(1)
            return
        full_due = False
        fulls += 1
        if fulls % THAW_EVERY == 0:
            gc.unfreeze()
        gc.collect()
        gc.freeze()

    timer = QTimer(app)
    timer.timeout.connect(collect)
    timer.start(YOUNG_EVERY_MS)
    app.setProperty("ember_ui_gc", True)
