"""Serving the local model to other apps, in the Model panel: a switch, the port, and the address to give
those apps while it is on (see `desktop.serve_controller`). From the app the server listens on
127.0.0.1 only: other programs on this computer can use it, other computers cannot.

Signals:
    serveRequested(bool on, int port)
"""

from __future__ import annotations

import html

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

ERROR = "color:#c0392b"


class ServeBox(QGroupBox):
    serveRequested = Signal(bool, int)

    def __init__(self, port: int, parent: QWidget | None = None) -> None:
        super().__init__("Serve to other apps (OpenAI-compatible API)", parent)
        self.toggle = QCheckBox("Serve this model to other apps", accessibleName="Serve this model to other apps")
        self.toggle.setToolTip(
            "Editors, scripts and agents on this computer can use the loaded model through the OpenAI API "
            "(chat and completions, streaming, logprobs). Only this computer can connect."
        )
        self.port = QSpinBox(accessibleName="Server port", minimum=1024, maximum=65535, value=port)
        self.port.setToolTip("The port on 127.0.0.1 to listen on")
        self.url = QLineEdit(accessibleName="Server address", readOnly=True)
        self.url.setToolTip("The OpenAI base URL to give other apps")
        self.copy = QPushButton("Copy", accessibleName="Copy the server address")
        self.copy.clicked.connect(self._on_copy)
        self.status = QLabel(wordWrap=True, accessibleName="Server status")
        self.status.setContentsMargins(0, 0, 4, 0)
        self.status.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.toggle, 1)
        row.addWidget(QLabel("Port"))
        row.addWidget(self.port)
        url_row = QHBoxLayout()
        url_row.addWidget(self.url, 1)
        url_row.addWidget(self.copy)
        self.url_row = QWidget()
        self.url_row.setLayout(url_row)
        url_row.setContentsMargins(0, 0, 0, 0)
        self.url_row.setVisible(False)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.url_row)
        layout.addWidget(self.status)
        self.set_available(False)
        self.toggle.toggled.connect(self._on_toggled)

    @Slot(bool)
    def _on_toggled(self, on: bool) -> None:
        self.serveRequested.emit(on, self.port.value())

    @Slot()
    def _on_copy(self) -> None:
        QGuiApplication.clipboard().setText(self.url.text())

    def set_available(self, available: bool) -> None:
        """Serving needs a loaded local model."""
        self.toggle.setEnabled(available or self.toggle.isChecked())
        if not available and not self.toggle.isChecked():
            self.toggle.setToolTip("Load a local model first")

    # Answers from the controller

    def show_serving(self, url: str, model_id: str) -> None:
        self._set_checked(True)
        self.port.setEnabled(False)
        self.url.setText(url)
        self.url_row.setVisible(True)
        self.status.setText(
            f"<b>Serving {html.escape(model_id)}.</b> Other apps on this computer use it with the base URL "
            "above and any API key; their requests take turns with this chat."
        )
        self.status.setVisible(True)

    def show_stopped(self, message: str = "", error: bool = False) -> None:
        self._set_checked(False)
        self.port.setEnabled(True)
        self.url_row.setVisible(False)
        self.status.setText(f"<span style='{ERROR}'>{html.escape(message)}</span>" if error else html.escape(message))
        self.status.setVisible(bool(message))

    def _set_checked(self, on: bool) -> None:
        self.toggle.blockSignals(True)
        self.toggle.setChecked(on)
        self.toggle.blockSignals(False)
