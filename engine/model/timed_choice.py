"""Choices this machine's own timings decide, kept between runs in small JSON files.

A kernel that is fast on one CPU can be several times slower on the next (bf16 matmuls run at native speed
where the CPU has AVX-512 bf16 and are emulated, 2-4x slower than float32, where it has not), so the engine
times its candidates the first time a shape runs on a machine and keeps each one's time under a key that
names what the timing depends on: the CPU (model, family, flags), the thread and core counts and torch's
version (`machine_key`), and the caller's shape. A damaged, foreign or unwritable file only means timing
again. `engine.model.decode_attention` and `engine.model.prompt_matmul` keep their choices here.

Times taken while the machine was busy (other work on its cores: a build, a test suite, another model) can
crown the wrong candidate, so each entry notes whether the machine was `busy` then, and such an entry is
timed again at the first load that finds the machine quiet (and then kept for good).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch

MAX_FILE_BYTES = 1 << 20  # a file larger than this is not ours to read
BUSY_LOAD = 0.75  # the last minute's load average per core from which the machine is too busy to time on


def _cpu_name_and_flags() -> str:
    try:
        info = open("/proc/cpuinfo").read().split("\n\n")[0]  # noqa: SIM115 (a read of a small pseudo-file)
    except OSError:
        return platform.processor() or platform.machine()
    keep = [
        line
        for line in info.splitlines()
        if line.split(":")[0].strip() in ("model name", "cpu family", "model", "flags")
    ]
    return "\n".join(keep)


def machine_key() -> str:
    """What a timing depends on: the CPU (model, family, flags), the threads and torch's version."""
    cpu = hashlib.sha256(_cpu_name_and_flags().encode()).hexdigest()[:16]
    return f"{cpu}|threads={torch.get_num_threads()}|cores={os.cpu_count()}|torch={torch.__version__}"


def busy() -> bool:
    """Whether other work kept this machine's cores busy over the last minute (the load average; where there
    is none, never)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return False
    return load / (os.cpu_count() or 1) >= BUSY_LOAD


def _read(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recall(file: Path | None, key: str, candidates: tuple[str, ...]) -> dict[str, float] | None:
    """The times ``file`` keeps under ``key``: a positive number for every candidate, or None (also when they
    were taken on a busy machine and this one is quiet now: time again)."""
    entry = _read(file).get(key) if file is not None else None
    if not isinstance(entry, dict) or not isinstance(entry.get("micros"), dict):
        return None
    if entry.get("busy") is True and not busy():
        return None
    micros = {k: float(v) for k, v in entry["micros"].items() if k in candidates and isinstance(v, (int, float))}
    return micros if set(micros) == set(candidates) and all(v > 0 for v in micros.values()) else None


def remember(file: Path | None, key: str, micros: dict[str, float]) -> None:
    """Keep ``micros`` under ``key`` in ``file`` (None: nowhere), beside the other keys it holds, noting whether
    the machine is `busy` now (they were just timed)."""
    if file is None:
        return
    known = _read(file)
    known[key] = {"micros": {k: round(v, 1) for k, v in micros.items()}, "busy": busy()}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only or full disk: timed again next time
