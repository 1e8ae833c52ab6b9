"""Python's cyclic garbage collector, run on the UI thread only.

Automatic collection runs in whichever thread happens to allocate. When that is a worker thread and the
garbage holds a Qt widget's Python wrapper, the widget is destroyed on the worker thread, which Qt does
not allow; in the test suite it deadlocked (a QObject destructor on the inspection thread waiting for
the GIL while the UI thread waited for the inspection). So automatic collection is switched off and a
timer on the UI thread collects instead: the young generations often, everything now and then.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QTimer

YOUNG_EVERY_MS = 1000
FULL_EVERY = 30  # young collections per full one


def collect_on_ui_thread() -> None:
    """Idempotent: the first call (on the UI thread, with a QApplication) sets it up for the process."""
    app = QCoreApplication.instance()
    if app is None or app.property("ember_ui_gc"):
        return
    gc.disable()
    ticks = [0]

    def collect() -> None:
        ticks[0] += 1
        gc.collect() if ticks[0] % FULL_EVERY == 0 else gc.collect(1)

    timer = QTimer(app)
    timer.timeout.connect(collect)
    timer.start(YOUNG_EVERY_MS)
    app.setProperty("ember_ui_gc", True)
