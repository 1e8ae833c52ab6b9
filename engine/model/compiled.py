"""Decoding steps compiled by torch.compile: opt-in (``--compile``, or the model panel's setting).

Eager torch spends about a third of a decode step on the ~60 small ops per layer around the matmuls
and on the Python that issues them. Inductor fuses those ops, and with its C++ wrapper the step runs
without returning to Python. Measured on the 2-core test machine with the default model (bf16, packed
int4): 15.3 ms a token eager, 10.4 ms compiled.

The price is a C++ compiler on the CPU, or Triton on CUDA, and time. The first compile took 2.5
minutes on that machine. After that, Inductor's cache (kept in Ember's cache directory) cuts it to
about 20 s, which is spent tracing the Python. So the step is compiled by `warm_up` when the model
loads, not in the middle of a reply.

Only one-token steps that read a KV cache are compiled. Prefill, inspection and training stay eager.
A model given LoRA layers goes back to eager decoding (`engine.finetune.lora.add_lora` drops the step),
because recompiling for a changed module tree would take as long as the first compile.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

import torch

from engine.errors import CompileUnavailableError
from engine.model.transformer import Transformer
from engine.weights.pack_cache import default_cache_dir

# Steps at positions 2..7 on a cache of 8: the general graph and the one for the step that fills the cache.
# Positions 0 and 1 are left out: torch.compile specialises on those values, and a decode step is at 1 only
# after a one-token prompt.
WARM_UP_POSITIONS = range(2, 8)
ROTARY_POSITIONS = 131072  # the rotary table is grown once, to the context or this, so it never grows mid-reply


def unavailable_reason(device: torch.device) -> str | None:
    """Why decoding cannot be compiled on ``device`` here, or None when it can."""
    if device.type == "cpu":
        import torch._inductor.config as inductor

        compiler = os.environ.get("CXX") or inductor.cpp.cxx[-1] or "g++"
        if shutil.which(compiler) is None:
            return f"compiling for the CPU needs a C++ compiler ({compiler} was not found)"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "compiling for CUDA needs the triton package"
        return None
    return f"compiling is not supported on {device.type}"


def compile_decoding(model: Transformer) -> None:
    """Route ``model``'s one-token cached steps through torch.compile; raises
    `CompileUnavailableError` with `unavailable_reason`'s words when there is one. The compiling itself
    happens on the first step (see `warm_up`)."""
    reason = unavailable_reason(model.device)
    if reason:
        raise CompileUnavailableError(reason)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir() / "inductor"))
    if model.rotary is not None:  # a table that grows would fail the graph's guards and recompile it
        model.rotary.get(0, min(model.cfg.max_seq_len, ROTARY_POSITIONS), model.device, model.dtype)
    options = {"cpp_wrapper": True} if model.device.type == "cpu" else {}
    # dynamic: the position and the cache's length vary from step to step, one graph serves them all
    model.compiled_step = torch.compile(model.run, dynamic=True, options=options)


def warm_up(model: Transformer, progress: Callable[[str], None] | None = None) -> float:
    """Compile now by running a few decode steps on a scratch cache; returns the seconds it took."""
    t0 = time.perf_counter()
    caches = model.caches
    if progress is not None:
        progress("Compiling the decoding step (minutes the first time, seconds after)")
    try:
        model.setup_cache(WARM_UP_POSITIONS.stop)
        with torch.inference_mode():
            token = torch.zeros((1, 1), dtype=torch.long, device=model.device)
            for pos in WARM_UP_POSITIONS:
                model(token, pos)
    finally:
        model.caches = caches
    return time.perf_counter() - t0
