"""Crafted malformed GGUF files: each is refused quickly, with a ModelFileError naming the problem.

The corpus is built here with struct.pack (through the ``gguf_bytes`` builder), not checked in.
"""

from __future__ import annotations

import re
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ModelFileError
from engine.gguf import read_gguf
from engine.gguf.dequant import SUPPORTED_TYPES
from engine.gguf.types import GGMLType
from engine.gguf.types import GGUFValueType as V
from tests.hardening import count

MAX_SECONDS = 1.0
MAX_PEAK_BYTES = 8 << 20  # no crafted count may make the parser allocate more than this


def _tensor_file(b, dims: list[int], ggml_type: int = GGMLType.F32, offset: int = 0, *, kvs=(), data_len=64):
    """One tensor 't.weight' with ``dims`` (GGUF order, innermost first) and ``data_len`` bytes of data."""
    return b.file(list(kvs), [b.tensor_info("t.weight", dims, ggml_type, offset)], bytes(data_len))


def _kv_file(b, vtype: int, payload: bytes, key: str | bytes = "k") -> bytes:
    return b.file([b.kv(key, vtype, payload)])


def _nested(depth: int) -> bytes:
    """An array value nested ``depth`` deep around an empty int32 array (built flat, not recursively)."""
    return b"".join([struct.pack("<IQ", V.ARRAY, 1)] * (depth - 1)) + struct.pack("<IQ", V.INT32, 0)


def _alignment_file(b, vtype: int, payload: bytes) -> bytes:
    return _tensor_file(b, [8], kvs=[b.kv("general.alignment", vtype, payload)])


Build = Callable[[type], bytes]
VALID_HEADER = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)

