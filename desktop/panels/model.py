"""The model: open a GGUF file or HF folder (dialog or drag-and-drop), recent models, the models other apps
keep (`desktop.panels.library_box`), device and dtype,
whether to compile the decoding step, the memory estimate before loading, a progress bar while loading,
and the model's facts; below them the switch that serves the loaded model to other apps
(`desktop.panels.serve_box`) and a remote OpenAI-compatible server (`desktop.panels.remote_endpoint`).

Signals:
    loadRequested(str path, str device, str dtype, bool compile) -- path "" means the default model
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.messages import ModelInfo
from desktop.panels.library_box import LibraryBox
from desktop.panels.remote_endpoint import RemoteEndpointBox
from desktop.panels.serve_box import ServeBox
from engine.device import DEVICE_CHOICES, DTYPE_CHOICES, resolve_device, resolve_dtype
from engine.errors import EmberError
from engine.loading.loader import peek_config
from engine.memory import MiB, available_bytes, estimate_bytes

MAX_RECENT = 8


def describe_estimate(path: str, device: str, dtype: str) -> str:
    """ "~520 MiB needed, 20,000 MiB free" for the model at ``path``, read without loading weights."""
    try:
        cfg = peek_config(path or None)
        dev = resolve_device(device)
        need = estimate_bytes(cfg, resolve_dtype(dtype, dev), cfg.max_seq_len)
        free = available_bytes(dev)
    except (EmberError, ValueError, OSError) as e:
        return f"Cannot read this model: {e}"
    verdict = "fits" if need <= free else "does NOT fit"
    return (
        f"{cfg.arch}, {cfg.n_params / 1e6:,.0f}M parameters: about {need / MiB:,.0f} MiB needed, "
        f"{free / MiB:,.0f} MiB free on {dev.type} — {verdict}"
    )


class ModelPanel(QWidget):
    loadRequested = Signal(str, str, str, bool)

    def __init__(
        self,
        recent: list[str],
        device: str,
        dtype: str,
        compile: bool = False,
        compile_unavailable: str | None = None,
        parent: QWidget | None = None,
    ) -> None:
        """``compile_unavailable``: why decoding cannot be compiled here (a bundled app has no C++ headers),
        which disables the checkbox and says why in its tooltip."""
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.path = ""
        self.open_file = QPushButton("Open GGUF file…", accessibleName="Open GGUF model file")
        self.open_folder = QPushButton("Open HF folder…", accessibleName="Open Hugging Face model folder")
        self.use_default = QPushButton("Default model", accessibleName="Load the default model")
        buttons = QGridLayout()
        buttons.addWidget(self.open_file, 0, 0)
        buttons.addWidget(self.open_folder, 0, 1)
        buttons.addWidget(self.use_default, 1, 0)
        self.recent = QListWidget(accessibleName="Recent models")
        self.recent.setToolTip("Double-click to load again")
        self.recent.setMaximumHeight(110)
        self.device = QComboBox(accessibleName="Device")
        self.device.addItems(DEVICE_CHOICES)
        self.device.setCurrentText(device)
        self.device.setToolTip("auto picks a CUDA GPU, then Apple's Metal, then the CPU")
        self.dtype = QComboBox(accessibleName="Precision")
        self.dtype.addItems(DTYPE_CHOICES)
        self.dtype.setCurrentText(dtype)
        self.dtype.setToolTip(
            "auto: bfloat16 on CUDA, float16 on Metal; on the CPU bfloat16 with 4-bit GGUF weights kept packed "
            "(fastest). float32 computes with exactly the file's weights."
        )
        self.compile = QCheckBox("Compile for faster replies", accessibleName="Compile the decoding step")
        self.compile.setChecked(compile)
        self.compile.setToolTip(
            "Compiles the work of each new token ahead of time: about twice as fast replies on the CPU. The "
            "first time a model of a given shape loads, the step is built in the background (a minute or two) "
            "while the model answers uncompiled; later loads use it at once. Needs a C++ compiler; without one "
            "the model runs uncompiled and says why."
        )
        if compile_unavailable:
            self.compile.setChecked(False)
            self.compile.setEnabled(False)
            self.compile.setToolTip(f"Not available here: {compile_unavailable}.")
        self.estimate = QLabel(wordWrap=True, accessibleName="Memory estimate")
        self.progress = QProgressBar(accessibleName="Loading progress")
        self.progress.setVisible(False)
        self.status = QLabel(wordWrap=True, accessibleName="Model status")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.facts = QLabel(wordWrap=True, accessibleName="Model facts")
        self.facts.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        for label in (self.status, self.facts):  # room for a last glyph that overhangs a line that just fits
            label.setContentsMargins(0, 0, 4, 0)
        form = QFormLayout()
        form.addRow("Device", self.device)
        form.addRow("Precision", self.dtype)
        form.addRow("Speed", self.compile)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(QLabel("Recent (or drop a .gguf file or model folder here):", wordWrap=True))
        layout.addWidget(self.recent)
        self.library = LibraryBox()  # filled by desktop.library_controller
        layout.addWidget(self.library)
        layout.addLayout(form)
        layout.addWidget(self.estimate)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.facts)
        self.serve = ServeBox(8080)  # the main window sets the remembered port
        layout.addWidget(self.serve)
        self.remote = RemoteEndpointBox()
        layout.addWidget(self.remote)
        layout.addStretch(1)
        self.set_recent(recent)

        self.open_file.clicked.connect(self.choose_file)
        self.open_folder.clicked.connect(self._on_open_folder)
        self.use_default.clicked.connect(lambda: self.request(""))
        self.recent.itemActivated.connect(lambda item: self.request(item.data(Qt.ItemDataRole.UserRole)))
        self.library.openRequested.connect(self.request)
        self.device.currentTextChanged.connect(self._refresh_estimate)
        self.dtype.currentTextChanged.connect(self._refresh_estimate)

    def set_recent(self, paths: list[str]) -> None:
        self.recent.clear()
        for p in paths[:MAX_RECENT]:
            item = QListWidgetItem(Path(p).name or p)
            item.setToolTip(p)
            item.setData(Qt.ItemDataRole.UserRole, p)
            self.recent.addItem(item)

    def recent_paths(self) -> list[str]:
        return [self.recent.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.recent.count())]

    def request(self, path: str) -> None:
        """Show the estimate, then ask for the load (the main window runs it on the worker)."""
        self.path = path
        self._refresh_estimate()
        self.loadRequested.emit(path, self.device.currentText(), self.dtype.currentText(), self.compile.isChecked())

    @Slot()
    def _refresh_estimate(self) -> None:
        self.estimate.setText(describe_estimate(self.path, self.device.currentText(), self.dtype.currentText()))

    @Slot()
    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", "", "GGUF models (*.gguf);;All files (*)")
        if path:
            self.request(path)

    @Slot()
    def _on_open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a Hugging Face model folder")
        if path:
            self.request(path)

    def dragEnterEvent(self, event) -> None:  # noqa: N802 (Qt override)
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            self.request(urls[0].toLocalFile())

    # Slots for the worker's signals

    @Slot(str)
    def on_load_started(self, path: str) -> None:
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.status.setText(f"Loading {Path(path).name if path else 'the default model'}…")
        for w in (self.open_file, self.open_folder, self.use_default, self.recent, self.library):
            w.setEnabled(False)

    @Slot(int)
    def on_load_progress(self, percent: int) -> None:
        self.progress.setValue(percent)

    @Slot(str)
    def on_compile_started(self, message: str) -> None:
        """Building the compiled decoding step, after the load: the bar goes busy (there is no fraction to
        show), and the model answers meanwhile."""
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.status.setText(html.escape(message) + "… The model answers meanwhile, uncompiled.")

    @Slot(object)
    def on_compiled(self, info: ModelInfo) -> None:
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)
        if info.compile_warning is None:
            self.status.setText(f"{html.escape(info.name)}: decoding compiled, replies are faster now")
        self._show_facts(info)

    def _load_done(self) -> None:
        self.progress.setRange(0, 100)
        self.progress.setVisible(False)
        for w in (self.open_file, self.open_folder, self.use_default, self.recent, self.library):
            w.setEnabled(True)

    @Slot(object)
    def on_loaded(self, info: ModelInfo) -> None:
        self._load_done()
        self.status.setText(f"Loaded {info.name} in {info.load_seconds:.1f} s")
        self._show_facts(info)
        loaded = self.path or info.path  # the default model too: Recent lists what is loaded
        self.set_recent([loaded] + [p for p in self.recent_paths() if p != loaded])

    def _show_facts(self, info: ModelInfo) -> None:
        types = ", ".join(f"{k} ×{n}" for k, n in info.weight_types)
        self.facts.setText(
            f"<b>{info.name}</b><br>Architecture: {info.architecture}<br>"
            f"Parameters: {info.parameters / 1e6:,.1f}M in {info.layers} layers<br>"
            f"Weights: {types}<br>Context: {info.context_length:,} tokens<br>"
            f"Running on {info.device} in {info.precision}<br>Chat template: {info.template}"
        )
        for warning in (info.template_warning, info.compile_warning):
            if warning:
                self.facts.setText(self.facts.text() + f"<br><span style='color:#c0392b'>{html.escape(warning)}</span>")

    @Slot(str)
    def on_load_failed(self, message: str) -> None:
        self._load_done()
        self.status.setText(
            f"<span style='color:#c0392b'>Could not load: {html.escape(message)}</span><br>"
            "The previous model is still loaded."
        )
