"""Compiled decoding steps (`engine.model.compiled`), built once per model shape and kept in Ember's cache.

`compile_decoding` loads the library for a loaded model, building it first when the cache lacks it. The
building runs in a child process (``python -m engine.compiling MODEL DTYPE OUT``) that loads the same
file and exports it: the compiler's memory (a few hundred MB) and any crash stay out of the caller,
and a stop request kills it at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from engine.errors import CompileUnavailableError
from engine.model.compiled import CompiledDecoding, build, structure_key, unavailable_reason
from engine.weights.pack_cache import default_cache_dir

BUILD_TIMEOUT_S = 1800
POLL_S = 0.1
BUILDING = "Compiling the decoding step (a minute or two, once per model shape)"


def package_path(model, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "compiled" / f"{structure_key(model)}.pt2"


def compile_decoding(
    lm,
    progress: Callable[[str], None] | None = None,
    *,
    cache_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> float:
    """Give ``lm``'s model its compiled decoding step, building it first if the cache lacks it; returns
    the seconds taken. Raises `CompileUnavailableError` (the model stays eager) when compiling is not
    possible here, fails, or is stopped."""
    t0 = time.perf_counter()
    model = lm.model
    reason = unavailable_reason(model.device)
    if reason:
        raise CompileUnavailableError(reason)
    path = package_path(model, cache_dir)
    if not path.exists():
        if progress is not None:
            progress(BUILDING)
        _build_in_child(lm, path, cache_dir, should_stop)
    if structure_key(model) != path.stem:  # LoRA layers were added meanwhile, say
        raise CompileUnavailableError("the model changed while its decoding step was compiled")
    model.compiled_step = CompiledDecoding(model, path)
    return time.perf_counter() - t0


def _build_in_child(lm, path: Path, cache_dir, should_stop) -> None:
    dtype = str(lm.model.dtype).removeprefix("torch.")
    command = [sys.executable, "-m", "engine.compiling", str(lm.path), dtype, str(path)]
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir or default_cache_dir()) / "inductor"))
    root = Path(__file__).resolve().parent.parent  # so that `engine` imports in the child as here
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    try:
        while child.poll() is None:
            if should_stop is not None and should_stop():
                raise CompileUnavailableError("compiling the decoding step was stopped")
            if time.monotonic() > deadline:
                raise CompileUnavailableError(f"compiling the decoding step took over {BUILD_TIMEOUT_S} s")
            time.sleep(POLL_S)
    finally:
        if child.poll() is None:
            child.kill()
        errors = child.communicate()[1]
    if child.returncode != 0:
        lines = [line for line in errors.splitlines() if line.strip()]
        raise CompileUnavailableError(f"compiling the decoding step failed: {lines[-1] if lines else child.returncode}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.compiling", description="Build a compiled decoding step.")
    parser.add_argument("model")
    parser.add_argument("dtype")
    parser.add_argument("out", type=Path)
    parser.add_argument("--cache-dir")
    args = parser.parse_args(argv)

    from engine.loader import load_model

    lm = load_model(args.model, device="cpu", dtype=args.dtype, cache_dir=args.cache_dir, check_memory=False)
    if args.out.stem != structure_key(lm.model):
        sys.exit("the model loaded here differs from the caller's (shapes, types or code changed)")
    build(lm.model, args.out)


if __name__ == "__main__":
    main()
