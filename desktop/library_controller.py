"""Your models: the Model panel's list of the models other apps keep on this computer.

`YourModels` ties the panel's `LibraryBox` to the scanner thread and the settings: it scans when made, when
a folder is added and on Rescan; added folders are kept in settings.ini (``model/library_folders``). Opening
a row is the panel's own business (it loads like a recent model).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QObject, Slot

from desktop.library_worker import ScannerThread
from desktop.messages import ScanRequest
from desktop.panels.library_box import LibraryBox
from desktop.settings import Settings
from engine.loading.model_library import model_places


class YourModels(QObject):
    """``home``, ``platform`` and ``env``: where the apps' folders are (`engine.loading.model_library.model_places`)."""

    def __init__(
        self, box: LibraryBox, *, settings: Settings, home: Path, platform: str = sys.platform, env=None
    ) -> None:
        super().__init__(box)
        self.box, self.settings = box, settings
        self._where = (home, platform, env)
        self._scanner = ScannerThread(self)
        s = self._scanner.scanner
        # Bound slots of UI-thread objects only: a lambda would run on the scanner's thread.
        s.scanned.connect(box.show_models)
        s.failed.connect(box.show_failed)
        box.addFolderRequested.connect(self._on_add_folder)
        box.rescanRequested.connect(self.scan)
        self.scan()

    def folders(self) -> list[str]:
        return self.settings.get("model/library_folders")

    @Slot()
    def scan(self) -> None:
        home, platform, env = self._where
        places = model_places(home, platform, env, [Path(f) for f in self.folders()])
        self.box.show_scanning()
        self._scanner.scanner.requestScan.emit(ScanRequest(tuple(places)))

    @Slot(str)
    def _on_add_folder(self, folder: str) -> None:
        if folder not in self.folders():
            self.settings.set("model/library_folders", [*self.folders(), folder])
        self.scan()

    def stop(self) -> None:
        self._scanner.stop()
