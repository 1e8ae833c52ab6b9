"""The torch dequantizers against gguf-py's numpy reference, bit for bit."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from engine.errors import ModelFileError
from engine.gguf import GGMLType, dequant, read_gguf
from engine.gguf.dequant import SUPPORTED_TYPES, dequantize
from engine.gguf.types import BLOCK_SIZES
from tests.engine.gguf_blocks import F16_FIELDS, random_blocks

FLOAT_DTYPES = {GGMLType.F32: "<f4", GGMLType.F16: "<f2"}
TYPES = sorted(SUPPORTED_TYPES)


def _random_bytes(ggml_type: GGMLType, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random raw bytes for a tensor of ``shape`` (1-D uint8), with finite fp16 scales."""
    block_size = BLOCK_SIZES[ggml_type][0]
    n = int(np.prod(shape))
    if ggml_type in FLOAT_DTYPES:
        return rng.standard_normal(n).astype(FLOAT_DTYPES[ggml_type]).view(np.uint8)
    return random_blocks(ggml_type, n // block_size, rng).reshape(-1)


def _reference(raw: np.ndarray, ggml_type: GGMLType, shape: tuple[int, ...]) -> torch.Tensor:
    """gguf-py's dequantization of ``raw`` as a float32 tensor of ``shape``."""
    rows = raw.reshape(-1, shape[-1] // BLOCK_SIZES[ggml_type][0] * BLOCK_SIZES[ggml_type][1])
    with np.errstate(invalid="ignore", over="ignore"):  # edge blocks: inf times zero is NaN on purpose
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


BLOCK_TYPES = sorted(F16_FIELDS)
EDGE_BYTES = (0x00, 0xFF, 0x0F, 0xF0, 0x55, 0xAA)  # lowest and highest codes and scales, alternating bits
EDGE_SCALES = (0.0, -0.0, 65504.0, -65504.0, 2.0**-24, 1.0, np.inf, -np.inf, np.nan)


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES, ids=[t.name for t in BLOCK_TYPES])
def test_edge_blocks_match_gguf_py(ggml_type: GGMLType) -> None:
    """Blocks whose codes and packed scales are all lowest, all highest or alternating bits, each with every
    extreme fp16 scale (zero, signed zero, largest, smallest subnormal, infinities, NaN)."""
    block_size, type_size = BLOCK_SIZES[ggml_type]
    blocks = np.array([[byte] * type_size for byte in EDGE_BYTES for _ in EDGE_SCALES], dtype=np.uint8)
    scales = np.array(EDGE_SCALES * len(EDGE_BYTES), dtype="<f2").view(np.uint8).reshape(-1, 2)
    for start in F16_FIELDS[ggml_type]:
        blocks[:, start : start + 2] = scales
    shape = (len(blocks), block_size)
    raw = blocks.reshape(-1)
    ours = dequantize(torch.from_numpy(raw.copy()), ggml_type, shape)
    torch.testing.assert_close(ours, _reference(raw, ggml_type, shape), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("ggml_type", TYPES, ids=[t.name for t in TYPES])
def test_chunked_and_misaligned_input(ggml_type: GGMLType, monkeypatch) -> None:
    """Several chunks of blocks, from bytes starting at an odd address, give the same result."""
    monkeypatch.setattr(dequant, "CHUNK_BLOCKS", 3)
    shape = (5, 2 * BLOCK_SIZES[ggml_type][0])
    raw = _random_bytes(ggml_type, shape, np.random.default_rng(1))
    shifted = torch.from_numpy(np.concatenate([np.zeros(1, np.uint8), raw]))[1:]  # storage offset 1
    assert torch.equal(dequantize(shifted, ggml_type, shape), _reference(raw, ggml_type, shape))


NEW_TYPES = (GGMLType.IQ4_NL, GGMLType.IQ4_XS, GGMLType.Q2_K, GGMLType.Q3_K)


@pytest.mark.parametrize("ggml_type", NEW_TYPES, ids=[t.name for t in NEW_TYPES])
def test_file_tensor_is_bounded_by_its_block_bytes(tmp_path: Path, gguf_bytes, ggml_type: GGMLType) -> None:
    """The reader sizes a tensor from the type's block bytes: the exact data loads as gguf-py decodes it,
    one byte less is refused before anything is read."""
    b, shape = gguf_bytes, (3, 2 * BLOCK_SIZES[ggml_type][0])
    raw = _random_bytes(ggml_type, shape, np.random.default_rng(5))
    info = b.tensor_info("w", list(reversed(shape)), ggml_type, 0)
    whole, short = tmp_path / "whole.gguf", tmp_path / "short.gguf"
    whole.write_bytes(b.file([], [info], raw.tobytes()))
    short.write_bytes(b.file([], [info], raw.tobytes()[:-1]))
    with read_gguf(whole) as ours:
        assert ours.tensors["w"].nbytes == raw.size == 6 * BLOCK_SIZES[ggml_type][1]
        assert torch.equal(ours.load_tensor("w"), _reference(raw, ggml_type, shape))
    with pytest.raises(ModelFileError, match="past the end"):
        read_gguf(short)


def test_supported_types_are_the_kernels_and_floats() -> None:
    """The torch-free list of supported types (what a model list checks files against) is what decodes."""
    assert SUPPORTED_TYPES == {*dequant.FLOAT_TYPES, *dequant._BLOCK_KERNELS}


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
    with pytest.raises(NotImplementedError, match="IQ2_XXS"):
        dequantize(torch.zeros(66, dtype=torch.uint8), GGMLType.IQ2_XXS, (256,))


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
