"""How the packed 4-bit projections multiply a prompt's rows on this machine, found by timing.

Decoding gives each projection one row, and the int4 kernel (`engine.model.int4_linear`) reads 4 bits a
weight for it. A prompt gives many, and from `DENSE_ROWS` on the weight may instead be unpacked once and
multiplied densely, in bf16 or in float32 (`PROMPT_FORMATS`): the unpacking costs the same whatever the
rows, the dense product less a row than the kernel. Which wins, and from how many rows, depends on the CPU:
an AMD Zen 4 multiplies bf16 natively, about twice as fast a row as the int4 kernel, while an Intel Ice
Lake emulates bf16 (3-4x slower than its float32) and there float32 overtakes the kernel only on longer
passes.

So the first time a shape runs on a machine, the loader times the three formats on the model's largest
packed projection at `ROWS` rows, and the unpacking alone, and keeps the times
(`engine.model.timed_choice`). Each format's time for any number of rows follows from them (the kernel's
and the product's grow with the rows, the unpacking's does not), and `plan` turns that into the rows from
which each format is the fastest. The formats differ only in rounding, within bf16's rounding of the
result, and decoding runs the int4 kernel whatever the plan says, so no margin is asked of the faster one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.model.int4_linear import BLOCK, DENSE_ROWS, PROMPT_FORMATS, Int4Linear
from engine.model.timed_choice import machine_key, recall, remember

DENSE = tuple(name for name, dtype in PROMPT_FORMATS.items() if dtype is not None)
TIMED = (*PROMPT_FORMATS, *(f"unpack {name}" for name in DENSE))  # each format at `ROWS` rows; each unpacking
ROWS = DENSE_ROWS  # rows timed: the shortest pass a plan serves
ROUNDS = 3


@dataclass(frozen=True)
class PromptMatmul:
    plan: tuple[tuple[int, str], ...]  # (rows, format): from that many rows on, a pass multiplies so
    micros: dict[str, float] = field(default_factory=dict)  # each of `TIMED`'s best time, µs
    source: str = "measured"  # or "cached" (read from the file)

    def describe(self) -> str:
        """``int4 from 128 rows, float32 from 180 rows (measured at 128 rows: int4 5.1 ms, ...)``"""
        steps = ", ".join(f"{name} from {rows} rows" for rows, name in self.plan)
        times = ", ".join(f"{name} {self.micros[name] / 1000:.1f} ms" for name in PROMPT_FORMATS)
        return f"{steps} ({self.source} at {ROWS} rows: {times})"


def plan(micros: dict[str, float]) -> tuple[tuple[int, str], ...]:
    """The rows from which each format is the fastest, from `TIMED`'s times: a format's time for ``r`` rows
    is its fixed part (the unpacking) plus ``r / ROWS`` times the rest of its time at `ROWS`."""
    cost = {"int4": (0.0, micros["int4"] / ROWS)}
    for name in DENSE:
        unpack = min(micros[f"unpack {name}"], micros[name])
        cost[name] = (unpack, (micros[name] - unpack) / ROWS)
    # where the fastest can change: `ROWS`, and just past each point where two formats' times cross
    starts = {ROWS}
    for a, (fixed_a, row_a) in cost.items():
        for fixed_b, row_b in (cost[b] for b in cost if b != a):
            if row_a > row_b:
                starts.add(max(ROWS, math.floor((fixed_b - fixed_a) / (row_a - row_b)) + 1))
    steps: list[tuple[int, str]] = []
    for rows in sorted(starts):
        fastest = min(cost, key=lambda name: cost[name][0] + rows * cost[name][1])
        if not steps or steps[-1][1] != fastest:
            steps.append((rows, fastest))
    return tuple(steps)


def timed_layer(model: torch.nn.Module) -> Int4Linear | None:
    """The largest packed layer a prompt can multiply densely (None: the model has none)."""
    layers = [m for m in model.modules() if isinstance(m, Int4Linear) and m.out_features % BLOCK == 0]
    return max(layers, key=lambda m: m.in_features * m.out_features, default=None)


def measure(layer: Int4Linear) -> dict[str, float]:
    """`TIMED`'s best times (µs) through ``layer``, taking turns: each format's pass of `ROWS` rows, and the
    unpacking alone (as such a pass does it)."""
    x = torch.randn(ROWS, layer.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    kept = layer.prompt_plan

    def once(name: str) -> float:
        start = time.perf_counter()
        if name in PROMPT_FORMATS:
            layer.prompt_plan = ((ROWS, name),)
            layer(x)
        else:
            layer.unpack_all(PROMPT_FORMATS[name.removeprefix("unpack ")])
        return (time.perf_counter() - start) * 1e6

    best = dict.fromkeys(TIMED, float("inf"))
    try:
        with torch.inference_mode():
            for r in range(ROUNDS + 1):
                for name in TIMED:
                    t = once(name)
                    if r:  # round 0 warms each up (and grows the unpacking buffers)
                        best[name] = min(best[name], t)
    finally:
        layer.prompt_plan = kept
    return best


def choose(model: torch.nn.Module, file: Path | None) -> PromptMatmul | None:
    """How ``model``'s packed layers multiply a prompt on this machine: from ``file`` when its shape was timed
    before, else timed now (~0.1 s) and kept there; None when the model has no packed layer to time."""
    layer = timed_layer(model)
    if layer is None:
        return None
    key = f"{machine_key()}|{layer.out_features}x{layer.in_features}|rows={ROWS}"
    micros = recall(file, key, TIMED)
    source = "cached"
    if micros is None:
        micros, source = measure(layer), "measured"
        remember(file, key, micros)
    return PromptMatmul(plan(micros), micros, source)


def use(model: torch.nn.Module, choice: PromptMatmul) -> None:
    """Every packed layer of ``model`` multiplies a prompt as ``choice`` plans."""
    for m in model.modules():
        if isinstance(m, Int4Linear):
            m.prompt_plan = choice.plan
