"""The transformer: one module tree for every supported architecture, with a preallocated KV cache."""

from engine.model.transformer import Transformer

__all__ = ["Transformer"]
