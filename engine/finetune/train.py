"""The fine-tuning loop: LoRA (default) or full, AdamW, warmup then cosine, accumulation, clipping.

Readable top to bottom (torchtune's rule): `finetune` prepares the model and data, then
`_Trainer.run` does one optimizer step at a time, checking ``should_stop`` between steps, writing
atomic checkpoints, and reporting `Progress` through a callback. Resuming restores the trainable
weights, the optimizer, the RNG states and the data position, so a run killed and resumed ends with
the same weights as one never interrupted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import EmberError
from engine.finetune import probes
from engine.finetune.data import Dataset, Example, build_dataset
from engine.finetune.lora import ALL_TARGETS, add_lora, lora_disabled, lora_state_dict

MARKER = "COMPLETE"


class FinetuneError(EmberError):
    """A run that cannot start or go on (no usable data, a checkpoint that does not fit, ...)."""


class CheckpointWriteError(FinetuneError):
    """A checkpoint could not be written (a full disk, most often); the previous one is intact."""


class TrainingDiverged(FinetuneError):
    """The loss became NaN or infinite."""


@dataclass
class FinetuneConfig:
    method: str = "lora"  # "lora" or "full"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ALL_TARGETS))
    seq_len: int = 256
    overlap: int = 32
    batch_size: int = 4
    grad_accum: int = 1
    steps: int | None = None  # None: from epochs
    epochs: float = 1.0
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # None: 5% of the steps
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    max_grad_norm: float = 1.0
    val_fraction: float = 0.1
    lessons: bool = False  # also train on questions and answers made from the prose's facts
    probes: int = 0  # recall questions asked before and after the run (engine.finetune.probes); 0: none
    eval_every: int | None = None  # None: ten evaluations per run
    checkpoint_every: int = 0  # 0: only at the end (and on cancel)
    keep_checkpoints: int = 2
    autocast: str = "auto"  # "auto" (bf16 on CUDA when supported), "off", "bf16", "fp16"
    seed: int = 0
    gguf: str = "f16"  # the merged GGUF's tensors: "f16", "f32", "q8_0", or "none" for no GGUF

    def __post_init__(self) -> None:
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', got {self.method!r}")
        if self.autocast not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"autocast must be auto, off, bf16 or fp16, got {self.autocast!r}")
        for name in ("rank", "batch_size", "grad_accum", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.gguf not in ("f16", "f32", "q8_0", "none"):
            raise ValueError(f"gguf must be f16, f32, q8_0 or none, got {self.gguf!r}")

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Progress:
    """One optimizer step (the desktop's fine-tune worker sends them across threads as they are)."""

    step: int
    total_steps: int
    epoch: float
    train_loss: float
    lr: float
    tokens_per_second: float
    eta_seconds: float
    val_loss: float | None = None  # set on the steps that evaluated


@dataclass
class FinetuneResult:
    status: str  # "finished" or "cancelled"
    step: int
    total_steps: int
    out_dir: Path
    history: list[dict] = field(default_factory=list)  # {"step", "train_loss", "val_loss"?, "lr"}
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    checkpoint: Path | None = None
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    gguf_path: Path | None = None
    gguf_skipped: str | None = None  # why no GGUF was written (a base model from a Hugging Face folder)
    recall: probes.Recall | None = None  # the probes asked before and after the run

    @property
    def perplexity_before(self) -> float | None:
        return math.exp(self.val_loss_before) if self.val_loss_before is not None else None

    @property
    def perplexity_after(self) -> float | None:
        return math.exp(self.val_loss_after) if self.val_loss_after is not None else None


# ---------------------------------------------------------------- small pieces


def lr_at(step: int, total: int, warmup: int, base: float, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``base`` down to ``base * min_ratio``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def collate(examples: list[Example], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """inputs (B, T), targets (B, T) and the loss mask (B, T) float, padded on the right."""
    T = max(len(e.ids) for e in examples) - 1
    ids = torch.zeros(len(examples), T + 1, dtype=torch.long)
    mask = torch.zeros(len(examples), T + 1)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.mask)] = torch.tensor(e.mask, dtype=torch.float32)
    return ids[:, :-1].to(device), ids[:, 1:].to(device), mask[:, 1:].to(device)


def token_losses(model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy (B, T), float32."""
    logits = model(inputs)  # (B, T, vocab) float32
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


@torch.no_grad()
def evaluate(model, examples: list[Example], batch_size: int = 4) -> float | None:
    """Mean loss per target token over ``examples`` (its exp is the perplexity), or None if empty."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        inputs, targets, mask = collate(examples[i : i + batch_size], model.device)
        losses = token_losses(model, inputs, targets)
        total += float((losses * mask).sum())
        count += float(mask.sum())
    model.train(was_training)
    return total / count if count else None


def reset_for_training(model) -> None:
    """Drop state that inference may have created under ``torch.inference_mode`` (the KV cache and the
    rotary tables): such tensors cannot take part in autograd."""
    model.drop_cache()
    if model.rotary is not None:
        model.rotary._cos = model.rotary._sin = torch.empty(0)


def _fingerprint(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.ids, e.mask]).encode())
    return h.hexdigest()[:16]


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _disk_full(e: BaseException) -> bool:
    """ENOSPC, from Python's own I/O or from safetensors' Rust writer (which reports it in its message)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return any(s in str(e) for s in ("No space left", "StorageFull", "code: 28"))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``out_dir/checkpoints`` (one whose marker exists)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / MARKER).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


# ---------------------------------------------------------------- the trainer


class _Trainer:
    def __init__(self, lm, data: Dataset, out_dir: Path, config: FinetuneConfig) -> None:
        self.lm, self.model, self.data, self.out, self.cfg = lm, lm.model, data, out_dir, config
        self.device = self.model.device
        reset_for_training(self.model)
        torch.manual_seed(config.seed)  # the LoRA init and dropout masks follow from the seed
        if config.method == "lora":
            add_lora(self.model, config.rank, config.alpha, config.dropout, config.target_modules)
        else:
            for p in self.model.parameters():
                p.requires_grad_(True)
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self.params], lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999)
        )
        self.micro_per_epoch = math.ceil(len(data.train) / config.batch_size)
        self.total = config.steps or max(1, math.ceil(config.epochs * self.micro_per_epoch / config.grad_accum))
        self.warmup = config.warmup_steps if config.warmup_steps is not None else self.total // 20
        self.eval_every = config.eval_every or max(1, self.total // 10)
        self.step = 0
        self.history: list[dict] = []
        self.val_before: float | None = None
        self.fingerprint = _fingerprint(data.train)
        self.autocast = self._autocast_dtype()

    def _autocast_dtype(self) -> torch.dtype | None:
        kind = self.cfg.autocast
        if kind == "off" or (kind == "auto" and self.device.type != "cuda"):
            return None
        if kind == "fp16":
            return torch.float16
        if kind == "auto" and not torch.cuda.is_bf16_supported():
            return None  # fp16 without a loss scaler is not safe as a default
        return torch.bfloat16

    # -- data position: the batch of global micro-step m is a pure function of (seed, m)

    def _batch(self, m: int) -> list[Example]:
        epoch, k = divmod(m, self.micro_per_epoch)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.data.train), generator=gen).tolist()
        b = self.cfg.batch_size
        return [self.data.train[i] for i in order[k * b : (k + 1) * b]]

    # -- checkpoints

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        if self.cfg.method == "lora":
            return lora_state_dict(self.model)
        return {n: p.detach().clone().contiguous() for n, p in self.params}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N`` atomically: into a temporary folder, renamed, marker last.

        If the disk fills up (or any other write fails) the half-written checkpoint is removed, the
        previous complete one is left as it was, and `CheckpointWriteError` says so: the run can be
        resumed from that one once there is room again."""
        root = self.out / "checkpoints"
        final = root / f"step-{self.step:08d}"
        tmp = root / f".{final.name}.tmp"
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._write_checkpoint(final, tmp)
        except (OSError, SafetensorError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (final / MARKER).is_file():
                shutil.rmtree(final, ignore_errors=True)
            previous = latest_checkpoint(self.out)
            kept = (
                f"the previous checkpoint {previous.name} is intact; free some space, then resume"
                if previous is not None
                else "there is no earlier checkpoint; free some space and start again"
            )
            what = "the disk is full" if _disk_full(e) else str(e)
            raise CheckpointWriteError(f"could not write checkpoint {final.name} in {root}: {what}; {kept}") from e
        self._prune(root, final)
        return final

    def _prune(self, root: Path, final: Path) -> None:
        """Keep ``keep_checkpoints`` complete checkpoints, the new one included."""
        done = sorted(
            (p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p != final),
            key=lambda p: p.name,
        )
        for old in done[: max(0, len(done) - max(0, self.cfg.keep_checkpoints - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    def _write_checkpoint(self, final: Path, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(self._trainable_state(), str(tmp / "trainable.safetensors"))
        opt = self.optimizer.state_dict()
        tensors = {}
        for idx, st in opt["state"].items():
            for key, value in st.items():
                tensors[f"state.{idx}.{key}"] = value.detach().clone().contiguous()
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "step": self.step,
            "total_steps": self.total,
            "config": asdict(self.cfg),
            "param_groups": opt["param_groups"],
            "trainable": [n for n, _ in self.params],
            "data_fingerprint": self.fingerprint,
            "history": self.history,
            "val_loss_before": self.val_before,
        }
        _fsync_write(tmp / "state.json", json.dumps(state, indent=1).encode())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        marker_tmp = final / f".{MARKER}.tmp"
        _fsync_write(marker_tmp, b"ok\n")
        os.replace(marker_tmp, final / MARKER)

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / "state.json").read_text())
        if state["trainable"] != [n for n, _ in self.params]:
            raise FinetuneError(f"{path}: the checkpoint's trainable weights do not match this model and settings")
        if state["data_fingerprint"] != self.fingerprint:
            raise FinetuneError(
                f"{path}: the training data changed since this checkpoint; resume with the same files and settings"
            )
        weights = load_file(str(path / "trainable.safetensors"), device=str(self.device))
        with torch.no_grad():
            for n, p in self.params:
                p.copy_(weights[n])
        tensors = load_file(str(path / "optimizer.safetensors"))
        opt_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("state."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        torch.set_rng_state(tensors["rng.cpu"])
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        self.step = state["step"]
        self.total = state["total_steps"]
        self.history = state["history"]
        self.val_before = state["val_loss_before"]

    # -- the loop

    def run(self, progress, should_stop) -> FinetuneResult:
        cfg, model = self.cfg, self.model
        if self.step == 0 and self.val_before is None:
            self.val_before = evaluate(model, self.data.val, cfg.batch_size)
        model.train()
        t_start, step_start, tokens = time.perf_counter(), self.step, 0
        status = "finished"
        while self.step < self.total:
            if should_stop():
                status = "cancelled"
                break
            lr = lr_at(self.step, self.total, self.warmup, cfg.lr, cfg.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batches = [collate(self._batch(self.step * cfg.grad_accum + j), self.device) for j in range(cfg.grad_accum)]
            n_targets = sum(float(mask.sum()) for _, _, mask in batches) or 1.0
            loss_sum = 0.0
            for inputs, targets, mask in batches:
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    losses = token_losses(model, inputs, targets)
                loss = (losses * mask).sum() / n_targets
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the training loss became {float(loss.detach())} at step {self.step + 1}; nothing was saved "
                        f"for this step. Lower the learning rate (now {cfg.lr:g}) or check the data, then resume "
                        "from the last checkpoint."
                    )
                loss.backward()
                loss_sum += float(loss.detach())
                tokens += inputs.numel()
            if cfg.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.params], cfg.max_grad_norm)
                if not torch.isfinite(norm):
                    raise TrainingDiverged(
                        f"the gradient norm became {float(norm)} at step {self.step + 1}. Lower the learning rate."
                    )
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            record = {"step": self.step, "train_loss": loss_sum, "lr": lr}
            if self.step % self.eval_every == 0 or self.step == self.total:
                record["val_loss"] = evaluate(model, self.data.val, cfg.batch_size)
            self.history.append(record)
            elapsed = time.perf_counter() - t_start
            rate = (self.step - step_start) / elapsed if elapsed > 0 else 0.0
            progress(
                Progress(
                    step=self.step,
                    total_steps=self.total,
                    epoch=self.step * cfg.grad_accum / self.micro_per_epoch,
                    train_loss=loss_sum,
                    lr=lr,
                    tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
                    eta_seconds=(self.total - self.step) / rate if rate > 0 else float("inf"),
                    val_loss=record.get("val_loss"),
                )
            )
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < self.total:
                self.save_checkpoint()
        model.eval()
        checkpoint = self.save_checkpoint()
        after = None
        if status == "finished":
            last = self.history[-1] if self.history else {}
            after = last.get("val_loss", evaluate(model, self.data.val, cfg.batch_size))
        return FinetuneResult(status, self.step, self.total, self.out, self.history, self.val_before, after, checkpoint)


def _stopper(should_stop) -> Callable[[], bool]:
    if should_stop is None:
        return lambda: False
    if isinstance(should_stop, threading.Event):
        return should_stop.is_set
    return should_stop


def _export_gguf(lm, out: Path, config: FinetuneConfig, result: FinetuneResult) -> None:
    """``out/model.gguf`` (merged), unless turned off or the base model has no GGUF metadata to copy."""
    if config.gguf == "none":
        return
    from engine.finetune.gguf_export import GGUFExportUnsupported, save_merged_gguf

    try:
        result.gguf_path = save_merged_gguf(lm, out / "model.gguf", config.gguf)
    except GGUFExportUnsupported as e:
        result.gguf_skipped = str(e)


def check_trainable(data: Dataset) -> None:
    """Raise `FinetuneError` saying why, when none of the files gave text to train on."""
    if not data.train:
        reasons = "; ".join(f"{Path(r.path).name}: {r.skipped}" for r in data.reports if r.skipped)
        raise FinetuneError(f"nothing to train on ({reasons or 'no files found'})")


def dataset_for(lm, paths: Iterable[str | Path], config: FinetuneConfig) -> Dataset:
    """The files read, tokenized, chunked and split as ``config`` says, for ``lm``'s tokenizer and template."""
    return build_dataset(
        paths,
        lm.tokenizer,
        lm.render_chat,
        seq_len=min(config.seq_len, lm.config.max_seq_len - 1),
        overlap=config.overlap,
        val_fraction=config.val_fraction,
        seed=config.seed,
        lessons=config.lessons,
        probes=config.probes,
    )


def finetune(
    lm,
    data: Dataset | Iterable[str | Path],
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | threading.Event | None = None,
    resume: bool = False,
    export: bool = True,
) -> FinetuneResult:
    """Fine-tune ``lm`` (a `LoadedModel`, changed in place) on files or a prepared `Dataset`.

    Writes checkpoints under ``out_dir/checkpoints`` and, when finished and ``export``, the adapter in
    the PEFT layout (``out_dir/adapter``) for LoRA, a merged Hugging Face folder (``out_dir/merged``) and,
    for a base model loaded from GGUF, a merged ``out_dir/model.gguf`` (``config.gguf`` picks its type).
    With ``resume``, the settings saved in the latest checkpoint are used and training continues from
    it. Raises `TrainingDiverged` on a NaN/inf loss and `FinetuneError` when there is nothing to train.
    """
    out = Path(out_dir)
    checkpoint = latest_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        raise FinetuneError(f"{out}: no complete checkpoint to resume from")
    if checkpoint is not None:  # the run's own settings; only the GGUF type (an export choice) may change
        saved = FinetuneConfig.from_dict(json.loads((checkpoint / "state.json").read_text())["config"])
        if config is not None:
            saved.gguf = config.gguf
        config = saved
    config = config or FinetuneConfig()
    if not isinstance(data, Dataset):
        data = dataset_for(lm, data, config)
    check_trainable(data)
    out.mkdir(parents=True, exist_ok=True)
    stop = _stopper(should_stop)
    before = []
    clock = time.perf_counter()
    seconds: dict[str, float] = {}  # each phase's wall time, kept in run.json

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = round(seconds.get(phase, 0.0) + now - clock, 2)
        clock = now

    if data.probes and checkpoint is None:
        before = probes.ask(lm, data.probes, stop)
    lap("recall_questions")
    trainer = _Trainer(lm, data, out, config)
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
        if data.probes and config.method == "lora":  # the base model's answers: the adapters switched off
            with lora_disabled(lm.model):
                before = probes.ask(lm, data.probes, stop)
            reset_for_training(lm.model)
    lap("recall_questions")
    result = trainer.run(progress or (lambda p: None), stop)
    lap("training")
    if result.status == "finished" and before:
        result.recall = probes.Recall(tuple(zip(before, probes.ask(lm, data.probes, stop), strict=False)))
    lap("recall_questions")
    if result.status == "finished" and export:
        from engine.finetune.export import float32_merged, save_merged_hf, save_peft_adapter

        source = lm
        if config.method == "lora":
            result.adapter_dir = save_peft_adapter(lm, out / "adapter", config)
            if lm.model.dtype != torch.float32:
                source = float32_merged(lm.path, lm.model.device, result.adapter_dir)
        result.merged_dir = save_merged_hf(source, out / "merged")
        _export_gguf(source, out, config, result)
    lap("outputs")
    summary = {
        "status": result.status,
        "step": result.step,
        "total_steps": result.total_steps,
        "config": asdict(config),
        "val_loss_before": result.val_loss_before,
        "val_loss_after": result.val_loss_after,
        "perplexity_before": result.perplexity_before,
        "perplexity_after": result.perplexity_after,
        "outputs": {
            name: str(p) if p is not None else None
            for name, p in (("adapter", result.adapter_dir), ("merged", result.merged_dir), ("gguf", result.gguf_path))
        },
        "gguf_skipped": result.gguf_skipped,
        "recall": result.recall.to_json() if result.recall is not None else None,
        "seconds": seconds,
        "history": result.history,
        "files": [asdict(r) for r in data.reports],
    }
    (out / "run.json").write_text(json.dumps(summary, indent=1))
    return result
