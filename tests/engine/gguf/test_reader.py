"""The GGUF reader against gguf-py: the real default model, and files gguf-py's writer makes."""

from __future__ import annotations

import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from engine.errors import ModelFileError
from engine.gguf import GGMLType, read_gguf
from engine.gguf.types import BLOCK_SIZES, GGUFValueType

_NUMPY_DTYPES = {
    gguf.GGUFValueType.UINT8: np.uint8,
    gguf.GGUFValueType.INT8: np.int8,
    gguf.GGUFValueType.UINT16: np.uint16,
    gguf.GGUFValueType.INT16: np.int16,
    gguf.GGUFValueType.UINT32: np.uint32,
    gguf.GGUFValueType.INT32: np.int32,
    gguf.GGUFValueType.FLOAT32: np.float32,
    gguf.GGUFValueType.UINT64: np.uint64,
    gguf.GGUFValueType.INT64: np.int64,
    gguf.GGUFValueType.FLOAT64: np.float64,
    gguf.GGUFValueType.BOOL: np.bool_,
}


def _assert_same_value(ours, field) -> None:
    """Our metadata value equals gguf-py's field, with the layout documented on GGUFFile."""
    reference = field.contents()
    main, last = field.types[0], field.types[-1]
    if main == gguf.GGUFValueType.ARRAY and last == gguf.GGUFValueType.STRING:
        assert isinstance(ours, list) and ours == reference
    elif main == gguf.GGUFValueType.ARRAY:
        assert isinstance(ours, np.ndarray) and ours.ndim == 1 and ours.dtype == _NUMPY_DTYPES[last]
        assert ours.tolist() == reference
    else:
        assert ours == reference and type(ours) is type(reference)


def test_type_tables_match_gguf_py() -> None:
    assert {t.name: t.value for t in GGMLType} == {t.name: t.value for t in gguf.GGMLQuantizationType}
    assert {t.name: s for t, s in BLOCK_SIZES.items()} == {t.name: s for t, s in gguf.GGML_QUANT_SIZES.items()}
    assert {t.name: t.value for t in GGUFValueType} == {t.name: t.value for t in gguf.GGUFValueType}


def test_real_file_metadata_matches_gguf_py(smollm2_path: Path, smollm2_reference) -> None:
    fields = {k: f for k, f in smollm2_reference.fields.items() if not k.startswith("GGUF.")}
    with read_gguf(smollm2_path) as ours:
        assert (ours.version, ours.alignment) == (3, 32)
        assert list(ours.metadata) == list(fields)
        for key, field in fields.items():
            _assert_same_value(ours.metadata[key], field)
        assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152


def test_real_file_tensors_match_gguf_py(smollm2_path: Path, smollm2_reference) -> None:
    with read_gguf(smollm2_path) as ours:
        assert list(ours.tensors) == [t.name for t in smollm2_reference.tensors]
        for ref in smollm2_reference.tensors:
            info = ours.tensors[ref.name]
            assert info.ggml_type == ref.tensor_type
            assert info.shape == tuple(reversed(ref.shape.tolist()))
            assert (info.offset, info.nbytes) == (ref.data_offset, ref.n_bytes)
            assert np.array_equal(ours.tensor_bytes(ref.name), ref.data.view(np.uint8).ravel())
        assert ours.tensors["token_embd.weight"].shape == (49152, 576)


def test_real_file_parses_fast(smollm2_path: Path) -> None:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        read_gguf(smollm2_path).close()
        best = min(best, time.perf_counter() - start)
    assert best < 0.3, f"parsing took {best:.3f} s"  # ~0.05 s on an idle machine


def test_tensor_bytes_is_a_zero_copy_view(smollm2_path: Path) -> None:
    with read_gguf(smollm2_path) as ours:
        raw = ours.tensor_bytes("blk.0.attn_q.weight")
        assert raw.dtype == np.uint8 and raw.shape == (ours.tensors["blk.0.attn_q.weight"].nbytes,)
        assert not raw.flags.writeable and not raw.flags.owndata
        assert np.shares_memory(raw, ours.tensor_bytes("blk.0.attn_q.weight"))  # both views of the map


