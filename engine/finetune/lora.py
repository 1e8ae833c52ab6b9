"""LoRA on Ember's fused projections, with the same meaning as PEFT's LoRA on the unfused ones.

Ember fuses ``q/k/v`` into ``attn.wqkv`` and ``gate/up`` into ``mlp.w_gate_up``. PEFT (and every tool that
reads its adapters) puts one independent rank-``r`` pair ``(A, B)`` on each of ``q_proj``, ``k_proj``,
``v_proj``, ``gate_proj`` and ``up_proj``. So `LoRALinear` keeps one pair *per slice* of the fused
output: ``delta_W[slice] = B_slice @ A_slice * alpha / r``. That is exactly PEFT's model (same parameter
count, same init, same update), so exporting is a rename and ``target_modules=["q_proj", "v_proj"]``
adapts only those rows of ``wqkv``. (One shared ``A`` over the fused output would also export exactly,
by copying ``A`` to each slice, but it is a different, smaller model than the one users ask PEFT for.)

Checkpoints hold only ``lora_*`` keys (`lora_state_dict`); `LoRALinear.merge` is idempotent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.loading.config import ModelConfig
from engine.model import Transformer

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Slice:
    """Rows ``[start, start + size)`` of one of our projections, called ``name`` in Hugging Face."""

    name: str  # HF module name relative to the layer, e.g. "self_attn.q_proj"
    start: int
    size: int

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1]


def layer_slices(cfg: ModelConfig) -> dict[str, list[Slice]]:
    """Our linear module (relative to a block) -> the HF modules its output rows are made of."""
    q, kv, inter, d = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.intermediate_size, cfg.n_embd
    if cfg.arch == "gpt2":
        return {
            "attn.wqkv": [Slice("attn.c_attn", 0, q + 2 * kv)],
            "attn.wo": [Slice("attn.c_proj", 0, d)],
            "mlp.w_up": [Slice("mlp.c_fc", 0, inter)],
            "mlp.w_down": [Slice("mlp.c_proj", 0, d)],
        }
    if cfg.arch == "phi3":
        qkv = [Slice("self_attn.qkv_proj", 0, q + 2 * kv)]
        gate_up = [Slice("mlp.gate_up_proj", 0, 2 * inter)]
    else:
        qkv = [Slice("self_attn.q_proj", 0, q), Slice("self_attn.k_proj", q, kv), Slice("self_attn.v_proj", q + kv, kv)]
        gate_up = [Slice("mlp.gate_proj", 0, inter), Slice("mlp.up_proj", inter, inter)]
    return {
        "attn.wqkv": qkv,
        "attn.wo": [Slice("self_attn.o_proj", 0, d)],
        "mlp.w_gate_up": gate_up,
        "mlp.w_down": [Slice("mlp.down_proj", 0, d)],
    }


def hf_layer_prefix(cfg: ModelConfig, i: int) -> str:
    return f"transformer.h.{i}." if cfg.arch == "gpt2" else f"model.layers.{i}."


def _wanted(slice_: Slice, targets: tuple[str, ...]) -> bool:
    """A target names a slice by its short name (``q_proj``) or its dotted tail (``attn.c_proj``);
    the fused spellings (``qkv_proj``, ``gate_up_proj``) also select the unfused parts and vice versa."""
    aliases = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj"),
        "gate_up_proj": ("gate_proj", "up_proj"),
        "c_attn": ("q_proj", "k_proj", "v_proj"),
        "c_fc": ("gate_proj", "up_proj"),
    }
    for t in targets:
        if slice_.name == t or slice_.name.endswith("." + t):
            return True
        if t in aliases.get(slice_.short, ()) or slice_.short in aliases.get(t, ()):
            return True
        if slice_.short == "c_proj" and t in ("o_proj", "down_proj"):
            return slice_.name == ("attn.c_proj" if t == "o_proj" else "mlp.c_proj")
    return False


class ByteDropout(nn.Module):
    """`nn.Dropout` with its keep-mask cut from random 64-bit words, four 16-bit draws each.

    On a CPU, `nn.Dropout`'s one Bernoulli draw per element cost more than a LoRA layer's matmuls in bf16
    (3 ms of a 2.5 s training step, 120 times a step on SmolLM2). ``p`` is rounded to 1/65536.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.threshold = round(p * 65536) - 32768  # an int16 draw at or above it keeps its element
        self.scale = 65536 / (32768 - self.threshold)  # 1 / (1 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return torch.where(keep, x * self.scale, 0.0)


