"""The inspection pass: what the model saw, how sure it was, and where it attended.

A separate eager path over any token sequence, so normal generation pays nothing: it runs the same
modules as `Transformer.forward` (same projections, norms and rope), but computes attention as an
explicit softmax so the weights can be kept, and reads a logit lens off every layer's residual stream.

Memory stays bounded on long contexts: attention is kept only for the layers asked for, in float16
(``n_head x T x T`` per layer). The logit lens keeps each layer's residual stream (``T x n_embd``)
and reads it through the output head only for the position asked for (`logit_lens`): a vocabulary
row per layer and position would be ``n_layer x T x vocab`` floats and minutes of matmuls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.generation.sampling import SamplerSettings, apply_penalties, filter_logits
from engine.model import Transformer
from engine.stop_signal import StopSignal, is_stopped
from engine.text.tokenizer import Tokenizer


class InspectionCancelled(Exception):
    """The inspection was cancelled between layers."""


@dataclass(frozen=True)
class Candidate:
    id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class Inspection:
    """Per position ``i`` of ``ids``: the token, its log-probability given the tokens before it
    (None for the first), and what the model predicted *after* it (the candidates for token ``i+1``)."""

    ids: list[int]
    pieces: list[str]
    special: list[bool]
    token_logprobs: list[float | None]
    top_raw: list[list[Candidate]]  # the model's own distribution
    top_sampled: list[list[Candidate]]  # after penalties, temperature and the truncation samplers
    attention: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (n_head, T, T) float16
    residuals: torch.Tensor | None = None  # (n_layer, T, n_embd): each layer's output, for the logit lens
    logits: torch.Tensor | None = None  # (T, vocab) float32, when asked for


def _candidates(logprobs: torch.Tensor, k: int, tokenizer: Tokenizer) -> list[list[Candidate]]:
    """Top-k of each row of ``logprobs`` (T, V); tokens a sampler removed (-inf) are left out."""
    top = torch.topk(logprobs, k, dim=-1)
    return [
        [Candidate(i, tokenizer.piece(i), lp) for i, lp in zip(ids, lps, strict=True) if lp > float("-inf")]
        for ids, lps in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    ]


@torch.inference_mode()
def logit_lens(
    model: Transformer, tokenizer: Tokenizer, inspection: Inspection, position: int, k: int = 5
) -> list[list[Candidate]]:
    """Layer by layer, the top-k next tokens read off the residual stream at ``position`` through the
    final norm and output head. The last row is the model's own prediction."""
    if inspection.residuals is None:
        raise ValueError("this inspection kept no residuals")
    x = inspection.residuals[:, position].to(model.device)  # (n_layer, n_embd)
    logprobs = torch.log_softmax(model.head(x[None])[0], dim=-1)  # (n_layer, V)
    return _candidates(logprobs, k, tokenizer)


@torch.inference_mode()
def inspect(
    model: Transformer,
    tokenizer: Tokenizer,
    ids: Sequence[int],
    *,
    settings: SamplerSettings | None = None,
    layers: Sequence[int] | None = None,
    top_k: int = 5,
    keep_logits: bool = False,
    should_stop: StopSignal = None,
    progress: Callable[[float], None] | None = None,
) -> Inspection:
    """Run the inspection pass over ``ids``; ``layers`` are the layers whose attention is kept (None: all)."""
    cfg = model.cfg
    T = len(ids)
    if T == 0:
        raise ValueError("nothing to inspect: the token sequence is empty")
    if T > cfg.max_seq_len:
        raise ValueError(f"{T} tokens exceed the model's context of {cfg.max_seq_len}")
    keep = set(range(cfg.n_layer) if layers is None else layers)
    if not keep <= set(range(cfg.n_layer)):
        raise ValueError(f"layers must be in [0, {cfg.n_layer - 1}], got {sorted(keep)}")
    tokens = torch.tensor([list(ids)], device=model.device)
    x = model.embed(tokens, 0)  # (1, T, n_embd)
    rotations = model.rotations(0, T)
    allowed = {layer.window: model.allowed_keys(0, T, layer.window) for layer in model.layers}  # (T, T) each
    group = cfg.n_head // cfg.n_kv_head
    result_attention: dict[int, torch.Tensor] = {}
    residuals = torch.empty(cfg.n_layer, T, cfg.n_embd, dtype=x.dtype)
    for i, layer in enumerate(model.layers):
        if is_stopped(should_stop):
            raise InspectionCancelled("the inspection was cancelled")
        q, k, v = layer.attn.project(layer.attn_input(x), rotations[layer.rope])  # (1, nh|nkv, T, hd)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (1, nh, T, hd)
        scores = layer.attn.scores(q, k)  # (1, nh, T, T)
        weights = torch.softmax(scores.masked_fill(~allowed[layer.window], float("-inf")), dim=-1)
        x = layer.add(x, layer.attn.output(weights.to(v.dtype) @ v), layer.attn_post_norm)  # (1, T, n_embd)
        x = layer.add_mlp(x)
        if i in keep:
            result_attention[i] = weights[0].to(torch.float16).cpu()
        residuals[i] = x[0].cpu()
        if progress is not None:
            progress((i + 1) / cfg.n_layer)
    logits = model.head(x)[0]  # (T, V) float32
    logprobs = torch.log_softmax(logits, dim=-1)
    token_logprobs: list[float | None] = [None] + [float(logprobs[p - 1, ids[p]]) for p in range(1, T)]
    settings = settings or SamplerSettings()
    sampled = torch.stack(
        [
            torch.log_softmax(filter_logits(apply_penalties(logits[p], list(ids[: p + 1]), settings), settings), dim=-1)
            for p in range(T)
        ]
    )  # (T, V): what the sampler would choose from after each position
    return Inspection(
        ids=list(ids),
        pieces=[tokenizer.piece(t) for t in ids],
        special=[tokenizer.is_special(t) for t in ids],
        token_logprobs=token_logprobs,
        top_raw=_candidates(logprobs, top_k, tokenizer),
        top_sampled=_candidates(sampled, top_k, tokenizer),
        attention=result_attention,
        residuals=residuals,
        logits=logits.cpu() if keep_logits else None,
    )
