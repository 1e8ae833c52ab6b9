"""Rotary position embeddings (the "rotate half" layout of Hugging Face), with linear and llama3 scaling."""

from __future__ import annotations

import math

import torch

from engine.loading.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig, local: bool = False) -> torch.Tensor:
    """The rotary frequencies, ``(rotary_dim // 2,)`` float32, with the config's scaling applied; ``local``:
    those of the sliding layers that have their own base (`ModelConfig.rope_local_theta`), never scaled."""
    dim = cfg.rotary_dim
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    scaling = {} if local else (cfg.rope_scaling or {})
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


class RotaryTable:
    """cos/sin tables for positions ``[0, n)``, grown on demand, kept per device and dtype."""

    def __init__(self, inv_freq: torch.Tensor) -> None:
        self.inv_freq = inv_freq
        self._cos = self._sin = torch.empty(0)

    def get(self, start: int, length: int, device: torch.device, dtype: torch.dtype):
        """cos and signed sin (see `apply_rotary`) of shape ``(length, 1, rotary_dim)`` for positions
        ``start .. start+length``: they broadcast over heads laid out as ``(B, T, heads, head_dim)``."""
        end = start + length
        if self._cos.shape[0] < end or self._cos.device != device or self._cos.dtype != dtype:
            n = max(end, 2 * self._cos.shape[0], 256)
            pos = torch.arange(n, dtype=torch.float32, device="cpu")
            freqs = torch.outer(pos, self.inv_freq)  # (n, rotary_dim // 2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (n, rotary_dim)
            # sin with rotate-half's sign folded in: rotate_half(x) * sin == x.roll(half) * signed_sin
            signed_sin = torch.cat((-freqs.sin(), freqs.sin()), dim=-1)
            self._cos = emb.cos().to(device=device, dtype=dtype).unsqueeze(1)  # (n, 1, rotary_dim)
            self._sin = signed_sin.to(device=device, dtype=dtype).unsqueeze(1)
        return self._cos[start:end], self._sin[start:end]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` features of ``x`` (B, T, heads, hd) by position.

    ``x * cos + rotate_half(x) * sin`` in three ops: ``rotate_half(x)`` is ``x`` rolled by half the
    rotary width with the first half negated, and that sign lives in the table's ``sin``."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return torch.addcmul(x * cos, x.roll(rot // 2, dims=-1), sin)
    x_rot = x[..., :rot]
    out = torch.addcmul(x_rot * cos, x_rot.roll(rot // 2, dims=-1), sin)
    return torch.cat((out, x[..., rot:]), dim=-1)
