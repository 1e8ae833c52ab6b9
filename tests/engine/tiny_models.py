"""Tiny random Hugging Face models of every supported architecture, saved as safetensors folders.

Imported by tests as ``tests.engine.tiny_models``; the fixture lives in ``conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
)


def _configs():
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

    llama3 = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    return {
        "llama": LlamaConfig(**COMMON, num_key_value_heads=2, rope_theta=500.0),
        "llama-tied": LlamaConfig(**COMMON, num_key_value_heads=4, tie_word_embeddings=True),
        "llama-rope-llama3": LlamaConfig(**COMMON, num_key_value_heads=2, rope_scaling=llama3),
        "llama-rope-linear": LlamaConfig(
            **COMMON, num_key_value_heads=2, rope_scaling={"rope_type": "linear", "factor": 4.0}
        ),
        "mistral-sliding": MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=8),
        "qwen2": Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=True),
        "qwen3": Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=24),
        "phi3": Phi3Config(**COMMON, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "gpt2": GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2
        ),
    }


def _family_configs():
    """The families added after the first six, each small but with what sets it apart: SmolLM3's rope-less
    4th layer, Granite's four multipliers, OLMo 2's post-norms, Gemma's soft-caps and local layers with an
    8-token window (tests run longer prompts), Gemma 3's five local layers to one global with their own
    rope base, the global ones' scaled; Qwen3-MoE's router over four experts, two per token (every layer a
    mixture as llama.cpp has it, or one layer dense)."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GraniteConfig,
        Olmo2Config,
        Qwen3MoeConfig,
        SmolLM3Config,
    )

    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    gemma = dict(COMMON, num_key_value_heads=2, head_dim=16, sliding_window=8, query_pre_attn_scalar=24, **ids)
    moe = dict(
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True
    )
    gemma3_rope = {
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    return {
        "smollm3": SmolLM3Config(**dict(COMMON, num_hidden_layers=4), num_key_value_heads=2, **ids),
        "granite": GraniteConfig(
            **COMMON,
            num_key_value_heads=2,
            embedding_multiplier=3.0,
            attention_multiplier=0.05,
            residual_multiplier=0.5,
            logits_scaling=4.0,
        ),
        "olmo2": Olmo2Config(**COMMON, num_key_value_heads=2, **ids),
        "gemma2": Gemma2Config(**gemma, attn_logit_softcapping=5.0, final_logit_softcapping=10.0),
        "gemma3": Gemma3TextConfig(**dict(gemma, num_hidden_layers=7), rope_parameters=gemma3_rope),
        "qwen3moe": Qwen3MoeConfig(**COMMON, **moe, **ids),
        "qwen3moe-dense-layer": Qwen3MoeConfig(**dict(COMMON, num_hidden_layers=3), **moe, mlp_only_layers=[1], **ids),
    }


ARCHS = list(_configs())  # the first six families and their variants
FAMILIES = ["smollm3", "granite", "olmo2", "gemma2", "gemma3", "qwen3moe"]


def write_tiny_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over VOCAB tokens: ids 0-2 are <unk>, <s>, </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


def make_tiny_model(arch: str, folder: Path, **save_kwargs):
    """Save a randomly initialised HF model (every weight random, norms included) and return it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(sum(map(ord, arch)))
    config = {**_configs(), **_family_configs()}[arch]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(folder, **save_kwargs)
    write_tiny_tokenizer(folder)
    return model