CASES: dict[str, tuple[Build, str]] = {
    "empty": (lambda b: b"", "empty"),
    **{f"prefix-{n}": (lambda b, n=n: VALID_HEADER[:n], "not a GGUF" if n < 4 else "truncated") for n in range(1, 24)},
    "bad-magic": (lambda b: b"GGML" + VALID_HEADER[4:], "not a GGUF"),
    "zeros": (lambda b: bytes(100), "not a GGUF"),
    "text": (lambda b: b"this is a text file, not a model at all\n", "not a GGUF"),
    "version-0": (lambda b: b.file(version=0), "unsupported GGUF version 0"),
    "version-1": (lambda b: b.file(version=1), "too old"),
    "version-99": (lambda b: b.file(version=99), "unsupported GGUF version 99"),
    "version-byteswapped-3": (lambda b: b.file(version=0x03000000), "big-endian"),
    "version-byteswapped-2": (lambda b: b.file(version=0x02000000), "big-endian"),
    "tensor-count-2^63": (lambda b: b.file(tensor_count=2**63) + bytes(64), "tensor count"),
    "tensor-count-2^64-1": (lambda b: b.file(tensor_count=2**64 - 1) + bytes(64), "tensor count"),
    "kv-count-2^63": (lambda b: b.file(kv_count=2**63) + bytes(64), "metadata count"),
    "kv-count-2^64-1": (lambda b: b.file(kv_count=2**64 - 1) + bytes(64), "metadata count"),
    "tensor-info-cut-in-dims": (
        lambda b: b.header(2, 0) + b.tensor_info("a", [8], GGMLType.F32, 0) + b.string("b") + b.u32(1) + bytes(4),
        "truncated.*dimensions of tensor 'b'",
    ),
    "key-length-past-eof": (lambda b: b.file(kv_count=1) + b.u64(1000) + b"abc" + bytes(10), "truncated"),
    "key-length-2^64-1": (lambda b: b.file(kv_count=1) + b.u64(2**64 - 1) + bytes(16), "truncated"),
    "string-past-eof": (lambda b: _kv_file(b, V.STRING, b.u64(500) + b"xyz"), "truncated"),
    "array-2^60-int32": (lambda b: _kv_file(b, V.ARRAY, b.array(V.INT32, 2**60, bytes(8))), "claims"),
    "array-2^64-1-uint8": (lambda b: _kv_file(b, V.ARRAY, b.array(V.UINT8, 2**64 - 1, bytes(8))), "claims"),
    "array-2^60-strings": (lambda b: _kv_file(b, V.ARRAY, b.array(V.STRING, 2**60, bytes(8))), "claims"),
    "array-2^60-arrays": (lambda b: _kv_file(b, V.ARRAY, b.array(V.ARRAY, 2**60, bytes(8))), "claims"),
    "array-int32-short": (lambda b: _kv_file(b, V.ARRAY, b.array(V.INT32, 3, bytes(8))), "claims"),
    "string-array-element-past-eof": (
        lambda b: _kv_file(b, V.ARRAY, b.array(V.STRING, 2, b.string("ok") + b.u64(99) + b"x" * 10)),
        "truncated",
    ),
    "nested-10000-deep": (lambda b: _kv_file(b, V.ARRAY, _nested(10_000)), "nested"),
    "nested-9-deep": (lambda b: _kv_file(b, V.ARRAY, _nested(9)), "nested"),
    "value-type-99": (lambda b: _kv_file(b, 99, bytes(8)), "unknown value type 99"),
    "value-type-2^32-1": (lambda b: _kv_file(b, 2**32 - 1, bytes(8)), "unknown value type 4294967295"),
    "array-element-type-99": (
        lambda b: _kv_file(b, V.ARRAY, b.array(99, 1, bytes(8))),
        "unknown value type 99",
    ),
    "bool-2": (lambda b: _kv_file(b, V.BOOL, b"\x02"), "bool"),
    "bool-array-2": (lambda b: _kv_file(b, V.ARRAY, b.array(V.BOOL, 2, b"\x01\x02")), "bool"),
    "duplicate-key": (
        lambda b: b.file([b.kv("k", V.UINT8, b"\x01"), b.kv("k", V.UINT8, b"\x02")]),
        "duplicate metadata key 'k'",
    ),
    "key-invalid-utf8": (lambda b: _kv_file(b, V.UINT8, b"\x01", key=b"\xff\xfe"), "UTF-8"),
    "string-invalid-utf8": (lambda b: _kv_file(b, V.STRING, b.string(b"ok\xc3")), "UTF-8"),
    "string-array-invalid-utf8": (
        lambda b: _kv_file(b, V.ARRAY, b.array(V.STRING, 2, b.string("ok") + b.string(b"\xed\xa0\x80"))),
        "string #1 .*UTF-8",
    ),
    "tensor-name-invalid-utf8": (
        lambda b: b.file([], [b.tensor_info(b"\x80", [8], GGMLType.F32, 0)], bytes(32)),
        "tensor #0 is not valid UTF-8",
    ),
    "duplicate-tensor-name": (
        lambda b: b.file(
            [],
            [b.tensor_info("t", [8], GGMLType.F32, 0), b.tensor_info("t", [8], GGMLType.F32, 32)],
            bytes(64),
        ),
        "duplicate tensor name 't'",
    ),
    "alignment-0": (lambda b: _alignment_file(b, V.UINT32, b.u32(0)), "not a power of two"),
    "alignment-13": (lambda b: _alignment_file(b, V.UINT32, b.u32(13)), "not a power of two"),
    "alignment-2^31": (lambda b: _alignment_file(b, V.UINT32, b.u32(2**31)), "aligned to 2147483648"),
    "alignment-uint64": (lambda b: _alignment_file(b, V.UINT64, b.u64(32)), "must be a uint32"),
    "alignment-string": (lambda b: _alignment_file(b, V.STRING, b.string("32")), "must be a uint32"),
    "five-dims": (lambda b: _tensor_file(b, [1, 1, 1, 1, 8]), "5 dimensions"),
    "n-dims-2^32-1": (lambda b: b.file([], [b.string("t") + b.u32(2**32 - 1) + bytes(64)]), "dimensions"),
    "dim-zero": (lambda b: _tensor_file(b, [8, 0]), "zero or negative"),
    "dim-negative": (lambda b: _tensor_file(b, [8, 2**63]), "zero or negative"),
    "dims-product-overflows-int64": (
        lambda b: _tensor_file(b, [2**32, 2**32, 2**32, 2**32]),
        "more than the whole",
    ),
    "dims-product-bigger-than-file": (lambda b: _tensor_file(b, [2**40]), "more than the whole"),
    "tensor-type-99": (lambda b: _tensor_file(b, [8], 99), "tensor 't.weight' has unknown ggml type id 99"),
    "tensor-type-retired-4": (lambda b: _tensor_file(b, [32], 4), "unknown ggml type id 4"),
    "q4_0-row-33": (lambda b: _tensor_file(b, [33, 2], GGMLType.Q4_0), "33 elements.*Q4_0 block size 32"),
    "q4_k-row-32": (lambda b: _tensor_file(b, [32], GGMLType.Q4_K), "Q4_K block size 256"),
    "offset-misaligned": (lambda b: _tensor_file(b, [8], offset=4), "not a multiple of the alignment 32"),
    "offset-past-eof": (lambda b: _tensor_file(b, [8], offset=2**64 - 32), "past the end"),
    "data-one-byte-short": (lambda b: _tensor_file(b, [8], data_len=31), "past the end"),
    "data-section-missing": (
        lambda b: b.header(1, 0) + b.tensor_info("t", [8], GGMLType.F32, 0) + b"\0",
        "data section .*past the end",
    ),
    "tensors-overlap": (
        lambda b: b.file(
            [],
            [b.tensor_info("x", [16], GGMLType.F32, 0), b.tensor_info("y", [8], GGMLType.F32, 32)],
            bytes(64),
        ),
        "'x' and 'y' overlap",
    ),
    "tensors-same-offset": (
        lambda b: b.file(
            [],
            [b.tensor_info("x", [8], GGMLType.F32, 0), b.tensor_info("y", [8], GGMLType.F32, 0)],
            bytes(32),
        ),
        "overlap",
    ),
}


