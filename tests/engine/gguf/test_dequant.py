"""The torch dequantizers against gguf-py's numpy reference, bit for bit."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from engine.gguf import GGMLType, dequant, read_gguf
from engine.gguf.dequant import SUPPORTED_TYPES, dequantize
from engine.gguf.types import BLOCK_SIZES

# Byte offsets of the fp16 scale fields in each block type; they get finite random values so the
# comparison is not full of NaN and inf. Every other byte is random.
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
}
FLOAT_DTYPES = {GGMLType.F32: "<f4", GGMLType.F16: "<f2"}
TYPES = sorted(SUPPORTED_TYPES)


def _random_bytes(ggml_type: GGMLType, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random raw bytes for a tensor of ``shape`` (1-D uint8), with finite fp16 scales."""
    block_size, type_size = BLOCK_SIZES[ggml_type]
    n = int(np.prod(shape))
    if ggml_type in FLOAT_DTYPES:
        return rng.standard_normal(n).astype(FLOAT_DTYPES[ggml_type]).view(np.uint8)
    raw = rng.integers(0, 256, n // block_size * type_size, dtype=np.uint8)
    blocks = raw.reshape(-1, type_size)  # (n_blocks, type_size), a view
    for start in F16_FIELDS.get(ggml_type, ()):
        scales = (rng.standard_normal(blocks.shape[0]) * 4).astype("<f2")
        blocks[:, start : start + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw


def _reference(raw: np.ndarray, ggml_type: GGMLType, shape: tuple[int, ...]) -> torch.Tensor:
    """gguf-py's dequantization of ``raw`` as a float32 tensor of ``shape``."""
    rows = raw.reshape(-1, shape[-1] // BLOCK_SIZES[ggml_type][0] * BLOCK_SIZES[ggml_type][1])
    values = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(ggml_type))
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a writable copy


def _shapes(ggml_type: GGMLType) -> list[tuple[int, ...]]:
    block = BLOCK_SIZES[ggml_type][0]
    return [(block,), (3, 5 * block), (2, 3, 2 * block), (7, block)]


@pytest.mark.parametrize("ggml_type", TYPES, ids=[t.name for t in TYPES])
def test_random_blocks_match_gguf_py(ggml_type: GGMLType) -> None:
    rng = np.random.default_rng(int(ggml_type))
    for shape in _shapes(ggml_type):
        raw = _random_bytes(ggml_type, shape, rng)
        ours = dequantize(torch.from_numpy(raw.copy()), ggml_type, shape)
        assert ours.dtype == torch.float32 and ours.shape == shape
        assert torch.equal(ours, _reference(raw, ggml_type, shape)), shape


@pytest.mark.parametrize("ggml_type", TYPES, ids=[t.name for t in TYPES])
def test_chunked_and_misaligned_input(ggml_type: GGMLType, monkeypatch) -> None:
    """Several chunks of blocks, from bytes starting at an odd address, give the same result."""
    monkeypatch.setattr(dequant, "CHUNK_BLOCKS", 3)
    shape = (5, 2 * BLOCK_SIZES[ggml_type][0])
    raw = _random_bytes(ggml_type, shape, np.random.default_rng(1))
    shifted = torch.from_numpy(np.concatenate([np.zeros(1, np.uint8), raw]))[1:]  # storage offset 1
    assert torch.equal(dequantize(shifted, ggml_type, shape), _reference(raw, ggml_type, shape))


def test_bf16_special_values() -> None:
    values = np.array([0.0, -0.0, 1.0, -2.5, np.inf, -np.inf, 3.0e38, 1.0e-40], dtype=np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").view(np.uint8)
    ours = dequantize(torch.from_numpy(raw.copy()), GGMLType.BF16, (8,))
    assert torch.equal(ours, _reference(raw, GGMLType.BF16, (8,)))
    assert ours[:6].tolist() == [0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf")]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="needs 1-D uint8 of 36 bytes"):
        dequantize(torch.zeros(35, dtype=torch.uint8), GGMLType.Q4_0, (2, 32))
    with pytest.raises(ValueError, match="rows a multiple of 32"):
        dequantize(torch.zeros(18, dtype=torch.uint8), GGMLType.Q4_0, (2, 16))
    with pytest.raises(ValueError):
        dequantize(torch.zeros(36, dtype=torch.int8), GGMLType.Q4_0, (2, 32))
    with pytest.raises(NotImplementedError, match="IQ4_NL"):
        dequantize(torch.zeros(18, dtype=torch.uint8), GGMLType.IQ4_NL, (32,))


def test_real_model_tensors_match_gguf_py(smollm2_path: Path, smollm2_reference) -> None:
    """A few tensors of every type in the default model: Q8_0 (token_embd), Q4_1 and F32."""
    picked: dict[GGMLType, list] = {}
    for ref in smollm2_reference.tensors:
        picked.setdefault(GGMLType(ref.tensor_type), []).append(ref)
    assert set(picked) == {GGMLType.Q8_0, GGMLType.Q4_1, GGMLType.F32}
    with read_gguf(smollm2_path) as ours:
        for refs in picked.values():
            for ref in refs[:3] + refs[-1:]:
                expected = gguf.quants.dequantize(ref.data, ref.tensor_type).reshape(ours.tensors[ref.name].shape)
                assert torch.equal(ours.load_tensor(ref.name), torch.from_numpy(np.array(expected)))
