"""How long a fine-tuning run will take and how much memory it needs, before it starts.

Rough by design (the panel says so): memory is the weights in the training dtype, the trainable weights'
gradients and AdamW's two moments (float32), and the activations autograd keeps for one micro-batch (per
layer and token, about ``12 * n_embd + 4 * intermediate`` values; the float32 logits three times over;
eager attention's scores twice).

Time is three parts. Training: the FLOPs (forward ``2N`` per token, backward ``2N`` more for LoRA, which
needs no weight gradients of the frozen base, ``4N`` for full) over this machine's matmul rate, measured
in the training dtype, times the share of it training reaches (`EFFICIENCY`). The recall questions, asked
before and after: ``MAX_TOKENS`` greedy tokens each at most, one decoding step costing ``2N`` FLOPs at the
much lower share decoding reaches (`DECODE_EFFICIENCY`). The merged outputs: the float32 model loaded
again and written twice (`EXPORT_SECONDS_PER_PARAM`). The shares were measured on this project's CPU
machines (README, "Fine-tuning": estimate against actual time); when other processes share the cores, the
rate drops and the estimate follows only as far as the 0.2 s measurement does.

`measure_matmul_rate` takes ~0.2 s; call it off the UI thread.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from engine.finetune.probes import MAX_TOKENS
from engine.loading.config import ModelConfig

# The share of the measured 512^3 matmul rate a training step reaches, by device and base-weight bytes.
# CPU float32: SmolLM2-135M, LoRA, batch 4 x 128, 269 tokens/s against 330 GFLOP/s. CPU bf16: the default
# runs on two folders of notes (48 and 72 steps, ~230 tokens/s against 336 GFLOP/s, README). cuda, mps:
# guesses, not measured.
EFFICIENCY = {("cpu", 4): 0.45, ("cpu", 2): 0.34, ("cuda", 4): 0.3, ("cuda", 2): 0.3, ("mps", 4): 0.2, ("mps", 2): 0.2}
DECODE_EFFICIENCY = {"cpu": 0.025, "cuda": 0.01, "mps": 0.01}  # cpu: 7 questions asked twice took 20 s
EXPORT_SECONDS_PER_PARAM = 4e-8  # the float32 model loaded again, merged and written twice: 5.5 s for 135M
FLOAT = 4


@dataclass(frozen=True)
class RunEstimate:
    steps: int
    tokens: int  # training tokens the run will see
    trainable_params: int
    weights_bytes: int
    optimizer_bytes: int  # gradients and AdamW moments of the trainable weights
    activation_bytes: int
    train_seconds: float | None  # None: no rate measured
    probe_seconds: float | None = None  # the recall questions, before and after
    export_seconds: float | None = None  # the merged outputs

    @property
    def seconds(self) -> float | None:
        if self.train_seconds is None:
            return None
        return self.train_seconds + (self.probe_seconds or 0.0) + (self.export_seconds or 0.0)

    @property
    def memory_bytes(self) -> int:
        return self.weights_bytes + self.optimizer_bytes + self.activation_bytes


def lora_params(cfg: ModelConfig, rank: int, targets: list[str] | tuple[str, ...]) -> int:
    """Trainable parameters of a LoRA adapter: ``r * (in + out)`` per adapted HF projection."""
    q, kv, d, inter = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_embd, cfg.intermediate_size
    shapes = {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, inter),
        "up_proj": (d, inter),
        "down_proj": (inter, d),
    }
    attn = sum(rank * (i + o) for name, (i, o) in shapes.items() if name in targets and name[0] in "qkvo")
    mlp = sum(rank * (i + o) for name, (i, o) in shapes.items() if name in targets and name[0] not in "qkvo")
    mlp_layers = len(cfg.dense_layers) if cfg.n_expert else cfg.n_layer  # LoRA leaves experts as they are
    return attn * cfg.n_layer + mlp * mlp_layers


def measure_matmul_rate(seconds: float = 0.2, n: int = 512, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype`` on the CPU, as this process sees it now."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    start, count = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / elapsed


def estimate_run(
    cfg: ModelConfig,
    *,
    method: str,
    rank: int,
    targets: list[str] | tuple[str, ...],
    seq_len: int,
    batch_size: int,
    grad_accum: int,
    train_chunks: int,
    steps: int | None,
    epochs: float,
    train_tokens: int | None = None,
    probes: int = 0,
    export: bool = False,
    dtype_bytes: int = FLOAT,
    device_type: str = "cpu",
    flops_per_second: float | None = None,
) -> RunEstimate:
    """Steps, tokens, memory and time of a run with these settings on ``train_chunks`` chunks (of
    ``train_tokens`` tokens in all, when known: most are full, the last of each file is not), ``probes``
    recall questions, the merged outputs written when ``export``, and the base weights ``dtype_bytes``
    bytes each (``flops_per_second`` measured in that dtype)."""
    seq_len = min(seq_len, cfg.max_seq_len - 1)
    micro_per_epoch = max(1, math.ceil(train_chunks / batch_size))
    total = steps or max(1, math.ceil(epochs * micro_per_epoch / grad_accum))
    chunk_tokens = min(seq_len, train_tokens / max(train_chunks, 1)) if train_tokens else seq_len
    tokens = round(total * grad_accum * batch_size * chunk_tokens)
    n = cfg.n_params
    trainable = n if method == "full" else lora_params(cfg, rank, targets)
    per_token_layer = 12 * cfg.n_embd + 4 * cfg.intermediate_size
    activations = batch_size * seq_len * cfg.n_layer * per_token_layer * dtype_bytes
    activations += batch_size * seq_len * 3 * cfg.vocab_size * FLOAT
    activations += 2 * cfg.n_layer * batch_size * cfg.n_head * seq_len * seq_len * dtype_bytes
    train_s = probe_s = export_s = None
    if flops_per_second:
        kind = device_type if device_type in DECODE_EFFICIENCY else "cpu"
        flops_per_token = (6 if method == "full" else 4) * n
        flops_per_token += 6 * cfg.n_layer * seq_len * cfg.n_head * cfg.head_dim  # attention scores
        share = EFFICIENCY.get((kind, dtype_bytes), EFFICIENCY[(kind, FLOAT)])
        train_s = tokens * flops_per_token / (flops_per_second * share)
        probe_s = 2 * probes * MAX_TOKENS * 2 * n / (flops_per_second * DECODE_EFFICIENCY[kind])
        export_s = n * EXPORT_SECONDS_PER_PARAM if export else 0.0
    return RunEstimate(
        steps=total,
        tokens=tokens,
        trainable_params=trainable,
        weights_bytes=n * dtype_bytes + (trainable * FLOAT if method == "lora" else 0),
        optimizer_bytes=3 * trainable * FLOAT,
        activation_bytes=activations,
        train_seconds=train_s,
        probe_seconds=probe_s,
        export_seconds=export_s,
    )


def estimate_config(
    model_cfg: ModelConfig,
    config,
    data,
    *,
    device_type: str,
    flops_per_second: float | None,
    dtype_bytes: int,
    export: bool,
) -> RunEstimate:
    """`estimate_run` for a `FinetuneConfig` and the `Dataset` it will train on."""
    return estimate_run(
        model_cfg,
        method=config.method,
        rank=config.rank,
        targets=config.target_modules,
        seq_len=data.seq_len,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        train_chunks=len(data.train),
        train_tokens=data.train_tokens,
        steps=config.steps,
        epochs=config.epochs,
        probes=len(data.probes),
        export=export,
        dtype_bytes=dtype_bytes,
        device_type=device_type,
        flops_per_second=flops_per_second,
    )
