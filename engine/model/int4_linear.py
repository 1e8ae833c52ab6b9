"""A projection whose weight stays 4-bit: torch's own groupwise int4 CPU kernel, bf16 activations.

The weight is ``Int4Groups`` from the file (codes, and a scale and offset per 32 weights), packed once
into the layout of ``aten._weight_int4pack_mm_for_cpu``. That kernel computes with
``(code - 8) * scale + zero``, so ``zero = offset + 8 * scale``; the codes are the file's own and only
the scale and zero are rounded, to bfloat16 (the kernel's type). This is what makes decoding fast on a
CPU: 4 bits per weight read per token instead of 32, and no dequantized copy in memory.

That kernel's time grows with the rows it is given as a dense matmul's does. A pass of at least
`DENSE_ROWS` rows (a prompt) may instead unpack the weight into a dense matrix and multiply that: in bf16,
or in float32 (the same bf16 input values, the weight without the final bf16 rounding of
``(code - 8) * scale + zero``, the result rounded to bf16). Which of the three is fastest depends on the
CPU and the rows (an AMD Zen 4 multiplies bf16 natively, twice as fast as the int4 kernel; an Intel Ice
Lake emulates bf16, and float32 overtakes the kernel only on longer passes), so each layer follows the
`prompt_plan` this machine timed (`engine.model.prompt_matmul`); decoding keeps the int4 kernel. The
weight is unpacked into buffers kept per thread and reused, at most `SCRATCH` bf16 weights (half as many
float32 ones) at a time (a wider projection is done in slices of its outputs), so a large model holds no
dense copy: 20 MB a thread at most.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from engine.gguf.int4_groups import GROUP, Int4Groups
from engine.model.linear import kernel_rows

DTYPE = torch.bfloat16  # what the kernel wants for activations, scales and zeros
DENSE_ROWS = 128  # rows from which a pass may unpack the weight and multiply densely (see the docstring)
PROMPT_FORMATS = {"int4": None, "bf16": DTYPE, "float32": torch.float32}  # a prompt's matmul: the dense dtype
BLOCK = 64  # the CPU layout's row block: byte j of column k holds rows j (low nibble) and j + 32 (high)
SCRATCH = 1 << 22  # bf16 weights unpacked at a time (uint8 codes and two bf16 matrices: 20 MB)
_scratch = threading.local()  # each thread's unpacking buffers by dtype, grown to the largest weight seen


def _buffers(count: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This thread's buffers of at least ``count`` elements: codes (uint8) and two matrices in ``dtype``."""
    held = getattr(_scratch, "buffers", None)
    if held is None:
        held = _scratch.buffers = {}
    if dtype not in held or held[dtype][0].numel() < count:
        with torch.inference_mode(False):  # plain tensors: written under no_grad and grad mode too
            held[dtype] = tuple(torch.empty(count, dtype=dt) for dt in (torch.uint8, dtype, dtype))
    return held[dtype]


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

    # How a pass of many rows multiplies: (rows, a key of `PROMPT_FORMATS`) from that many rows on, the int4
    # kernel below the first; `engine.model.prompt_matmul` plans it for this machine.
    prompt_plan: tuple[tuple[int, str], ...] = ((DENSE_ROWS, "bf16"),)

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
        # (other widths pack otherwise; a graph to differentiate would keep the reused buffers, and the
        # kernel has no backward anyway)
        dense = PROMPT_FORMATS[self.prompt_format(flat.shape[0])]
        if dense is not None and self.out_features % BLOCK == 0 and not flat.requires_grad:
            y = self._dense(flat.to(dense))
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scale_zero)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def prompt_format(self, rows: int) -> str:
        """How a pass of ``rows`` rows multiplies (`prompt_plan`)."""
        chosen = "int4"
        for first, name in self.prompt_plan:
            if rows >= first:
                chosen = name
        return chosen

    def _slices(self, dtype: torch.dtype) -> list[tuple[int, int]]:
        """The output ranges (whole 64-output blocks) unpacked at a time into ``dtype``: as many bytes as
        `SCRATCH` bf16 weights."""
        n = self.out_features
        width = max(1, SCRATCH * DTYPE.itemsize // dtype.itemsize // (self.in_features * BLOCK)) * BLOCK
        return [(start, min(n, start + width)) for start in range(0, n, width)]

    def _dense(self, flat: torch.Tensor) -> torch.Tensor:
        """``flat @ W.T`` in ``flat``'s dtype through the unpacked weight, a slice at a time; the result in
        bf16."""
        y = torch.empty(flat.shape[0], self.out_features, dtype=flat.dtype)
        for start, stop in self._slices(flat.dtype):
            torch.matmul(flat, self._unpacked(start, stop, flat.dtype), out=y[:, start:stop])
        return y.to(DTYPE)

    def unpack_all(self, dtype: torch.dtype) -> None:
        """Unpack the whole weight into ``dtype`` as a pass does, discarding it: what `_dense` adds to the
        product (timed by `engine.model.prompt_matmul`)."""
        for start, stop in self._slices(dtype):
            self._unpacked(start, stop, dtype)

    def _unpacked(self, start: int, stop: int, dtype: torch.dtype = DTYPE) -> torch.Tensor:
        """Outputs ``start:stop`` (whole blocks) of W.T as a ``(in, stop - start)`` matrix in ``dtype`` in
        this thread's buffers, valid until its next call."""
        k, n = self.in_features, stop - start
        codes, values, weight = (b[: k * n] for b in _buffers(k * n, dtype))
        blocks = self.packed.view(self.out_features // BLOCK, k, BLOCK // 2)[start // BLOCK : stop // BLOCK]
        by_block = blocks.permute(1, 0, 2)  # (in, outputs / 64, 32)
        halves = codes.view(k, n // BLOCK, 2, BLOCK // 2)
        torch.bitwise_and(by_block, 15, out=halves[:, :, 0])
        torch.bitwise_right_shift(by_block, 4, out=halves[:, :, 1])
        values.copy_(codes)
        # contiguous copies (small: a value per group): addcmul over the interleaved pairs is 6x slower
        scale, zero = self.scale_zero[:, start:stop, 0].to(dtype).contiguous(), self.scale_zero[:, start:stop, 1]
        offset = (zero.float() - 8 * scale.float()).to(dtype)  # (code - 8) * scale + zero
        grouped = (k // GROUP, GROUP, n)
        torch.addcmul(offset[:, None], values.view(grouped), scale[:, None], out=weight.view(grouped))
        return weight.view(k, n)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {GROUP}"
