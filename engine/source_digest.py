"""A digest of some of the engine's own source files: part of the keys of caches whose entries depend on
the code that made them (packed weights, compiled decoding steps), so that no version number has to be
remembered to be bumped."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parent


def source_digest(patterns: tuple[str, ...], root: Path = ENGINE) -> str:
    """A digest of the files under ``root`` matching ``patterns``; in a bundled app, which ships no
    sources, of the executable itself (replaced by every update)."""
    h = hashlib.sha256()
    files = [f for pattern in patterns for f in sorted(root.glob(pattern))]
    for source in files:
        h.update(source.read_bytes())
    if not files:
        st = Path(sys.executable).stat()
        h.update(f"{sys.executable}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()
