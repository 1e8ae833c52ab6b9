"""Writes that can fail: a full disk is said in words and the app goes on; anything else is a bug.

``with saving("your message") as saved:`` wraps a store write; a full disk is shown (the status bar, and a
dialog unless ``dialog=False``) and ``saved.ok`` is False after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QMessageBox, QWidget

from desktop.disk_full import WRITE_ERRORS, is_disk_full, not_saved_message

log = logging.getLogger(__name__)

DISK_FULL_DIALOG_GAP_S = 10.0  # failures closer together than this share one dialog


class Saver:
    """Makes the ``saving`` context managers; ``parent``: the dialogs' parent, ``show_status(text, ms)``: the
    status bar, ``data_dir``: the folder named in the message."""

    def __init__(self, parent: QWidget, show_status: Callable[[str, int], None], data_dir: Path) -> None:
        self.parent, self.show_status, self.data_dir = parent, show_status, data_dir
        self._warned = -1e9  # when the last "not saved" dialog was shown

    def __call__(self, what: str, *, dialog: bool = True) -> _Saving:
        return _Saving(self, what, dialog)

    def not_saved(self, what: str, exc: BaseException, *, dialog: bool = True) -> None:
        message = not_saved_message(what, exc, self.data_dir)
        log.warning("%s", message)
        self.show_status(message, 20_000)
        # One dialog for a burst of failures (typing in the system prompt writes on every key).
        if dialog and time.monotonic() - self._warned > DISK_FULL_DIALOG_GAP_S:
            self._warned = time.monotonic()
            QMessageBox.warning(self.parent, "Disk full" if is_disk_full(exc) else "Not saved", message)


class _Saving:
    """The context manager of `Saver`: swallows a full disk (after showing it), nothing else."""

    def __init__(self, saver: Saver, what: str, dialog: bool) -> None:
        self.saver, self.what, self.dialog = saver, what, dialog
        self.ok = True

    def __enter__(self) -> _Saving:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, WRITE_ERRORS) or not is_disk_full(exc):
            return False
        self.ok = False
        self.saver.not_saved(self.what, exc, dialog=self.dialog)
        return True
