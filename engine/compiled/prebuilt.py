"""Compiled decoding steps that ship with the program: the bundled app has no C++ headers and cannot
compile, so `make package` builds the default model's step beforehand (``python -m engine.compiled.prebuilt
OUT``) and the bundle carries it in ``compiled/``.

One library for each decode attention kernel (`engine.model.decode_attention`: the user's CPU chooses at
load) and each instruction-set level torch dispatches on (`engine.compiled.step.PORTABLE`: AVX-512 and
AVX2, Inductor's plain classes of each, so no VNNI, AMX or bf16 instruction that a CPU of the level may
lack), with loops that take their thread count when they run. At load the library of this CPU's level and
the chosen kernel is taken; a model without one (another model, another precision) is compiled as usual
where a compiler is found, or decodes eagerly.

A shipped library is named by `key`: `structure_key` with the fixed label `CODE` for the code, since a
bundle cannot digest its sources; it was built from the very code the bundle was made from, and is only
looked for in a bundle (`bundled_dir`), never beside a source tree that may have changed since.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from engine.compiled.step import PORTABLE, structure_key, unavailable_reason

CODE = "shipped with the program"


def bundled_dir() -> Path | None:
    """The bundle's ``compiled/`` folder; None when running from source."""
    bundle = getattr(sys, "_MEIPASS", None)
    return Path(bundle) / "compiled" if getattr(sys, "frozen", False) and bundle else None


def shipped_here() -> bool:
    """Whether this program came with libraries for this CPU (a bundle compiles nothing else)."""
    folder = bundled_dir()
    return folder is not None and level() is not None and any(folder.glob("*.pt2"))


def level() -> str | None:
    """This CPU's level among `PORTABLE`, or None."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in PORTABLE else None


def levels_buildable() -> list[str]:
    """The levels a library can be built for here: this CPU's and those below it."""
    order = list(PORTABLE)  # the widest first
    here = level()
    return order[order.index(here) :] if here else []


def key(model, for_level: str | None = None) -> str:
    return structure_key(model, CODE, for_level or level())


def find(model, folder: Path | None) -> Path | None:
    """The shipped library in ``folder`` for ``model`` on this CPU, or None."""
    if folder is None or model.device.type != "cpu" or level() is None:
        return None
    path = folder / f"{key(model)}.pt2"
    return path if path.is_file() else None


def prebuild(out: Path, progress=print, *, this_cpu_only: bool = False) -> list[Path]:
    """Build the default model's step into ``out`` for every kernel and buildable level (``this_cpu_only``:
    only the one this CPU would take, for the benchmark); other libraries there are removed. A library
    already there is kept (the same key: the same code and shapes)."""
    from engine.compiled.library import build_in_child
    from engine.loading.loader import load_model
    from engine.model.decode_attention import KERNELS, DecodeAttention

    reason = unavailable_reason(torch.device("cpu"))
    if reason:
        raise SystemExit(f"cannot build the shipped decoding steps: {reason}")
    lm = load_model(device="cpu")
    model = lm.model
    out.mkdir(parents=True, exist_ok=True)
    built = []
    chosen = model.decode_attention.kernel
    for kernel in (chosen,) if this_cpu_only else KERNELS:
        model.set_decode_attention(DecodeAttention(kernel))
        for lv in levels_buildable()[:1] if this_cpu_only else levels_buildable():
            path = out / f"{key(model, lv)}.pt2"
            if not path.exists():
                t0 = time.perf_counter()
                build_in_child(model, path, None, lambda: False, level=lv, code=CODE)
                progress(f"built the {kernel} step for {lv} in {time.perf_counter() - t0:.0f} s: {path.name}")
            built.append(path)
    for stale in set(out.glob("*.pt2")) - set(built):
        stale.unlink()
    return built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m engine.compiled.prebuilt", description="Build the decoding steps a bundle ships."
    )
    parser.add_argument("out", type=Path, help="the folder build.spec bundles as compiled/")
    args = parser.parse_args(argv)
    for path in prebuild(args.out):
        print(path)


if __name__ == "__main__":
    main()
