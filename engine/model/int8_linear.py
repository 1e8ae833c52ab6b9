"""The output head in int8 with one scale per row: torch's ``aten._weight_int8pack_mm`` on the CPU.

The head is the largest single matmul of a small model's decode step (SmolLM2-135M: 49152 x 576,
tied to the embedding, stored as Q8_0). In bf16 it costs about 2 ms a token on this machine, in int8
about 1 ms. No torch kernel takes Q8_0's per-32 scales, so the rows are re-quantized to one scale each:
a loss comparable to bf16's own rounding (the benchmark reports the logit difference and where greedy
output departs from the float32 reference). The embedding lookup keeps its own table.

The kernel's output is bf16, whose steps near a logit of 25 are 1/8: two candidates 0.02 apart come out
equal, and greedy decoding then takes the lower token id. So the `REFINED` largest logits of each row are
computed again in float32 from the same int8 rows (a few dozen µs a token): the top candidates are ordered
as the weights order them, not by the output's rounding. SmolLM2 answering "What is the capital of
France?" starts with "The" (25.33) over "L" (25.24) in the float32 exact mode; the bf16 output rounded
both to 25.125 and began "L'Étoile, la Cité".
"""

from __future__ import annotations

import torch
from torch import nn

from engine.model.linear import kernel_rows

DTYPE = torch.bfloat16  # the kernel's activation and scale type
REFINED = 16  # the largest logits of a row recomputed in float32
REFINE_ROWS = 256  # rows refined at a time (a block's gathered weights: 256 x 16 x in_features floats)


class Int8Linear(nn.Module):
    """``forward(x) -> x @ W.T`` in float32 with W as int8 rows times a bf16 scale per row; no bias."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("row_scale", torch.empty(out_features, dtype=DTYPE))

    @staticmethod
    def quantize(weight: torch.Tensor, rows_per_step: int = 4096) -> dict[str, torch.Tensor]:
        """The ``qweight`` and ``row_scale`` buffers for a dense ``(out, in)`` weight, a block of rows at a
        time (a float32 copy of a large vocabulary's head would cost gigabytes at once). Rows are rounded
        against the bf16 scale the kernel multiplies by."""
        qweight = torch.empty(weight.shape, dtype=torch.int8)
        scales = torch.empty(weight.shape[0], dtype=DTYPE)
        for start in range(0, weight.shape[0], rows_per_step):
            w = weight[start : start + rows_per_step].detach().float()
            scale = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(DTYPE).tiny).to(DTYPE)
            q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127)
            qweight[start : start + rows_per_step] = q.to(torch.int8)
            scales[start : start + rows_per_step] = scale
        return {"qweight": qweight, "row_scale": scales}

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> Int8Linear:
        layer = cls(weight.shape[1], weight.shape[0])
        for name, t in cls.quantize(weight).items():
            setattr(layer, name, t)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = kernel_rows(x, self.in_features, DTYPE)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.row_scale).float()
        self._refine(x.reshape(-1, self.in_features).float(), y)
        return y.view(*x.shape[:-1], self.out_features)

    def _refine(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Overwrite each row's `REFINED` largest entries of ``y`` (rows, out) with their float32 values."""
        k = min(REFINED, self.out_features)
        for start in range(0, y.shape[0], REFINE_ROWS):
            rows = y[start : start + REFINE_ROWS]
            top = rows.topk(k, dim=-1).indices
            w = self.qweight[top].float() * self.row_scale[top].float()[..., None]
            rows.scatter_(-1, top, torch.einsum("rki,ri->rk", w, x[start : start + REFINE_ROWS]))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 rows"
