"""`SamplerSettings`: how to pick the next token, every field validated on construction.

Torch-free (`ember-cli` builds its flags and defaults from it before any model is loaded); the samplers
that use these settings are in `engine.generation.sampling`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

_MAX_SEED = 2**64 - 1


def _fmt(bound: float) -> str:
    return f"{bound:g}"


def _check_number(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> None:
    """Raise ValueError unless ``value`` is a real number in [low, high] (or (low, high])."""
    bracket = "(" if low_open else "["
    interval = f"{bracket}{_fmt(low)}, {_fmt(high)}]"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or math.isnan(value):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    if not (low < value <= high if low_open else low <= value <= high):
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    """Raise ValueError unless ``value`` is an integer in [low, high] (no upper bound when None)."""
    interval = f">= {low}" if high is None else f"in [{low}, {high}]"
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer {interval}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {interval}, got {value!r}")


@dataclass(frozen=True)
class SamplerSettings:
    """How to pick the next token.  Every field is validated on construction (ValueError)."""

    temperature: float = 0.7
    """Divides the logits; 0 means greedy (argmax).  In [0, 5]."""
    top_k: int = 40
    """Keep the k most likely tokens; 0 disables."""
    top_p: float = 0.95
    """Keep the smallest set of tokens whose probability reaches top_p; 1 disables.  In (0, 1]."""
    min_p: float = 0.05
    """Drop tokens less likely than min_p times the most likely one; 0 disables.  In [0, 1]."""
    typical_p: float = 1.0
    """Locally typical sampling mass; 1 disables.  In (0, 1]."""
    repetition_penalty: float = 1.0
    """Divide positive / multiply negative logits of recent tokens (CTRL); 1 disables.  In (0, 10]."""
    repetition_window: int = 64
    """How many recent tokens the penalties look at; 0 means the whole history."""
    presence_penalty: float = 0.0
    """Subtracted once from each token present in the window.  In [-2, 2]."""
    frequency_penalty: float = 0.0
    """Subtracted from each token once per occurrence in the window.  In [-2, 2]."""
    seed: int | None = None
    """Seed of the random generator; None picks a random one."""

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, 0.0, 5.0)
        _check_int("top_k", self.top_k, 0)
        _check_number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_number("min_p", self.min_p, 0.0, 1.0)
        _check_number("typical_p", self.typical_p, 0.0, 1.0, low_open=True)
        _check_number("repetition_penalty", self.repetition_penalty, 0.0, 10.0, low_open=True)
        _check_int("repetition_window", self.repetition_window, 0)
        _check_number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, _MAX_SEED)

    @classmethod
    def greedy(cls, **overrides: Any) -> SamplerSettings:
        """Settings for greedy decoding (temperature 0), with any other field overridden."""
        return cls(**{"temperature": 0.0, **overrides})

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0
