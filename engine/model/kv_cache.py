"""A preallocated key/value cache for one attention layer."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values for positions ``[0, capacity)``, shape ``(B, n_kv_head, capacity, head_dim)``."""

    def __init__(self, batch: int, n_kv_head: int, capacity: int, head_dim: int, *, device, dtype) -> None:
        shape = (batch, n_kv_head, capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """A cache whose keys and values are the given tensors (no copy)."""
        cache = cls.__new__(cls)
        cache.k, cache.v = k, v
        return cache

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` (B, nkv, T, hd) at ``start`` and return every key and value up to ``start + T``."""
        T = k.shape[2]
        self.k.narrow(2, start, T).copy_(k)
        self.v.narrow(2, start, T).copy_(v)
        return self.k.narrow(2, 0, start + T), self.v.narrow(2, 0, start + T)
