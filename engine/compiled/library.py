"""Compiled decoding steps (`engine.compiled.step`), built once per model shape and kept in Ember's cache.

`compile_decoding` loads the library for a loaded model, building it first when the cache lacks it (or
holds one that does not load). The building runs in a child process (``python -m engine.compiled.library
SPEC OUT``) given only the model's shapes and its decode attention kernel: it builds the model with
uninitialised weights (export needs no values, and untouched memory is not resident), so neither the
compiler's memory (a few hundred MB) nor a second copy of the weights lands in the caller, a compiler
crash cannot take the app down, and a stop request kills the child and its compiler processes at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.compiled import prebuilt
from engine.compiled.step import (
    CompiledDecoding,
    build,
    structure_key,
    unavailable_reason,
    unsupported_reason,
    use_instruction_set,
    weight_specs,
)
from engine.errors import CompileUnavailableError
from engine.loading.config import ModelConfig
from engine.model_lock import hold
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
    build: bool = True,
    prebuilt_dir: Path | None = None,
) -> float:
    """Give ``lm``'s model its compiled decoding step, returns the seconds taken: a library that came with
    the program (`engine.compiled.prebuilt`, from ``prebuilt_dir``: by default the bundle's own, none when
    running from source) or one in the cache, built first when the cache lacks it (``build`` False: not
    built, an error). Raises `CompileUnavailableError` (the model stays eager) when compiling is not possible
    here, fails, or is stopped. Safe to call on another thread than the model's user: the step is installed
    under the model's lock."""
    t0 = time.perf_counter()
    model = lm.model
    stop = should_stop or (lambda: False)
    reason = unsupported_reason(model)
    if reason:
        raise CompileUnavailableError(reason)
    shipped = prebuilt.find(model, prebuilt.bundled_dir() if prebuilt_dir is None else prebuilt_dir)
    if shipped is not None:
        _install(lm, shipped, lambda: prebuilt.key(model), stop)
        return time.perf_counter() - t0
    reason = unavailable_reason(model.device)
    if reason:
        raise CompileUnavailableError(reason)
    path = package_path(model, cache_dir)
    if not path.exists() and not build:
        raise CompileUnavailableError("no compiled decoding step is built for this model yet (--compile builds it)")
    for attempt in range(2):
        if not path.exists():
            if progress is not None:
                progress(BUILDING)
            build_in_child(model, path, cache_dir, stop)
        try:
            _install(lm, path, lambda: structure_key(model), stop)
            return time.perf_counter() - t0
        except CompileUnavailableError:
            if attempt or not path.exists() or structure_key(model) != path.stem:
                raise
            path.unlink()  # a damaged library (a disk that filled, a crash mid-write): built again, once
    raise AssertionError("unreachable")


def _install(lm, path: Path, key: Callable[[], str], stop: Callable[[], bool]) -> None:
    model = lm.model
    with hold(lm, stop) as held:  # a reply in progress finishes first
        if not held:
            raise CompileUnavailableError("compiling the decoding step was stopped")
        if key() != path.stem:  # LoRA layers were added meanwhile, say
            raise CompileUnavailableError("the model changed while its decoding step was compiled")
        model.compiled_step = CompiledDecoding(model, path)


def build_in_child(
    model, path: Path, cache_dir, stop: Callable[[], bool], level: str | None = None, code: str | None = None
) -> None:
    """Build ``model``'s step into ``path`` in a child process, for ``level`` (`step.PORTABLE`; None: this
    CPU's own) and named by the key with ``code`` (see `structure_key`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path.parent)
    spec = path.with_name(f"{path.stem}.{os.getpid()}.spec.json")
    fields = {"config": _config_fields(model.cfg), "weights": weight_specs(model)}
    spec.write_text(json.dumps({**fields, "kernel": model.decode_attention.kernel, "level": level, "code": code}))
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir or default_cache_dir()) / "inductor"))
    root = Path(__file__).resolve().parents[2]  # so that `engine` imports in the child as here
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "engine.compiled.library", str(spec), str(path)]
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    with tempfile.TemporaryFile() as errors:  # not a pipe: a chatty compiler would fill it and stall
        child = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=errors, env=env, start_new_session=os.name == "posix"
        )
        try:
            while child.poll() is None:
                if stop():
                    raise CompileUnavailableError("compiling the decoding step was stopped")
                if time.monotonic() > deadline:
                    raise CompileUnavailableError(f"compiling the decoding step took over {BUILD_TIMEOUT_S} s")
                time.sleep(POLL_S)
        finally:
            if child.poll() is None:
                _kill(child)
                path.with_name(f"{path.stem}.{child.pid}.tmp.pt2").unlink(missing_ok=True)  # see `build`
            spec.unlink(missing_ok=True)
        errors.seek(0)
        lines = [line for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
    if child.returncode != 0:
        raise CompileUnavailableError(f"compiling the decoding step failed: {lines[-1] if lines else child.returncode}")


def _remove_orphans(folder: Path) -> None:
    """A build's spec (``KEY.PID.spec.json``, PID its caller's) and unfinished library (``KEY.PID.tmp.pt2``,
    PID the builder's) whose process is gone: left by a program killed mid-build (SIGKILL, a power cut)."""
    for leftover in [*folder.glob("*.*.spec.json"), *folder.glob("*.*.tmp.pt2")]:
        pid = leftover.name.split(".")[1]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or a platform that cannot tell: kept
        return True
    return True


def _kill(child: subprocess.Popen) -> None:
    """The child and the compiler processes it started (its own session, on POSIX)."""
    if os.name == "posix":
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        child.kill()
    child.wait()


def _config_fields(cfg: ModelConfig) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


def _model_from_spec(spec: dict):
    """The model the caller described, its weights uninitialised, decoding with the caller's attention kernel."""
    from engine.model.decode_attention import KERNELS, DecodeAttention
    from engine.weights.build import model_from_state

    state = {
        name: torch.empty_strided(shape, stride, dtype=getattr(torch, dtype.removeprefix("torch.")), device=device)
        for name, device, dtype, shape, stride in spec["weights"]
    }
    model = model_from_state(ModelConfig(**spec["config"]), state, "the model to compile")
    if spec.get("kernel") not in KERNELS:
        raise ValueError(f"unknown decode attention kernel {spec.get('kernel')!r}")
    model.set_decode_attention(DecodeAttention(spec["kernel"]))
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m engine.compiled.library", description="Build a compiled decoding step."
    )
    parser.add_argument("spec", type=Path, help="the model's config and weight shapes (JSON)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    use_instruction_set(spec["level"])
    model = _model_from_spec(spec)
    if args.out.stem != structure_key(model, spec["code"], spec["level"]):
        sys.exit("the model described differs from the caller's (shapes, types or code changed)")
    build(model, args.out)


if __name__ == "__main__":
    main()
