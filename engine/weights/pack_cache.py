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
import hashlib
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

FORMAT_VERSION = "2"
EDGE_BYTES = 64 * 1024
SAMPLES, SAMPLE_BYTES = 64, 4096
KEEP_ENTRIES = 4  # the most recently written; older ones are deleted
STALE_TMP_SECONDS = 3600  # a temporary file this old belongs to a writer that died
CACHE_DIR_ENV = "EMBER_CACHE_DIR"
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$EMBER_CACHE_DIR`` when set, else the platform's user cache directory for Ember."""
    return Path(os.environ.get(CACHE_DIR_ENV) or appdirs.user_cache_dir("Ember", "Ember"))


def file_key(model_file: Path, mode: str) -> str:
    """What the cache entry must match: the file's identity and sampled contents, and how it was packed."""
    st = model_file.stat()
    cpu = f"{platform.machine()}|{torch.backends.cpu.get_cpu_capability()}"
    h = hashlib.sha256(f"{FORMAT_VERSION}|{torch.__version__}|{cpu}|{mode}|{st.st_size}|{st.st_mtime_ns}".encode())
    with open(model_file, "rb") as f:
        h.update(f.read(EDGE_BYTES))
        for i in range(1, SAMPLES + 1):
            f.seek(st.st_size * i // (SAMPLES + 1))
            h.update(f.read(SAMPLE_BYTES))
        f.seek(max(st.st_size - EDGE_BYTES, 0))
        h.update(f.read(EDGE_BYTES))
    return h.hexdigest()


class PackCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = (directory or default_cache_dir()) / "packed"

    def entry(self, model_file: Path) -> Path:
        name = hashlib.sha256(str(model_file.resolve()).encode()).hexdigest()[:24]
        return self.directory / f"{name}.safetensors"

    def load(self, model_file: Path, key: str) -> dict[str, torch.Tensor] | None:
        """The cached state for ``model_file`` if its key matches, else None. The tensors are copied
        out of the file into memory of torch's own: the packed kernels read whole vectors and want
        its alignment, and the entry may be replaced or pruned while the model lives."""
        entry = self.entry(model_file)
        if not entry.is_file():
            return None
        try:
            with safe_open(entry, framework="pt") as f:
                if (f.metadata() or {}).get("key") != key:
                    return None
                return {name: f.get_tensor(name).clone() for name in f.keys()}
        except (OSError, SafetensorError, ValueError) as e:
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
