"""Will the model fit? An estimate made before anything is allocated, and a refusal with the numbers."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import psutil
import torch

from engine.errors import OutOfMemoryError
from engine.loading.config import ModelConfig
from engine.model.decode_attention import widest_cache_dtype

MiB = 1 << 20
# Activations, the rope table and allocator slack, as a fraction of the weights.
_OVERHEAD = 0.15
MIN_CONTEXT = 512  # the shortest context offered, unless the model's own is shorter
DEFAULT_CONTEXT_CAP = 8192  # the longest context chosen by default: longer ones cost memory and prefill time


def kv_cache_bytes(cfg: ModelConfig, dtype: torch.dtype, context: int) -> int:
    """The KV cache for ``context`` positions: keys and values of every layer's KV heads, in ``dtype``."""
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * context * (torch.finfo(dtype).bits // 8)


def estimate_bytes(
    cfg: ModelConfig, dtype: torch.dtype, device: torch.device, context: int, weight_bytes: int | None = None
) -> int:
    """Weights in ``dtype`` (or ``weight_bytes`` when the loader knows better: packed 4-bit weights) plus a
    KV cache for ``context`` positions in the widest dtype it may get on ``device`` plus overhead."""
    weights = cfg.n_params * (torch.finfo(dtype).bits // 8) if weight_bytes is None else weight_bytes
    return int(weights * (1 + _OVERHEAD)) + kv_cache_bytes(cfg, widest_cache_dtype(dtype, device), context)


def context_steps(max_context: int) -> list[int]:
    """The context lengths to offer: 512, 1024, 2048… below the model's ``max_context``, then it."""
    steps = [MIN_CONTEXT << i for i in range(max(max_context, 1).bit_length()) if MIN_CONTEXT << i < max_context]
    return [*steps, max_context]


def fitting_context(cfg: ModelConfig, dtype: torch.dtype, device: torch.device, cap: int = DEFAULT_CONTEXT_CAP) -> int:
    """The longest of `context_steps` up to ``cap`` whose estimate fits in the memory free now; the shortest
    step when none does (loading then says how much is missing)."""
    steps = context_steps(cfg.max_seq_len)
    free = available_bytes(device)
    fitting = [n for n in steps if n <= cap and estimate_bytes(cfg, dtype, device, n) <= free]
    return fitting[-1] if fitting else steps[0]


def available_bytes(device: torch.device) -> int:
    """Free memory where the model will live: free VRAM on CUDA, available RAM otherwise."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return psutil.virtual_memory().available


def check_fits(
    cfg: ModelConfig, dtype: torch.dtype, device: torch.device, context: int, name: str, weight_bytes: int | None = None
) -> int:
    """Return the estimate, or raise `OutOfMemoryError` saying how much is needed and free."""
    need = estimate_bytes(cfg, dtype, device, context, weight_bytes)
    free = available_bytes(device)
    if need > free:
        raise OutOfMemoryError(
            f"{name} needs about {need / MiB:,.0f} MiB on {device.type} "
            f"({cfg.n_params / 1e6:,.0f}M parameters in {str(dtype).removeprefix('torch.')}, "
            f"{context} positions of KV cache) but only {free / MiB:,.0f} MiB is free; "
            "pick a smaller dtype or context, or close other programs"
        )
    return need


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: allocated VRAM on CUDA, else the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource
    except ImportError:  # Windows
        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library is not glibc."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Hand memory freed inside the heap back to the system. Packing frees large temporaries one after
    another, and glibc keeps them for reuse: after a first load of the default model the process stayed
    at 611 MiB resident, 409 MiB with this (a load from the weight cache: 394). No-op where the C
    library is not glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
