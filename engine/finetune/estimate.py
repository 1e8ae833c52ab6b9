"""How long a fine-tuning run will take and how much memory it needs, before it starts.

Rough by design (the panel says so): memory is the float32 weights, the trainable weights' gradients
and AdamW's two moments, and the activations autograd keeps for one micro-batch (per layer and token,
about ``12 * n_embd + 4 * intermediate`` floats; the logits three times over; eager attention's scores
twice). Time is the training FLOPs (forward ``2N`` per token, backward ``2N`` more for LoRA, which needs
no weight gradients of the frozen base, ``4N`` for full) over this machine's measured float32 matmul
rate times the efficiency training reaches (measured on a quiet 2-core CPU: SmolLM2-135M, LoRA, batch
4 x 128 tokens, 269 tokens/s, i.e. ~45% of the 512^3 matmul rate of 330 GFLOP/s; when other processes
share the cores both numbers drop and the estimate follows only as far as the 0.2 s measurement does).

`measure_matmul_rate` takes ~0.2 s; call it off the UI thread.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from engine.loading.config import ModelConfig

EFFICIENCY = {"cpu": 0.45, "cuda": 0.3, "mps": 0.2}  # cuda, mps: guesses, not measured
FLOAT = 4


@dataclass(frozen=True)
class RunEstimate:
    steps: int
    tokens: int  # training tokens the run will see
    trainable_params: int
    weights_bytes: int
    optimizer_bytes: int  # gradients and AdamW moments of the trainable weights
    activation_bytes: int
    seconds: float | None  # None: no rate measured

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


def measure_matmul_rate(seconds: float = 0.2, n: int = 512) -> float:
    """Float32 FLOP/s of an ``n x n`` matmul on the CPU, as this process sees it now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
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
    device_type: str = "cpu",
    flops_per_second: float | None = None,
) -> RunEstimate:
    """Steps, tokens, memory and time of a run with these settings on ``train_chunks`` chunks."""
    seq_len = min(seq_len, cfg.max_seq_len - 1)
    micro_per_epoch = max(1, math.ceil(train_chunks / batch_size))
    total = steps or max(1, math.ceil(epochs * micro_per_epoch / grad_accum))
    tokens = total * grad_accum * batch_size * seq_len
    n = cfg.n_params
    trainable = n if method == "full" else lora_params(cfg, rank, targets)
    per_token_layer = 12 * cfg.n_embd + 4 * cfg.intermediate_size
    activations = batch_size * seq_len * (cfg.n_layer * per_token_layer + 3 * cfg.vocab_size) * FLOAT
    activations += 2 * cfg.n_layer * batch_size * cfg.n_head * seq_len * seq_len * FLOAT
    seconds = None
    if flops_per_second:
        flops_per_token = (6 if method == "full" else 4) * n
        flops_per_token += 6 * cfg.n_layer * seq_len * cfg.n_head * cfg.head_dim  # attention scores
        seconds = tokens * flops_per_token / (flops_per_second * EFFICIENCY.get(device_type, EFFICIENCY["cpu"]))
    return RunEstimate(
        steps=total,
        tokens=tokens,
        trainable_params=trainable,
        weights_bytes=n * FLOAT + (trainable * FLOAT if method == "lora" else 0),
        optimizer_bytes=3 * trainable * FLOAT,
        activation_bytes=activations,
        seconds=seconds,
    )
