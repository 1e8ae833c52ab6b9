"""Our transformer against `transformers` on tiny random models of every supported architecture."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.weights.build import build_model
from engine.weights.from_hf import SafetensorsSource, hf_state_dict, read_config, safetensors_files
from tests.engine.tiny_models import ARCHS, VOCAB


def load_ours(folder, dtype=torch.float32, **overrides):
    cfg = read_config(folder)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    source = SafetensorsSource(safetensors_files(folder))
    return build_model(cfg, hf_state_dict(cfg, source.names(), source.get), folder, torch.device("cpu"), dtype)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(arch, tiny_models):
    folder, reference = tiny_models(arch)
    ours = load_ours(folder)
    tokens = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(tokens).logits
        got = ours(tokens)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


def test_sliding_window_is_applied(tiny_models):
    """Without its window the Mistral model would differ: the match above is not an accident."""
    folder, reference = tiny_models("mistral-sliding")
    unwindowed = load_ours(folder, sliding_window=None)
    tokens = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (unwindowed(tokens) - reference(tokens).logits).abs().max().item() > 1e-3


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2", "phi3", "mistral-sliding"])
def test_cached_decoding_equals_uncached(arch, tiny_models):
    """Greedy decoding with the KV cache picks exactly the tokens a full recompute picks."""
    folder, _ = tiny_models(arch)
    model = load_ours(folder)
    prompt = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        seq = prompt
        uncached_logits = []
        for _ in range(20):
            logits = model(seq)[0, -1]
            uncached_logits.append(logits)
            seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)

        model.setup_cache(64)
        logits = model(prompt, 0, last_only=True)[0, -1]
        cached = [prompt]
        for step in range(20):
            torch.testing.assert_close(logits, uncached_logits[step], atol=1e-5, rtol=1e-5)
            token = logits.argmax().view(1, 1)
            cached.append(token)
            logits = model(token, prompt.shape[1] + step)[0, -1]
    assert torch.equal(torch.cat(cached, dim=1), seq)


def test_chunked_prefill_equals_one_shot(tiny_models):
    """Prefilling in two chunks (a cached prefix, then more text) gives the same logits."""
    folder, _ = tiny_models("llama")
    model = load_ours(folder)
    tokens = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(tokens)
        model.setup_cache(64)
        first = model(tokens[:, :12], 0)
        second = model(tokens[:, 12:], 12)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-5, rtol=1e-5)


def test_sharded_folder_loads_the_same(tiny_models, tmp_path):
    folder, reference = tiny_models("qwen2")
    reference.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    tokens = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(load_ours(tmp_path)(tokens), load_ours(folder)(tokens))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close(dtype, tiny_models):
    folder, reference = tiny_models("llama")
    ours = load_ours(folder, dtype=dtype)
    assert ours.tok_emb.weight.dtype == dtype
    tokens = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got, expected = ours(tokens), reference(tokens).logits
    assert got.dtype == torch.float32
    assert (got - expected).abs().max().item() < 0.1
