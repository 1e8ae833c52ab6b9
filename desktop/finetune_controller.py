"""Fine-tuning from the desktop: `FinetuneController` owns the `desktop.finetune_worker.FinetuneWorker`
and its thread, the list of past runs (`desktop.finetune_runs`), the compare view and the merged exports,
and ties them to the `desktop.panels.finetune.FinetunePanel`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, Slot
from PySide6.QtWidgets import QMessageBox, QTreeWidgetItem

from desktop.engine_worker import EngineWorker
from desktop.finetune_runs import RESUMABLE, RUNS_FILE, RunRecord, load_runs, save_runs
from desktop.finetune_worker import FinetuneWorker
from desktop.messages import (
    Compared,
    Exported,
    ModelInfo,
    Preview,
    PreviewRequest,
    RunEnded,
    RunStarted,
    Scored,
    TrainRequest,
    frozen_map,
)
from desktop.panels.compare import CompareDialog
from desktop.panels.finetune import FinetunePanel
from engine.finetune.train import Progress, latest_checkpoint


def settings_text(cfg: dict) -> str:
    """A run's settings in one line; "auto" where they are still to be chosen from the files."""

    def value(key: str, fmt: str = "{:g}") -> str:
        return "auto" if cfg.get(key) is None else fmt.format(cfg[key])

    steps = f"{cfg['steps']} steps" if cfg.get("steps") else f"{value('epochs')} epochs"
    method = "full" if cfg.get("method") == "full" else f"LoRA r{value('rank')}"
    return (
        f"{method}, {steps}, lr {value('lr')}, seq {cfg.get('seq_len')}, batch {cfg.get('batch_size')}, "
        f"val {value('val_fraction')}"
    )


def loss_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


