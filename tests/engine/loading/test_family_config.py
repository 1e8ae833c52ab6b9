"""The settings of the families added after the first six, as a hostile or careless file declares them:
each refused with a `ConfigError` naming its key, before anything is built; the legal edge cases read as
transformers reads them."""

from __future__ import annotations

import math

import pytest

from engine.loading.config import ModelConfig
from engine.loading.model_check import ConfigError
from tests.engine.tiny_models import _family_configs


def hf(arch: str, **edits) -> dict:
    cfg = _family_configs()[arch].to_dict()
    cfg.update(edits)
    return cfg


@pytest.mark.parametrize(
    ("arch", "edits", "message"),
    [
        (
            "granite",
            dict(embedding_multiplier=-1.0),
            "embedding_multiplier is -1.0; expected a number in \\(0, 10000\\]",
        ),
        ("granite", dict(attention_multiplier=0), "attention_multiplier is 0"),
        ("granite", dict(residual_multiplier="0.5"), "residual_multiplier is str '0.5'"),
        ("granite", dict(logits_scaling=math.nan), "logits_scaling is nan"),
        ("gemma2", dict(query_pre_attn_scalar=0), "query_pre_attn_scalar is 0"),
        ("gemma2", dict(attn_logit_softcapping=-50.0), "attn_logit_softcapping is -50.0"),
        ("gemma2", dict(final_logit_softcapping=math.inf), "final_logit_softcapping is inf"),
        ("gemma2", dict(layer_types=["sliding_attention"]), "layer_types is list .*; expected a list of 2 values"),
        ("gemma2", dict(layer_types=["sliding_attention", "chunked"]), "layer_types .* each 'sliding_attention'"),
        ("gemma2", dict(layer_types=None, sliding_window_pattern=0), "sliding_window_pattern is 0"),
        ("smollm3", dict(no_rope_layers=[1, 1, 1, 2]), "no_rope_layers is list .* each 0 or 1"),
        ("smollm3", dict(no_rope_layers=[True, True, True, False]), "no_rope_layers is list"),
        ("smollm3", dict(no_rope_layers=None, no_rope_layer_interval=0), "no_rope_layer_interval is 0"),
        ("qwen3moe", dict(num_experts_per_tok=5), "num_experts_per_tok is 5; expected at most num_local_experts 4"),
        ("qwen3moe", dict(num_local_experts=0), "num_local_experts is 0"),
        ("qwen3moe", dict(moe_intermediate_size=-1), "moe_intermediate_size is -1"),
        ("qwen3moe", dict(decoder_sparse_step=0), "decoder_sparse_step is 0"),
        (
            "qwen3moe",
            dict(mlp_only_layers=[2]),
            "mlp_only_layers is list \\[2\\]; expected a list of layer indices in 0..1",
        ),
        (
            "gemma3",
            dict(rope_parameters={"sliding_attention": {"rope_theta": 0}, "full_attention": {"rope_theta": 1e6}}),
            "rope_parameters.sliding_attention.rope_theta is 0",
        ),
    ],
)
def test_bad_family_settings_are_refused_by_name(arch, edits, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(hf(arch, **edits))


def test_defaults_where_a_file_says_nothing():
    """transformers' defaults: the periods of the Gemmas' windows and SmolLM3's rope-less layers, Granite's
    multipliers of 1 (its attention scale included), Gemma 2's caps; a null cap turns capping off."""
    gemma2 = ModelConfig.from_hf(hf("gemma2", layer_types=None, attn_logit_softcapping=None))
    assert gemma2.sliding_layers == (0,) and gemma2.attn_softcap is None and gemma2.final_softcap == 10.0
    gemma3 = ModelConfig.from_hf(hf("gemma3", layer_types=None, num_hidden_layers=12))
    assert gemma3.sliding_layers == (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)
    smol = ModelConfig.from_hf(hf("smollm3", no_rope_layers=None, layer_types=None, num_hidden_layers=8))
    assert smol.nope_layers == (3, 7)
    granite = {k: v for k, v in hf("granite").items() if not k.endswith(("multiplier", "scaling"))}
    cfg = ModelConfig.from_hf(granite)
    assert (cfg.embedding_scale, cfg.attention_scale, cfg.residual_scale, cfg.logits_scaling) == (1, 1, 1, 1)
    moe = ModelConfig.from_hf(hf("qwen3moe", num_hidden_layers=6, layer_types=None, decoder_sparse_step=2))
    assert moe.dense_layers == (0, 2, 4) and moe.n_expert == 4 and moe.norm_topk


def test_gguf_gemma_takes_llama_cpps_attention_scale():
    """No GGUF key holds query_pre_attn_scalar: the head size, or n_embd / n_head at the 27B layer counts."""
    meta = {
        "general.architecture": "gemma2",
        "gemma2.attention.head_count": 32,
        "gemma2.attention.head_count_kv": 16,
        "gemma2.embedding_length": 4608,
        "gemma2.feed_forward_length": 36864,
        "gemma2.context_length": 8192,
        "gemma2.attention.key_length": 128,
        "gemma2.attention.layer_norm_rms_epsilon": 1e-6,
        "gemma2.attention.sliding_window": 4096,
    }
    for layers, scale in ((46, (4608 / 32) ** -0.5), (42, 128**-0.5)):
        meta["gemma2.block_count"] = layers
        shapes = {"token_embd.weight": (256000, 4608)} | {f"blk.{i}.attn_norm.weight": (4608,) for i in range(layers)}
        assert ModelConfig.from_gguf(meta, shapes).attention_scale == scale


def test_olmo2_qk_norms_must_span_every_head():
    """OLMo 2's q/k norms cover the whole projection: a per-head norm's shape is refused."""
    meta = {
        "general.architecture": "olmo2",
        "olmo2.block_count": 1,
        "olmo2.attention.head_count": 4,
        "olmo2.embedding_length": 64,
        "olmo2.feed_forward_length": 96,
        "olmo2.context_length": 128,
        "olmo2.attention.layer_norm_rms_epsilon": 1e-6,
    }
    shapes = {"token_embd.weight": (96, 64), "blk.0.attn_q_norm.weight": (16,)}
    with pytest.raises(ConfigError, match=r"blk.0.attn_q_norm.weight is \[16\], but .* make it \[64\]"):
        ModelConfig.from_gguf(meta, shapes)
