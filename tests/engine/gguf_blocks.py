"""Raw ggml blocks made from random bytes with finite fp16 scales: what a quantizer would write, for the types
gguf-py can only dequantize. Imports no torch."""

from __future__ import annotations

import numpy as np

from engine.gguf.types import BLOCK_SIZES, GGMLType

# Byte offsets of the fp16 scale fields in each block type; every other byte of a block is free.
F16_FIELDS = {
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (80, 82),
    GGMLType.Q3_K: (108,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
    GGMLType.IQ4_NL: (0,),
    GGMLType.IQ4_XS: (0,),
}


def random_blocks(ggml_type: GGMLType, n_blocks: int, rng: np.random.Generator, scale: float = 4.0) -> np.ndarray:
    """(n_blocks, type_size) uint8: random bytes, with any fp16 scales drawn from a normal of std ``scale``."""
    type_size = BLOCK_SIZES[ggml_type][1]
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for start in F16_FIELDS.get(ggml_type, ()):  # none in BF16 (random bits) or I8 and the like
        scales = (rng.standard_normal(n_blocks) * scale).astype("<f2")
        blocks[:, start : start + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks
