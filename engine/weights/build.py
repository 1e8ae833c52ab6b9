"""Building the transformer from converted tensors: on the meta device, then assigned in place."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from engine.config import ModelConfig
from engine.errors import ModelFileError
from engine.model import Transformer


def build_model(
    cfg: ModelConfig,
    pairs: Iterable[tuple[str, torch.Tensor]],
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
        state[name] = t.to(device=device, dtype=dtype, copy=True)
        if progress is not None:
            progress(min(len(state) / total, 1.0))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise ModelFileError(path, f"tensors do not match the model's declared sizes: {detail}") from None
    return model.eval()
