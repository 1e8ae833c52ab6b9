"""The eager decoding step (`engine.model.eager_step`) computes what `Transformer.run` computes, bit for bit:
the logits and the key and value it writes into the cache, for every family, in float32 and bf16, over
each decode-attention kernel, on the packed default model, and with LoRA layers attached."""

from __future__ import annotations

import pytest
import torch

from engine.finetune.lora import add_lora
from engine.loading.loader import load_model
from engine.model import eager_step
from engine.model.decode_attention import DecodeAttention
from tests.engine.model.test_model_vs_transformers import load_ours
from tests.engine.tiny_models import ARCHS, FAMILIES, VOCAB


@pytest.fixture
def used(monkeypatch):
    """How many steps `eager_step.step` served."""
    calls = []
    real = eager_step.step

    def counted(model, tokens, start):
        calls.append(start)
        return real(model, tokens, start)

    monkeypatch.setattr(eager_step, "step", counted)
    return calls


def _assert_steps_match_run(model, tokens: torch.Tensor, prompt: int, used: list) -> None:
    """Prefill ``prompt`` tokens, then decode the rest one at a time: each step through `forward` (the eager
    step) and again through `run` from the same cache, compared exactly."""
    with torch.inference_mode():
        model.setup_cache(tokens.shape[1] + 1)
        model(tokens[:, :prompt], 0)
        for i in range(prompt, tokens.shape[1]):
            before = [(c.k.clone(), c.v.clone()) for c in model.caches]
            got = model(tokens[:, i : i + 1], i)
            written = [(c.k.clone(), c.v.clone()) for c in model.caches]
            for c, (k, v) in zip(model.caches, before, strict=True):
                c.k.copy_(k), c.v.copy_(v)
            want = model.run(tokens[:, i : i + 1], i)
            assert torch.equal(got, want), (i, (got - want).abs().max().item())
            for c, (k, v) in zip(model.caches, written, strict=True):
                assert torch.equal(c.k, k) and torch.equal(c.v, v)
    assert len(used) == tokens.shape[1] - prompt  # every step went through the eager step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("arch", [*ARCHS, *FAMILIES])
def test_each_family_steps_as_the_full_model_runs(arch, dtype, tiny_models, used):
    folder, _ = tiny_models(arch)
    model = load_ours(folder, dtype=dtype)
    if model.cfg.sliding_window:  # steps past the window build a mask: `run` serves those
        model.cfg.sliding_window = None
        for layer in model.layers:
            layer.window = None
    tokens = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(5))
    _assert_steps_match_run(model, tokens, 3, used)


@pytest.mark.parametrize("kernel", ["sdpa", "sdpa_f32"])
def test_the_packed_default_model_steps_as_it_runs(kernel, used):
    lm = load_model()
    lm.model.set_decode_attention(DecodeAttention(kernel))
    tokens = torch.tensor([lm.encode_prompt("Name a river in Europe and say why it matters to trade.")])
    _assert_steps_match_run(lm.model, tokens, tokens.shape[1] - 4, used)


def test_with_lora_layers_attached_the_step_runs_them(used):
    lm = load_model()
    torch.manual_seed(0)
    layers = add_lora(lm.model, rank=4)
    for layer in layers:  # a non-zero adapter, so that skipping it would show
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    tokens = torch.tensor([lm.encode_prompt("Three facts about owls:")])
    _assert_steps_match_run(lm.model, tokens, tokens.shape[1] - 3, used)


def test_a_batch_of_two_runs_the_full_model(used):
    lm = load_model()
    tokens = torch.tensor([lm.encode_prompt("Hello there")] * 2)
    with torch.inference_mode():
        lm.model.setup_cache(16, batch=2)
        lm.model(tokens, 0)
        lm.model(tokens[:, -1:], tokens.shape[1])
    assert used == []
