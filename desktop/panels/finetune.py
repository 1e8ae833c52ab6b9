"""Fine-tuning on the user's own files: choose files or a folder (dialog or drag-and-drop), preview what
will be trained, settings, Start / Stop / Resume, progress with ETA and tokens/s, a live chart of the
training and validation loss, past runs (kept in ``finetune_runs.json`` in the data folder), and the
switch that puts a run's adapter into the chat model, the compare view (`desktop.panels.compare`) and the
merged exports (``merged/`` and ``model.gguf``) of a finished run. Before Start, an estimate of the run's
time and memory for the chosen settings (`engine.finetune.estimate`); LoRA or full fine-tuning.

`FinetunePanel` is widgets only; `desktop.finetune_controller.FinetuneController` owns the worker, its
thread and the list of runs, and ties them to the panel.

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
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QValidator
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
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.messages import Preview
from desktop.panels.charts import BLUE, ORANGE, styled
from engine.finetune.estimate import estimate_run
from engine.finetune.lora import ALL_TARGETS
from engine.finetune.probes import MAX_PROBES
from engine.finetune.train import Progress

GiB = 1 << 30


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RateSpinBox(QDoubleSpinBox):
    """A learning rate, shown as people write it (``2e-04``), stepping by factors of two."""

    def __init__(self, **kwargs) -> None:
        super().__init__(minimum=1e-7, maximum=0.1, decimals=9, **kwargs)
        self.setValue(2e-4)

    def textFromValue(self, value: float) -> str:  # noqa: N802 (Qt override)
        return f"{value:.0e}" if value else "0"

    def valueFromText(self, text: str) -> float:  # noqa: N802 (Qt override)
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):
        try:
            float(text)
        except ValueError:
            return QValidator.State.Intermediate, text, pos
        return QValidator.State.Acceptable, text, pos

    def stepBy(self, steps: int) -> None:  # noqa: N802 (Qt override)
        self.setValue(self.value() * 2.0**steps)


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
        self._preview: Preview | None = None  # the files' chunks and the machine's rates, for the estimate
        self._train_chunks = 0
        layout = QVBoxLayout(self)
        for box in (self._data_box(), self._settings_box(), self._run_box(), self._runs_box()):
            layout.addWidget(box)
        self._connect()

    def _data_box(self) -> QGroupBox:
        """The files chosen, what they hold, and sample chunks."""
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
        return data

    def _settings_box(self) -> QGroupBox:
        """The run's settings and the estimate of its time and memory."""
        box = QGroupBox("Settings")
        box_layout = QVBoxLayout(box)
        form = QFormLayout()
        box_layout.addLayout(form)
        self.method = QComboBox(accessibleName="Fine-tuning method")
        self.method.addItem("LoRA adapter (small, fast)", "lora")
        self.method.addItem("Full: every weight (float32)", "full")
        self.method.setToolTip(
            "LoRA trains a small adapter beside the frozen weights; full fine-tuning trains every weight of a\n"
            "float32 copy of the model and needs several times its size in memory."
        )
        self.auto = QCheckBox("From my files (recommended)", checked=True)
        self.auto.setAccessibleName("Choose the settings from my files")
        self.auto.setToolTip("Epochs, learning rate, rank, validation and questions follow the size of your files")
        self.rank = QSpinBox(minimum=1, maximum=256, value=16, accessibleName="LoRA rank")
        self.epochs = QDoubleSpinBox(minimum=0.1, maximum=100, value=12.0, decimals=1, singleStep=0.5)
        self.epochs.setAccessibleName("Epochs")
        self.steps = QSpinBox(minimum=0, maximum=1_000_000, value=0, accessibleName="Steps")
        self.steps.setSpecialValueText("from epochs")
        self.lr = RateSpinBox(accessibleName="Learning rate")
        self.lessons = QCheckBox("Train on questions from facts", checked=True)
        self.lessons.setAccessibleName("Also train on questions made from the facts")
        self.probes = QCheckBox("Before and after training", checked=True)
        self.probes.setAccessibleName("Ask questions from my files before and after training")
        self.probes.setToolTip(
            "Up to 8 questions about facts in your files, asked of the base and the tuned model, to show what\n"
            "it learned (about half a minute each way on a CPU)"
        )
        self.seq_len = QSpinBox(minimum=16, maximum=8192, value=256, singleStep=64, accessibleName="Sequence length")
        self.batch = QSpinBox(minimum=1, maximum=256, value=4, accessibleName="Batch size")
        self.val_fraction = QDoubleSpinBox(minimum=0.0, maximum=0.5, value=0.0, decimals=2, singleStep=0.05)
        self.val_fraction.setAccessibleName("Validation fraction")
        self.checkpoint_every = QSpinBox(minimum=0, maximum=100_000, value=50, accessibleName="Checkpoint every")
        self.checkpoint_every.setSpecialValueText("at the end only")
        form.addRow("Method", self.method)
        form.addRow("Settings", self.auto)
        form.addRow("LoRA rank", self.rank)
        form.addRow("Epochs", self.epochs)
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Sequence length", self.seq_len)
        form.addRow("Batch size", self.batch)
        form.addRow("Validation", self.val_fraction)
        form.addRow("Questions", self.lessons)
        form.addRow("Recall check", self.probes)
        form.addRow("Checkpoint every", self.checkpoint_every)
        self.reasons = QLabel("")
        self.reasons.setWordWrap(True)
        box_layout.addWidget(self.reasons)
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)
        box_layout.addWidget(self.estimate)  # not a form row: a wrapped label there gets one line's height
        return box

    def _run_box(self) -> QGroupBox:
        """Start, Stop, Resume, the progress and the loss chart."""
        run = QGroupBox("Training")
        run_layout = QVBoxLayout(run)
        row = QHBoxLayout()
        self.start = QPushButton("Start", accessibleName="Start training", enabled=False)
        self.start.setToolTip("Choose files or a folder to train on first")
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
        self.recall_summary = QLabel("")
        self.recall_summary.setWordWrap(True)
        run_layout.addWidget(self.recall_summary)
        self.recall = QTreeWidget(accessibleName="What it learned: questions from your files")
        self.recall.setHeaderLabels(["Question", "Expected", "Before", "After"])
        self.recall.setRootIsDecorated(False)
        self.recall.setWordWrap(True)
        self.recall.setMinimumHeight(120)
        self.recall.hide()
        run_layout.addWidget(self.recall)
        return run

    def _runs_box(self) -> QGroupBox:
        """Past runs, the tuned model in chat, compare and export."""
        runs = QGroupBox("Runs")
        runs_layout = QVBoxLayout(runs)
        self.runs = QTreeWidget(accessibleName="Fine-tuning runs")
        self.runs.setHeaderLabels(["Run", "Status", "Steps", "Val. loss", "Settings"])
        self.runs.setRootIsDecorated(False)
        self.runs.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.runs.setMinimumHeight(100)
        for col in range(4):  # the headings whole; the settings take the rest
            self.runs.header().setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
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
        return runs

    def _connect(self) -> None:
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
        self.auto.toggled.connect(self._on_auto)
        self.method.currentIndexChanged.connect(self._on_method)
        # The chunks depend on the sequence length and the split: preview again once the value settles.
        self._repreview = QTimer(self, singleShot=True, interval=400)
        self._repreview.timeout.connect(self._on_repreview)
        for w in (self.seq_len, self.val_fraction):
            w.valueChanged.connect(self._repreview.start)
        self.lessons.toggled.connect(self._repreview.start)
        self._on_auto(True)

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
        """The settings as `engine.finetune.FinetuneConfig` fields; None where they are chosen from the files
        (`engine.finetune.plan`)."""
        chosen = self.auto.isChecked()
        return {
            "method": self.method.currentData(),
            "rank": None if chosen else self.rank.value(),
            "alpha": None if chosen else 2.0 * self.rank.value(),
            "epochs": None if chosen else self.epochs.value(),
            "steps": None if chosen else self.steps.value() or None,
            "lr": None if chosen else self.lr.value(),
            "seq_len": self.seq_len.value(),
            "batch_size": self.batch.value(),
            "val_fraction": None if chosen else self.val_fraction.value(),
            "lessons": None if chosen else self.lessons.isChecked(),
            "checkpoint_every": self.checkpoint_every.value(),
            "probes": MAX_PROBES if self.probes.isChecked() else 0,
        }

    @Slot(bool)
    def _on_auto(self, chosen: bool) -> None:
        for w in (self.rank, self.epochs, self.steps, self.lr, self.val_fraction, self.lessons):
            w.setEnabled(not chosen and (w is not self.rank or self.method.currentData() == "lora"))
        if chosen:
            self.steps.setValue(0)
        self.reasons.setVisible(chosen)
        self._repreview.start()

    # Showing

    def show_preview(self, preview: Preview) -> None:
        self.files.clear()
        for f in preview.files:
            note = f.skipped and f"skipped: {f.skipped}" or "; ".join(f.notes)
            item = QTreeWidgetItem(
                [
                    Path(f.path).name,
                    "" if f.skipped else str(f.tokens),
                    "" if f.skipped else str(f.chunks),
                    note,
                ]
            )
            item.setToolTip(0, f.path)
            item.setToolTip(3, note)
            if f.skipped:
                for col in range(4):
                    item.setForeground(col, self.palette().placeholderText())
            self.files.addTopLevelItem(item)
        self.summary.setText(f"{preview.summary}; {preview.train_tokens:,} training tokens.")
        sep = "\n" + "─" * 24 + "\n"
        self.samples.setPlainText(sep.join(preview.samples))
        self._train_chunks = preview.train_chunks
        self._preview = preview
        if self.auto.isChecked() and preview.planned:
            self._show_planned(preview.planned)
        self.reasons.setText("Chosen from your files: " + "; ".join(preview.reasons) + "." if preview.reasons else "")
        self.start.setEnabled(preview.train_chunks > 0 and not self.stop.isEnabled())
        self.start.setToolTip("" if preview.train_chunks else "None of the chosen files has text to train on")
        self.update_estimate()

    def _show_planned(self, planned) -> None:
        """The settings a run will use, in the (disabled) fields, without asking for another preview."""
        widgets = (self.rank, self.epochs, self.lr, self.val_fraction, self.lessons)
        for w in widgets:
            w.blockSignals(True)
        self.rank.setValue(int(planned["rank"]))
        self.epochs.setValue(float(planned["epochs"]))
        self.lr.setValue(float(planned["lr"]))
        self.val_fraction.setValue(float(planned["val_fraction"]))
        self.lessons.setChecked(bool(planned["lessons"]))
        for w in widgets:
            w.blockSignals(False)

    @Slot()
    def _on_method(self) -> None:
        self.rank.setEnabled(self.method.currentData() == "lora" and not self.auto.isChecked())
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
        full = self.method.currentData() == "full"
        p = self._preview
        e = estimate_run(
            self.model_config,
            method=self.method.currentData(),
            rank=self.rank.value(),
            targets=ALL_TARGETS,
            seq_len=self.seq_len.value(),
            batch_size=self.batch.value(),
            grad_accum=1,
            train_chunks=self._train_chunks,
            train_tokens=p.train_tokens if p is not None else None,
            steps=self.steps.value() or None,
            epochs=self.epochs.value(),
            probes=p.probes if p is not None and self.probes.isChecked() else 0,
            export=full,  # a LoRA run writes its merged outputs only when asked
            dtype_bytes=4 if full or p is None else p.lora_dtype_bytes,
            device_type=self.device_type,
            flops_per_second=None if p is None else p.full_flops_per_second if full else p.flops_per_second,
        )
        time_text = "unknown"
        if e.seconds is not None:
            time_text = f"about {duration(e.seconds)}"
            if e.probe_seconds:
                time_text += f" ({duration(e.probe_seconds)} of it asking the recall questions)"
        trainable = f"{e.trainable_params / 1e6:.1f} M trainable weights"
        self.estimate.setText(
            f"{e.steps} optimizer steps over {self._train_chunks} training chunks ({e.tokens:,} tokens, {trainable}).\n"
            f"Estimate: time {time_text} · memory about {e.memory_bytes / GiB:.1f} GiB "
            f"(weights {e.weights_bytes / GiB:.1f}, optimizer {e.optimizer_bytes / GiB:.1f}, "
            f"activations {e.activation_bytes / GiB:.1f}). Rough: measured on this machine now."
        )
        self.estimate.setToolTip(
            "Time: the training FLOPs over this machine's measured matrix-multiply speed, the recall questions\n"
            "asked before and after, and for full fine-tuning the merged outputs; memory: the weights, the\n"
            "gradients and AdamW moments of the trained weights, and the activations of one batch."
        )

    def set_training(self, training: bool) -> None:
        self.start.setEnabled(not training and self._train_chunks > 0)
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

    def show_progress(self, p: Progress) -> None:
        self.progress.setMaximum(p.total_steps)
        self.progress.setValue(p.step)
        val = f" · val {p.val_loss:.3f}" if p.val_loss is not None else ""
        self.status.setText(
            f"Step {p.step}/{p.total_steps} · epoch {p.epoch:.2f} · loss {p.train_loss:.3f}{val} · "
            f"{p.tokens_per_second:.0f} tokens/s · ETA {duration(p.eta_seconds)}"
        )

    def show_recall(self, recall: dict | None) -> None:
        """The probe questions with both answers (`engine.finetune.probes.Recall.to_json`), or nothing."""
        self.recall.clear()
        self.recall.setVisible(bool(recall and recall["probes"]))
        if not recall or not recall["probes"]:
            self.recall_summary.setText("")
            return
        n = len(recall["probes"])
        self.recall_summary.setText(
            f"<b>What it learned:</b> {recall['recalled_before']}/{n} questions from your files answered before, "
            f"<b>{recall['recalled_after']}/{n}</b> after."
        )
        for p in recall["probes"]:
            marks = ["✓ " if p[f"{w}_recalled"] else "✗ " for w in ("before", "after")]
            item = QTreeWidgetItem([p["question"], p["expected"], marks[0] + p["before"], marks[1] + p["after"]])
            for col, text in enumerate((p["question"], p["expected"], p["before"], p["after"])):
                item.setToolTip(col, text)
            self.recall.addTopLevelItem(item)

    def selected_run(self) -> str:
        item = self.runs.currentItem()
        return item.data(0, Qt.ItemDataRole.UserRole) if item is not None else ""

    @Slot()
    def _on_resume(self) -> None:
        if self.selected_run():
            self.resumeRequested.emit(self.selected_run())
