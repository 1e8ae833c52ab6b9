"""Parse GGUF files through a read-only memory map, bounding every count, length and offset by the file.

Layout (all little-endian): the header (``b"GGUF"``, u32 version, u64 tensor count, u64 metadata count),
the metadata key/values, the tensor infos (name, u32 n_dims, u64 dims innermost first, u32 ggml type,
u64 offset relative to the data section), padding to the alignment, then the data section.

Nothing is allocated or looped over before the bytes it needs are known to be in the file, so a crafted
file fails fast with a :class:`ModelFileError` naming the problem instead of hanging or exhausting memory.
Torch is imported only once a tensor is loaded: opening a file and reading its metadata need none.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import mmap
import os
import stat
import struct
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ModelFileError
from engine.gguf.types import BLOCK_SIZES, SCALAR_FORMATS, GGMLType, GGUFValueType

if TYPE_CHECKING:
    import torch

    from engine.gguf.int4_groups import Int4Groups

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 8
HEADER_SIZE = 24  # magic, u32 version, u64 tensor count, u64 metadata count
MIN_KV_SIZE = 13  # u64 key length, u32 value type, a 1-byte value
MIN_TENSOR_INFO_SIZE = 24  # u64 name length, u32 n_dims, u32 type, u64 offset
ALIGNMENT_KEY = "general.alignment"

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SCALAR_STRUCTS = {vtype: struct.Struct(fmt) for vtype, fmt in SCALAR_FORMATS.items()}
# The fewest bytes one array element of each type can take, to bound array lengths by the bytes left.
_MIN_ELEMENT_SIZE: dict[GGUFValueType, int] = {
    **{vtype: packer.size for vtype, packer in _SCALAR_STRUCTS.items()},
    GGUFValueType.STRING: 8,
    GGUFValueType.ARRAY: 12,
}


@dataclasses.dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor's data lies in the file and how to read it."""

    name: str
    ggml_type: GGMLType
    shape: tuple[int, ...]  # torch order, outermost first (the GGUF dims reversed)
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


class GGUFFile:
    """An open GGUF file: metadata and tensor infos parsed, tensor data left in a read-only memory map.

    Metadata values are ``str``, ``int``, ``float`` or ``bool``; arrays of numbers (or bools) are 1-D numpy
    arrays (owned copies, not views of the map); arrays of strings are ``list[str]``; arrays of arrays are
    lists of those.
    """

    def __init__(
        self,
        path: Path,
        version: int,
        alignment: int,
        metadata: dict[str, Any],
        tensors: dict[str, GGUFTensorInfo],
        buffer: mmap.mmap,
    ) -> None:
        self.path = path
        self.version = version
        self.alignment = alignment
        self.metadata = metadata
        self.tensors = tensors
        self._buffer: mmap.mmap | None = buffer

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._buffer is None else "open"
        return f"<GGUFFile {str(self.path)!r} v{self.version}, {len(self.tensors)} tensors, {state}>"

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The raw bytes of tensor ``name``: a read-only uint8 view into the memory map (no copy)."""
        if self._buffer is None:
            raise ValueError(f"{self.path}: the GGUF file is closed")
        info = self.tensors[name]
        return np.frombuffer(self._buffer, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def load_tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor ``name`` dequantized into a new CPU tensor of ``info.shape`` and ``dtype`` (default float32)."""
        from engine.gguf.dequant import SUPPORTED_TYPES, dequantize

        info = self.tensors[name]
        if info.ggml_type not in SUPPORTED_TYPES:
            raise ModelFileError(
                self.path, f"tensor {name!r} has type {info.ggml_type.name}, which Ember cannot dequantize"
            )
        raw = self._copy_out(name)
        values = dequantize(raw, info.ggml_type, info.shape)  # float32
        return values if dtype is None else values.to(dtype)

    def load_int4_groups(self, name: str) -> Int4Groups:
        """2-D tensor ``name`` of a type in `INT4_TYPES` as its 4-bit codes with per-group scales and offsets."""
        from engine.gguf.int4_groups import int4_groups

        info = self.tensors[name]
        return int4_groups(self._copy_out(name), info.ggml_type, info.shape)

    def _copy_out(self, name: str) -> torch.Tensor:
        """Tensor ``name``'s bytes copied out of the map (torch wants writable memory, and the tensor must
        outlive close()), then the map's pages for them dropped from this process (the file stays in the
        page cache): otherwise the whole file would count in the resident set until the map is closed,
        on top of the model built from it."""
        import torch

        raw = torch.from_numpy(self.tensor_bytes(name).copy())
        info = self.tensors[name]
        if hasattr(mmap, "MADV_DONTNEED"):
            start = info.offset - info.offset % mmap.PAGESIZE
            self._buffer.madvise(mmap.MADV_DONTNEED, start, info.offset + info.nbytes - start)
        return raw

    def close(self) -> None:
        """Release the memory map; arrays from :meth:`tensor_bytes` still alive keep it mapped until freed."""
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            try:
                buffer.close()
            except BufferError:
                pass  # views exported by tensor_bytes(); the map is unmapped when the last one is collected


