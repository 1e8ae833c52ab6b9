"""The one seam for linear layers.

The model builds every projection through `Linear`. A weight-only quantized layer only has to offer
the same ``forward(x) -> x @ W.T + b`` contract and ``in_features``/``out_features``; a quantize step
then swaps instances after loading without touching the model code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Linear):
    """A dense projection, ``(..., in_features) -> (..., out_features)``, computed in the weight's dtype
    (the float32 residual stream is cast down on the way in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype:
            x = x.to(self.weight.dtype)
        return F.linear(x, self.weight, self.bias)


def kernel_rows(x: torch.Tensor, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as dense ``(rows, in_features)`` of ``dtype``: what the packed weight kernels read."""
    flat = x.reshape(-1, in_features)
    if flat.dtype != dtype or not flat.is_contiguous():
        flat = flat.to(dtype).contiguous()
    return flat
