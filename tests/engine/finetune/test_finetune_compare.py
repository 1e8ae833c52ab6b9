"""Per-token log-probability difference between base and tuned, checked against transformers (+ peft)
computing the same thing independently, for a LoRA run (adapters on the model, switched off for the
base) and a full run (a separate tuned model)."""

from __future__ import annotations

import pytest
import torch

from engine.finetune import FinetuneConfig, finetune
from engine.finetune.compare import logprob_difference, token_logprobs
from engine.finetune.lora import lora_disabled, lora_layers
from engine.loading.loader import load_model
from tests.engine.finetune.test_finetune import _word_corpus

IDS = [1, 5, 9, 20, 33, 40, 7, 81, 3, 5, 9, 20]


def _reference_logprobs(hf_model, ids) -> torch.Tensor:
    """The independent computation: transformers' logits, log-softmax, the next token's entry."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(hf_model(x).logits[0, :-1].double(), -1)
    return logp[torch.arange(len(ids) - 1), x[0, 1:]]


def test_lora_difference_matches_transformers_and_peft(tiny_models, tmp_path):
    peft = pytest.importorskip("peft")
    folder, ref = tiny_models("llama")
    lm = load_model(folder, dtype="float32")
    cfg = FinetuneConfig(seq_len=24, steps=4, lr=2e-2, batch_size=2, dropout=0.0, gguf="none")
    result = finetune(lm, [_word_corpus(tmp_path / "data")], tmp_path / "out", cfg)
    assert lora_layers(lm.model)

    diffs = logprob_difference(lm, IDS)
    assert [d.index for d in diffs] == list(range(1, len(IDS))) and [d.id for d in diffs] == IDS[1:]
    assert diffs[0].text == lm.tokenizer.piece(IDS[1])
    base = _reference_logprobs(ref, IDS)
    tuned_ref = peft.PeftModel.from_pretrained(ref, str(result.adapter_dir)).eval()
    try:
        tuned = _reference_logprobs(tuned_ref, IDS)
    finally:
        tuned_ref.unload()
    ours = torch.tensor([[d.base, d.tuned, d.diff] for d in diffs], dtype=torch.float64)
    torch.testing.assert_close(ours[:, 0], base, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours[:, 1], tuned, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours[:, 2], tuned - base, atol=2e-4, rtol=0)
    assert ours[:, 2].abs().max() > 0.05  # the tuned model really differs

    with torch.no_grad():  # switching the adapters off and on again changes nothing for good
        on = lm.model(torch.tensor([IDS]))
    with lora_disabled(lm.model):
        pass
    with torch.no_grad():
        assert torch.equal(lm.model(torch.tensor([IDS])), on)


def test_full_run_difference_against_a_separate_tuned_model(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    folder, ref = tiny_models("qwen2")
    tuned_lm = load_model(folder, dtype="float32")
    cfg = FinetuneConfig(method="full", seq_len=24, steps=3, lr=1e-3, batch_size=2, gguf="none")
    result = finetune(tuned_lm, [_word_corpus(tmp_path / "data")], tmp_path / "out", cfg)
    base_lm = load_model(folder, dtype="float32")

    diffs = logprob_difference(base_lm, IDS, tuned_model=tuned_lm.model)
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir, dtype=torch.float32).eval()
    expected = _reference_logprobs(merged, IDS) - _reference_logprobs(ref, IDS)
    torch.testing.assert_close(torch.tensor([d.diff for d in diffs], dtype=torch.float64), expected, atol=2e-4, rtol=0)


def test_short_sequences():
    assert token_logprobs(None, [5]) == []
