"""Decoding steps compiled ahead of time with AOTInductor: on by default in the app (the model panel's
"Compile for faster replies"), ``--compile`` in the CLI.

Eager torch spends about half a decode step on the small ops per layer around the matmuls and on the
Python that issues them (`engine.model.eager_step` issues as few as it can; this removes them). Here the
one-token step is exported once (`torch.export`) and compiled by
AOTInductor into a shared library: the small ops are fused into C++ loops, attention runs the kernel
this machine chose for one query (`engine.model.decode_attention`; the library is built for that
choice), and the whole step runs without returning to Python. Measured on the 2-core test
machine with the default model (bf16, packed int4), a step at position ~150: 13.2 ms eager, 6.7 ms
compiled (a Zen 4); on an Ice Lake 17.5 ms through the eager step, 9.2 ms compiled.

The weights are inputs of the compiled step, not constants baked into it: the library holds no copy
of them (no extra memory), and it depends only on the model's shapes, so one library serves every file
of the same architecture and size. The KV cache is an input too, written in place. The position comes
in as the length of ``seen`` (a slice of a fixed arange), so one library serves every position and
cache size up to the context length.

Building needs a C++ compiler and Python's headers, and about a minute on that machine; loading a built
library takes milliseconds and imports nothing of the compiler. Libraries are kept by
`engine.compiled.library`, keyed by `structure_key`; the building runs in a child process there, so the
compiler's memory and any crash stay out of the app. A library is built for this CPU's own instruction
set, or for a portable level (`PORTABLE`, `use_instruction_set`): a bundle cannot compile, so it ships
the default model's step for each level (`engine.compiled.prebuilt`). Either way its parallel loops take
the thread count when they run, not when they were built.

Only decoding is compiled: one-token steps in inference mode on a batch-1 KV cache from position 2,
with no mask to build (`Transformer._decoding`). Prefill, inspection, comparisons and training stay
eager. The library checks none of its inputs, so `CompiledDecoding` does: a model changed since (LoRA
layers, a weight of another dtype) decodes eagerly from its next step. Other devices than the CPU are
not supported yet.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
import threading
import weakref
from pathlib import Path

import torch
from torch import nn

from engine.errors import CompileUnavailableError
from engine.model.kv_cache import KVCache
from engine.model.transformer import Transformer
from engine.source_digest import source_digest

MIN_POSITIONS = 3  # the step at position 2 is the first compiled (export specialises sizes 0 and 1)
# Example sizes for export: primes no model dimension equals, since export gives equal sizes one symbol
# and would tie, say, the cache's length to the position.
EXAMPLE = (13, 37)  # positions, cache capacity
# The code a library is compiled from: part of its key.
SOURCES = ("compiled/step.py", "model/*.py", "loading/config.py", "gguf/int4_groups.py")


def unavailable_reason(device: torch.device) -> str | None:
    """Why decoding cannot be compiled on ``device`` here, or None when it can."""
    if device.type != "cpu":
        return f"compiled decoding runs on the CPU only, not on {device.type}"
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        return f"compiling for the CPU needs a C++ compiler ({compiler} was not found)"
    headers = {
        "Python's": Path(sysconfig.get_paths()["include"]) / "Python.h",
        "torch's": Path(torch.__file__).parent / "include" / "torch" / "extension.h",
    }
    for whose, header in headers.items():  # absent from a bundled app, for one
        if not header.exists():
            return f"compiling for the CPU needs {whose} C++ headers ({header} is missing)"
    return None


def unsupported_reason(model: Transformer) -> str | None:
    """Why this model's decoding step cannot be compiled, or None when it can: the step takes one rope
    table's rows, and Gemma 3's local layers rotate by a second one; a mixture of experts runs the experts
    its tokens chose, a shape that export cannot keep symbolic."""
    if model.cfg.n_expert:
        return f"compiled decoding does not support {model.cfg.arch} (a mixture of experts)"
    if model.rotary_local is not None:
        return f"compiled decoding does not support {model.cfg.arch} (its local layers have their own rope base)"
    return None


def weights(model: Transformer) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, in a fixed order: the compiled step's weight inputs."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def weight_specs(model: Transformer) -> list[tuple[str, str, str, tuple[int, ...], tuple[int, ...]]]:
    """Name, device, dtype, shape and strides of each weight input, in order: what the library was compiled for
    (it checks none of it when called)."""
    return _specs(weights(model))


def _specs(ws: dict[str, torch.Tensor]) -> list[tuple[str, str, str, tuple[int, ...], tuple[int, ...]]]:
    return [(n, str(t.device), str(t.dtype), tuple(t.shape), t.stride()) for n, t in ws.items()]


def max_positions(model: Transformer) -> int:
    """The most positions a compiled step covers: the context, or the sliding window where one masks."""
    window = model.cfg.sliding_window
    return min(model.cfg.max_seq_len, window) if window else model.cfg.max_seq_len


def structure_key(model: Transformer, code: str | None = None, level: str | None = None) -> str:
    """What a compiled library depends on: torch, the instruction set it is built for (``level``, by default
    this CPU's `instruction_set`),
    the model code (``code``: its digest; by default this code's, see `engine.compiled.prebuilt` for the
    libraries a bundle ships), the config, the decode attention kernel this machine chose
    (`engine.model.decode_attention`) and every weight's name, dtype, shape and strides (not its values:
    the weights are inputs). Not the core count: the generated loops take the thread count when they run."""
    kernel = model.decode_attention.kernel
    h = hashlib.sha256(f"{torch.__version__}|{level or instruction_set()}|{model.cfg!r}|{kernel}".encode())
    h.update((source_digest(SOURCES) if code is None else code).encode())
    h.update(repr(weight_specs(model)).encode())
    return h.hexdigest()[:32]


def instruction_set() -> str:
    """What a library built here for this CPU may use: whatever the compiler finds on it, named by torch's
    dispatch level and the CPU's flags. (A bundle ships libraries for the `PORTABLE` levels instead.)"""
    return f"{torch.backends.cpu.get_cpu_capability()}|{_cpu_flags()}"


