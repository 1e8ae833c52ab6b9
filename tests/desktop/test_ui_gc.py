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


def test_cycles_among_frozen_survivors_are_reclaimed_when_everything_is_walked(qtbot, window, monkeypatch):
    from desktop import ui_gc

    finalised: list[bool] = []

    class Cycle:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            finalised.append(True)

    survivor = Cycle()
    gc.collect()
    gc.freeze()  # as a full collection leaves a survivor
    del survivor  # now garbage that only a walk of the frozen objects can find
    full: list[int] = []
    count_full = lambda phase, info: phase == "stop" and info["generation"] == 2 and full.append(1)  # noqa: E731
    gc.callbacks.append(count_full)
    monkeypatch.setattr(ui_gc, "FULL_EVERY", 1)
    monkeypatch.setattr(ui_gc, "THAW_EVERY", 10**9)  # no thaw within the test, whatever the tick count
    try:
        qtbot.waitUntil(lambda: len(full) >= 2, timeout=5000)  # full collections of what came after the freeze
    finally:
        gc.callbacks.remove(count_full)
    assert not finalised
    monkeypatch.setattr(ui_gc, "THAW_EVERY", 1)
    qtbot.waitUntil(lambda: bool(finalised), timeout=5000)


def test_full_collections_wait_while_a_worker_job_runs(qtbot, window, monkeypatch):
    from desktop import ui_gc

    collections: list[int] = []
    record = lambda phase, info: phase == "stop" and collections.append(info["generation"])  # noqa: E731
    monkeypatch.setattr(ui_gc, "FULL_EVERY", 1)
    gc.callbacks.append(record)
    try:
        with ui_gc.worker_job():
            qtbot.waitUntil(lambda: collections.count(1) >= 3, timeout=10_000)  # young ones go on
            assert 2 not in collections
        qtbot.waitUntil(lambda: 2 in collections, timeout=5000)  # the first tick after the job
    finally:
        gc.callbacks.remove(record)
