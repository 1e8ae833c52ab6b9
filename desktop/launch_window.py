"""The window shown at once on launch, while the main window's modules (torch above all, about 2.5 s of
imports) load: where the main window will be, at its size, saying that Ember is starting. It imports Qt
only, so it is on screen a few tenths of a second after launch; the main window replaces it.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QByteArray, QCoreApplication, Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

SIZE = (1280, 820)  # the main window's first-run size


class LaunchWindow(QWidget):
    def __init__(self, geometry: QByteArray | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Ember")
        self.resize(*SIZE)
        if geometry is not None:
            self.restoreGeometry(geometry)
        self.message = QLabel(
            "<h2>Ember</h2><p>Starting… the model loads next.</p>",
            alignment=Qt.AlignmentFlag.AlignCenter,
            accessibleName="Starting Ember",
        )
        QVBoxLayout(self).addWidget(self.message)

    def show_now(self, wait_s: float = 0.5) -> None:
        """Show, and let the window system map and paint it before the app goes on to its slow imports."""
        self.show()
        end = time.monotonic() + wait_s
        while not self.windowHandle().isExposed() and time.monotonic() < end:
            QCoreApplication.processEvents()
            time.sleep(0.005)
        QCoreApplication.processEvents()  # the first paint
