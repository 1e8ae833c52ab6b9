"""Attention by the kernel this machine runs a decoding step fastest with, found by timing.

Two candidates: ``sdpa``, the fused SDPA kernel over the KV cache in the model's dtype (bf16), and
``sdpa_f32``, the same kernel in float32 over a cache kept in float32. The float32 cache holds the very
values the bf16 one would (keys and values come out of bf16 projections, and float32 holds every bf16
number), at twice the memory. The choice is timed on one query (a decoding step), where the kernels
differ most, and then holds for every pass: a prompt's many queries attend in the same dtype as the
steps that follow it, so cached decoding computes what recomputing the whole sequence would.

A decoding step's one query attends with each group's query heads folded into rows over their shared
keys (`attend`). The CPU kernels run a single query row per head far slower than a few: on an Intel Xeon
(Ice Lake, AVX-512 without bf16), 2 threads, one query of SmolLM2's shape (9 query heads over 3 KV heads,
head dim 64) over 512 keys took 263 µs in bf16 with the heads apart and 47 µs folded, in float32 48 and
31 µs; 32 heads over 8 of dim 128 over 3000 keys 11.9 ms and 0.85 ms in bf16, 3.1 and 0.96 ms in float32.
Before the folding, an AMD EPYC (Zen 4, AVX-512 bf16) took 290-470 µs in bf16 and 41-89 µs in float32
for SmolLM2's shape over 512 keys, and the float32 cache was chosen for its speed; 512 queries over 512
keys took 5.3 ms in bf16 and 4.7 ms in float32, over 3000 keys 32 and 35 ms. Another CPU may order them
the other way, so each machine times both the first time a shape decodes and keeps the answer
(`engine.model.timed_choice`: keyed by the CPU's model and flags, the thread count and torch's version).

Float32 attention is the exact mode's, and bf16 rounds the softmax's weights: with the heads folded the two
ran about as fast here, and bf16 attention moved a real Gemma 3 270M's greedy reply at its fourth token
(tests/engine/weights/test_real_gemma3.py). So float32 is the default, and bf16 (with its cache of half
the size) is taken only when it at least halves the time (`MIN_GAIN`): a choice near a tie would be
decided by timing noise, and the two round differently; a gain near that margin is timed again (the best
of three) before it is kept. A float32 model and GPUs use the fused kernel as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.model.timed_choice import machine_key, recall, remember

KERNELS = ("sdpa", "sdpa_f32")
KEYS = 512  # the cache length timed: a conversation a few turns in
ROUNDS, CALLS = 5, 20
# bf16 is taken only when it at least halves the time (see the module docstring): folded, SmolLM2's shape took
# 47 µs in bf16 and 31 µs in float32 on an Ice Lake; near a tie timing noise would decide between two roundings.
MIN_GAIN = 2.0
UNSURE = (1.4, 3.0)  # gains timed again before they are kept: noise on a busy machine moves them across MIN_GAIN
RETRIES = 2


@dataclass(frozen=True)
class DecodeAttention:
    kernel: str  # one of KERNELS: every attention pass runs it, see the module docstring
    micros: dict[str, float] = field(default_factory=dict)  # each candidate's best time a call, µs
    source: str = "default"  # "measured", "cached" (read from the file) or "default" (nothing to choose)

    def describe(self) -> str:
        times = ", ".join(f"{k} {v:.0f} µs" for k, v in self.micros.items())
        return f"{self.kernel} ({self.source}{': ' + times if times else ''})"


def cache_dtype(kernel: str, dtype: torch.dtype) -> torch.dtype:
    """The KV cache's dtype for a model in ``dtype`` decoding with ``kernel``."""
    return torch.float32 if kernel == "sdpa_f32" else dtype


def widest_cache_dtype(dtype: torch.dtype, device) -> torch.dtype:
    """The widest KV cache a model in ``dtype`` on ``device`` may get (for memory estimates made before the
    kernel is chosen): float32 on the CPU, the model's dtype elsewhere."""
    return torch.float32 if torch.device(device).type == "cpu" and dtype.itemsize < 4 else dtype