def _cpu_flags() -> str:
    """The instruction sets the generated code may use: the CPU's flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return torch.backends.cpu.get_cpu_capability()


# The levels torch's own kernels dispatch on, each with Inductor's class for it (not its VNNI, AMX or bf16
# variants) and the compiler's matching x86-64 level (in place of -march=native): a library built for one
# runs on every CPU of that level.
PORTABLE = {"AVX512": ("VecAVX512", "x86-64-v4"), "AVX2": ("VecAVX2", "x86-64-v3")}


def use_instruction_set(level: str | None) -> None:
    """Make Inductor, in this process (the builder child), generate loops that take their thread count when
    they run, and for a ``level`` of `PORTABLE`, code of that level only. Call before anything is compiled."""
    from torch._inductor import config, cpu_vec_isa

    config.cpp.dynamic_threads = True
    if level in PORTABLE:
        isa, config.cpp.march = PORTABLE[level]
        cpu_vec_isa.supported_vec_isa_list[:] = [getattr(cpu_vec_isa, isa)()]
        cpu_vec_isa.valid_vec_isa_list.cache_clear()
        torch.cpu._is_avx512_bf16_supported = lambda: False  # no -mavx512bf16 on an AVX-512 build


class _Step(nn.Module):
    """What is exported: one decoding step with the weights, the caches and the position as inputs.
    The model is held outside the module tree, so its weights are not captured as constants."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        object.__setattr__(self, "target", model)

    def forward(self, token, cos, sin, seen, ks: list, vs: list, ws: list) -> torch.Tensor:
        model = self.target
        start = seen.shape[0] - 1  # the position, as a size export can keep symbolic
        rotary = (cos, sin) if model.rotary is not None else None
        caches = model.caches
        model.caches = [KVCache.over(k, v) for k, v in zip(ks, vs, strict=True)]
        try:
            named = {f"model.{name}": w for name, w in zip(weights(model), ws, strict=True)}
            return torch.func.functional_call(_Run(model), named, (token, start, rotary), strict=True)
        finally:
            model.caches = caches


