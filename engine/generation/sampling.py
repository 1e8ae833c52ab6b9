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

import torch

from engine.generation.sampler_settings import SamplerSettings

__all__ = ["Sampler", "SamplerSettings", "apply_penalties", "filter_logits"]


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
