"""Fine-tuning on a worker thread: the data preview, training runs, and switching chat between the base
and the tuned model. The UI thread never runs any of it.

`FinetuneWorker` is a QObject moved to its own QThread (`desktop.finetune_controller.FinetuneController`
owns both). It drives the same engine API as ``ember-cli finetune`` (`engine.finetune.plan.planned_config`,
`engine.finetune.finetune`). The model is the engine worker's loaded one, shared: a run holds the model's
lock (`engine.model_lock.hold`) from start to end, so a chat reply, an inspection or a served request
waits for it (and the chat refuses to send while a run is going, see `ChatSession._ready`). Stop is a
`threading.Event` set from the UI thread; the engine checks it between optimizer steps, and while the
run waits for the lock.

A LoRA run trains the chat's model in place when its projections are dense and in the dtype this device
trains in (`engine.finetune.precision`: bf16 where measured faster, else float32; the adapters go beside
the frozen weights); otherwise (packed int4, another dtype) and for full fine-tuning (float32) it trains
a copy loaded from the same file, so the chat's weights are never touched. A full run writes its merged
outputs (``merged/``, ``model.gguf``) at once; a LoRA run writes them on request (`requestExport`).

The compare view asks for the same prompt under the base and the tuned model (`requestCompare`,
greedy, streamed as ``compareText``) and for the per-token log-probability difference on any text
(`requestScore`); both hold the model's lock and restore whatever the chat was using.

After a run, the LoRA layers are taken back out of the model (kept aside, `detach_lora`), so the chat
goes on with the base model until "Use the tuned model in chat" puts them back (`attach_lora`). Both are
idempotent, and neither changes a weight: the base weights are never merged into.

Every request ends in its result or its failure signal, whatever it raises (`desktop.worker_boundary`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch
from PySide6.QtCore import QObject, Signal, Slot
from torch import nn

from desktop.messages import (
    Compared,
    Exported,
    Preview,
    PreviewFile,
    PreviewRequest,
    RunEnded,
    RunOutputs,
    RunStarted,
    Scored,
    ScoredToken,
    TrainRequest,
    frozen_map,
)
from desktop.ui_gc import worker_job
from desktop.worker_boundary import boundary, failure_message
from engine.finetune import finetune, load_peft_adapter, save_peft_adapter
from engine.finetune.compare import logprob_difference
from engine.finetune.estimate import measure_matmul_rate
from engine.finetune.lora import LoRALinear, lora_disabled, lora_layers
from engine.finetune.plan import PLANNED, planned_config
from engine.finetune.precision import training_dtype
from engine.finetune.train import Progress
from engine.generation.generate import Generation
from engine.generation.sampling import SamplerSettings
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


def trains_in_place(model) -> bool:
    """Whether LoRA can go straight onto this model: dense projections in the dtype this device trains
    in (`engine.finetune.precision`)."""
    dense = all(isinstance(m, nn.Linear) for blk in model.layers for m in blk.modules() if hasattr(m, "in_features"))
    return dense and model.dtype == training_dtype(model.device)


def training_copy(lm, method: str):
    """The same model file loaded again, dense, in the dtype ``method`` trains in on this device."""
    from engine.loading.loader import load_model

    dtype = training_dtype(lm.model.device, method)
    return load_model(lm.path, device=str(lm.model.device), dtype=str(dtype).removeprefix("torch."), pack=False)


class FinetuneWorker(QObject):
    """Its requests (queued to its thread) and what it answers; the payload types are in `desktop.messages`.

    Requests:
        requestPreview(PreviewRequest)
        requestTrain(TrainRequest)         -- through `train`
        requestUseTuned(str out_dir, str model_path) -- "" for the base model
        requestExport(str out_dir, str model_path, str gguf_type)
        requestCompare(str out_dir, str model_path, str method, str prompt, int max_tokens, bool chat)
        requestScore(str out_dir, str model_path, str method, str text)

    Signals:
        previewed(Preview)     -- the files read, their tokens and chunks, sample chunks, the machine's FLOP rate
        previewFailed(str)
        started(RunStarted)
        progress(tuple[Progress, ...]) -- batched (at most ~10 signals a second)
        finished(RunEnded)     -- finished or stopped: steps, losses, history, outputs
        failed(str out_dir, str message)
        tunedChanged(str out_dir) -- the run whose adapter the chat now uses; "" for the base model
        tunedFailed(str message)
        exported(Exported)     -- a LoRA run's merged folder and GGUF file (or why no GGUF)
        exportFailed(str out_dir, str message)
        compareText(str side, str text) -- side "base" or "tuned"; pieces of the replies, batched
        compareDone(Compared)  -- both replies, and the tuned one scored
        compareFailed(str message)
        scored(Scored)         -- per token: the base and tuned log-probabilities and their difference
    """

    requestPreview = Signal(object)  # PreviewRequest
    requestTrain = Signal(object)  # TrainRequest, through `train`
    requestUseTuned = Signal(str, str)  # output folder of a run ("" = the base model), the run's model path
    requestExport = Signal(str, str, str)  # out_dir, the run's model path, GGUF type
    requestCompare = Signal(str, str, str, str, int, bool)  # out_dir, model path, method, prompt, max tokens, chat
    requestScore = Signal(str, str, str, str)  # out_dir, model path, method, text

    previewed = Signal(object)
    previewFailed = Signal(str)
    started = Signal(object)
    progress = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str)
    tunedChanged = Signal(str)
    tunedFailed = Signal(str)
    exported = Signal(object)
    exportFailed = Signal(str, str)
    compareText = Signal(str, str)
    compareDone = Signal(object)
    compareFailed = Signal(str)
    scored = Signal(object)

    def __init__(self, model_source) -> None:
        """``model_source``: a callable giving the loaded `LoadedModel` or None (thread-safe)."""
        super().__init__()
        self.model_source = model_source
        self.stop_flag = threading.Event()
        self.compare_stop = threading.Event()
        self._full_models: dict[str, object] = {}  # out_dir of a full run -> its merged model, loaded
        self._rates: dict[torch.dtype, float] = {}  # measured matmul rates, once a dtype
        self._adapters: dict[str, tuple[object, list]] = {}  # out_dir -> (the model they fit, LoRA layers)
        self.active = ""  # out_dir of the adapter in the model now ("" = base)
        self.requestPreview.connect(self._on_preview)
        self.requestTrain.connect(self._on_train)
        self.requestUseTuned.connect(self._on_use_tuned)
        self.requestExport.connect(self._on_export)
        self.requestCompare.connect(self._on_compare)
        self.requestScore.connect(self._on_score)

    def train(self, request: TrainRequest) -> None:
        """Called on the UI thread; the flag is cleared here so a Stop pressed before the run starts counts."""
        # torch's optimizers import torch._dynamo on first use; importing it on the worker thread while the
        # UI thread runs Python hung a test run twice (a lock inside that import). Do it here, once.
        import torch._dynamo  # noqa: F401

        self.stop_flag.clear()
        self.requestTrain.emit(request)

    def stop(self) -> None:
        """Thread-safe: the run stops after the current optimizer step and writes a checkpoint."""
        self.stop_flag.set()

    @Slot(object)
    @boundary("previewFailed", "reading the files")
    def _on_preview(self, request: PreviewRequest) -> None:
        paths = list(request.paths)
        lm = self.model_source()
        if lm is None:
            self.previewFailed.emit("No model is loaded: the preview needs its tokenizer.")
            return
        config, chosen, data = planned_config(lm, paths, dict(request.settings))
        lora_dtype = training_dtype(lm.model.device)
        samples = []
        for example in data.train[:SAMPLE_CHUNKS]:
            text = lm.tokenizer.decode(example.ids, skip_special=True)
            samples.append(text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…")
        files = tuple(PreviewFile(r.path, r.tokens, r.chunks, r.skipped, tuple(r.notes)) for r in data.reports)
        self.previewed.emit(
            Preview(
                paths=tuple(paths),
                files=files,
                samples=tuple(samples),
                summary=data.summary(),
                train_chunks=len(data.train),
                val_chunks=len(data.val),
                train_tokens=data.train_tokens,
                flops_per_second=self._matmul_rate(lora_dtype),
                full_flops_per_second=self._matmul_rate(torch.float32),
                lora_dtype_bytes=lora_dtype.itemsize,
                probes=len(data.probes),
                planned=frozen_map({k: getattr(config, k) for k in PLANNED}),
                reasons=chosen.reasons,
            )
        )

    def _matmul_rate(self, dtype: torch.dtype) -> float:
        if dtype not in self._rates:
            self._rates[dtype] = measure_matmul_rate(dtype=dtype)
        return self._rates[dtype]

    @Slot(object)
    @worker_job()  # no full garbage collection meanwhile (desktop.ui_gc)
    def _on_train(self, request: TrainRequest) -> None:
        paths, out_dir, resume = list(request.paths), request.out_dir, request.resume
        lm = self.model_source()
        if lm is None:
            self.failed.emit(out_dir, "No model is loaded.")
            return
        pending: list[Progress] = []
        last = [time.monotonic()]

        def progress(p) -> None:  # on this thread: batched into frozen copies
            pending.append(p)
            now = time.monotonic()
            if p.val_loss is not None or p.step == p.total_steps or now - last[0] >= EMIT_SECONDS:
                self.progress.emit(tuple(pending))
                pending.clear()
                last[0] = now

        outputs: dict = {}
        try:
            cfg, _, data = planned_config(lm, paths, dict(request.config))
            source = paths if resume else data  # a resumed run reads the files as its checkpoint's settings say
            with hold(lm, self.stop_flag) as held:
                if not held:
                    self.finished.emit(RunEnded(out_dir, "cancelled", 0, None, (), RunOutputs()))
                    return
                self.started.emit(RunStarted(out_dir, resume, frozen_map(asdict(cfg))))
                detach_lora(lm.model)  # train on the base model
                self.active = ""
                self.tunedChanged.emit("")
                in_place = cfg.method == "lora" and trains_in_place(lm.model)
                if in_place:
                    result, layers = self._train_in_place(lm, source, cfg, out_dir, resume, progress, outputs)
                else:  # a dense copy: the chat's weights stay as they are
                    trainee = training_copy(lm, cfg.method)
                    result = finetune(
                        trainee,
                        source,
                        out_dir,
                        cfg,
                        progress=progress,
                        should_stop=self.stop_flag,
                        resume=resume,
                        export=cfg.method == "full",
                    )
                    layers = []
                    if result.status == "finished" and cfg.method == "lora":
                        outputs["adapter_dir"] = str(save_peft_adapter(trainee, Path(out_dir) / "adapter", cfg))
                    for key in ("merged_dir", "gguf_path", "gguf_skipped"):
                        if getattr(result, key) is not None:
                            outputs[key] = str(getattr(result, key))
                    del trainee
            if result.status == "finished" and layers:
                self._adapters[out_dir] = (lm, layers)
        except Exception as e:  # noqa: BLE001 (a thread boundary: the panel must hear of any failure)
            if pending:
                self.progress.emit(tuple(pending))
            self.failed.emit(out_dir, failure_message(e, "the fine-tuning run"))
            return
        if pending:
            self.progress.emit(tuple(pending))
        self.finished.emit(
            RunEnded(
                out_dir=out_dir,
                status=result.status,
                step=result.step,
                total_steps=result.total_steps,
                history=tuple(result.history),
                outputs=RunOutputs(**outputs),
                val_loss_before=result.val_loss_before,
                val_loss_after=result.val_loss_after,
                recall=result.recall,
            )
        )

    def _train_in_place(self, lm, source, cfg, out_dir, resume, progress, outputs):
        try:
            result = finetune(
                lm,
                source,
                out_dir,
                cfg,
                progress=progress,
                should_stop=self.stop_flag,
                resume=resume,
                export=False,
            )
            if result.status == "finished":
                outputs["adapter_dir"] = str(save_peft_adapter(lm, Path(out_dir) / "adapter", cfg))
        finally:
            layers = detach_lora(lm.model)  # back to the base model, whatever happened
            lm.model.eval()
            for p in lm.model.parameters():
                p.requires_grad_(False)
        return result, layers

    def _activate(self, lm, out_dir: str, model_path: str) -> None:
        """Put the run's adapter into the model ("" = the base model); raises on failure. Lock held."""
        if not out_dir:
            detach_lora(lm.model)
            self.active = ""
            return
        if model_path and model_path != str(lm.path):
            raise ValueError(f"this run was trained on {Path(model_path).name}; load that model first")
        kept = self._adapters.get(out_dir)
        detach_lora(lm.model)
        self.active = ""
        if kept is not None and kept[0] is lm:
            attach_lora(lm.model, kept[1])
        else:  # after a restart, trained on a copy, or another copy of the model: read the saved adapter
            load_peft_adapter(lm.model, Path(out_dir) / "adapter", merge=False)
            self._adapters[out_dir] = (lm, lora_layers(lm.model))
        lm.model.eval()
        self.active = out_dir

    @Slot(str, str)
    @boundary("tunedFailed", "switching between the tuned and the base model")
    def _on_use_tuned(self, out_dir: str, model_path: str) -> None:
        lm = self.model_source()
        if lm is None:
            self.tunedFailed.emit("No model is loaded.")
            return
        with hold(lm):
            self._activate(lm, out_dir, model_path)
        self.tunedChanged.emit(out_dir)

    @Slot(str, str, str)
    @worker_job()  # no full garbage collection meanwhile (desktop.ui_gc)
    def _on_export(self, out_dir: str, model_path: str, gguf_type: str) -> None:
        """A LoRA run's merged outputs: the adapter folded into a float32 copy of the base, written as
        ``merged/`` and ``model.gguf``."""
        from engine.finetune.export import float32_merged, save_merged_hf
        from engine.finetune.gguf_export import GGUFExportUnsupported, save_merged_gguf

        try:
            lm = self.model_source()
            device = lm.model.device if lm is not None else "cpu"
            copy = float32_merged(model_path, device, Path(out_dir) / "adapter")
            info = {"merged_dir": str(save_merged_hf(copy, Path(out_dir) / "merged"))}
            try:
                info["gguf_path"] = str(save_merged_gguf(copy, Path(out_dir) / "model.gguf", gguf_type))
            except GGUFExportUnsupported as e:
                info["gguf_skipped"] = str(e)
        except Exception as e:  # noqa: BLE001 (thread boundary)
            self.exportFailed.emit(out_dir, failure_message(e, "writing the merged model"))
            return
        self.exported.emit(Exported(out_dir, RunOutputs(**info)))

    # The compare view

    def _tuned(self, lm, out_dir: str, model_path: str, method: str):
        """(separate tuned model or None when the adapters are in ``lm.model``, what to restore after).
        Called with the lock held."""
        if method == "full":
            tuned = self._full_models.get(out_dir)
            if tuned is None:
                from engine.loading.loader import load_model

                tuned = load_model(Path(out_dir) / "merged", device=str(lm.model.device), dtype="float32")
                self._full_models = {out_dir: tuned}  # one kept: they are whole models
            return tuned.model, None
        previous = self.active
        if previous != out_dir:
            self._activate(lm, out_dir, model_path)
        return None, previous

    def _restore(self, lm, previous: str | None) -> None:
        if previous is not None and previous != self.active:
            self._activate(lm, previous, "")

    @Slot(str, str, str, str, int, bool)
    @worker_job()  # no full garbage collection meanwhile (desktop.ui_gc)
    def _on_compare(self, out_dir: str, model_path: str, method: str, prompt: str, max_tokens: int, chat: bool):
        lm = self.model_source()
        if lm is None:
            self.compareFailed.emit("No model is loaded.")
            return
        replies = {"base": "", "tuned": ""}
        try:
            with hold(lm, self.compare_stop) as held:
                if not held:
                    self.compareDone.emit(Compared(**replies, scored=None, cancelled=True))
                    return
                text = lm.render_chat([{"role": "user", "content": prompt}]) if chat else prompt
                prompt_ids = lm.encode_prompt(text)
                tuned_model, previous = self._tuned(lm, out_dir, model_path, method)
                try:
                    with lora_disabled(lm.model):
                        replies["base"], _ = self._generate("base", lm.model, lm, prompt_ids, max_tokens)
                    replies["tuned"], tuned_ids = self._generate(
                        "tuned", tuned_model or lm.model, lm, prompt_ids, max_tokens
                    )
                    scored = None
                    if tuned_ids and not self.compare_stop.is_set():
                        scored = self._score(lm, tuned_model, prompt_ids + tuned_ids, start=len(prompt_ids))
                finally:
                    self._restore(lm, previous)
        except Exception as e:  # noqa: BLE001 (thread boundary)
            self.compareFailed.emit(failure_message(e, "comparing the base and the tuned model"))
            return
        self.compareDone.emit(Compared(**replies, scored=scored, cancelled=self.compare_stop.is_set()))

    def _generate(self, side: str, model, lm, prompt_ids: list[int], max_tokens: int) -> tuple[str, list[int]]:
        model.drop_cache()
        gen = Generation(
            model,
            lm.tokenizer,
            prompt_ids,
            SamplerSettings(temperature=0.0),
            max_tokens=max_tokens,
            should_stop=self.compare_stop,
            context_length=lm.context_length,
        )
        pending, last = "", time.monotonic()
        for event in gen:
            pending += event.text
            if time.monotonic() - last >= EMIT_SECONDS:
                self.compareText.emit(side, pending)
                pending, last = "", time.monotonic()
        if pending:
            self.compareText.emit(side, pending)
        model.drop_cache()
        return gen.text, list(gen.ids)

    def _score(self, lm, tuned_model, ids: list[int], start: int = 1) -> Scored:
        diffs = logprob_difference(lm, ids, tuned_model)
        tokens = tuple(ScoredToken(**asdict(d), diff=d.diff) for d in diffs if d.index >= start)
        mean = sum(t.diff for t in tokens) / len(tokens) if tokens else 0.0
        return Scored(tokens, mean, start)

    @Slot(str, str, str, str)
    @worker_job()  # no full garbage collection meanwhile (desktop.ui_gc)
    def _on_score(self, out_dir: str, model_path: str, method: str, text: str) -> None:
        lm = self.model_source()
        if lm is None:
            self.compareFailed.emit("No model is loaded.")
            return
        try:
            with hold(lm, self.compare_stop) as held:
                if not held:  # stopped while the model was busy: the dialog must hear of it too
                    self.compareFailed.emit("stopped before the model was free")
                    return
                ids = lm.tokenizer.encode(text, add_bos=lm.tokenizer.add_bos)
                if len(ids) < 2:
                    raise ValueError("the text needs at least two tokens")
                ids = ids[: lm.context_length]
                tuned_model, previous = self._tuned(lm, out_dir, model_path, method)
                try:
                    result = self._score(lm, tuned_model, ids)
                finally:
                    self._restore(lm, previous)
        except Exception as e:  # noqa: BLE001 (thread boundary)
            self.compareFailed.emit(failure_message(e, "comparing the base and the tuned model"))
            return
        self.scored.emit(result)