def _refusal(path: Path) -> str:
    """read_gguf(path)'s refusal reason, checking it came fast, without big allocations, naming the file."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelFileError) as caught:
            read_gguf(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"took {elapsed:.2f} s"
    assert peak < MAX_PEAK_BYTES, f"allocated {peak} bytes"
    assert str(caught.value).startswith(f"{path}: ")
    return caught.value.reason


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 80


@pytest.mark.parametrize(("build", "keyword"), CASES.values(), ids=list(CASES))
def test_crafted_file_is_refused(tmp_path: Path, gguf_bytes, build: Build, keyword: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(build(gguf_bytes))
    reason = _refusal(path)
    assert re.search(keyword, reason, re.IGNORECASE), reason
    count("GGUF: crafted bad files refused")


def test_truncation_at_every_section_boundary(tmp_path: Path, gguf_bytes) -> None:
    blob, boundaries = gguf_bytes.valid_file()
    path = tmp_path / "cut.gguf"
    path.write_bytes(blob)
    with read_gguf(path) as whole:  # the uncut file is valid
        assert list(whole.tensors) == ["a.weight", "b.weight"]
    for cut in sorted({*boundaries, *(n - 1 for n in boundaries), *(n + 1 for n in boundaries)}):
        if cut >= len(blob):
            continue
        path.write_bytes(blob[:cut])
        reason = _refusal(path)
        assert re.search("empty|truncated|past the end", reason), f"cut at {cut}: {reason}"
        count("GGUF: truncations at section boundaries refused")


def test_arrays_nested_8_deep_are_accepted(tmp_path: Path, gguf_bytes) -> None:
    path = tmp_path / "deep.gguf"
    path.write_bytes(_kv_file(gguf_bytes, V.ARRAY, _nested(8)))
    with read_gguf(path) as gguf:
        value = gguf.metadata["k"]
    for _ in range(7):
        assert isinstance(value, list) and len(value) == 1
        value = value[0]
    assert value.dtype == "int32" and value.shape == (0,)


def test_a_header_too_slow_to_read_is_stopped_at_the_time_limit(tmp_path: Path, gguf_bytes) -> None:
    """Two million empty metadata strings (16 MB, valid) take far longer than a real header; with a time
    limit the parse stops soon after it, with a reason; without one the file reads."""
    b, n = gguf_bytes, 2_000_000
    path = tmp_path / "strings.gguf"
    path.write_bytes(b.file([b.kv("many", V.ARRAY, b.array(V.STRING, n, bytes(8 * n)))]))
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=r"header took longer than 0.01 s to read \(stopped at offset \d+"):
        read_gguf(path, time_limit=0.01)
    stopped = time.perf_counter() - start
    start = time.perf_counter()
    with read_gguf(path) as whole:
        assert len(whole.metadata["many"]) == n
    assert stopped < (time.perf_counter() - start) / 2


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert "cannot open" in _refusal(tmp_path / "nope.gguf")
    assert "not a regular file" in _refusal(tmp_path)


_INTERESTING_U64 = [0, 1, 7, 255, 2**31, 2**32 - 1, 2**32, 2**60, 2**63, 2**64 - 1]
_MUTATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 12), st.integers(1, 255)),
        st.tuples(st.just("insert"), st.integers(0, 1 << 12), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), st.integers(0, 1 << 12), st.integers(1, 16)),
        st.tuples(st.just("truncate"), st.integers(0, 1 << 12), st.none()),
        st.tuples(st.just("u64"), st.integers(0, 1 << 12), st.sampled_from(_INTERESTING_U64)),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(blob: bytes, mutations: list[tuple]) -> bytes:
    data = bytearray(blob)
    for op, where, arg in mutations:
        pos = where % (len(data) + 1)
        if op == "flip" and pos < len(data):
            data[pos] ^= arg
        elif op == "insert":
            data[pos:pos] = arg
        elif op == "delete":
            del data[pos : pos + arg]
        elif op == "truncate":
            del data[pos:]
        elif op == "u64":
            data[pos : pos + 8] = struct.pack("<Q", arg)
    return bytes(data)


@pytest.fixture(scope="module")
def mutation_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mutations")


# A fixed seed (derandomize) and a bounded number of files: the same few hundred mutations in every CI run.
@settings(max_examples=300, deadline=1000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=_MUTATIONS)
def test_mutated_valid_file_loads_or_is_refused(mutation_dir: Path, gguf_bytes, mutations) -> None:
    count("GGUF: fuzzed (mutated) files, loaded or refused cleanly")
    blob, _ = gguf_bytes.valid_file()
    path = mutation_dir / "mutated.gguf"
    path.write_bytes(_mutate(blob, mutations))
    try:
        gguf = read_gguf(path)
    except ModelFileError:
        return
    with gguf:
        for name, info in gguf.tensors.items():
            if info.ggml_type in SUPPORTED_TYPES:
                assert gguf.load_tensor(name).shape == info.shape
            else:
                with pytest.raises(ModelFileError, match="cannot dequantize"):
                    gguf.load_tensor(name)