class _Run(nn.Module):
    """`Transformer.run` as a module's forward, for `torch.func.functional_call`."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, token, start, rotary) -> torch.Tensor:
        return self.model.run(token, start, rotary=rotary)


def _example_inputs(model: Transformer, positions: int, capacity: int) -> tuple:
    model.setup_cache(capacity, batch=1)
    cos, sin = _rotary(model, positions - 1)
    ks = [c.k for c in model.caches]
    vs = [c.v for c in model.caches]
    token = torch.zeros((1, 1), dtype=torch.long, device=model.device)
    return token, cos, sin, torch.arange(positions), ks, vs, list(weights(model).values())


def _rotary(model: Transformer, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    if model.rotary is None:
        empty = torch.empty(0, dtype=model.dtype)
        return empty, empty
    return model.rotary.get(start, 1, model.device, model.dtype)


def build(model: Transformer, out: Path) -> None:
    """Export and compile ``model``'s decoding step into the package ``out`` (written whole or not at all)."""
    import torch._inductor
    from torch.export import Dim, export

    limit = max_positions(model)
    positions = Dim("positions", min=MIN_POSITIONS, max=limit)
    capacity = Dim("capacity", min=MIN_POSITIONS, max=model.cfg.max_seq_len)
    n = model.cfg.n_layer
    caches = model.caches
    try:
        positions_now, capacity_now = EXAMPLE
        inputs = _example_inputs(model, min(positions_now, limit), min(capacity_now, model.cfg.max_seq_len))
        shapes = ({}, {}, {}, {0: positions}, [{2: capacity}] * n, [{2: capacity}] * n, [{}] * len(inputs[-1]))
        with torch.no_grad():
            program = export(_Step(model), inputs, dynamic_shapes=shapes, strict=False)
    finally:
        model.caches = caches
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.pt2")  # the packager wants the suffix
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
        with open(tmp, "rb+") as f:  # on disk before it takes the name a load trusts
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# Module, parameter and buffer registrations anywhere (a LoRA layer swapped in, a weight replaced): each
# makes the next compiled step check its inputs again, whatever the cache (see `CompiledDecoding`). The
# three process-wide hooks that count them are registered while a compiled step exists, from the first
# one loaded until the last one is dropped (the model's ``compiled_step`` set to None, or the model freed):
# importing this module installs nothing. The count only grows, so a step never mistakes a registration
# missed while no hooks were registered for none (a new step checks its inputs on its first call anyway).
_registrations = [0]
_hooks: list = []  # the hooks' handles while any step exists
_live = [0]  # the steps that exist
_hooks_lock = threading.RLock()  # reentrant: a step dropped by the garbage collector while the lock is held


def _count_registration(*_) -> None:
    _registrations[0] += 1


def _step_loaded() -> None:
    with _hooks_lock:
        _live[0] += 1  # first: a step collected meanwhile (the hooks allocate) then leaves them in place
        if not _hooks:
            _hooks.extend(
                register(_count_registration)
                for register in (
                    nn.modules.module.register_module_module_registration_hook,
                    nn.modules.module.register_module_parameter_registration_hook,
                    nn.modules.module.register_module_buffer_registration_hook,
                )
            )


def _step_dropped() -> None:
    with _hooks_lock:
        _live[0] -= 1
        if _live[0] == 0:
            while _hooks:
                _hooks.pop().remove()


class CompiledDecoding:
    """A built package loaded for ``model``: ``model.compiled_step``, called as ``step(model, tokens, start)``."""

    def __init__(self, model: Transformer, package: Path) -> None:
        try:
            self.runner = torch._C._aoti.AOTIModelPackageLoader(str(package), "model", False, 1, -1)
        except RuntimeError as e:
            raise CompileUnavailableError(f"the compiled decoding step in {package} did not load: {e}") from e
        current = weights(model)
        self.specs = _specs(current)
        self.weights = list(current.values())
        self.limit = max_positions(model)
        self.seen = torch.arange(self.limit)
        self._checked_cache = lambda: None  # a weak reference to the first layer's cache last checked
        self._checked_registrations = -1
        _step_loaded()
        weakref.finalize(self, _step_dropped)

    def __call__(self, model: Transformer, tokens: torch.Tensor, start: int) -> torch.Tensor:
        caches = model.caches
        if (
            start + 1 > self.limit
            or tokens.shape != (1, 1)
            or tokens.dtype != torch.long
            or tokens.device.type != "cpu"
            or caches[0].k.shape[0] != 1
        ):
            return model.run(tokens, start)  # outside what was compiled
        fresh = self._checked_cache() is caches[0] and self._checked_registrations == _registrations[0]
        if not fresh and not self._still_fits(model):
            model.compiled_step = None  # the model changed (new layers, another dtype): eager from now on
            return model.run(tokens, start)
        cos, sin = _rotary(model, start)
        inputs = [tokens, cos, sin, self.seen[: start + 1]]
        inputs += [c.k for c in caches] + [c.v for c in caches] + self.weights
        return self.runner.boxed_run(inputs)[0]

    def _still_fits(self, model: Transformer) -> bool:
        """Once a cache (a reply), and after any module registration: are the weights and the cache still
        what the library was compiled for? Their tensors are taken afresh, in case some were replaced by
        equal ones (a merge, a reload)."""
        self._checked_registrations = _registrations[0]
        caches = model.caches
        current = weights(model)
        if _specs(current) != self.specs or len(caches) != model.cfg.n_layer:
            return False
        if any(c.k.dtype != model.cache_dtype or not (c.k.is_contiguous() and c.v.is_contiguous()) for c in caches):
            return False
        self.weights = list(current.values())
        self._checked_cache = weakref.ref(caches[0])
        return True
