"""The repacked weights of a GGUF file, kept in the user's cache directory so the next load skips repacking.

One safetensors file per model file (named by a hash of its resolved path), holding every tensor of the
built model under our names. Its metadata records the key it was made for: the model file's size,
modification time and first and last 64 KiB, the torch version (the int4 layout is torch's) and the
format version. Any change to the model file, or a cache file that cannot be read, means a rebuild that
overwrites it. Writes are atomic (temporary file, then rename) and a failed write (a full disk) is only
logged: the cache is an optimisation, never a requirement.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import appdirs
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT_VERSION = "1"
EDGE_BYTES = 64 * 1024
KEEP_ENTRIES = 4  # the most recently written; older ones are deleted (each is about the model's size)
CACHE_DIR_ENV = "EMBER_CACHE_DIR"
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$EMBER_CACHE_DIR`` when set, else the platform's user cache directory for Ember."""
    return Path(os.environ.get(CACHE_DIR_ENV) or appdirs.user_cache_dir("Ember", "Ember"))


def file_key(model_file: Path, mode: str) -> str:
    """What the cache entry must match: the file's identity and contents at its ends, and how it was packed."""
    st = model_file.stat()
    h = hashlib.sha256(f"{FORMAT_VERSION}|{torch.__version__}|{mode}|{st.st_size}|{st.st_mtime_ns}".encode())
    with open(model_file, "rb") as f:
        h.update(f.read(EDGE_BYTES))
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
        """The cached state for ``model_file`` if its key matches, else None."""
        entry = self.entry(model_file)
        if not entry.is_file():
            return None
        try:
            with safe_open(entry, framework="pt") as f:
                if (f.metadata() or {}).get("key") != key:
                    return None
            return load_file(entry)
        except (OSError, SafetensorError, ValueError) as e:
            log.warning("ignoring the unreadable weight cache %s: %s", entry, e)
            return None

    def save(self, model_file: Path, key: str, state: dict[str, torch.Tensor]) -> Path | None:
        """Write ``state`` for ``model_file``; None (and a log line) when it cannot be written."""
        entry = self.entry(model_file)
        tmp = entry.with_name(entry.name + f".{os.getpid()}.tmp")
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
        entries = sorted(self.directory.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in entries[KEEP_ENTRIES:]:
            with contextlib.suppress(OSError):
                old.unlink()
