"""The model: open a GGUF file or HF folder (dialog or drag-and-drop), recent models, the models other apps
keep (`desktop.panels.library_box`), device, dtype and context length, whether to compile the decoding step,
the memory estimate before loading (KV cache included, for the chosen context), a progress bar while
loading, and the model's facts; below them the switch that serves the loaded model to other apps
(`desktop.panels.serve_box`) and a remote OpenAI-compatible server (`desktop.panels.remote_endpoint`).

The context offered runs from 512 tokens up to the model's own, doubling; Auto (the default) is the longest
that fits in the memory free now, up to 8,192 (`engine.memory.fitting_context`). It applies when a model
loads. The model's config is read (its header only) when a model is chosen, not when the context changes.

Signals:
    loadRequested(str path, str device, str dtype, bool compile, int context) -- path "" means the default
        model; context is in tokens (0 when the model could not be read: the load then says why)
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
from engine import memory
from engine.device import DEVICE_CHOICES, DTYPE_CHOICES, resolve_device, resolve_dtype
from engine.errors import EmberError
from engine.loading.config import ModelConfig
from engine.loading.loader import peek_config
from engine.memory import DEFAULT_CONTEXT_CAP, MiB, context_steps, estimate_bytes, fitting_context, kv_cache_bytes
from engine.model.decode_attention import widest_cache_dtype

MAX_RECENT = 8
AUTO = 0  # the context choice "Auto": what fits


def describe_estimate(cfg: ModelConfig, device: str, dtype: str, context: int) -> str:
    """ "llama, 135M parameters, 4,096 tokens of context (KV cache 96 MiB): about 520 MiB needed, 20,000 MiB
    free on cpu — fits"."""
    try:
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        need, kv = estimate_bytes(cfg, dt, dev, context), kv_cache_bytes(cfg, widest_cache_dtype(dt, dev), context)
        free = memory.available_bytes(dev)
    except (EmberError, ValueError, OSError) as e:
        return f"Cannot estimate the memory needed: {e}"
    verdict = "fits" if need <= free else "does NOT fit"
    return (
        f"{cfg.arch}, {cfg.n_params / 1e6:,.0f}M parameters, {context:,} tokens of context (KV cache "
        f"{kv / MiB:,.0f} MiB): about {need / MiB:,.0f} MiB needed, {free / MiB:,.0f} MiB free on {dev.type} "
        f"— {verdict}"
    )


class ModelPanel(QWidget):
    loadRequested = Signal(str, str, str, bool, int)

    def __init__(
        self,
        recent: list[str],
        device: str,
        dtype: str,
        compile: bool = False,
        compile_unavailable: str | None = None,
        context: int = AUTO,
        parent: QWidget | None = None,
    ) -> None:
        """``compile_unavailable``: why decoding cannot be compiled here (a bundled app has no C++ headers),
        which disables the checkbox and says why in its tooltip. ``context``: the context chosen last (tokens,
        or `AUTO`)."""
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.path = ""
        self.config: ModelConfig | None = None  # the chosen model's, read when it is chosen
        self._config_error = ""
        self._wanted_context = context  # the user's choice; a shorter model offers its own longest instead
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
        self.context = QComboBox(accessibleName="Context length")
        self.context.setToolTip(
            "How many tokens the model keeps in view (prompt, conversation and reply). Longer needs more memory "
            f"for the KV cache. Auto: the longest that fits in the memory free now, up to {DEFAULT_CONTEXT_CAP:,}. "
            "Applies when a model loads."
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
        form.addRow("Context", self.context)
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
        self.context.activated.connect(self._on_context_chosen)
        self.context.currentIndexChanged.connect(self._refresh_estimate)

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
        """Read the model's config, offer its contexts and show the estimate, then ask for the load (the main
        window runs it on the worker)."""
        self.path = path
        self._read_config(path)
        self._refresh_estimate()
        device, dtype = self.device.currentText(), self.dtype.currentText()
        self.loadRequested.emit(path, device, dtype, self.compile.isChecked(), self.context_length())

    def context_choice(self) -> int:
        """What the user chose: tokens, or `AUTO`."""
        return self._wanted_context

    def context_length(self) -> int:
        """The context the next load gets, in tokens (0 when the model could not be read)."""
        chosen = self.context.currentData()
        return self._auto_context() if chosen == AUTO else chosen or 0

    def _read_config(self, path: str) -> None:
        try:
            self.config, self._config_error = peek_config(path or None), ""
        except (EmberError, ValueError, OSError) as e:
            self.config, self._config_error = None, str(e)
        self.context.blockSignals(True)  # one estimate, after the list is whole
        self.context.clear()
        self.context.addItem("Auto", AUTO)
        steps = context_steps(self.config.max_seq_len) if self.config else []
        for n in steps:
            self.context.addItem(f"{n:,} tokens" + (" (the model's longest)" if n == steps[-1] else ""), n)
        index = 0  # Auto
        if self._wanted_context != AUTO and steps:  # the chosen length, or this model's longest below it
            index = self.context.findData(([n for n in steps if n <= self._wanted_context] or steps[:1])[-1])
        self.context.setCurrentIndex(index)
        self.context.setEnabled(self.config is not None)
        self.context.blockSignals(False)

    def _auto_context(self) -> int:
        if self.config is None:
            return 0
        try:
            dev = resolve_device(self.device.currentText())
            return fitting_context(self.config, resolve_dtype(self.dtype.currentText(), dev), dev)
        except (EmberError, ValueError, OSError):
            return min(self.config.max_seq_len, DEFAULT_CONTEXT_CAP)

    @Slot(int)
    def _on_context_chosen(self, index: int) -> None:
        self._wanted_context = self.context.itemData(index)

    @Slot()
    def _refresh_estimate(self) -> None:
        if self.config is None:
            self.estimate.setText(f"Cannot read this model: {self._config_error}")
            return
        self.context.setItemText(0, f"Auto: {self._auto_context():,} tokens")  # free memory changes
        context = self.context_length()
        self.estimate.setText(
            describe_estimate(self.config, self.device.currentText(), self.dtype.currentText(), context)
        )

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
            + "".join(f"<br>{what}: {html.escape(chosen)}" for what, chosen in info.kernels)
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
