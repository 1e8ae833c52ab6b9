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
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QTimer

YOUNG_EVERY_MS = 1000
FULL_EVERY = 30  # young collections per full one (30 s)
THAW_EVERY = 20  # full collections per walk of everything (10 min)


def collect_on_ui_thread() -> None:
    """Idempotent: the first call (on the UI thread, with a QApplication) sets it up for the process."""
    app = QCoreApplication.instance()
    if app is None or app.property("ember_ui_gc"):
        return
    gc.disable()
    gc.collect()
    gc.freeze()
    ticks = [0]

    def collect() -> None:
        ticks[0] += 1
        if ticks[0] % FULL_EVERY:
            gc.collect(1)
            return
        if ticks[0] % (FULL_EVERY * THAW_EVERY) == 0:
            gc.unfreeze()
        gc.collect()
        gc.freeze()

    timer = QTimer(app)
    timer.timeout.connect(collect)
    timer.start(YOUNG_EVERY_MS)
    app.setProperty("ember_ui_gc", True)
