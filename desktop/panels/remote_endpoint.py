"""A remote model in the Model panel: an OpenAI-compatible server's address, an optional API key,
"Connect" to list its models (on a worker thread: see `desktop.remote_worker`), pick one and use it.
Recent endpoints (address and model, never the key) can be used again with a double-click.

Signals:
    connectRequested(str base_url, str api_key)
    useRequested(str base_url, str model, str api_key)
    localRequested()                   -- back to the local model
    recentRequested(str base_url, str model)
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.messages import ModelList

MAX_RECENT = 8
ROLE = Qt.ItemDataRole.UserRole
ERROR = "color:#c0392b"


class RemoteEndpointBox(QGroupBox):
    connectRequested = Signal(str, str)
    useRequested = Signal(str, str, str)
    localRequested = Signal()
    recentRequested = Signal(str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Remote server (OpenAI-compatible API)", parent)
        self.url = QLineEdit(placeholderText="http://127.0.0.1:8080/v1", accessibleName="Remote server address")
        self.url.setToolTip("vLLM, llama.cpp's server, Ollama, LM Studio or ember-cli serve")
        self.key = QLineEdit(placeholderText="optional", accessibleName="API key")
        self.key.setEchoMode(QLineEdit.EchoMode.Password)
        self.key.setToolTip("Kept in the system keyring (or a file only you can read), never in conversations")
        self.connect_button = QPushButton("Connect", accessibleName="Connect to the remote server")
        self.connect_button.setToolTip("List the server's models")
        self.models = QComboBox(accessibleName="Remote model")
        self.models.setEnabled(False)
        self.models.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.models.setMinimumContentsLength(12)
        self.use_button = QPushButton("Use", accessibleName="Use the remote model")
        self.use_button.setEnabled(False)
        self.local_button = QPushButton("Back to the local model", accessibleName="Use the local model")
        self.local_button.setVisible(False)
        self.recent = QListWidget(accessibleName="Recent remote models")
        self.recent.setToolTip("Double-click to use again")
        self.recent.setMaximumHeight(64)
        self.status = QLabel(wordWrap=True, accessibleName="Remote status")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setContentsMargins(0, 0, 4, 0)

        url_row = QHBoxLayout()
        url_row.addWidget(self.url, 1)
        url_row.addWidget(self.connect_button)
        model_row = QHBoxLayout()
        model_row.addWidget(self.models, 1)
        model_row.addWidget(self.use_button)
        form = QFormLayout()
        form.addRow("Address", url_row)
        form.addRow("API key", self.key)
        form.addRow("Model", model_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(self.local_button)
        self.recent_label = QLabel("Recent remote models:")
        layout.addWidget(self.recent_label)
        layout.addWidget(self.recent)
        self._active = ""  # "model at address" while a remote model is in use
        self.set_recent([])

        self.connect_button.clicked.connect(self._on_connect)
        self.url.returnPressed.connect(self._on_connect)
        self.use_button.clicked.connect(self._on_use)
        self.local_button.clicked.connect(self.localRequested)
        self.recent.itemActivated.connect(self._on_recent)

    # Recent endpoints: (base URL, model id) pairs

    def set_recent(self, entries: list[tuple[str, str]]) -> None:
        self.recent.clear()
        for url, model in entries[:MAX_RECENT]:
            item = QListWidgetItem(f"{model} — {url}")
            item.setToolTip(f"{model} at {url}")
            item.setData(ROLE, (url, model))
            self.recent.addItem(item)
        self.recent.setVisible(bool(entries))
        self.recent_label.setVisible(bool(entries))

    def recent_entries(self) -> list[tuple[str, str]]:
        return [tuple(self.recent.item(i).data(ROLE)) for i in range(self.recent.count())]

    # User actions

    @Slot()
    def _on_connect(self) -> None:
        url = self.url.text().strip()
        if not url:
            self.status.setText(f"<span style='{ERROR}'>Enter the server's address first.</span>")
            return
        self.connect_button.setEnabled(False)
        self.models.clear()  # the list of the server being asked replaces the last one
        self.models.setEnabled(False)
        self.use_button.setEnabled(False)
        self.status.setText(f"Connecting to {html.escape(url)}…")
        self.connectRequested.emit(url, self.key.text().strip())

    @Slot()
    def _on_use(self) -> None:
        model = self.models.currentText()
        if model:
            self.useRequested.emit(self.models.property("base_url") or self.url.text().strip(), model, self.key.text())

    @Slot(QListWidgetItem)
    def _on_recent(self, item: QListWidgetItem) -> None:
        url, model = item.data(ROLE)
        self.recentRequested.emit(url, model)

    # Answers (slots for the connector's signals, and for the controller)

    @Slot(object)
    def on_listed(self, listed: ModelList) -> None:
        self.connect_button.setEnabled(True)
        self.models.clear()
        models, base_url = list(listed.model_ids), listed.base_url
        self.models.addItems(models)
        self.models.setProperty("base_url", base_url)
        self.models.setEnabled(True)
        self.use_button.setEnabled(True)
        self.status.setText(
            f"{len(models)} model{'s' if len(models) != 1 else ''} at {html.escape(base_url)}: pick one and press Use."
        )

    @Slot(str, str)
    def on_failed(self, _base_url: str, message: str) -> None:
        self.connect_button.setEnabled(True)
        self.use_button.setEnabled(self.models.count() > 0)
        still = f"<br>Still in use: {self._active}." if self._active else ""
        self.status.setText(f"<span style='{ERROR}'>{html.escape(message)}</span>{still}")

    def show_active(self, base_url: str, model: str) -> None:
        self.url.setText(base_url)
        if self.models.findText(model) < 0:
            self.models.addItem(model)
            self.models.setEnabled(True)
        self.models.setCurrentText(model)
        self.models.setProperty("base_url", base_url)
        self.use_button.setEnabled(True)
        self.local_button.setVisible(True)
        self._active = f"{html.escape(model)} at {html.escape(base_url)}"
        self.status.setText(
            f"<b>In use: {html.escape(model)}</b> at {html.escape(base_url)}. Replies come from this server; "
            "the prompt preview, token counts, attention and the logit lens need a local model (the inspector "
            "shows a reply's tokens when the server sends logprobs)."
        )

    def show_inactive(self, local_name: str | None) -> None:
        self.local_button.setVisible(False)
        self._active = ""
        if local_name:
            self.status.setText(f"Using the local model {html.escape(local_name)}.")
