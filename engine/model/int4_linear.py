"""A projection whose weight stays 4-bit: torch's own groupwise int4 CPU kernel, bf16 activations.

The weight is ``Int4Groups`` from the file (codes, and a scale and offset per 32 weights), packed once
into the layout of ``aten._weight_int4pack_mm_for_cpu``. That kernel computes with
``(code - 8) * scale + zero``, so ``zero = offset + 8 * scale``; the codes are the file's own and only
the scale and zero are rounded, to bfloat16 (the kernel's type). This is what makes decoding fast on a
CPU: 4 bits per weight read per token instead of 32, and no dequantized copy in memory.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.gguf.int4_groups import GROUP, Int4Groups
from engine.model.linear import kernel_rows

DTYPE = torch.bfloat16  # what the kernel wants for activations, scales and zeros


def int4_kernels_available() -> bool:
    """torch 2.6 and later ship the CPU int4 kernels (and the int8 one the output head uses)."""
    ops = torch.ops.aten
    return all(hasattr(ops, op) for op in ("_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu"))


def int4_supported(shape: torch.Size | tuple[int, int], device: torch.device) -> bool:
    """Whether a ``(out, in)`` weight can use the kernel: CPU only, whole groups, rows a multiple of 16."""
    out_features, in_features = shape
    return device.type == "cpu" and in_features % GROUP == 0 and out_features % 16 == 0


class Int4Linear(nn.Module):
    """``forward(x) -> x @ W.T + b`` with W held packed; x of any float dtype, the result in bf16."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale_zero", torch.empty(in_features // GROUP, out_features, 2, dtype=DTYPE))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=DTYPE), requires_grad=False) if bias else None

    @staticmethod
    def pack(groups: Int4Groups) -> dict[str, torch.Tensor]:
        """The ``packed`` and ``scale_zero`` buffers for ``groups`` (the layer's state, without bias)."""
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(groups.codes.to(torch.int32), 1)
        zero = groups.offset + 8 * groups.scale
        scale_zero = torch.stack((groups.scale.t(), zero.t()), dim=-1).to(DTYPE).contiguous()
        return {"packed": packed, "scale_zero": scale_zero}  # scale_zero: (in / GROUP, out, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = kernel_rows(x, self.in_features, DTYPE)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scale_zero)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {GROUP}"