def read_gguf(path: str | os.PathLike[str], time_limit: float | None = None) -> GGUFFile:
    """Open and validate the GGUF file at ``path``; :class:`ModelFileError` for anything wrong with it, and
    for a header that takes longer than ``time_limit`` seconds to read (when given: a hostile file can hold
    millions of metadata strings; a real one's header takes well under a second)."""
    path = Path(path)
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            raise ModelFileError(path, "not a regular file")
        if status.st_size == 0:
            raise ModelFileError(path, "the file is empty, not a GGUF model")
        with open(path, "rb") as file:
            buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as error:
        raise ModelFileError(path, f"cannot open the file: {getattr(error, 'strerror', None) or error}") from None
    try:
        return _Parser(path, buffer, time_limit).parse()
    except BaseException:
        buffer.close()
        raise


class _Parser:
    """A cursor over the mapped file that checks every read against the bytes left."""

    def __init__(self, path: Path, buffer: mmap.mmap, time_limit: float | None = None) -> None:
        self.path = path
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0
        self.time_limit = time_limit
        self.deadline = math.inf if time_limit is None else time.monotonic() + time_limit

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise self._fail(
                f"its header took longer than {self.time_limit:g} s to read (stopped at offset {self.pos})"
            )

    def parse(self) -> GGUFFile:
        version, tensor_count, kv_count = self._header()
        metadata, alignment = self._metadata(kv_count)
        infos = self._tensor_infos(tensor_count)
        data_start = -(-self.pos // alignment) * alignment
        tensors = self._place_tensors(infos, data_start, alignment)
        return GGUFFile(self.path, version, alignment, metadata, tensors, self.buffer)

    def _fail(self, reason: str) -> ModelFileError:
        return ModelFileError(self.path, reason)

    # --- primitive reads -------------------------------------------------------------------------

    def _need(self, n: int, what: str) -> None:
        left = self.size - self.pos
        if n > left:
            raise self._fail(f"truncated file: {what} at offset {self.pos} needs {n} bytes but only {left} are left")

    def _u32(self, what: str) -> int:
        self._need(4, what)
        (value,) = _U32.unpack_from(self.buffer, self.pos)
        self.pos += 4
        return value

    def _u64(self, what: str) -> int:
        self._need(8, what)
        (value,) = _U64.unpack_from(self.buffer, self.pos)
        self.pos += 8
        return value

    def _string(self, what: str) -> str:
        length = self._u64(f"the length of {what}")
        self._need(length, what)
        raw = self.buffer[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self._fail(f"{what} is not valid UTF-8 (bad byte at position {error.start})") from None

    # --- header and metadata ---------------------------------------------------------------------

    def _header(self) -> tuple[int, int, int]:
        magic = self.buffer[:4]
        if magic != MAGIC:
            raise self._fail(f"not a GGUF file: it starts with {magic!r}, not the magic {MAGIC!r}")
        if self.size < HEADER_SIZE:
            raise self._fail(f"truncated GGUF header: the file has {self.size} bytes, the header needs 24")
        self.pos = 4
        version = self._u32("the version")
        if version == 1:
            raise self._fail("GGUF version 1 is too old (32-bit counts); Ember reads versions 2 and 3")
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0 and int.from_bytes(version.to_bytes(4, "little"), "big") in (1, 2, 3):
                raise self._fail("big-endian GGUF file: Ember reads only little-endian byte order")
            raise self._fail(f"unsupported GGUF version {version}; Ember reads versions 2 and 3")
        tensor_count = self._u64("the tensor count")
        kv_count = self._u64("the metadata count")
        left = self.size - self.pos
        if kv_count > left // MIN_KV_SIZE:
            raise self._fail(
                f"metadata count {kv_count} cannot fit in the {left} bytes after the header (truncated or corrupt)"
            )
        if tensor_count > (left - kv_count * MIN_KV_SIZE) // MIN_TENSOR_INFO_SIZE:
            raise self._fail(
                f"tensor count {tensor_count} cannot fit in the {left} bytes after the header (truncated or corrupt)"
            )
        return version, tensor_count, kv_count

    def _metadata(self, count: int) -> tuple[dict[str, Any], int]:
        metadata: dict[str, Any] = {}
        alignment = DEFAULT_ALIGNMENT
        for index in range(count):
            self._check_time()
            key = self._string(f"metadata key #{index}")
            if key in metadata:
                raise self._fail(f"duplicate metadata key {key!r}")
            vtype = self._value_type(f"metadata key {key!r}")
            metadata[key] = self._value(vtype, key)
            if key == ALIGNMENT_KEY:
                if vtype != GGUFValueType.UINT32:
                    raise self._fail(f"{ALIGNMENT_KEY} must be a uint32, not {vtype.name}")
                alignment = metadata[key]
                if alignment == 0 or alignment & (alignment - 1):
                    raise self._fail(f"{ALIGNMENT_KEY} is {alignment}, not a power of two")
        return metadata, alignment

    def _value_type(self, what: str) -> GGUFValueType:
        raw = self._u32(f"the value type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self._fail(f"{what}: unknown value type {raw}") from None

    def _value(self, vtype: GGUFValueType, key: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return self._string(f"the value of {key!r}")
        if vtype == GGUFValueType.ARRAY:
            return self._array(key, depth=1)
        packer = _SCALAR_STRUCTS[vtype]
        self._need(packer.size, f"the value of {key!r}")
        (value,) = packer.unpack_from(self.buffer, self.pos)
        self.pos += packer.size
        if vtype == GGUFValueType.BOOL:
            if value > 1:
                raise self._fail(f"metadata key {key!r} has bool value {value}, not 0 or 1")
            return bool(value)
        return value

    def _array(self, key: str, depth: int) -> np.ndarray | list[Any]:
        """An array value at nesting ``depth`` (1 for a top-level array): numpy for numbers, else a list."""
        if depth > MAX_ARRAY_DEPTH:
            raise self._fail(f"metadata key {key!r} has arrays nested more than {MAX_ARRAY_DEPTH} deep")
        self._check_time()
        etype = self._value_type(f"the elements of {key!r}")
        count = self._u64(f"the array length of {key!r}")
        left = self.size - self.pos
        if count > left // _MIN_ELEMENT_SIZE[etype]:
            raise self._fail(
                f"array {key!r} claims {count} {etype.name} elements, more than the {left} bytes left "
                "in the file can hold (truncated or corrupt)"
            )
        if etype == GGUFValueType.STRING:
            return self._string_array(key, count)
        if etype == GGUFValueType.ARRAY:
            return [self._array(key, depth + 1) for _ in range(count)]
        dtype = np.dtype(SCALAR_FORMATS[etype])
        values = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        if etype == GGUFValueType.BOOL:
            if (values > 1).any():
                raise self._fail(f"array {key!r} holds bool values other than 0 or 1")
            return values.view(np.bool_)
        return values

    def _string_array(self, key: str, count: int) -> list[str]:
        """``count`` strings, read in a tight loop (token lists hold tens of thousands)."""
        buffer, size, pos = self.buffer, self.size, self.pos
        unpack = _U64.unpack_from
        strings: list[str] = []
        append = strings.append
        try:
            for index in range(count):
                if not index & 0xFFFF:  # every 65,536 strings: cheap in the tight loop
                    self.pos = pos
                    self._check_time()
                if size - pos < 8:
                    break
                (length,) = unpack(buffer, pos)
                if length > size - pos - 8:
                    break
                append(buffer[pos + 8 : pos + 8 + length].decode("utf-8"))
                pos += 8 + length
        except UnicodeDecodeError as error:
            raise self._fail(
                f"string #{len(strings)} of array {key!r} is not valid UTF-8 (bad byte at position {error.start})"
            ) from None
        self.pos = pos
        if len(strings) < count:  # the loop stopped at a string running past the end: report it
            self._string(f"string #{len(strings)} of array {key!r}")
        return strings

    # --- tensor infos --------------------------------------------------------------------------------

    def _tensor_infos(self, count: int) -> list[GGUFTensorInfo]:
        """The tensor infos, their offsets still relative to the data section."""
        infos = []
        names: set[str] = set()
        for index in range(count):
            self._check_time()
            name = self._string(f"the name of tensor #{index}")
            if name in names:
                raise self._fail(f"duplicate tensor name {name!r}")
            names.add(name)
            n_dims = self._u32(f"the dimension count of tensor {name!r}")
            if n_dims > MAX_DIMS:
                raise self._fail(f"tensor {name!r} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}")
            self._need(8 * n_dims, f"the dimensions of tensor {name!r}")
            dims = struct.unpack_from(f"<{n_dims}Q", self.buffer, self.pos)  # innermost first
            self.pos += 8 * n_dims
            raw_type = self._u32(f"the type of tensor {name!r}")
            offset = self._u64(f"the data offset of tensor {name!r}")
            ggml_type, nbytes = self._check_tensor(name, dims, raw_type)
            infos.append(GGUFTensorInfo(name, ggml_type, tuple(reversed(dims)), offset, nbytes))
        return infos

    def _check_tensor(self, name: str, dims: tuple[int, ...], raw_type: int) -> tuple[GGMLType, int]:
        """The tensor's type and byte size, once its dims and type id are known to be sane."""
        if any(dim == 0 or dim >= 2**63 for dim in dims):
            raise self._fail(f"tensor {name!r} has a zero or negative dimension in its dims {list(dims)}")
        try:
            ggml_type = GGMLType(raw_type)
        except ValueError:
            raise self._fail(f"tensor {name!r} has unknown ggml type id {raw_type}") from None
        block_size, type_size = BLOCK_SIZES[ggml_type]
        row = dims[0] if dims else 1
        if row % block_size:
            raise self._fail(
                f"tensor {name!r} has rows of {row} elements, not a multiple of the "
                f"{ggml_type.name} block size {block_size}"
            )
        nbytes = math.prod(dims) // block_size * type_size  # exact Python ints: no overflow
        if nbytes > self.size:
            raise self._fail(
                f"tensor {name!r} with dims {list(dims)} needs {nbytes} bytes, more than the whole file "
                f"({self.size} bytes)"
            )
        return ggml_type, nbytes

    def _place_tensors(self, infos: list[GGUFTensorInfo], data_start: int, alignment: int) -> dict[str, GGUFTensorInfo]:
        """The infos with absolute offsets, once every tensor's data is aligned, in the file and unshared."""
        if infos and data_start > self.size:
            raise self._fail(
                f"the data section would start at offset {data_start} (aligned to {alignment}), "
                f"past the end of the file ({self.size} bytes)"
            )
        tensors: dict[str, GGUFTensorInfo] = {}
        for info in infos:
            if info.offset % alignment:
                raise self._fail(
                    f"tensor {info.name!r} data offset {info.offset} is not a multiple of the alignment {alignment}"
                )
            start = data_start + info.offset
            if start + info.nbytes > self.size:
                raise self._fail(
                    f"tensor {info.name!r} data ({info.nbytes} bytes at offset {start}) runs past the end "
                    f"of the file ({self.size} bytes)"
                )
            tensors[info.name] = dataclasses.replace(info, offset=start)
        by_offset = sorted(tensors.values(), key=lambda info: info.offset)
        for before, after in itertools.pairwise(by_offset):
            if before.offset + before.nbytes > after.offset:
                raise self._fail(f"the data of tensors {before.name!r} and {after.name!r} overlap")
        return tensors