def _write_all_value_types(path: Path) -> dict[str, object]:
    """A file with every metadata value type and several tensor types; returns the expected metadata."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_custom_alignment(64)
    scalars = {
        "s.u8": (255, gguf.GGUFValueType.UINT8),
        "s.i8": (-128, gguf.GGUFValueType.INT8),
        "s.u16": (65535, gguf.GGUFValueType.UINT16),
        "s.i16": (-32768, gguf.GGUFValueType.INT16),
        "s.u32": (2**32 - 1, gguf.GGUFValueType.UINT32),
        "s.i32": (-(2**31), gguf.GGUFValueType.INT32),
        "s.u64": (2**64 - 1, gguf.GGUFValueType.UINT64),
        "s.i64": (-(2**63), gguf.GGUFValueType.INT64),
        "s.f32": (0.1, gguf.GGUFValueType.FLOAT32),
        "s.f64": (0.1, gguf.GGUFValueType.FLOAT64),
        "s.true": (True, gguf.GGUFValueType.BOOL),
        "s.false": (False, gguf.GGUFValueType.BOOL),
        "s.text": ("ünïcödé 🙂 中文 \x00 nul", gguf.GGUFValueType.STRING),
        "s.empty": ("", gguf.GGUFValueType.STRING),
    }
    for key, (value, vtype) in scalars.items():
        writer.add_key_value(key, value, vtype)
    for vtype, dtype in _NUMPY_DTYPES.items():
        values = [True, False, True] if dtype is np.bool_ else [1, 2, 3]
        writer.add_key_value(f"a.{vtype.name.lower()}", values, gguf.GGUFValueType.ARRAY, sub_type=vtype)
    writer.add_array("a.strings", ["a", "é", "🙂", ""])
    writer.add_array("a.nested", [[1, 2], [3, 4, 5]])
    writer.add_array("a.nested_strings", [["x", "ÿ"], ["z"]])
    writer.add_array("a.nested3", [[[1.5], [2.5, 3.5]], [[4.5]]])
    expected: dict[str, object] = {"general.architecture": "llama", "general.alignment": 64}
    expected |= {key: value for key, (value, _) in scalars.items()}
    expected["s.f32"] = float(np.float32(0.1))
    expected |= {
        "a.strings": ["a", "é", "🙂", ""],
        "a.nested": [[1, 2], [3, 4, 5]],
        "a.nested_strings": [["x", "ÿ"], ["z"]],
        "a.nested3": [[[1.5], [2.5, 3.5]], [[4.5]]],
    }

    rng = np.random.default_rng(3)
    writer.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("f16", rng.standard_normal((2, 7)).astype(np.float16))
    writer.add_tensor("vec", rng.standard_normal(11).astype(np.float32))
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("q8_0", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    q4 = gguf.quants.quantize(rng.standard_normal((2, 3, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q4_1)
    writer.add_tensor("q4_1_3d", q4, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def _plain(value):
    """Nested numpy arrays and lists -> nested lists, for comparing with expectations."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def test_gguf_writer_files_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "all.gguf"
    expected = _write_all_value_types(path)
    reference = gguf.GGUFReader(path)
    with read_gguf(path) as ours:
        assert ours.alignment == 64
        for key, value in expected.items():
            got = _plain(ours.metadata[key])
            assert got == value and type(got) is type(value), key
        for vtype, dtype in _NUMPY_DTYPES.items():
            array = ours.metadata[f"a.{vtype.name.lower()}"]
            assert array.dtype == dtype and array.flags.writeable
        assert isinstance(ours.metadata["a.nested"][0], np.ndarray)
        for key, field in reference.fields.items():
            if not key.startswith("GGUF.") and field.types[:2] != [gguf.GGUFValueType.ARRAY] * 2:
                _assert_same_value(ours.metadata[key], field)  # gguf-py flattens nested arrays
        assert {name: info.shape for name, info in ours.tensors.items()} == {
            "f32": (3, 5),
            "f16": (2, 7),
            "vec": (11,),
            "q8_0": (4, 64),
            "q4_1_3d": (2, 3, 32),
        }
        for ref in reference.tensors:
            info = ours.tensors[ref.name]
            assert info.offset % 64 == 0 and info.offset == ref.data_offset
            expected_values = gguf.quants.dequantize(ref.data, ref.tensor_type).reshape(info.shape)
            assert torch.equal(ours.load_tensor(ref.name), torch.from_numpy(expected_values.copy()))


