"""Decoding steps compiled by torch.compile: opt-in (``--compile``, or the model panel's setting).

Eager torch spends about a third of a decode step on the ~60 small ops per layer around the matmuls
and on the Python that issues them. Inductor fuses those ops, and with its C++ wrapper the step runs
without returning to Python. Measured on the 2-core test machine with the default model (bf16, packed
int4): 15.3 ms a token eager, 10.4 ms compiled.

The price is a C++ compiler on the CPU, or Triton on CUDA, and time. The first compile took 2.5
minutes on that machine. After that, Inductor's cache (kept in Ember's cache directory) cuts it to
about 20 s, which is spent tracing the Python. So the step is compiled by `warm_up` when the model
loads, not in the middle of a reply.

Only decoding is compiled: one-token steps in inference mode that read a KV cache, from position 2
(torch.compile specialises on 0 and 1) and, for sliding-window models, before the window starts
masking (`Transformer.forward` decides). Prefill, inspection, comparisons and training stay eager, so
nothing else can trigger a recompile. A model given LoRA layers goes back to eager decoding
(`engine.finetune.lora.add_lora` drops the step): recompiling for a changed module tree would take
as long as the first compile.

What is compiled is the unbound `Transformer.run`, called with the model, so the model does not hold
a reference cycle through its own compiled step (an unloaded model is freed at once, not at the
next full garbage collection).
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.errors import CompileUnavailableError
from engine.model.transformer import Transformer
from engine.weights.pack_cache import default_cache_dir

# The warm-up's scratch cache: its length is a prime no model dimension equals, because torch.compile
# gives equal sizes one symbol and would tie the cache length to, say, 8 key/value heads, then recompile
# for the real cache. Steps at 2 and 3 give the general graph, the last one the step that fills the cache.
WARM_UP_CACHE = 37
ROTARY_POSITIONS = 131072  # the rotary table is grown once, to the context or this, so it never grows mid-reply


def unavailable_reason(device: torch.device) -> str | None:
    """Why decoding cannot be compiled on ``device`` here, or None when it can."""
    if device.type == "cpu":
        import torch._inductor.config as inductor

        compiler = os.environ.get("CXX") or inductor.cpp.cxx[-1] or "g++"
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
    # One model decodes at a time: earlier models' graphs would count towards torch.compile's limit on
    # graphs per function (8), past which it runs uncompiled without saying so.
    torch._dynamo.reset()
    # dynamic: the position and the cache's length vary from step to step, one graph serves them all
    model.compiled_step = torch.compile(Transformer.run, dynamic=True, options=options)


def warm_up(model: Transformer, progress: Callable[[str], None] | None = None) -> float:
    """Compile now by running a few decode steps on a scratch cache; returns the seconds it took. A
    failure (a compiler error, missing headers) leaves the model uncompiled and raises
    `CompileUnavailableError` with the reason."""
    t0 = time.perf_counter()
    caches = model.caches
    if progress is not None:
        progress("Compiling the decoding step (minutes the first time, seconds after)")
    size = min(WARM_UP_CACHE, model.cfg.max_seq_len)
    try:
        model.setup_cache(size)
        with torch.inference_mode():
            token = torch.zeros((1, 1), dtype=torch.long, device=model.device)
            for pos in sorted({min(2, size - 1), min(3, size - 1), size - 1}):
                model(token, pos)
    except Exception as e:
        model.compiled_step = None
        raise CompileUnavailableError(f"compiling the decoding step failed: {str(e).splitlines()[0]}") from e
    finally:
        model.caches = caches
    return time.perf_counter() - t0
