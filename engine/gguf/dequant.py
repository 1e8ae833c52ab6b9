"""Vectorized torch dequantizers for ggml tensor types, bit-exact with gguf-py's numpy reference.

Each block kernel takes ``(n_blocks, type_size)`` uint8 and returns ``(n_blocks, block_size)`` float32,
working on all blocks at once with slicing and bit operations; the float arithmetic is done in the same
order as ``gguf.quants`` so the results match it exactly. Large tensors are decoded a chunk of blocks at a
time, which bounds the temporaries and is faster than one pass over the whole tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engine.gguf.types import BLOCK_SIZES, SUPPORTED_TYPES, GGMLType

CHUNK_BLOCKS = 1 << 16  # blocks decoded per step: 8 MiB of float32 output for 32-element blocks
# The 16 non-linear levels of IQ4_NL and IQ4_XS: a 4-bit code picks one, the block's scale multiplies it.
IQ4_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _field_f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian fp16 at byte ``start`` of each block, as float32: (n_blocks, 1)."""
    pair = blocks[:, start : start + 2].clone(memory_format=torch.contiguous_format)  # aligned for the view
    return pair.view(torch.float16).to(torch.float32)


def _unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., k) uint8 -> (..., 8 // bits, k): the ``bits``-wide fields of every byte, lowest field first."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device).view(-1, 1)
    return (packed.unsqueeze(-2) >> shifts) & ((1 << bits) - 1)


def _high_bits32(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) uint8 read as a little-endian u32 -> (n, 32) uint8 holding bit i of it at column i."""
    return _unpack(qh.unsqueeze(-1), 1).reshape(-1, 32)  # (n, 4, 8, 1) -> (n, 32)


def _k_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes of 6-bit scales and mins -> two (n, 8) float32 tensors."""
    d, m, m_d = packed.reshape(-1, 3, 4).unbind(1)  # each (n, 4)
    scales = torch.cat((d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)), dim=-1)
    mins = torch.cat((m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return scales.to(torch.float32), mins.to(torch.float32)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _field_f16(blocks, 0)
    q = _unpack(blocks[:, 2:], 4).reshape(-1, 32)  # (n, 2, 16) -> (n, 32)
    return q.to(torch.float32).sub_(8).mul_(d)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _field_f16(blocks, 0), _field_f16(blocks, 2)
    q = _unpack(blocks[:, 4:], 4).reshape(-1, 32)  # (n, 2, 16) -> (n, 32)
    return q.to(torch.float32).mul_(d).add_(m)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _field_f16(blocks, 0)
    q = _unpack(blocks[:, 6:], 4).reshape(-1, 32) | (_high_bits32(blocks[:, 2:6]) << 4)
    return q.to(torch.float32).sub_(16).mul_(d)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _field_f16(blocks, 0), _field_f16(blocks, 2)
    q = _unpack(blocks[:, 8:], 4).reshape(-1, 32) | (_high_bits32(blocks[:, 4:8]) << 4)
    return q.to(torch.float32).mul_(d).add_(m)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _field_f16(blocks, 0)
    return blocks[:, 2:].view(torch.int8).to(torch.float32).mul_(d)


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    scales = blocks[:, :16]
    d, dmin = _field_f16(blocks, 80), _field_f16(blocks, 82)
    dl = (d * (scales & 0x0F).to(torch.float32)).unsqueeze(-1)  # (n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).unsqueeze(-1)  # (n, 16, 1)
    q = _unpack(blocks[:, 16:80].reshape(-1, 2, 32), 2).reshape(-1, 16, 16)  # (n, 2, 4, 32) -> (n, 16, 16)
    return q.to(torch.float32).mul_(dl).sub_(ml).reshape(-1, 256)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    d = _field_f16(blocks, 108)
    low = _unpack(blocks[:, 96:104], 4).reshape(-1, 16)  # (n, 2, 8) -> (n, 16)
    high = _unpack(blocks[:, 104:108], 2).reshape(-1, 16)  # (n, 4, 4) -> (n, 16)
    scales = (low | (high << 4)).to(torch.float32).sub_(32)
    dl = (d * scales).unsqueeze(-1)  # (n, 16, 1)
    ql = _unpack(blocks[:, 32:96].reshape(-1, 2, 32), 2).reshape(-1, 16, 16)  # (n, 2, 4, 32) -> (n, 16, 16)
    qh = _unpack(blocks[:, :32], 1).reshape(-1, 16, 16)  # (n, 8, 32) -> (n, 16, 16)
    q = ql.to(torch.float32).sub_(((qh ^ 1) << 2).to(torch.float32))  # a clear high bit means minus 4
    return q.mul_(dl).reshape(-1, 256)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    d, dmin = _field_f16(blocks, 0), _field_f16(blocks, 2)
    scales, mins = _k_scales_mins(blocks[:, 4:16])
    q = _unpack(blocks[:, 16:].reshape(-1, 4, 32), 4).reshape(-1, 8, 32)  # (n, 4, 2, 32) -> (n, 8, 32)
    dl = (d * scales).unsqueeze(-1)  # (n, 8, 1)
    ml = (dmin * mins).unsqueeze(-1)  # (n, 8, 1)
    return q.to(torch.float32).mul_(dl).sub_(ml).reshape(-1, 256)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    d, dmin = _field_f16(blocks, 0), _field_f16(blocks, 2)
    scales, mins = _k_scales_mins(blocks[:, 4:16])
    ql = _unpack(blocks[:, 48:].reshape(-1, 4, 32), 4).reshape(-1, 8, 32)  # (n, 4, 2, 32) -> (n, 8, 32)
    qh = _unpack(blocks[:, 16:48], 1)  # (n, 8, 32)
    dl = (d * scales).unsqueeze(-1)  # (n, 8, 1)
    ml = (dmin * mins).unsqueeze(-1)  # (n, 8, 1)
    return (ql | (qh << 4)).to(torch.float32).mul_(dl).sub_(ml).reshape(-1, 256)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    d = _field_f16(blocks, 208)
    scales = blocks[:, 192:208].view(torch.int8).to(torch.float32)  # (n, 16)
    ql = _unpack(blocks[:, :128].reshape(-1, 2, 64), 4).reshape(-1, 8, 32)  # (n, 2, 2, 64) -> (n, 8, 32)
    qh = _unpack(blocks[:, 128:192].reshape(-1, 2, 32), 2).reshape(-1, 8, 32)  # (n, 2, 4, 32) -> (n, 8, 32)
    q = (ql | (qh << 4)).to(torch.float32).sub_(32).reshape(-1, 16, 16)  # (n, 8, 32) -> (n, 16, 16)
    return q.mul_((d * scales).unsqueeze(-1)).reshape(-1, 256)


def _iq4_levels(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (uint8) -> their IQ4 levels as float32."""
    levels = torch.tensor(IQ4_LEVELS, dtype=torch.float32, device=codes.device)
    return levels[codes.long()]


def _iq4_nl(blocks: torch.Tensor) -> torch.Tensor:
    d = _field_f16(blocks, 0)
    q = _unpack(blocks[:, 2:], 4).reshape(-1, 32)  # (n, 2, 16) -> (n, 32)
    return _iq4_levels(q).mul_(d)


def _iq4_xs(blocks: torch.Tensor) -> torch.Tensor:
    d = _field_f16(blocks, 0)
    high = _unpack(blocks[:, 2:4], 2).transpose(1, 2).reshape(-1, 8)  # (n, 4, 2) -> (n, 2, 4) -> (n, 8)
    low = _unpack(blocks[:, 4:8], 4).transpose(1, 2).reshape(-1, 8)  # (n, 2, 4) -> (n, 4, 2) -> (n, 8)
    scales = (low | (high << 4)).to(torch.float32).sub_(32)  # 6-bit scales of the 8 sub-blocks
    q = _unpack(blocks[:, 8:].reshape(-1, 8, 16), 4).reshape(-1, 8, 32)  # (n, 8, 2, 16) -> (n, 8, 32)
    return _iq4_levels(q).mul_((d * scales).unsqueeze(-1)).reshape(-1, 256)


_BLOCK_KERNELS: dict[GGMLType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLType.Q4_0: _q4_0,
    GGMLType.Q4_1: _q4_1,
    GGMLType.Q5_0: _q5_0,
    GGMLType.Q5_1: _q5_1,
    GGMLType.Q8_0: _q8_0,
    GGMLType.Q2_K: _q2_k,
    GGMLType.Q3_K: _q3_k,
    GGMLType.Q4_K: _q4_k,
    GGMLType.Q5_K: _q5_k,
    GGMLType.Q6_K: _q6_k,
    GGMLType.IQ4_NL: _iq4_nl,
    GGMLType.IQ4_XS: _iq4_xs,
}
FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)  # decoded by a view or a cast, no kernel


def _view_as(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret 1-D uint8 as ``dtype``, copying first if the bytes are not aligned for it."""
    if raw.storage_offset() % dtype.itemsize:
        raw = raw.clone()
    return raw.view(dtype)


def dequantize(raw: torch.Tensor, ggml_type: GGMLType, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode the 1-D uint8 tensor ``raw`` of ``ggml_type`` into float32 of ``shape`` (outermost first).

    The result is on ``raw``'s device. For F32 it is a view of ``raw``; every other type gives a new tensor.
    """
    if ggml_type not in SUPPORTED_TYPES:
        raise NotImplementedError(f"cannot dequantize ggml type {GGMLType(ggml_type).name}")
    block_size, type_size = BLOCK_SIZES[ggml_type]
    row = shape[-1] if shape else 1
    nbytes = math.prod(shape) // block_size * type_size
    if raw.dtype != torch.uint8 or raw.dim() != 1 or row % block_size or raw.numel() != nbytes:
        raise ValueError(
            f"{ggml_type.name} of shape {shape} needs 1-D uint8 of {nbytes} bytes with rows a multiple of "
            f"{block_size}, got {raw.dtype} of shape {tuple(raw.shape)}"
        )
    raw = raw.contiguous()
    if ggml_type == GGMLType.F32:
        return _view_as(raw, torch.float32).view(shape)
    if ggml_type == GGMLType.F16:
        return _view_as(raw, torch.float16).to(torch.float32).view(shape)
    if ggml_type == GGMLType.BF16:
        return (_view_as(raw, torch.int16).to(torch.int32) << 16).view(torch.float32).view(shape)
    kernel = _BLOCK_KERNELS[ggml_type]
    blocks = raw.view(-1, type_size)  # (n_blocks, type_size)
    out = torch.empty(blocks.shape[0], block_size, dtype=torch.float32, device=raw.device)
    for start in range(0, blocks.shape[0], CHUNK_BLOCKS):
        out[start : start + CHUNK_BLOCKS] = kernel(blocks[start : start + CHUNK_BLOCKS])
    return out.view(shape)
