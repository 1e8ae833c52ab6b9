"""Building the transformer from converted tensors: on the meta device, then assigned in place.

A weight given as `Int4Groups` stays 4-bit: its `Linear` is swapped for an `Int4Linear` when the kernel
takes that shape on that device, and is dequantized to ``dtype`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from engine.errors import ModelFileError
from engine.gguf.int4_groups import Int4Groups
from engine.loading.config import ModelConfig
from engine.model import Transformer
from engine.model.int4_linear import Int4Linear, int4_supported
from engine.model.int8_linear import Int8Linear
from engine.model.linear import Linear


def _use_int4(model: Transformer, path: str) -> Int4Linear:
    """Replace the `Linear` at ``path`` by an (unfilled, meta) `Int4Linear` of the same shape."""
    dense = model.get_submodule(path)
    with torch.device("meta"):
        layer = Int4Linear(dense.in_features, dense.out_features, bias=dense.bias is not None)
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)
    return layer


def _swap_in_int4(model: Transformer, name: str, groups: Int4Groups, device: torch.device) -> dict[str, torch.Tensor]:
    """Replace the `Linear` owning weight ``name`` by an `Int4Linear`; returns the new layer's state."""
    path = name.removesuffix(".weight")
    dense = model.get_submodule(path)
    if tuple(groups.shape) != (dense.out_features, dense.in_features):
        return {name: groups.dequantize()}  # load_state_dict reports the mismatch
    _use_int4(model, path)
    return {f"{path}.{key}": t.to(device) for key, t in Int4Linear.pack(groups).items()}


def _assign(model: Transformer, state: dict[str, torch.Tensor], path: str | Path) -> Transformer:
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise ModelFileError(path, f"tensors do not match the model's declared sizes: {detail}") from None
    return model.keep_norms_float32().eval()


def use_int8_head(model: Transformer) -> Transformer:
    """Swap a dense (or tied) output head for `Int8Linear`; an int4 head stays as it is."""
    if model.lm_head is None or isinstance(model.lm_head, Linear):
        weight = model.tok_emb.weight if model.lm_head is None else model.lm_head.weight
        model.lm_head = Int8Linear.from_weight(weight)
    return model


def model_from_state(cfg: ModelConfig, state: dict[str, torch.Tensor], path: str | Path) -> Transformer:
    """The model from a state saved off a built one (`state_dict`), int4 layers and int8 head included."""
    with torch.device("meta"):
        model = Transformer(cfg)
        if "lm_head.qweight" in state:
            model.lm_head = Int8Linear(cfg.n_embd, cfg.vocab_size)
    for name in state:
        if name.endswith(".packed"):
            _use_int4(model, name.removesuffix(".packed"))
    return _assign(model, state, path)


def build_model(
    cfg: ModelConfig,
    pairs: Iterable[tuple[str, torch.Tensor | Int4Groups]],
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    progress: Callable[[float], None] | None = None,
) -> Transformer:
    """No weight is allocated twice: the module tree is built on ``meta`` and the converted
    tensors (our names) are assigned to it. Shape mismatches become `ModelFileError`.
    ``progress`` is called with the fraction of tensors converted so far."""
    with torch.device("meta"):
        model = Transformer(cfg)
    total = len(model.state_dict())
    state = {}
    for name, t in pairs:
        if isinstance(t, Int4Groups) and int4_supported(t.shape, device):
            state.update(_swap_in_int4(model, name, t, device))
            total += 1  # one weight became two buffers
        else:
            t = t.dequantize() if isinstance(t, Int4Groups) else t
            # Norm weights stay float32 (`Transformer.keep_norms_float32`), never rounded to ``dtype`` on the
            # way: Gemma's are 1 + w, which bf16 would round.
            norm = name.rsplit(".", 2)[-2].endswith("norm")
            state[name] = t.to(device=device, dtype=torch.float32 if norm else dtype, copy=True)
        if progress is not None:
            progress(min(len(state) / total, 1.0))
    return _assign(model, state, path)
