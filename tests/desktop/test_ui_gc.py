"""Garbage is collected on the UI thread only (desktop/ui_gc.py): a worker thread that allocates never
runs the collector, so it never destroys a widget."""

from __future__ import annotations

import gc
import threading


def test_garbage_cycles_are_collected_on_the_ui_thread(qtbot, window):
    assert not gc.isenabled()
    finalised_on: list[int] = []

    class Cycle:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            finalised_on.append(threading.get_ident())

    Cycle()
    # a worker allocating heavily meanwhile does not trigger a collection
    worker = threading.Thread(target=lambda: [[object()] for _ in range(200_000)])
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: bool(finalised_on), timeout=5000)
    assert finalised_on == [threading.main_thread().ident]
