"""Samplers: turn a model's next-token logits into the next token.

One step, all in float32 on the logits' own device:

1. :func:`apply_penalties` — the repetition penalty (CTRL-style, as transformers applies it), then the
   OpenAI-style presence and frequency penalties, all over the last ``repetition_window`` tokens.
2. Greedy decoding when ``temperature == 0``: the argmax of the penalized logits.
3. :func:`filter_logits` — temperature, then top-k, top-p, min-p and typical-p, in that order (the
   order transformers applies its warpers in, so results match ``generate(do_sample=True)``).
   Removed tokens become ``-inf``; every step keeps at least one token.
4. A draw from the softmax of what is left, with the :class:`Sampler`'s own seeded generator.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

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


def apply_penalties(logits: torch.Tensor, history: Sequence[int] | torch.Tensor, s: SamplerSettings) -> torch.Tensor:
    """Return float32 logits with the repetition, presence and frequency penalties applied.

    Only the last ``s.repetition_window`` tokens of ``history`` count (all of them when 0).  Token ids
    beyond the logits' vocabulary (an embedding larger than the output head) are ignored.
    """
    if s.repetition_penalty == 1.0 and not s.presence_penalty and not s.frequency_penalty:
        return logits.to(torch.float32, copy=True)  # nothing to apply: skip the bincount over the vocabulary
    out = logits.to(torch.float32, copy=True)
    ids = torch.as_tensor(history, dtype=torch.long, device=out.device).flatten()
    if s.repetition_window:
        ids = ids[-s.repetition_window :]
    if ids.numel() == 0:
        return out
    vocab = out.shape[-1]
    counts = torch.bincount(ids.clamp(max=vocab), minlength=vocab + 1)[:vocab].to(torch.float32)
    present = counts > 0
    if s.repetition_penalty != 1.0:
        penalized = torch.where(out < 0, out * s.repetition_penalty, out / s.repetition_penalty)
        out = torch.where(present, penalized, out)
    if s.presence_penalty:
        out = out - s.presence_penalty * present.to(torch.float32)
    if s.frequency_penalty:
        out = out - s.frequency_penalty * counts
    return out


def _keep_argmax(scores: torch.Tensor) -> torch.Tensor:
    kept = torch.full_like(scores, -math.inf)
    best = scores.argmax()
    kept[best] = scores[best]
    return kept


def _top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens whose cumulative probability reaches p (the most likely always)."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[-1] = False
    remove = remove_sorted.scatter(0, order, remove_sorted)
    return scores.masked_fill(remove, -math.inf)


def _min_p(scores: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the top probability."""
    probs = scores.softmax(dim=-1)
    remove = probs < min_p * probs.max()
    remove[probs.argmax()] = False
    return scores.masked_fill(remove, -math.inf)


def _typical(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy, up to ``mass``."""
    log_probs = scores.log_softmax(dim=-1)
    entropy = -(log_probs * log_probs.exp()).nansum()
    distance = (-log_probs - entropy).abs()
    sorted_distance, order = torch.sort(distance, descending=False)
    cumulative = scores[order].softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum().clamp(max=scores.shape[-1] - 1)
    remove_sorted = sorted_distance > sorted_distance[last]
    remove_sorted[0] = False
    remove = remove_sorted.scatter(0, order, remove_sorted)
    return scores.masked_fill(remove, -math.inf)


def filter_logits(logits: torch.Tensor, s: SamplerSettings) -> torch.Tensor:
    """Apply temperature, then top-k, top-p, min-p and typical-p; removed tokens become ``-inf``.

    Returns a new float32 tensor.  With temperature 0 only the argmax survives (greedy).
    """
    scores = logits.to(torch.float32)
    if s.is_greedy:
        return _keep_argmax(scores)
    scores = scores / s.temperature
    if s.top_k and s.top_k < scores.shape[-1]:
        # The later filters only ever see what top-k kept, so they run on those few tokens instead of
        # sorting the whole vocabulary; the result is the same (removed tokens carry no probability).
        kept = (scores >= torch.topk(scores, s.top_k).values[-1]).nonzero().squeeze(-1)
        return torch.full_like(scores, -math.inf).scatter_(0, kept, _filter_rest(scores[kept], s))
    return _filter_rest(scores, s)


def _filter_rest(scores: torch.Tensor, s: SamplerSettings) -> torch.Tensor:
    """Top-p, min-p and typical-p, in that order."""
    if s.top_p < 1.0:
        scores = _top_p(scores, s.top_p)
    if s.min_p > 0.0:
        scores = _min_p(scores, s.min_p)
    if s.typical_p < 1.0:
        scores = _typical(scores, s.typical_p)
    return scores


class Sampler:
    """Picks tokens with the given settings and its own seeded random generator.

    ``seed`` is the seed in use (``settings.seed``, or a random one when that is None), so a run can be
    repeated.  ``device`` is where the generator lives; logits on another device are moved there for
    the draw only.
    """

    def __init__(self, settings: SamplerSettings, device: torch.device | str = "cpu") -> None:
        self.settings = settings
        self.seed: int = settings.seed if settings.seed is not None else secrets.randbits(63)
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(self.seed)

    def __call__(self, logits: torch.Tensor, history: Sequence[int] | torch.Tensor) -> tuple[int, torch.Tensor]:
        """Pick the next token from 1-D ``logits`` given the token ``history``.

        Returns the token id and the float32 log-probabilities it was drawn from (after penalties and
        filtering, ``-inf`` for removed tokens); for greedy settings, the log-softmax of the
        penalized logits.
        """
        if logits.dim() != 1:
            raise ValueError(f"logits must be 1-D (the vocabulary), got shape {tuple(logits.shape)}")
        penalized = apply_penalties(logits, history, self.settings)
        if self.settings.is_greedy:
            return int(penalized.argmax()), penalized.log_softmax(dim=-1)
        log_probs = filter_logits(penalized, self.settings).log_softmax(dim=-1)
        # Drawn among the tokens the filters kept: the same distribution, and a draw over the whole
        # vocabulary costs about a millisecond on the CPU where this costs microseconds.
        kept = torch.isfinite(log_probs).nonzero().squeeze(-1)
        probs = log_probs[kept].exp().to(self._generator.device)
        token = kept[torch.multinomial(probs, 1, generator=self._generator).to(kept.device)]
        return int(token), log_probs
