"""Fine-tuning on the user's own files: choose files or a folder (dialog or drag-and-drop), preview what
will be trained, settings, Start / Stop / Resume, progress with ETA and tokens/s, a live chart of the
training and validation loss, past runs (kept in ``finetune_runs.json`` in the data folder), and the
switch that puts a run's adapter into the chat model, the compare view (`desktop.panels.compare`) and the
merged exports (``merged/`` and ``model.gguf``) of a finished run. Before Start, an estimate of the run's
time and memory for the chosen settings (`engine.finetune.estimate`); LoRA or full fine-tuning.

`FinetunePanel` is widgets only; `FinetuneController` owns the `desktop.finetune_worker.FinetuneWorker`
and its thread, the list of runs, and ties them to the panel and the main window.

Signals of the panel:
    pathsChanged(list paths)  -- the files and folders chosen (a preview is asked for)
    startRequested()
    stopRequested()
    resumeRequested(str out_dir)
    useTunedToggled(bool)
    compareRequested(str out_dir)
    exportRequested(str out_dir)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, QThread, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.finetune_worker import FinetuneWorker
from desktop.panels.compare import CompareDialog
from desktop.panels.how_it_works_steps import ORANGE, styled
from desktop.presets import write_json_atomic
from engine.finetune.estimate import estimate_run
from engine.finetune.lora import ALL_TARGETS
from engine.finetune.train import latest_checkpoint

if TYPE_CHECKING:
    from desktop.main_window import MainWindow

BLUE = "#3a7be8"
RUNS_FILE = "finetune_runs.json"
RESUMABLE = ("cancelled", "interrupted", "failed")
GiB = 1 << 30


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def settings_text(cfg: dict) -> str:
    steps = f"{cfg.get('steps')} steps" if cfg.get("steps") else f"{cfg.get('epochs', 1):g} epochs"
    method = "full" if cfg.get("method") == "full" else f"LoRA r{cfg.get('rank')}"
    return (
        f"{method}, {steps}, lr {cfg.get('lr', 0):g}, "
        f"seq {cfg.get('seq_len')}, batch {cfg.get('batch_size')}, val {cfg.get('val_fraction', 0):g}"
    )


def loss_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


class FinetunePanel(QWidget):
    pathsChanged = Signal(list)
    startRequested = Signal()
    stopRequested = Signal()
    resumeRequested = Signal(str)
    useTunedToggled = Signal(bool)
    compareRequested = Signal(str)
    exportRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.paths: list[str] = []
        self.model_config = None  # the loaded model's ModelConfig, for the estimate
        self.device_type = "cpu"
        self.flops_per_second: float | None = None  # measured on the worker with the preview
        layout = QVBoxLayout(self)

        # Data
        data = QGroupBox("Your files")
        data_layout = QVBoxLayout(data)
        row = QHBoxLayout()
        self.add_folder = QPushButton("Add folder…", accessibleName="Add a folder to train on")
        self.add_files = QPushButton("Add files…", accessibleName="Add files to train on")
        self.clear = QPushButton("Clear", accessibleName="Clear the chosen files")
        for b in (self.add_folder, self.add_files, self.clear):
            row.addWidget(b)
        data_layout.addLayout(row)
        self.chosen = QLabel("Drop files or folders here: text, Markdown, code, HTML, PDF, .docx, .jsonl.")
        self.chosen.setWordWrap(True)
        data_layout.addWidget(self.chosen)
        self.files = QTreeWidget(accessibleName="Files to train on")
        self.files.setHeaderLabels(["File", "Tokens", "Chunks", "Note"])
        self.files.setRootIsDecorated(False)
        self.files.setMinimumHeight(110)
        header = self.files.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(False)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(3, 150)
        data_layout.addWidget(self.files)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        data_layout.addWidget(self.summary)
        self.samples = QPlainTextEdit(readOnly=True, accessibleName="Sample chunks")
        self.samples.setPlaceholderText("Sample chunks of the training data appear here.")
        self.samples.setMaximumHeight(110)
        data_layout.addWidget(self.samples)
        layout.addWidget(data)

        # Settings
        box = QGroupBox("Settings")
        box_layout = QVBoxLayout(box)
        form = QFormLayout()
        box_layout.addLayout(form)
        self.method = QComboBox(accessibleName="Fine-tuning method")
        self.method.addItem("LoRA adapter (small, fast)", "lora")
        self.method.addItem("Full: every weight (float32 copy)", "full")
        self.method.setToolTip(
            "LoRA trains a small adapter beside the frozen weights; full fine-tuning trains every weight of a\n"
            "float32 copy of the model and needs several times its size in memory."
        )
        self.rank = QSpinBox(minimum=1, maximum=256, value=8, accessibleName="LoRA rank")
        self.epochs = QDoubleSpinBox(minimum=0.1, maximum=100, value=1.0, decimals=1, singleStep=0.5)
        self.epochs.setAccessibleName("Epochs")
        self.steps = QSpinBox(minimum=0, maximum=1_000_000, value=0, accessibleName="Steps")
        self.steps.setSpecialValueText("from epochs")
        self.lr = QDoubleSpinBox(minimum=0.000001, maximum=0.1, value=0.0002, decimals=6, singleStep=0.00005)
        self.lr.setAccessibleName("Learning rate")
        self.lr.setValue(0.0002)  # again: the keyword value above was rounded to the default 2 decimals
        self.seq_len = QSpinBox(minimum=16, maximum=8192, value=256, singleStep=64, accessibleName="Sequence length")
        self.batch = QSpinBox(minimum=1, maximum=256, value=4, accessibleName="Batch size")
        self.val_fraction = QDoubleSpinBox(minimum=0.0, maximum=0.5, value=0.1, decimals=2, singleStep=0.05)
        self.val_fraction.setAccessibleName("Validation fraction")
        self.checkpoint_every = QSpinBox(minimum=0, maximum=100_000, value=50, accessibleName="Checkpoint every")
        self.checkpoint_every.setSpecialValueText("at the end only")
        form.addRow("Method", self.method)
        form.addRow("LoRA rank", self.rank)
        form.addRow("Epochs", self.epochs)
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Sequence length", self.seq_len)
        form.addRow("Batch size", self.batch)
        form.addRow("Validation", self.val_fraction)
        form.addRow("Checkpoint every", self.checkpoint_every)
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        box_layout.addWidget(self.estimate)  # not a form row: a wrapped label there gets one line's height
        layout.addWidget(box)

        # Run
        run = QGroupBox("Training")
        run_layout = QVBoxLayout(run)
        row = QHBoxLayout()
        self.start = QPushButton("Start", accessibleName="Start training")
        self.stop = QPushButton("Stop", accessibleName="Stop training", enabled=False)
        self.resume = QPushButton("Resume", accessibleName="Resume the selected run", enabled=False)
        for b in (self.start, self.stop, self.resume):
            row.addWidget(b)
        run_layout.addLayout(row)
        self.progress = QProgressBar(accessibleName="Training progress", textVisible=True)
        self.progress.setFormat("%v / %m steps")
        self.progress.setValue(0)
        run_layout.addWidget(self.progress)
        self.status = QLabel("Choose files or a folder to train on.")
        self.status.setWordWrap(True)
        run_layout.addWidget(self.status)
        self.plot = pg.PlotWidget()
        self.plot.setMinimumHeight(180)
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "loss")
        self.plot.addLegend(offset=(-10, 10))
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.train_curve = self.plot.plot([], [], pen=pg.mkPen(ORANGE, width=2), name="training")
        self.val_curve = self.plot.plot(
            [], [], pen=pg.mkPen(BLUE, width=2), symbol="o", symbolSize=6, symbolBrush=BLUE, name="validation"
        )
        styled(self.plot)
        run_layout.addWidget(self.plot)
        layout.addWidget(run)

        # Runs
        runs = QGroupBox("Runs")
        runs_layout = QVBoxLayout(runs)
        self.runs = QTreeWidget(accessibleName="Fine-tuning runs")
        self.runs.setHeaderLabels(["Run", "Status", "Steps", "Val. loss", "Settings"])
        self.runs.setRootIsDecorated(False)
        self.runs.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.runs.setMinimumHeight(100)
        runs_layout.addWidget(self.runs)
        self.use_tuned = QCheckBox("Use the tuned model in chat", accessibleName="Use the tuned model in chat")
        self.use_tuned.setEnabled(False)
        self.use_tuned.setToolTip("Chat with the selected run's adapter on the loaded model; untick for the base model")
        runs_layout.addWidget(self.use_tuned)
        row = QHBoxLayout()
        self.compare = QPushButton("Compare base and tuned…", enabled=False)
        self.compare.setAccessibleName("Compare the base and the tuned model")
        self.export = QPushButton("Write merged model", enabled=False)
        self.export.setAccessibleName("Write the merged model as a folder and a GGUF file")
        self.export.setToolTip("Fold the adapter into the weights: merged/ (Hugging Face) and model.gguf")
        row.addWidget(self.compare)
        row.addWidget(self.export)
        runs_layout.addLayout(row)
        self.outputs = QLabel("")
        self.outputs.setWordWrap(True)
        self.outputs.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        runs_layout.addWidget(self.outputs)
        layout.addWidget(runs)

        self.add_folder.clicked.connect(self._on_add_folder)
        self.add_files.clicked.connect(self._on_add_files)
        self.clear.clicked.connect(self._on_clear)
        self.start.clicked.connect(self.startRequested)
        self.stop.clicked.connect(self.stopRequested)
        self.resume.clicked.connect(self._on_resume)
        self.use_tuned.toggled.connect(self.useTunedToggled)
        self.compare.clicked.connect(lambda: self.selected_run() and self.compareRequested.emit(self.selected_run()))
        self.export.clicked.connect(lambda: self.selected_run() and self.exportRequested.emit(self.selected_run()))
        for w in (self.epochs, self.steps, self.batch, self.rank, self.seq_len):
            w.valueChanged.connect(self.update_estimate)
        self.method.currentIndexChanged.connect(self._on_method)
        # The chunks depend on the sequence length and the split: preview again once the value settles.
        self._repreview = QTimer(self, singleShot=True, interval=400)
        self._repreview.timeout.connect(self._on_repreview)
        for w in (self.seq_len, self.val_fraction):
            w.valueChanged.connect(self._repreview.start)
        self._train_chunks = 0

    # Choosing data

    def set_paths(self, paths: list[str]) -> None:
        self.paths = list(dict.fromkeys(paths))
        names = ", ".join(Path(p).name or p for p in self.paths)
        self.chosen.setText(f"Chosen: {names}" if self.paths else "Drop files or folders here.")
        self.chosen.setToolTip("\n".join(self.paths))
        self.pathsChanged.emit(self.paths)

    @Slot()
    def _on_add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder to train on")
        if folder:
            self.set_paths(self.paths + [folder])

    @Slot()
    def _on_add_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Files to train on")
        if files:
            self.set_paths(self.paths + list(files))

    @Slot()
    def _on_repreview(self) -> None:
        if self.paths:
            self.pathsChanged.emit(self.paths)

    @Slot()
    def _on_clear(self) -> None:
        self.set_paths([])

    def dragEnterEvent(self, event) -> None:  # noqa: N802 (Qt override)
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 (Qt override)
        local = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if local:
            self.set_paths(self.paths + local)
            event.acceptProposedAction()

    def config(self) -> dict[str, Any]:
        """The settings as `engine.finetune.FinetuneConfig` fields."""
        return {
            "method": self.method.currentData(),
            "rank": self.rank.value(),
            "alpha": 2.0 * self.rank.value(),
            "epochs": self.epochs.value(),
            "steps": self.steps.value() or None,
            "lr": self.lr.value(),
            "seq_len": self.seq_len.value(),
            "batch_size": self.batch.value(),
            "val_fraction": self.val_fraction.value(),
            "checkpoint_every": self.checkpoint_every.value(),
        }

    # Showing

    def show_preview(self, preview: dict) -> None:
        self.files.clear()
        for f in preview["files"]:
            note = f["skipped"] and f"skipped: {f['skipped']}" or "; ".join(f["notes"])
            item = QTreeWidgetItem(
                [
                    Path(f["path"]).name,
                    "" if f["skipped"] else str(f["tokens"]),
                    "" if f["skipped"] else str(f["chunks"]),
                    note,
                ]
            )
            item.setToolTip(0, f["path"])
            item.setToolTip(3, note)
            if f["skipped"]:
                for col in range(4):
                    item.setForeground(col, self.palette().placeholderText())
            self.files.addTopLevelItem(item)
        self.summary.setText(f"{preview['summary']}; {preview['train_tokens']:,} training tokens.")
        sep = "\n" + "─" * 24 + "\n"
        self.samples.setPlainText(sep.join(preview["samples"]))
        self._train_chunks = preview["train_chunks"]
        self.update_estimate()

    @Slot()
    def _on_method(self) -> None:
        self.rank.setEnabled(self.method.currentData() == "lora")
        self.update_estimate()

    @Slot()
    def update_estimate(self) -> None:
        if not self._train_chunks:
            self.estimate.setText("")
            return
        if self.model_config is None:
            steps = self.steps.value() or max(
                1, math.ceil(self.epochs.value() * self._train_chunks / self.batch.value())
            )
            self.estimate.setText(f"{steps} optimizer steps over {self._train_chunks} training chunks.")
            return
        e = estimate_run(
            self.model_config,
            method=self.method.currentData(),
            rank=self.rank.value(),
            targets=ALL_TARGETS,
            seq_len=self.seq_len.value(),
            batch_size=self.batch.value(),
            grad_accum=1,
            train_chunks=self._train_chunks,
            steps=self.steps.value() or None,
            epochs=self.epochs.value(),
            device_type=self.device_type,
            flops_per_second=self.flops_per_second,
        )
        time_text = f"about {duration(e.seconds)}" if e.seconds is not None else "unknown"
        trainable = f"{e.trainable_params / 1e6:.1f} M trainable weights"
        self.estimate.setText(
            f"{e.steps} optimizer steps over {self._train_chunks} training chunks ({e.tokens:,} tokens, {trainable}).\n"
            f"Estimate: time {time_text} · memory about {e.memory_bytes / GiB:.1f} GiB "
            f"(weights {e.weights_bytes / GiB:.1f}, optimizer {e.optimizer_bytes / GiB:.1f}, "
            f"activations {e.activation_bytes / GiB:.1f}). Rough: measured on this machine now."
        )
        self.estimate.setToolTip(
            "Time: the training FLOPs over this machine's measured matrix-multiply speed; memory: float32 weights,\n"
            "gradients and AdamW moments of the trained weights, and the activations of one batch."
        )

    def set_training(self, training: bool) -> None:
        self.start.setEnabled(not training)
        self.stop.setEnabled(training)
        for w in (self.add_folder, self.add_files, self.clear):
            w.setEnabled(not training)
        if training:
            for w in (self.resume, self.use_tuned, self.compare, self.export):
                w.setEnabled(False)

    def show_history(self, history: list[dict], val_before: float | None = None) -> None:
        """The curves; ``val_before`` (the validation loss before training) is drawn at step 0."""
        self.train_curve.setData([h["step"] for h in history], [h["train_loss"] for h in history])
        val = [(0, val_before)] if val_before is not None else []
        val += [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
        self.val_curve.setData([x for x, _ in val], [y for _, y in val])

    def show_progress(self, p: dict) -> None:
        self.progress.setMaximum(p["total_steps"])
        self.progress.setValue(p["step"])
        val = f" · val {p['val_loss']:.3f}" if p.get("val_loss") is not None else ""
        self.status.setText(
            f"Step {p['step']}/{p['total_steps']} · epoch {p['epoch']:.2f} · loss {p['train_loss']:.3f}{val} · "
            f"{p['tokens_per_second']:.0f} tokens/s · ETA {duration(p['eta_seconds'])}"
        )

    def selected_run(self) -> str:
        item = self.runs.currentItem()
        return item.data(0, Qt.ItemDataRole.UserRole) if item is not None else ""

    @Slot()
    def _on_resume(self) -> None:
        if self.selected_run():
            self.resumeRequested.emit(self.selected_run())


class FinetuneController(QObject):
    """The panel, the worker and its thread, and the runs file (``finetune_runs.json``, written atomically)."""

    def __init__(self, window: MainWindow, panel: FinetunePanel) -> None:
        super().__init__(window)
        self.window, self.panel = window, panel
        self.runs_file = window.dirs.data / RUNS_FILE
        self.runs: list[dict] = self._load_runs()
        self.training = ""  # out_dir of the run going on
        self.history: list[dict] = []
        self.thread = QThread(self)
        self.thread.setObjectName("finetune")
        engine = window.worker  # its `model` property is thread-safe
        self.worker = FinetuneWorker(lambda: engine.model)
        self.worker.moveToThread(self.thread)
        self.thread.start()
        panel.pathsChanged.connect(self._on_paths)
        panel.startRequested.connect(self.start)
        panel.stopRequested.connect(self.stop)  # not worker.stop: that would queue behind the run
        panel.resumeRequested.connect(self.resume)
        panel.useTunedToggled.connect(self._on_use_tuned)
        panel.compareRequested.connect(self.open_compare)
        panel.exportRequested.connect(self.export)
        panel.runs.currentItemChanged.connect(self._on_run_selected)
        # Bound slots of this UI-thread object (a lambda would run on the worker's thread).
        self.worker.previewed.connect(self._on_previewed)
        self.worker.previewFailed.connect(self._on_preview_failed)
        self.worker.started.connect(self._on_started)
        self.worker.progress.connect(self._on_progress)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        self.worker.tunedChanged.connect(self._on_tuned_changed)
        self.worker.tunedFailed.connect(self._on_tuned_failed)
        self.worker.exported.connect(self._on_exported)
        self.worker.exportFailed.connect(self._on_export_failed)
        self.worker.compareText.connect(self._on_compare_text)
        self.worker.compareDone.connect(self._on_compare_done)
        self.worker.compareFailed.connect(self._on_compare_failed)
        self.worker.scored.connect(self._on_scored)
        self.compare_dialog: CompareDialog | None = None
        self.compare_run = ""  # out_dir of the run the open compare view is about
        self.exporting = ""
        engine.loaded.connect(self._on_model_loaded)
        self._show_runs()

    # Runs file

    def _load_runs(self) -> list[dict]:
        import json

        try:
            runs = json.loads(self.runs_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            self.runs_file.replace(self.runs_file.with_suffix(".damaged.json"))  # kept aside, not overwritten
            return []
        runs = [r for r in runs if isinstance(r, dict) and "out_dir" in r] if isinstance(runs, list) else []
        for r in runs:
            if r.get("status") == "running":  # the app stopped during that run
                r["status"] = "interrupted"
        return runs

    def _save_runs(self) -> None:
        write_json_atomic(self.runs_file, self.runs)

    def _run(self, out_dir: str) -> dict | None:
        return next((r for r in self.runs if r["out_dir"] == out_dir), None)

    def _show_runs(self, select: str = "") -> None:
        tree = self.panel.runs
        tree.blockSignals(True)
        tree.clear()
        chosen = None
        for r in reversed(self.runs):
            losses = f"{loss_text(r.get('val_loss_before'))} → {loss_text(r.get('val_loss_after'))}"
            active = " (in chat)" if r["out_dir"] == self.worker.active else ""
            item = QTreeWidgetItem(
                [
                    r.get("name", Path(r["out_dir"]).name) + active,
                    r.get("status", "?"),
                    f"{r.get('step', 0)}/{r.get('total_steps') or '?'}",
                    losses,
                    settings_text(r.get("config", {})),
                ]
            )
            item.setData(0, Qt.ItemDataRole.UserRole, r["out_dir"])
            tip = f"{r['out_dir']}\nmodel: {r.get('model', '?')}\nfiles: {', '.join(r.get('paths', []))}"
            tip += f"\n{settings_text(r.get('config', {}))}"
            for col in range(5):
                item.setToolTip(col, tip)
            if r.get("error"):
                item.setToolTip(1, r["error"])
            tree.addTopLevelItem(item)
            if r["out_dir"] == select:
                chosen = item
        for col in range(4):
            tree.resizeColumnToContents(col)
        tree.blockSignals(False)
        if chosen is not None:
            tree.setCurrentItem(chosen)
        else:
            self._on_run_selected()

    # Data and settings

    @Slot(list)
    def _on_paths(self, paths: list) -> None:
        if not paths:
            self.panel.files.clear()
            self.panel.samples.clear()
            self.panel.summary.setText("")
            return
        self.panel.summary.setText("Reading the files…")
        self.worker.requestPreview.emit(paths, self.panel.seq_len.value(), self.panel.val_fraction.value())

    @Slot(dict)
    def _on_previewed(self, preview: dict) -> None:
        if preview["paths"] == self.panel.paths:  # not an answer for files since replaced
            lm = self.window.worker.model
            if lm is not None:
                self.panel.model_config, self.panel.device_type = lm.config, lm.model.device.type
            self.panel.flops_per_second = preview.get("flops_per_second")
            self.panel.show_preview(preview)

    @Slot(str)
    def _on_preview_failed(self, message: str) -> None:
        self.panel.summary.setText(message)

    # Training

    def _refused(self) -> bool:
        if self.window.worker.model is None:
            QMessageBox.information(self.window, "No model", "Load a model first: fine-tuning trains the loaded model.")
            return True
        if self.window.session.generating:
            QMessageBox.information(
                self.window,
                "A reply is being written",
                "Wait for the chat reply to finish, or stop it, then start training.",
            )
            return True
        return bool(self.training)

    @Slot()
    def start(self) -> None:
        if not self.panel.paths:
            QMessageBox.information(self.window, "No files", "Choose files or a folder to train on first.")
            return
        if self._refused():
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = self.window.dirs.data / "finetune" / f"run-{stamp}"
        n = 1
        while out_dir.exists() or self._run(str(out_dir)):
            n += 1
            out_dir = out_dir.with_name(f"run-{stamp}-{n}")
        config = self.panel.config()
        record = {
            "name": time.strftime("%d %b %H:%M"),
            "out_dir": str(out_dir),
            "paths": list(self.panel.paths),
            "model": str(self.window.worker.model.path),
            "config": config,
            "status": "running",
            "step": 0,
            "total_steps": None,
            "history": [],
        }
        self.runs.append(record)
        self._launch(record, resume=False)

    @Slot(str)
    def resume(self, out_dir: str) -> None:
        record = self._run(out_dir)
        if record is None or self._refused():
            return
        if latest_checkpoint(out_dir) is None:
            QMessageBox.information(self.window, "Cannot resume", "This run has no checkpoint to resume from.")
            return
        record["status"] = "running"
        record.pop("error", None)
        self._launch(record, resume=True)

    def _launch(self, record: dict, resume: bool) -> None:
        self.training = record["out_dir"]
        self.history = list(record.get("history", [])) if resume else []
        self.panel.show_history(self.history)
        self.panel.set_training(True)
        self.panel.progress.setValue(0)
        self.panel.status.setText("Waiting for the model…" if not resume else "Resuming…")
        self._save_runs()
        self._show_runs(select=record["out_dir"])
        self.worker.train(record["paths"], record["config"], record["out_dir"], resume)

    @Slot(dict)
    def _on_started(self, info: dict) -> None:
        self.panel.status.setText("Reading the files and measuring the validation loss…")

    @Slot(list)
    def _on_progress(self, batch: list) -> None:
        self.history.extend(batch)
        self.panel.show_history(self.history)
        self.panel.show_progress(batch[-1])

    @Slot(dict)
    def _on_finished(self, result: dict) -> None:
        record = self._run(result["out_dir"])
        self.training = ""
        self.panel.set_training(False)
        if record is None:
            return
        for key in ("status", "step", "total_steps", "val_loss_before", "val_loss_after", "history", "adapter_dir"):
            if key in result and (result[key] is not None or key not in record):
                record[key] = result[key]
        record.setdefault("outputs", {}).update(result.get("outputs") or {})
        if result["status"] == "finished":
            before, after = record.get("val_loss_before"), record.get("val_loss_after")
            losses = f" Validation loss {before:.3f} → {after:.3f}." if before is not None and after is not None else ""
            self.panel.status.setText(
                f"Finished {record['step']} steps.{losses} "
                + (
                    "Tick “Use the tuned model in chat” to try it."
                    if record.get("adapter_dir")
                    else "Compare it with the base."
                )
            )
        else:
            self.panel.status.setText(
                f"Stopped at step {record.get('step', 0)}; select the run and press Resume to go on."
            )
        self._save_runs()
        self._show_runs(select=record["out_dir"])

    @Slot(str, str)
    def _on_failed(self, out_dir: str, message: str) -> None:
        self.training = ""
        self.panel.set_training(False)
        record = self._run(out_dir)
        if record is not None:
            record["status"] = "failed"
            record["error"] = message
            record["history"] = self.history
            if self.history:
                record["step"] = self.history[-1]["step"]
            self._save_runs()
            self._show_runs(select=out_dir)
        self.panel.status.setText(f"Training failed: {message}")

    # Runs and the chat model

    @Slot()
    def _on_run_selected(self, *_args) -> None:
        out_dir = self.panel.selected_run()
        record = self._run(out_dir) if out_dir else None
        if not self.training:
            if record is not None:
                self.panel.show_history(record.get("history", []), record.get("val_loss_before"))
            self.panel.resume.setEnabled(record is not None and record.get("status") in RESUMABLE)
            finished = record is not None and record.get("status") == "finished"
            usable = finished and bool(record.get("adapter_dir"))
            self.panel.use_tuned.setEnabled(usable or bool(self.worker.active))
            outputs = (record or {}).get("outputs") or {}
            self.panel.compare.setEnabled(usable or (finished and bool(outputs.get("merged_dir"))))
            self.panel.export.setEnabled(usable and not self.exporting)
        self.panel.outputs.setText(self._outputs_text(record))
        self.panel.use_tuned.blockSignals(True)
        self.panel.use_tuned.setChecked(bool(self.worker.active) and self.worker.active == out_dir)
        self.panel.use_tuned.blockSignals(False)

    @staticmethod
    def _outputs_text(record: dict | None) -> str:
        if record is None:
            return ""
        outputs = dict(record.get("outputs") or {})
        if record.get("adapter_dir"):
            outputs.setdefault("adapter_dir", record["adapter_dir"])
        labels = (("adapter_dir", "Adapter"), ("merged_dir", "Merged folder"), ("gguf_path", "GGUF"))
        lines = [f"{label}: {outputs[key]}" for key, label in labels if outputs.get(key)]
        if outputs.get("gguf_skipped"):
            lines.append(f"No GGUF: {outputs['gguf_skipped']}")
        return "\n".join(lines)

    # Merged exports

    @Slot(str)
    def export(self, out_dir: str) -> None:
        record = self._run(out_dir)
        if record is None or self.exporting or self.training:
            return
        self.exporting = out_dir
        self.panel.export.setEnabled(False)
        self.panel.status.setText("Writing the merged model (folder and GGUF)…")
        self.worker.requestExport.emit(out_dir, record.get("model", ""), "f16")

    @Slot(str, dict)
    def _on_exported(self, out_dir: str, info: dict) -> None:
        self.exporting = ""
        record = self._run(out_dir)
        if record is not None:
            record.setdefault("outputs", {}).update(info)
            self._save_runs()
        self.panel.status.setText(
            "Merged model written: " + ", ".join(str(v) for k, v in info.items() if k != "gguf_skipped")
        )
        self._on_run_selected()

    @Slot(str, str)
    def _on_export_failed(self, out_dir: str, message: str) -> None:
        self.exporting = ""
        self.panel.status.setText(f"Could not write the merged model: {message}")
        self._on_run_selected()

    # The compare view

    @Slot(str)
    def open_compare(self, out_dir: str) -> None:
        record = self._run(out_dir)
        if record is None or self._refused():
            return
        if self.compare_dialog is not None:
            self.compare_dialog.close()
        dialog = CompareDialog(record.get("name", Path(out_dir).name), self.window)
        method = record.get("config", {}).get("method", "lora")
        model = record.get("model", "")
        dialog.compareRequested.connect(
            lambda prompt, n, chat: self._send_compare(dialog, out_dir, model, method, prompt, n, chat)
        )
        dialog.scoreRequested.connect(lambda text: self._send_score(dialog, out_dir, model, method, text))
        dialog.stopRequested.connect(self.worker.compare_stop.set)
        self.compare_dialog, self.compare_run = dialog, out_dir
        dialog.show()

    def _send_compare(self, dialog, out_dir, model, method, prompt, n, chat) -> None:
        if self.training or self.window.session.generating:
            dialog.show_error("the model is busy (training or writing a chat reply); try again when it is done")
            return
        self.worker.compare_stop.clear()
        self.worker.requestCompare.emit(out_dir, model, method, prompt, n, chat)

    def _send_score(self, dialog, out_dir, model, method, text) -> None:
        if self.training or self.window.session.generating:
            dialog.show_error("the model is busy (training or writing a chat reply); try again when it is done")
            return
        self.worker.compare_stop.clear()
        self.worker.requestScore.emit(out_dir, model, method, text)

    @Slot(str, str)
    def _on_compare_text(self, side: str, text: str) -> None:
        if self.compare_dialog is not None:
            self.compare_dialog.append(side, text)

    @Slot(dict)
    def _on_compare_done(self, result: dict) -> None:
        if self.compare_dialog is not None:
            self.compare_dialog.show_done(result)

    @Slot(str)
    def _on_compare_failed(self, message: str) -> None:
        if self.compare_dialog is not None:
            self.compare_dialog.show_error(message)

    @Slot(dict)
    def _on_scored(self, scored: dict) -> None:
        if self.compare_dialog is not None:
            self.compare_dialog.show_scored(scored)

    @Slot(bool)
    def _on_use_tuned(self, on: bool) -> None:
        if self.training:
            return
        if on:
            record = self._run(self.panel.selected_run())
            if record is None:
                return
            self.worker.requestUseTuned.emit(record["out_dir"], record.get("model", ""))
        else:
            self.worker.requestUseTuned.emit("", "")

    @Slot(str)
    def _on_tuned_changed(self, out_dir: str) -> None:
        self._show_runs(select=self.panel.selected_run())
        record = self._run(out_dir)
        if record is not None:
            self.window.statusBar().showMessage(f"Chat now uses the model tuned in run {record.get('name')}.", 5000)
        elif not self.training:
            self.window.statusBar().showMessage("Chat now uses the base model.", 5000)

    @Slot(dict)
    def _on_model_loaded(self, _info: dict) -> None:
        """Another model (or the same one again): the chat starts on its base weights."""
        if self.worker.active:
            self.worker.requestUseTuned.emit("", "")

    @Slot(str)
    def _on_tuned_failed(self, message: str) -> None:
        QMessageBox.warning(self.window, "Cannot use the tuned model", message)
        self._on_run_selected()

    @Slot()
    def stop(self) -> None:
        self.worker.stop()  # sets a threading.Event directly, on this thread
        if self.training:
            self.panel.status.setText("Stopping after this step…")

    def shutdown(self) -> None:
        """On closing: stop a run (it writes a checkpoint), then end the thread."""
        self.worker.stop()
        self.worker.compare_stop.set()
        if self.compare_dialog is not None:
            self.compare_dialog.close()
        self.thread.quit()
        self.thread.wait(60_000)