def test_version_2_and_empty_arrays(tmp_path: Path, gguf_bytes) -> None:
    b = gguf_bytes
    kvs = [
        b.kv("ints", GGUFValueType.ARRAY, b.array(GGUFValueType.INT16, 0, b"")),
        b.kv("words", GGUFValueType.ARRAY, b.array(GGUFValueType.STRING, 0, b"")),
        b.kv("lists", GGUFValueType.ARRAY, b.array(GGUFValueType.ARRAY, 0, b"")),
    ]
    path = tmp_path / "v2.gguf"
    path.write_bytes(b.file(kvs, version=2))  # no tensors: the file may end without padding
    with read_gguf(path) as ours:
        assert ours.version == 2 and ours.tensors == {}
        assert ours.metadata["ints"].dtype == np.int16 and ours.metadata["ints"].shape == (0,)
        assert ours.metadata["words"] == [] and ours.metadata["lists"] == []


def test_tensors_out_of_offset_order_are_accepted(tmp_path: Path, gguf_bytes) -> None:
    b = gguf_bytes
    first, second = np.arange(8, dtype="<f4"), -np.arange(16, dtype="<f4")
    infos = [b.tensor_info("late", [8], GGMLType.F32, 64), b.tensor_info("early", [16], GGMLType.F32, 0)]
    path = tmp_path / "order.gguf"
    path.write_bytes(b.file([], infos, second.tobytes() + first.tobytes()))
    with read_gguf(path) as ours:
        assert list(ours.tensors) == ["late", "early"]
        assert torch.equal(ours.load_tensor("late"), torch.from_numpy(first))
        assert torch.equal(ours.load_tensor("early"), torch.from_numpy(second))
        assert ours.load_tensor("late", dtype=torch.float16).dtype == torch.float16


def test_known_but_unsupported_type_is_refused_on_load(tmp_path: Path, gguf_bytes) -> None:
    b = gguf_bytes
    path = tmp_path / "iq.gguf"
    path.write_bytes(b.file([], [b.tensor_info("w", [256, 2], GGMLType.IQ2_XXS, 0)], bytes(132)))
    with read_gguf(path) as ours:
        assert ours.tensors["w"].ggml_type == GGMLType.IQ2_XXS and ours.tensors["w"].nbytes == 132
        with pytest.raises(ModelFileError, match="'w' has type IQ2_XXS, which Ember cannot dequantize"):
            ours.load_tensor("w")


def test_close_releases_the_map(smollm2_path: Path) -> None:
    ours = read_gguf(smollm2_path)
    kept = ours.tensor_bytes("output_norm.weight")  # a view alive across close()
    loaded = ours.load_tensor("output_norm.weight")
    ours.close()
    ours.close()  # idempotent
    assert kept.view("<f4").tolist() == loaded.tolist()
    with pytest.raises(ValueError, match="closed"):
        ours.tensor_bytes("output_norm.weight")
    with read_gguf(smollm2_path) as again:
        pass
    with pytest.raises(ValueError, match="closed"):
        again.load_tensor("output_norm.weight")
    assert "closed" in repr(again)
