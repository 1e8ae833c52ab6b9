"""The dtype a fine-tuning run computes in, chosen by measuring this device.

The frozen base weights are held in that dtype; the LoRA factors and AdamW's state stay float32 either
way (`engine.finetune.lora`). On a GPU that supports it, bf16. On a CPU it depends on the chip: with native
bf16 dot products (AVX-512 BF16, AMX) a bf16 matmul runs 2-3x faster than float32, without them it
can be several times slower. So the choice is timed, not assumed: a projection-sized matmul in each
dtype, once per process, and bf16 only when it is clearly faster.
"""

from __future__ import annotations

import functools
import time

import torch

BF16_MIN_SPEEDUP = 1.3  # below this the rounding of the frozen weights is not worth it


def _linear_seconds(x: torch.Tensor, w: torch.Tensor) -> float:
    t = time.perf_counter()
    torch.nn.functional.linear(x, w)
    return time.perf_counter() - t


@functools.cache
def cpu_speedup_bf16(rounds: int = 8) -> float:
    """float32 time over bf16 time for a projection-sized matmul, (512, 576) @ (576, 1536), on this CPU
    (above 1: bf16 is faster). The dtypes alternate and each keeps its best time, so a moment of load from
    other processes does not decide; the first call of each is a warm-up (the library primes its kernel)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(512, 576, generator=gen), torch.randn(1536, 576, generator=gen)
    pairs = {dt: (x.to(dt), w.to(dt)) for dt in (torch.float32, torch.bfloat16)}
    best = {dt: float("inf") for dt in pairs}
    for r in range(rounds + 1):
        for dt, (xd, wd) in pairs.items():
            seconds = _linear_seconds(xd, wd)
            if r:
                best[dt] = min(best[dt], seconds)
    return best[torch.float32] / best[torch.bfloat16]


def training_dtype(device: torch.device | str, method: str = "lora") -> torch.dtype:
    """The base weights' dtype for a LoRA run: bf16 where this device runs it clearly faster than float32,
    else float32. Full fine-tuning stays float32 (AdamW's small updates vanish in bf16 weights)."""
    device = torch.device(device)
    if method != "lora":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_speedup_bf16() >= BF16_MIN_SPEEDUP:
        return torch.bfloat16
    return torch.float32
