"""LoRA and the merged exports for the families added after the first six: a model with random adapters
folded in, written as a Hugging Face folder (transformers reads it back with our logits) and, when it came
from a GGUF, as a GGUF (Ember reads it back with the same logits)."""

from __future__ import annotations

import pytest
import torch

from engine.finetune.estimate import lora_params
from engine.finetune.export import save_merged_hf
from engine.finetune.gguf_export import save_merged_gguf
from engine.finetune.lora import ALL_TARGETS, add_lora, lora_layers
from engine.loading.loader import load_model
from tests.engine.tiny_models import FAMILIES, VOCAB
from tests.engine.weights.test_gguf_families import gguf_reference, write_gguf

TOKENS = torch.randint(3, VOCAB, (1, 20), generator=torch.Generator().manual_seed(11))


def _tuned(lm):
    """``lm`` with LoRA on every projection, its B matrices random (as after training): the logits move."""
    with torch.no_grad():
        before = lm.model(TOKENS)
    add_lora(lm.model, rank=4, alpha=8.0)
    torch.manual_seed(0)
    for _, layer in lora_layers(lm.model):
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    with torch.no_grad():
        after = lm.model(TOKENS)
    assert (after - before).abs().max() > 1e-2
    return after


@pytest.mark.parametrize("source", ["hf", "gguf"])
@pytest.mark.parametrize("arch", FAMILIES)
def test_the_merged_folder_reads_back_in_transformers(arch, source, tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    if source == "hf":
        path = tiny_models(arch)[0]
    else:
        path = tmp_path / "m.gguf"
        write_gguf(arch, gguf_reference(arch, tiny_models), path)
    lm = load_model(path, device="cpu", dtype="float32")
    ours = _tuned(lm)
    folder = save_merged_hf(lm, tmp_path / "merged")
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        assert (theirs(TOKENS).logits - ours).abs().max().item() <= 1e-4
    if source == "gguf":
        back = load_model(save_merged_gguf(lm, tmp_path / "merged.gguf", "f32"), device="cpu", dtype="float32")
        assert back.config == lm.config
        with torch.no_grad():
            assert (back.model(TOKENS) - ours).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch", ["qwen3moe", "qwen3moe-dense-layer"])
def test_lora_on_a_mixture_of_experts_adapts_attention_and_dense_layers(arch, tiny_models):
    """The experts' stacked weights stay as they are; the estimate counts what LoRA really adds."""
    model = load_model(tiny_models(arch)[0], device="cpu", dtype="float32").model
    add_lora(model, rank=4, targets=ALL_TARGETS)
    adapted = {name.split(".", 2)[2] for name, _ in lora_layers(model)}
    dense = set(model.cfg.dense_layers)
    assert {name for name, _ in lora_layers(model) if ".mlp." in name} == {
        f"layers.{i}.mlp.{w}" for i in dense for w in ("w_gate_up", "w_down")
    }
    assert {"attn.wqkv", "attn.wo"} <= adapted
    actual = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora_params(model.cfg, 4, ALL_TARGETS) == actual
