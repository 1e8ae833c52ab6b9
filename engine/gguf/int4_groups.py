"""Q4_0, Q4_1 and Q4_K tensors as 4-bit codes with a scale and an offset per group of 32 weights.

All three formats decode as ``w = code * scale + offset`` with one (scale, offset) pair per 32
consecutive weights of a row, so they map onto groupwise int4 kernels without re-quantizing: the codes
are the file's own. Scales and offsets come out in float32, computed exactly as `engine.gguf.dequant`
computes them, so ``Int4Groups.dequantize()`` equals the dequantizer bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.gguf.dequant import _field_f16, _k_scales_mins, _unpack
from engine.gguf.types import BLOCK_SIZES, GGMLType

GROUP = 32  # weights per (scale, offset) pair


@dataclass(frozen=True)
class Int4Groups:
    """A 2-D weight ``(rows, cols)``: ``codes`` uint8 in [0, 15] of that shape, ``scale`` and ``offset``
    float32 of shape ``(rows, cols // GROUP)``."""

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def rows(self, index: torch.Tensor) -> Int4Groups:
        """The rows picked by ``index`` (a permutation or a selection), like ``weight[index]``."""
        return Int4Groups(self.codes[index], self.scale[index], self.offset[index])

    @staticmethod
    def cat(parts: list[Int4Groups]) -> Int4Groups:
        """Rows of ``parts`` stacked, like ``torch.cat`` of their weights."""
        return Int4Groups(*(torch.cat([getattr(p, f) for p in parts]) for f in ("codes", "scale", "offset")))

    def dequantize(self) -> torch.Tensor:
        """The float32 weight, equal to `engine.gguf.dequant.dequantize` of the same blocks."""
        n, k = self.codes.shape
        w = self.codes.view(n, k // GROUP, GROUP).to(torch.float32)
        return w.mul_(self.scale.unsqueeze(-1)).add_(self.offset.unsqueeze(-1)).view(n, k)


def _q4_0(blocks: torch.Tensor):
    d = _field_f16(blocks, 0)
    return _unpack(blocks[:, 2:], 4).reshape(-1, 32), d, -8 * d


def _q4_1(blocks: torch.Tensor):
    return _unpack(blocks[:, 4:], 4).reshape(-1, 32), _field_f16(blocks, 0), _field_f16(blocks, 2)


def _q4_k(blocks: torch.Tensor):
    d, dmin = _field_f16(blocks, 0), _field_f16(blocks, 2)
    scales, mins = _k_scales_mins(blocks[:, 4:16])
    codes = _unpack(blocks[:, 16:].reshape(-1, 4, 32), 4).reshape(-1, 32)  # (n, 4, 2, 32) -> (n * 8, 32)
    return codes, (d * scales).reshape(-1, 1), (-(dmin * mins)).reshape(-1, 1)


_KERNELS = {GGMLType.Q4_0: _q4_0, GGMLType.Q4_1: _q4_1, GGMLType.Q4_K: _q4_k}
INT4_TYPES = frozenset(_KERNELS)


def int4_groups(raw: torch.Tensor, ggml_type: GGMLType, shape: tuple[int, ...]) -> Int4Groups:
    """Split the 1-D uint8 blocks of a 2-D ``ggml_type`` tensor of ``shape`` into codes, scales and offsets."""
    if ggml_type not in _KERNELS or len(shape) != 2:
        raise ValueError(f"{GGMLType(ggml_type).name} of shape {shape} has no int4 group form")
    block_size, type_size = BLOCK_SIZES[ggml_type]
    rows, cols = shape
    if cols % block_size or raw.numel() != math.prod(shape) // block_size * type_size:
        raise ValueError(f"{ggml_type.name} of shape {shape}: {raw.numel()} bytes do not hold whole blocks")
    codes, scale, offset = _KERNELS[ggml_type](raw.contiguous().view(-1, type_size))
    groups = cols // GROUP
    return Int4Groups(codes.reshape(rows, cols), scale.reshape(rows, groups), offset.reshape(rows, groups))