class LoRALinear(nn.Module):
    """``base(x) + concat_s(B_s @ A_s @ dropout(x)) * alpha / r`` over the adapted slices ``s``.

    ``lora_A``: (n_slices, r, in) and ``lora_B``: (sum of slice sizes, r), both trainable; the base
    layer is frozen. Slices not adapted contribute zero.
    """

    def __init__(self, base: nn.Linear, slices: list[Slice], rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        self.slices = slices
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.out_features = base.out_features
        self.in_features = base.in_features
        self.dropout = ByteDropout(dropout) if dropout > 0 else nn.Identity()
        # The factors stay float32 (AdamW on bf16 weights loses small updates); they are cast to the
        # activations' dtype in forward.
        # The base may hold no ``weight`` (a packed int4 projection the chat model uses on a CPU): the
        # adapter then runs beside it unmerged; merging needs a dense float base.
        dev = next(iter(base.parameters()), None)
        dev = dev.device if dev is not None else next(base.buffers()).device
        self.lora_A = nn.Parameter(torch.empty(len(slices), rank, base.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(sum(s.size for s in slices), rank, device=dev))
        for a in self.lora_A:  # PEFT's init: A as nn.Linear's default, B zero
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.merged = False
        self.disabled = False  # see `lora_disabled`

    def _b(self, k: int) -> torch.Tensor:
        off = sum(s.size for s in self.slices[:k])
        return self.lora_B[off : off + self.slices[k].size]

    def delta_weight(self) -> torch.Tensor:
        """The full ``(out, in)`` update this adapter adds to ``base.weight``."""
        delta = torch.zeros(self.out_features, self.in_features, device=self.lora_A.device)
        for k, s in enumerate(self.slices):
            delta[s.start : s.start + s.size] = self._b(k) @ self.lora_A[k] * self.scaling
        return delta.to(getattr(self.base, "weight", delta).dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged or self.disabled:
            return out
        a = self.lora_A.to(x.dtype).reshape(-1, self.in_features)
        h = F.linear(self.dropout(x), a)  # (..., n_slices * r)
        h = h.unflatten(-1, (len(self.slices), self.rank))  # (..., n_slices, r)
        b = (self.lora_B * self.scaling).to(x.dtype)  # scaled here: one small multiply, not one per output
        pieces, pos, off = [], 0, 0
        for k, s in enumerate(self.slices):
            if s.start > pos:
                pieces.append(out.new_zeros(*out.shape[:-1], s.start - pos))
            pieces.append(F.linear(h[..., k, :], b[off : off + s.size]))
            off += s.size
            pos = s.start + s.size
        if pos < self.out_features:
            pieces.append(out.new_zeros(*out.shape[:-1], self.out_features - pos))
        delta = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        return out + delta.to(out.dtype)  # a bf16 base stays bf16

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (idempotent)."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False


def add_lora(
    model: Transformer,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: tuple[str, ...] | list[str] = ALL_TARGETS,
) -> list[LoRALinear]:
    """Freeze the model and wrap the targeted projections in `LoRALinear`; returns the new layers.
    A compiled decoding step is dropped: the model decodes eagerly from then on (see
    `engine.compiled.step`)."""
    targets = tuple(targets)
    model.compiled_step = None
    table = layer_slices(model.cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    added = []
    for block in model.layers:
        for rel, slices in table.items():
            chosen = [s for s in slices if _wanted(s, targets)]
            if not chosen:
                continue
            parent_name, attr = rel.split(".")
            parent = getattr(block, parent_name)
            base = getattr(parent, attr)
            if isinstance(base, nn.Parameter):  # a mixture of experts' stacked weights: LoRA adapts attention
                continue
            if isinstance(base, LoRALinear):
                raise ValueError("the model already has LoRA layers")
            layer = LoRALinear(base, chosen, rank, alpha, dropout)
            setattr(parent, attr, layer)
            added.append(layer)
    if not added:
        raise ValueError(f"no projection matches target modules {list(targets)}; choose from {', '.join(ALL_TARGETS)}")
    return added


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the ``lora_*`` tensors (what a checkpoint of a LoRA run holds)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


@contextmanager
def lora_disabled(model: Transformer) -> Iterator[None]:
    """``with lora_disabled(model):`` the base model, without removing or changing the adapters."""
    layers = [layer for _, layer in lora_layers(model)]
    merged = [layer for layer in layers if layer.merged]
    for layer in merged:
        layer.unmerge()
    for layer in layers:
        layer.disabled = True
    model.forget_cache()
    try:
        yield
    finally:
        for layer in layers:
            layer.disabled = False
        for layer in merged:
            layer.merge()
        model.forget_cache()


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight and put the plain layers back (idempotent). An adapter over
    a packed base (an int4 projection, which has no dense ``weight`` to fold into) stays as it is and
    runs beside it: the model computes the same, only unmerged there."""
    for name, layer in lora_layers(model):
        if getattr(layer.base, "weight", None) is None:
            continue
        layer.merge()
        parent_name, attr = name.rsplit(".", 1)
        setattr(model.get_submodule(parent_name), attr, layer.base)
