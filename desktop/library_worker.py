"""Scanning the folders where other apps keep models (`engine.loading.model_library`) off the UI thread.

`LibraryScanner` is a QObject moved to its own small QThread, so a scan (a header read per file: a second or
two for a hundred models) neither blocks the window nor waits behind a model load or a reply on the engine
thread.
"""

from __future__ import annotations

import threading

from PySide6.QtCore import QObject, QThread, Signal, Slot

from desktop.messages import FoundModels, ScanRequest
from desktop.ui_gc import worker_job
from engine.loading.model_library import scan_models


class LibraryScanner(QObject):
    """Its requests (queued to its thread) and what it answers; the payload types are in `desktop.messages`.

    Requests:
        requestScan(ScanRequest)

    Signals:
        scanned(FoundModels)  -- every model found, each described from its header
        failed(str message)
    """

    requestScan = Signal(object)
    scanned = Signal(object)
    failed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.stop_flag = threading.Event()  # set from the UI thread: the scan ends after the current file
        self.requestScan.connect(self._on_scan)

    @Slot(object)
    @worker_job()  # no full garbage collection meanwhile (desktop.ui_gc)
    def _on_scan(self, request: ScanRequest) -> None:
        try:
            models = scan_models(request.places, self.stop_flag)
        except Exception as e:  # a bug in the scan: a message, never a dead thread
            self.failed.emit(f"{type(e).__name__}: {e}")
            return
        self.scanned.emit(FoundModels(tuple(models), stopped=self.stop_flag.is_set()))


class ScannerThread:
    """A `LibraryScanner` on its own QThread; `stop` before the owner goes away."""

    def __init__(self, parent: QObject) -> None:
        self.thread = QThread(parent)
        self.thread.setObjectName("model-library")
        self.scanner = LibraryScanner()
        self.scanner.moveToThread(self.thread)
        self.thread.start()

    def stop(self) -> None:
        self.scanner.stop_flag.set()
        if self.thread.isRunning():
            self.thread.quit()
            self.thread.wait(15_000)  # a scan in flight ends after the file it is reading
