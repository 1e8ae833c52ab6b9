"""Fine-tuning on a worker thread: the data preview, training runs, and switching chat between the base
and the tuned model. The UI thread never runs any of it.

`FinetuneWorker` is a QObject moved to its own QThread (`desktop.panels.finetune.FinetuneController`
owns both). It drives the same engine API as ``ember-cli finetune`` (`engine.finetune.build_dataset`,
`engine.finetune.finetune`). The model is the engine worker's loaded one, shared: a run holds the model's
lock (`engine.model_lock.hold`) from start to end, so a chat reply, an inspection or a served request
waits for it (and the chat refuses to send while a run is going, see `MainWindow._ready`). Stop is a
`threading.Event` set from the UI thread; the engine checks it between optimizer steps, and while the
run waits for the lock.

After a run, the LoRA layers are taken back out of the model (kept aside, `detach_lora`), so the chat
goes on with the base model until "Use the tuned model in chat" puts them back (`attach_lora`). Both are
idempotent, and neither changes a weight: the base weights are never merged into.

Signals (all plain data):
    previewed(dict)        -- {"files": [{"path", "tokens", "chunks", "skipped", "notes"}], "samples", "summary", ...}
    previewFailed(str)
    started(dict)          -- {"out_dir", "resume"}
    progress(list)         -- [{"step", "total_steps", "epoch", "train_loss", "val_loss", "lr", "tokens_per_second",
                              "eta_seconds"}], batched (at most ~10 signals a second)
    finished(dict)         -- {"out_dir", "status", "step", "total_steps", "val_loss_before", "val_loss_after",
                              "history", "config", "adapter_dir"}
    failed(str out_dir, str message)
    tunedChanged(str out_dir) -- the run whose adapter the chat now uses; "" for the base model
    tunedFailed(str message)
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from engine.errors import EmberError
from engine.finetune import FinetuneConfig, build_dataset, finetune, load_peft_adapter, save_peft_adapter
from engine.finetune.lora import LoRALinear, lora_layers
from engine.model_lock import hold

EMIT_SECONDS = 0.1
SAMPLE_CHUNKS = 2
SAMPLE_CHARS = 400


def detach_lora(model) -> list[tuple[str, LoRALinear]]:
    """Put the plain layers back (unmerged, so the base weights are exactly as loaded); returns the LoRA
    layers taken out, for `attach_lora`. A model without LoRA layers is left as it is."""
    layers = lora_layers(model)
    for name, layer in layers:
        layer.unmerge()
        parent, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), attr, layer.base)
    model.drop_cache()
    return layers


def attach_lora(model, layers: list[tuple[str, LoRALinear]]) -> None:
    """Put LoRA layers taken out by `detach_lora` back in place (idempotent)."""
    for name, layer in layers:
        parent_name, attr = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        current = getattr(parent, attr)
        if current is layer:
            continue
        if current is not layer.base:
            raise ValueError(f"{name}: the model changed since these adapters were trained")
        setattr(parent, attr, layer)
    model.drop_cache()


class FinetuneWorker(QObject):
    requestPreview = Signal(list, int, float)  # paths, sequence length, validation fraction
    requestTrain = Signal(list, dict, str, bool)  # paths, FinetuneConfig as a dict, output folder, resume
    requestUseTuned = Signal(str, str)  # output folder of a run ("" = the base model), the run's model path

    previewed = Signal(dict)
    previewFailed = Signal(str)
    started = Signal(dict)
    progress = Signal(list)
    finished = Signal(dict)
    failed = Signal(str, str)
    tunedChanged = Signal(str)
    tunedFailed = Signal(str)

    def __init__(self, model_source) -> None:
        """``model_source``: a callable giving the loaded `LoadedModel` or None (thread-safe)."""
        super().__init__()
        self.model_source = model_source
        self.stop_flag = threading.Event()
        self._adapters: dict[str, tuple[object, list]] = {}  # out_dir -> (the model they fit, LoRA layers)
        self.active = ""  # out_dir of the adapter in the model now ("" = base)
        self.requestPreview.connect(self._on_preview)
        self.requestTrain.connect(self._on_train)
        self.requestUseTuned.connect(self._on_use_tuned)

    def train(self, paths: list, config: dict, out_dir: str, resume: bool) -> None:
        """Called on the UI thread; the flag is cleared here so a Stop pressed before the run starts counts."""
        # torch's optimizers import torch._dynamo on first use; importing it on the worker thread while the
        # UI thread runs Python hung a test run twice (a lock inside that import). Do it here, once.
        import torch._dynamo  # noqa: F401

        self.stop_flag.clear()
        self.requestTrain.emit(paths, config, out_dir, resume)

    def stop(self) -> None:
        """Thread-safe: the run stops after the current optimizer step and writes a checkpoint."""
        self.stop_flag.set()

    @Slot(list, int, float)
    def _on_preview(self, paths: list, seq_len: int, val_fraction: float) -> None:
        lm = self.model_source()
        if lm is None:
            self.previewFailed.emit("No model is loaded: the preview needs its tokenizer.")
            return
        try:
            data = build_dataset(
                paths,
                lm.tokenizer,
                lm.render_chat,
                seq_len=min(seq_len, lm.config.max_seq_len - 1),
                val_fraction=val_fraction,
            )
        except (EmberError, ValueError, OSError) as e:
            self.previewFailed.emit(str(e))
            return
        samples = []
        for example in data.train[:SAMPLE_CHUNKS]:
            text = lm.tokenizer.decode(example.ids, skip_special=True)
            samples.append(text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…")
        self.previewed.emit(
            {
                "paths": list(paths),
                "files": [asdict(r) for r in data.reports],
                "samples": samples,
                "summary": data.summary(),
                "train_chunks": len(data.train),
                "val_chunks": len(data.val),
                "train_tokens": data.train_tokens,
            }
        )

    @Slot(list, dict, str, bool)
    def _on_train(self, paths: list, config: dict, out_dir: str, resume: bool) -> None:
        lm = self.model_source()
        if lm is None:
            self.failed.emit(out_dir, "No model is loaded.")
            return
        pending: list[dict] = []
        last = [time.monotonic()]

        def progress(p) -> None:  # on this thread: batched into plain-data signals
            pending.append(asdict(p))
            now = time.monotonic()
            if p.val_loss is not None or p.step == p.total_steps or now - last[0] >= EMIT_SECONDS:
                self.progress.emit(list(pending))
                pending.clear()
                last[0] = now

        try:
            cfg = FinetuneConfig.from_dict(config)
            with hold(lm, self.stop_flag) as held:
                if not held:
                    self.finished.emit({"out_dir": out_dir, "status": "cancelled", "step": 0, "history": []})
                    return
                self.started.emit({"out_dir": out_dir, "resume": resume})
                detach_lora(lm.model)  # train on the base model
                self.active = ""
                self.tunedChanged.emit("")
                try:
                    result = finetune(
                        lm,
                        paths,
                        out_dir,
                        cfg,
                        progress=progress,
                        should_stop=self.stop_flag,
                        resume=resume,
                        export=False,
                    )
                    adapter_dir = None
                    if result.status == "finished" and cfg.method == "lora":
                        adapter_dir = str(save_peft_adapter(lm, Path(out_dir) / "adapter", cfg))
                finally:
                    layers = detach_lora(lm.model)  # back to the base model, whatever happened
                    lm.model.eval()
                    for p in lm.model.parameters():
                        p.requires_grad_(False)
            if result.status == "finished" and layers:
                self._adapters[out_dir] = (lm, layers)
        except Exception as e:  # noqa: BLE001 (a thread boundary: the panel must hear of any failure)
            if pending:
                self.progress.emit(list(pending))
            self.failed.emit(out_dir, str(e))
            return
        if pending:
            self.progress.emit(list(pending))
        self.finished.emit(
            {
                "out_dir": out_dir,
                "status": result.status,
                "step": result.step,
                "total_steps": result.total_steps,
                "val_loss_before": result.val_loss_before,
                "val_loss_after": result.val_loss_after,
                "history": result.history,
                "adapter_dir": adapter_dir,
            }
        )

    @Slot(str, str)
    def _on_use_tuned(self, out_dir: str, model_path: str) -> None:
        lm = self.model_source()
        if lm is None:
            self.tunedFailed.emit("No model is loaded.")
            return
        try:
            with lm.lock:
                if not out_dir:
                    detach_lora(lm.model)
                    self.active = ""
                    self.tunedChanged.emit("")
                    return
                if model_path and model_path != str(lm.path):
                    raise ValueError(f"this run was trained on {Path(model_path).name}; load that model first")
                kept = self._adapters.get(out_dir)
                detach_lora(lm.model)
                if kept is not None and kept[0] is lm:
                    attach_lora(lm.model, kept[1])
                else:  # after a restart, or another copy of the model: read the adapter the run saved
                    load_peft_adapter(lm.model, Path(out_dir) / "adapter", merge=False)
                    self._adapters[out_dir] = (lm, lora_layers(lm.model))
                lm.model.eval()
                self.active = out_dir
        except (EmberError, ValueError, OSError, RuntimeError) as e:
            self.tunedFailed.emit(str(e))
            return
        self.tunedChanged.emit(out_dir)