class FinetuneController(QObject):
    """The panel, the worker and its thread, and the runs file. ``engine``: the chat's worker (its loaded
    model is the one trained); ``data_dir``: where runs and the runs file go; ``chatting()``: a chat reply is
    being written; ``show_status(text, ms)``: the status bar. The panel is the parent of its dialogs."""

    def __init__(
        self,
        panel: FinetunePanel,
        *,
        engine: EngineWorker,
        data_dir: Path,
        chatting: Callable[[], bool],
        show_status: Callable[[str, int], None],
    ) -> None:
        super().__init__(panel)
        self.panel, self.engine, self.data_dir = panel, engine, data_dir
        self._chatting, self._show_status = chatting, show_status
        self.runs_file = data_dir / RUNS_FILE
        self.runs: list[RunRecord] = load_runs(self.runs_file)
        self.training = ""  # out_dir of the run going on
        self.history: list[dict] = []
        self.thread = QThread(self)
        self.thread.setObjectName("finetune")
        self.worker = FinetuneWorker(lambda: engine.model)  # its `model` property is thread-safe
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

    def _run(self, out_dir: str) -> RunRecord | None:
        return next((r for r in self.runs if r.out_dir == out_dir), None)

    def _save(self, record: RunRecord) -> None:
        """Keep ``record`` in place of the run's previous one (or as a new run) and write the runs file."""
        if self._run(record.out_dir) is None:
            self.runs.append(record)
        else:
            self.runs = [record if r.out_dir == record.out_dir else r for r in self.runs]
        save_runs(self.runs_file, self.runs)

    def _show_runs(self, select: str = "") -> None:
        tree = self.panel.runs
        tree.blockSignals(True)
        tree.clear()
        chosen = None
        for r in reversed(self.runs):
            losses = f"{loss_text(r.val_loss_before)} → {loss_text(r.val_loss_after)}"
            active = " (in chat)" if r.out_dir == self.worker.active else ""
            item = QTreeWidgetItem(
                [
                    r.name + active,
                    r.status,
                    f"{r.step}/{r.total_steps or '?'}",
                    losses,
                    settings_text(r.config),
                ]
            )
            item.setData(0, Qt.ItemDataRole.UserRole, r.out_dir)
            tip = f"{r.out_dir}\nmodel: {r.model or '?'}\nfiles: {', '.join(r.paths)}"
            tip += f"\n{settings_text(r.config)}"
            for col in range(5):
                item.setToolTip(col, tip)
            if r.error:
                item.setToolTip(1, r.error)
            tree.addTopLevelItem(item)
            if r.out_dir == select:
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
        self.worker.requestPreview.emit(PreviewRequest(tuple(paths), frozen_map(self.panel.config())))

    @Slot(object)
    def _on_previewed(self, preview: Preview) -> None:
        if list(preview.paths) == self.panel.paths:  # not an answer for files since replaced
            lm = self.engine.model
            if lm is not None:
                self.panel.model_config, self.panel.device_type = lm.config, lm.model.device.type
            self.panel.show_preview(preview)

    @Slot(str)
    def _on_preview_failed(self, message: str) -> None:
        self.panel.summary.setText(message)

    # Training

    def _refused(self) -> bool:
        if self.engine.model is None:
            QMessageBox.information(self.panel, "No model", "Load a model first: fine-tuning trains the loaded model.")
            return True
        if self._chatting():
            QMessageBox.information(
                self.panel,
                "A reply is being written",
                "Wait for the chat reply to finish, or stop it, then start training.",
            )
            return True
        return bool(self.training)

    @Slot()
    def start(self) -> None:
        if not self.panel.paths:
            QMessageBox.information(self.panel, "No files", "Choose files or a folder to train on first.")
            return
        if self._refused():
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = self.data_dir / "finetune" / f"run-{stamp}"
        n = 1
        while out_dir.exists() or self._run(str(out_dir)):
            n += 1
            out_dir = out_dir.with_name(f"run-{stamp}-{n}")
        record = RunRecord(
            out_dir=str(out_dir),
            name=time.strftime("%d %b %H:%M"),
            paths=tuple(self.panel.paths),
            model=str(self.engine.model.path),
            config=self.panel.config(),
        )
        self._launch(record, resume=False)

    @Slot(str)
    def resume(self, out_dir: str) -> None:
        record = self._run(out_dir)
        if record is None or self._refused():
            return
        if latest_checkpoint(out_dir) is None:
            QMessageBox.information(self.panel, "Cannot resume", "This run has no checkpoint to resume from.")
            return
        self._launch(replace(record, status="running", error=None), resume=True)

    def _launch(self, record: RunRecord, resume: bool) -> None:
        self.training = record.out_dir
        self.history = list(record.history) if resume else []
        self.panel.show_history(self.history)
        self.panel.set_training(True)
        self.panel.progress.setValue(0)
        self.panel.status.setText("Waiting for the model…" if not resume else "Resuming…")
        self._save(record)
        self._show_runs(select=record.out_dir)
        self.worker.train(TrainRequest(record.paths, frozen_map(record.config), record.out_dir, resume))

    @Slot(object)
    def _on_started(self, started: RunStarted) -> None:
        record = self._run(started.out_dir)
        if record is not None and started.config:  # the settings chosen from the files, as the run uses them
            self._save(replace(record, config=dict(started.config)))
            self._show_runs(select=started.out_dir)
        self.panel.show_recall(None)
        self.panel.status.setText("Reading the files and asking the base model questions about them…")

    @Slot(object)
    def _on_progress(self, batch: tuple[Progress, ...]) -> None:
        self.history.extend(asdict(p) for p in batch)  # as the runs file keeps them
        self.panel.show_history(self.history)
        self.panel.show_progress(batch[-1])

    @Slot(object)
    def _on_finished(self, ended: RunEnded) -> None:
        record = self._run(ended.out_dir)
        self.training = ""
        self.panel.set_training(False)
        if record is None:
            return
        values = {  # what the run knows; None: not known (a run stopped before it started), kept as it was
            "total_steps": ended.total_steps,
            "val_loss_before": ended.val_loss_before,
            "val_loss_after": ended.val_loss_after,
            "adapter_dir": ended.outputs.adapter_dir,
            "recall": ended.recall.to_json() if ended.recall is not None else None,
        }
        record = replace(
            record,
            status=ended.status,
            step=ended.step,
            history=ended.history,
            outputs={**record.outputs, **ended.outputs.written()},
            **{k: v for k, v in values.items() if v is not None},
        )
        if ended.status == "finished":
            before, after = record.val_loss_before, record.val_loss_after
            losses = f" Validation loss {before:.3f} → {after:.3f}." if before is not None and after is not None else ""
            if record.recall:
                n = len(record.recall["probes"])
                losses += f" Recall {record.recall['recalled_before']}/{n} → {record.recall['recalled_after']}/{n}."
            self.panel.status.setText(
                f"Finished {record.step} steps.{losses} "
                + (
                    "Tick “Use the tuned model in chat” to try it."
                    if record.adapter_dir
                    else "Compare it with the base."
                )
            )
        else:
            self.panel.status.setText(f"Stopped at step {record.step}; select the run and press Resume to go on.")
        self._save(record)
        self._show_runs(select=record.out_dir)

    @Slot(str, str)
    def _on_failed(self, out_dir: str, message: str) -> None:
        self.training = ""
        self.panel.set_training(False)
        record = self._run(out_dir)
        if record is not None:
            step = self.history[-1]["step"] if self.history else record.step
            self._save(replace(record, status="failed", error=message, history=tuple(self.history), step=step))
            self._show_runs(select=out_dir)
        self.panel.status.setText(f"Training failed: {message}")

    # Runs and the chat model

    @Slot()
    def _on_run_selected(self, *_args) -> None:
        out_dir = self.panel.selected_run()
        record = self._run(out_dir) if out_dir else None
        if not self.training:
            if record is not None:
                self.panel.show_history(list(record.history), record.val_loss_before)
            self.panel.show_recall(record.recall if record is not None else None)
            self.panel.resume.setEnabled(record is not None and record.status in RESUMABLE)
            finished = record is not None and record.status == "finished"
            usable = finished and bool(record.adapter_dir)
            self.panel.use_tuned.setEnabled(usable or bool(self.worker.active))
            outputs = record.outputs if record is not None else {}
            self.panel.compare.setEnabled(usable or (finished and bool(outputs.get("merged_dir"))))
            self.panel.export.setEnabled(usable and not self.exporting)
        self.panel.outputs.setText(self._outputs_text(record))
        self.panel.use_tuned.blockSignals(True)
        self.panel.use_tuned.setChecked(bool(self.worker.active) and self.worker.active == out_dir)
        self.panel.use_tuned.blockSignals(False)

    @staticmethod
    def _outputs_text(record: RunRecord | None) -> str:
        if record is None:
            return ""
        outputs = dict(record.outputs)
        if record.adapter_dir:
            outputs.setdefault("adapter_dir", record.adapter_dir)
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
        self.worker.requestExport.emit(out_dir, record.model, "f16")

    @Slot(object)
    def _on_exported(self, exported: Exported) -> None:
        self.exporting = ""
        written = exported.outputs.written()
        record = self._run(exported.out_dir)
        if record is not None:
            self._save(replace(record, outputs={**record.outputs, **written}))
        self.panel.status.setText(
            "Merged model written: " + ", ".join(v for k, v in written.items() if k != "gguf_skipped")
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
        dialog = CompareDialog(record.name, self.panel)
        method = record.config.get("method", "lora")
        model = record.model
        dialog.compareRequested.connect(
            lambda prompt, n, chat: self._send_compare(dialog, out_dir, model, method, prompt, n, chat)
        )
        dialog.scoreRequested.connect(lambda text: self._send_score(dialog, out_dir, model, method, text))
        dialog.stopRequested.connect(self.worker.compare_stop.set)
        self.compare_dialog, self.compare_run = dialog, out_dir
        dialog.show()

    def _send_compare(self, dialog, out_dir, model, method, prompt, n, chat) -> None:
        if self.training or self._chatting():
            dialog.show_error("the model is busy (training or writing a chat reply); try again when it is done")
            return
        self.worker.compare_stop.clear()
        self.worker.requestCompare.emit(out_dir, model, method, prompt, n, chat)

    def _send_score(self, dialog, out_dir, model, method, text) -> None:
        if self.training or self._chatting():
            dialog.show_error("the model is busy (training or writing a chat reply); try again when it is done")
            return
        self.worker.compare_stop.clear()
        self.worker.requestScore.emit(out_dir, model, method, text)

    @Slot(str, str)
    def _on_compare_text(self, side: str, text: str) -> None:
        if self.compare_dialog is not None:
            self.compare_dialog.append(side, text)

    @Slot(object)
    def _on_compare_done(self, result: Compared) -> None:
        if self.compare_dialog is not None:
            self.compare_dialog.show_done(result)

    @Slot(str)
    def _on_compare_failed(self, message: str) -> None:
        if self.compare_dialog is not None:
            self.compare_dialog.show_error(message)

    @Slot(object)
    def _on_scored(self, scored: Scored) -> None:
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
            self.worker.requestUseTuned.emit(record.out_dir, record.model)
        else:
            self.worker.requestUseTuned.emit("", "")

    @Slot(str)
    def _on_tuned_changed(self, out_dir: str) -> None:
        self._show_runs(select=self.panel.selected_run())
        record = self._run(out_dir)
        if record is not None:
            self._show_status(f"Chat now uses the model tuned in run {record.name}.", 5000)
        elif not self.training:
            self._show_status("Chat now uses the base model.", 5000)

    @Slot(object)
    def _on_model_loaded(self, _info: ModelInfo) -> None:
        """Another model (or the same one again): the chat starts on its base weights."""
        if self.worker.active:
            self.worker.requestUseTuned.emit("", "")

    @Slot(str)
    def _on_tuned_failed(self, message: str) -> None:
        QMessageBox.warning(self.panel, "Cannot use the tuned model", message)
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
