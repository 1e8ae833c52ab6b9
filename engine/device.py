"""Choosing the device and dtype: explicit names, or "auto" for the best available. Never hard-codes CUDA.

The choices import without torch (`ember-cli --help` needs them); torch is imported when one is resolved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes
DTYPE_CHOICES = ("auto", *DTYPES)


def _mps_available() -> bool:
    import torch

    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; ``cuda:1`` style indices are accepted."""
    import torch

    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but this torch build sees no CUDA GPU")
    if kind == "mps" and not _mps_available():
        raise ValueError("device 'mps' requested but Apple's Metal backend is not available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA when supported (else fp16), fp16 on MPS, bf16 on CPU (where 4-bit GGUF
    weights then stay packed for torch's int4 kernel, which wants bf16). ``float32`` is the exact mode."""
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.bfloat16
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    return getattr(torch, name)