def attend(kernel: str, q, k, v, *, mask=None, is_causal: bool = False, gqa: bool = False, scale=None):
    """``F.scaled_dot_product_attention`` as ``kernel`` runs it (keys and values in the cache's dtype, or
    any for ``sdpa_f32``); the result in ``q``'s dtype.

    One query over grouped keys (a decoding step) attends with each group's query heads folded into rows
    over their shared keys: the same sums, which the CPU kernels run several times faster (module docstring)."""
    B, n_head, T, head_dim = q.shape
    if gqa and T == 1 and mask is None:
        folded = q.reshape(B, k.shape[1], n_head // k.shape[1], head_dim)  # (B, nkv, group, hd)
        return _sdpa(kernel, folded, k, v, None, False, False, scale).reshape(B, n_head, 1, head_dim)
    return _sdpa(kernel, q, k, v, mask, is_causal, gqa, scale)


def _sdpa(kernel: str, q, k, v, mask, is_causal: bool, gqa: bool, scale):
    if kernel == "sdpa_f32" and q.dtype != torch.float32:
        y = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal, enable_gqa=gqa, scale=scale
        )
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa, scale=scale)


def _time(kernel: str, q, k, v, gqa: bool) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        attend(kernel, q, k, v, gqa=gqa)
    return (time.perf_counter() - start) / CALLS * 1e6


def measure(n_head: int, n_kv_head: int, head_dim: int, dtype: torch.dtype) -> dict[str, float]:
    """Each kernel's best time (µs) for one query over `KEYS` keys in its cache's dtype, the kernels taking
    turns."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, n_head, 1, head_dim, generator=gen).to(dtype)
    k = torch.randn(1, n_kv_head, KEYS, head_dim, generator=gen).to(dtype)
    v = torch.randn(1, n_kv_head, KEYS, head_dim, generator=gen).to(dtype)
    caches = {kernel: (k.to(cache_dtype(kernel, dtype)), v.to(cache_dtype(kernel, dtype))) for kernel in KERNELS}
    gqa = n_head != n_kv_head
    best = {kernel: float("inf") for kernel in KERNELS}
    with torch.inference_mode():
        for r in range(ROUNDS + 1):
            for kernel in KERNELS:
                t = _time(kernel, q, *caches[kernel], gqa)
                if r:  # round 0 warms each kernel up
                    best[kernel] = min(best[kernel], t)
    return best


def _measure_surely(n_head: int, n_kv_head: int, head_dim: int, dtype: torch.dtype) -> dict[str, float]:
    """`measure`, repeated while the gain is `UNSURE` (each kernel's best over the tries)."""
    best = measure(n_head, n_kv_head, head_dim, dtype)
    for _ in range(RETRIES):
        if not UNSURE[0] <= best["sdpa_f32"] / best["sdpa"] <= UNSURE[1]:
            break
        again = measure(n_head, n_kv_head, head_dim, dtype)
        best = {kernel: min(best[kernel], again[kernel]) for kernel in KERNELS}
    return best


def choose(
    n_head: int, n_kv_head: int, head_dim: int, dtype: torch.dtype, device, file: Path | None
) -> DecodeAttention:
    """The decode kernel for this shape on this machine: from ``file`` when it was timed before, else timed
    now (~0.1 s, up to three times that near a tie) and kept there (``file`` None: timed, not kept)."""
    if torch.device(device).type != "cpu" or dtype == torch.float32:
        return DecodeAttention("sdpa")
    key = f"{machine_key()}|{n_head}x{n_kv_head}x{head_dim}|{str(dtype).removeprefix('torch.')}"
    micros = recall(file, key, KERNELS)
    if micros is not None:
        return DecodeAttention(_faster(micros), micros, "cached")
    micros = _measure_surely(n_head, n_kv_head, head_dim, dtype)
    remember(file, key, micros)
    return DecodeAttention(_faster(micros), micros, "measured")


def _faster(micros: dict[str, float]) -> str:
    return "sdpa" if micros["sdpa_f32"] >= MIN_GAIN * micros["sdpa"] else "sdpa_f32"
