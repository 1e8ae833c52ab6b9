"""Base against tuned on the same text: the log-probability each gives every token.

`logprob_difference` scores a token sequence twice, once with the adapters switched off
(`engine.finetune.lora.lora_disabled`, nothing is removed or changed) and once with them, or against
a separate tuned model (a full fine-tune's merged output). Each token's entry says how much more
(positive) or less (negative) likely the tuned model found it than the base model did, given the same
text before it. The first token has no prefix to be predicted from and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.finetune.lora import lora_disabled


@dataclass(frozen=True)
class TokenDiff:
    index: int  # position in the sequence (1 = the second token)
    id: int
    text: str
    base: float  # natural-log probability under the base model
    tuned: float

    @property
    def diff(self) -> float:
        return self.tuned - self.base


@torch.no_grad()
def token_logprobs(model, ids: list[int]) -> list[float]:
    """``log p(ids[i] | ids[:i])`` for i = 1 .. len(ids) - 1, one forward pass (written into the model's KV
    cache when it has one, grown to fit: the cache records what it holds)."""
    if len(ids) < 2:
        return []
    if model.caches:
        model.grow_cache(len(ids) - 1)
    was_training = model.training
    model.eval()
    try:
        x = torch.tensor([ids], device=model.device)
        logits = model(x[:, :-1]).float()  # (1, T-1, vocab)
        logp = F.log_softmax(logits, dim=-1)
        return logp[0].gather(-1, x[0, 1:, None]).squeeze(-1).tolist()
    finally:
        model.train(was_training)


def logprob_difference(lm, ids: list[int], tuned_model=None) -> list[TokenDiff]:
    """Per-token log-probabilities of ``ids`` under the base and the tuned model.

    ``tuned_model`` None: ``lm.model`` carries the adapters (LoRA layers), and the base is the same model
    with them switched off. Otherwise ``tuned_model`` is a separate model over the same vocabulary and
    ``lm.model`` is the base (any adapters on it are switched off for the base pass).
    """
    if tuned_model is not None and tuned_model.cfg.vocab_size != lm.model.cfg.vocab_size:
        raise ValueError("the tuned model has another vocabulary than the base model")
    with lora_disabled(lm.model):
        base = token_logprobs(lm.model, ids)
    tuned = token_logprobs(tuned_model if tuned_model is not None else lm.model, ids)
    return [
        TokenDiff(i + 1, ids[i + 1], lm.tokenizer.piece(ids[i + 1]), b, t)
        for i, (b, t) in enumerate(zip(base, tuned, strict=True))
    ]
