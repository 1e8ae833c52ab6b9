"""The repacked weights of a GGUF file, kept in the user's cache directory so the next load skips repacking.

One safetensors file per model file (named by a hash of its resolved path), holding every tensor of the
built model under our names. Its metadata records the key it was made for: the model file's size and
modification time, its first and last 64 KiB and 64 small samples spread between them, the torch
version and the CPU's instruction set (torch's int4 layout depends on both), and the format version
(bump it when the packing code changes). A changed key or an unreadable entry means a rebuild that
overwrites it; a rewrite that keeps size and mtime and changes only bytes no sample sees would be
missed. Writes are atomic (temporary file, then rename) and a failed write (a full disk) is only
logged: the cache is an optimisation, never a requirement.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import threading
import time
from pathlib import Path

import appdirs
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from engine.source_digest import source_digest

ENGINE = Path(__file__).resolve().parent.parent  # where PACKING_SOURCES are
# The code that turns a file into packed tensors: a change to any of it invalidates every entry.
PACKING_SOURCES = ("gguf/*.py", "weights/*.py", "model/int4_linear.py", "model/int8_linear.py", "loading/loader.py")
EDGE_BYTES = 64 * 1024
SAMPLES, SAMPLE_BYTES = 64, 4096
KEEP_ENTRIES = 4  # the most recently written; older ones are deleted
STALE_TMP_SECONDS = 3600  # a temporary file this old belongs to a writer that died
CACHE_DIR_ENV = "EMBER_CACHE_DIR"
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$EMBER_CACHE_DIR`` when set, else the platform's user cache directory for Ember."""
    return Path(os.environ.get(CACHE_DIR_ENV) or appdirs.user_cache_dir("Ember", "Ember"))


@functools.cache
def packing_code_digest() -> str:
    return source_digest(PACKING_SOURCES, ENGINE)


def file_key(model_file: Path, mode: str) -> str:
    """What the cache entry must match: the file's identity and sampled contents, and how it was packed
    (by which torch, for which CPU, by which version of the packing code)."""
    st = model_file.stat()
    cpu = f"{platform.machine()}|{torch.backends.cpu.get_cpu_capability()}"
    h = hashlib.sha256(
        f"{packing_code_digest()}|{torch.__version__}|{cpu}|{mode}|{st.st_size}|{st.st_mtime_ns}".encode()
    )
    with open(model_file, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        for i in range(1, SAMPLES + 1):
            f.seek(st.st_size * i // (SAMPLES + 1))
            h.update(f.read(SAMPLE_BYTES))
        f.seek(max(st.st_size - EDGE_BYTES, 0))
        h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


_DTYPES = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16, "U8": torch.uint8, "I8": torch.int8}


def _read_into_new_tensors(entry: Path, shapes: dict[str, tuple[list[int], torch.dtype]]) -> dict[str, torch.Tensor]:
    """Read each tensor of a safetensors file straight into a new tensor (``readinto``), not through a
    memory map: the model's memory is then the only copy, and a map of the whole file would add its
    size to the peak resident set."""
    with open(entry, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
        out = {}
        for name, (shape, dtype) in shapes.items():
            start, end = header[name]["data_offsets"]
            t = torch.empty(shape, dtype=dtype)
            view = memoryview(t.view(-1).view(torch.uint8).numpy())
            if end - start != len(view):
                raise ValueError(f"{name}: {end - start} bytes for a tensor of {len(view)}")
            fh.seek(8 + header_len + start)
            if fh.readinto(view) != len(view):
                raise ValueError(f"{name}: the file ends inside the tensor")
            out[name] = t
    return out


class PackCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = (directory or default_cache_dir()) / "packed"

    def entry(self, model_file: Path) -> Path:
        name = hashlib.sha256(str(model_file.resolve()).encode()).hexdigest()[:24]
        return self.directory / f"{name}.safetensors"

    def load(self, model_file: Path, key: str) -> dict[str, torch.Tensor] | None:
        """The cached state for ``model_file`` if its key matches, else None. The tensors live in memory
        of torch's own, not in a map of the file: the packed kernels read whole vectors (in CI the int8
        kernel crashed reading a head mapped from the file), and the entry may be replaced or pruned
        while the model lives."""
        entry = self.entry(model_file)
        if not entry.is_file():
            return None
        try:
            with safe_open(entry, framework="pt") as f:  # the library validates the header
                if (f.metadata() or {}).get("key") != key:
                    return None
                layout = {name: f.get_slice(name) for name in f.keys()}
                shapes = {name: (sl.get_shape(), _DTYPES[sl.get_dtype()]) for name, sl in layout.items()}
            return _read_into_new_tensors(entry, shapes)
        except (OSError, SafetensorError, ValueError, KeyError) as e:
            log.warning("ignoring the unreadable weight cache %s: %s", entry, e)
            return None

    def discard(self, model_file: Path) -> None:
        with contextlib.suppress(OSError):
            self.entry(model_file).unlink()

    def save(self, model_file: Path, key: str, state: dict[str, torch.Tensor]) -> Path | None:
        """Write ``state`` for ``model_file``; None (and a log line) when it cannot be written."""
        entry = self.entry(model_file)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tensors = {name: t.detach().contiguous() for name, t in state.items()}
            save_file(tensors, tmp, metadata={"key": key, "model": str(model_file.resolve())})
            os.replace(tmp, entry)
            self._prune()
            return entry
        except (OSError, SafetensorError) as e:
            log.warning("could not write the weight cache %s: %s", entry, e)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return None

    def _prune(self) -> None:
        """Keep the newest entries; also sweep temporary files a killed writer left behind."""
        entries = []
        for p in self.directory.iterdir():
            with contextlib.suppress(OSError):  # another process may be pruning too
                if p.name.endswith(".tmp") and time.time() - p.stat().st_mtime > STALE_TMP_SECONDS:
                    p.unlink()
                elif p.suffix == ".safetensors":
                    entries.append((p.stat().st_mtime_ns, p))
        for _, old in sorted(entries, reverse=True)[KEEP_ENTRIES:]:
            with contextlib.suppress(OSError):
                old.unlink()
