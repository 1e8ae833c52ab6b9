"""The families added after the first six (SmolLM3, Granite, OLMo 2, Gemma 2, Gemma 3, Qwen3-MoE) against `transformers`
on tiny random models: logits, the parts that set each apart, and cached decoding."""

from __future__ import annotations

import pytest
import torch

from tests.engine.model.test_model_vs_transformers import load_ours
from tests.engine.tiny_models import FAMILIES, VOCAB

# Longer than the tiny Gemmas' 8-token window, so that their local layers mask.
PROMPT = 24


def _max_diff(ours, reference, tokens) -> float:
    with torch.no_grad():
        return (ours(tokens) - reference(tokens).logits).abs().max().item()


@pytest.mark.parametrize("arch", [*FAMILIES, "qwen3moe-dense-layer"])
def test_logits_match_transformers(arch, tiny_models):
    folder, reference = tiny_models(arch)
    ours = load_ours(folder)
    assert ours.cfg.arch == arch.split("-")[0]
    assert ours.cfg.n_params == sum(p.numel() for p in reference.parameters())  # what memory estimates use
    tokens = torch.randint(0, VOCAB, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    assert _max_diff(ours, reference, tokens) <= 1e-4


@pytest.mark.parametrize(
    ("arch", "change"),
    [
        ("smollm3", dict(nope_layers=())),
        ("granite", dict(residual_scale=1.0)),
        ("granite", dict(logits_scaling=1.0)),
        ("gemma2", dict(attn_softcap=None)),
        ("gemma2", dict(final_softcap=None)),
        ("gemma2", dict(sliding_window=None)),
        ("gemma3", dict(sliding_layers=())),
        ("gemma3", dict(rope_local_theta=None)),
        ("qwen3moe", dict(norm_topk=False)),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(v),
)
def test_each_difference_matters(arch, change, tiny_models):
    """Without the part that sets the family apart the logits would differ: the match is not an accident."""
    folder, reference = tiny_models(arch)
    tokens = torch.randint(0, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    assert _max_diff(load_ours(folder, **change), reference, tokens) > 1e-3


@pytest.mark.parametrize("arch", FAMILIES)
def test_cached_decoding_equals_the_full_pass(arch, tiny_models):
    """A prefill and then one token at a time on the KV cache (past the window) gives the logits of one
    pass over the whole sequence."""
    folder, _ = tiny_models(arch)
    model = load_ours(folder)
    tokens = torch.randint(0, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens)
        model.setup_cache(64)
        steps = [model(tokens[:, :5], 0)]
        steps += [model(tokens[:, i : i + 1], i) for i in range(5, PROMPT)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
