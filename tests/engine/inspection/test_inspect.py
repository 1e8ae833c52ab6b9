"""The inspection pass against the fast path and `transformers`' own attention weights."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.generation.sampling import SamplerSettings, apply_penalties, filter_logits
from engine.inspection.inspect import InspectionCancelled, inspect, logit_lens
from engine.loading.loader import load_model
from tests.engine.tiny_models import FAMILIES, VOCAB


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2", "mistral-sliding", "phi3", *FAMILIES])
def test_same_logits_as_fast_path_and_attention_as_transformers(arch, tiny_models):
    folder, reference = tiny_models(arch)
    lm = load_model(folder, device="cpu", dtype="float32")
    ids = torch.randint(3, VOCAB, (20,), generator=torch.Generator().manual_seed(11)).tolist()
    result = inspect(lm.model, lm.tokenizer, ids, keep_logits=True)
    with torch.no_grad():
        fast = lm.model(torch.tensor([ids]))[0]
        theirs = reference(torch.tensor([ids]), output_attentions=True)
    torch.testing.assert_close(result.logits, fast, atol=1e-4, rtol=0)
    for layer, weights in result.attention.items():
        assert weights.shape == (lm.config.n_head, 20, 20) and weights.dtype == torch.float16
        w = weights.float()
        torch.testing.assert_close(w.sum(-1), torch.ones(lm.config.n_head, 20), atol=2e-3, rtol=0)
        assert torch.all(w.triu(1) == 0)  # nothing attends to the future
        torch.testing.assert_close(w, theirs.attentions[layer][0], atol=1e-3, rtol=0)


def test_token_logprobs_candidates_and_lens(tiny_models):
    folder, _ = tiny_models("llama")
    lm = load_model(folder, device="cpu", dtype="float32")
    ids = torch.randint(3, VOCAB, (16,), generator=torch.Generator().manual_seed(12)).tolist()
    settings = SamplerSettings(temperature=0.8, top_k=3, top_p=1.0, min_p=0.0, repetition_penalty=1.3)
    result = inspect(lm.model, lm.tokenizer, ids, settings=settings, keep_logits=True, top_k=5)
    logprobs = torch.log_softmax(result.logits, dim=-1)
    assert result.token_logprobs[0] is None
    for p in range(1, 16):
        assert result.token_logprobs[p] == pytest.approx(logprobs[p - 1, ids[p]].item(), abs=1e-6)
    for p in range(16):
        assert [c.id for c in result.top_raw[p]] == torch.topk(logprobs[p], 5).indices.tolist()
        after = filter_logits(apply_penalties(result.logits[p], ids[: p + 1], settings), settings)
        assert len(result.top_sampled[p]) == 3  # top-k 3 leaves three candidates
        assert {c.id for c in result.top_sampled[p]} == set(torch.topk(after, 3).indices.tolist())
    lens = logit_lens(lm.model, lm.tokenizer, result, position=7, k=4)
    assert len(lens) == lm.config.n_layer
    last = torch.topk(logprobs[7], 4)
    assert [c.id for c in lens[-1]] == last.indices.tolist()
    assert [c.logprob for c in lens[-1]] == pytest.approx(last.values.tolist(), abs=1e-5)


def test_only_requested_layers_are_kept_and_cancel_works(tiny_models):
    folder, _ = tiny_models("qwen2")
    lm = load_model(folder, device="cpu", dtype="float32")
    ids = list(range(3, 30))
    assert set(inspect(lm.model, lm.tokenizer, ids, layers=[1]).attention) == {1}
    with pytest.raises(ValueError, match="layers must be in"):
        inspect(lm.model, lm.tokenizer, ids, layers=[5])
    stop = threading.Event()
    seen = []

    def progress(fraction: float) -> None:
        seen.append(fraction)
        stop.set()

    with pytest.raises(InspectionCancelled):
        inspect(lm.model, lm.tokenizer, ids, should_stop=stop, progress=progress)
    assert seen == [0.5]  # stopped after the first of two layers
