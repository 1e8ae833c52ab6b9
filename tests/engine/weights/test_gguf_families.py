"""The families added after the first six, written to GGUF the way llama.cpp's converter writes them
(SmolLM3 and Granite q/k rows permuted as Llama's, Granite's multipliers as ``*_scale`` keys, OLMo 2's and
Gemma's post-norms under their GGUF names, Gemma's norm weights stored as 1 + w, Gemma's soft-caps and
window), then loaded by our engine: logits must equal the Hugging Face model's.

GGUF keeps no key for Gemma's query_pre_attn_scalar (llama.cpp uses the head size below 27B) nor for
Gemma 3's local rope base (10000 in llama.cpp): the reference for a Gemma GGUF is the same weights with
query_pre_attn_scalar set to the head size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.loading.loader import load_model
from tests.engine.tiny_models import FAMILIES, VOCAB
from tests.engine.weights.test_gguf_architectures import permute

gguf = pytest.importorskip("gguf")

_NORMS = {  # HF's norm -> GGUF's, per kind of family
    "llama": {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"},
    "olmo2": {"post_attention_layernorm": "post_attention_norm", "post_feedforward_layernorm": "post_ffw_norm"},
    "gemma": {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    },
}


def gguf_tensors(arch: str, cfg, sd: dict[str, torch.Tensor]):
    gemma = arch.startswith("gemma")
    shift = 1.0 if gemma else 0.0  # the converter adds 1 to every Gemma norm weight
    norms = _NORMS["gemma" if gemma else arch if arch == "olmo2" else "llama"]
    yield "token_embd.weight", sd["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for hf, ours in norms.items():
            yield b + f"{ours}.weight", sd[p + f"{hf}.weight"] + shift
        for x in "qkv":
            t = sd[p + f"self_attn.{x}_proj.weight"]
            if arch in ("smollm3", "granite") and x != "v":
                t = permute(t, cfg.num_attention_heads if x == "q" else cfg.num_key_value_heads)
            yield b + f"attn_{x}.weight", t
        if arch in ("olmo2", "gemma3", "qwen3moe"):
            yield b + "attn_q_norm.weight", sd[p + "self_attn.q_norm.weight"] + shift
            yield b + "attn_k_norm.weight", sd[p + "self_attn.k_norm.weight"] + shift
        yield b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"]
        if arch == "qwen3moe":  # the experts stacked, (n_expert, rows, cols)
            yield b + "ffn_gate_inp.weight", sd[p + "mlp.gate.weight"]
            gate, up = sd[p + "mlp.experts.gate_up_proj"].chunk(2, dim=1)
            yield from ((b + "ffn_gate_exps.weight", gate), (b + "ffn_up_exps.weight", up))
            yield b + "ffn_down_exps.weight", sd[p + "mlp.experts.down_proj"]
            continue
        for x in ("gate", "up", "down"):
            yield b + f"ffn_{x}.weight", sd[p + f"mlp.{x}_proj.weight"]
    yield "output_norm.weight", sd["model.norm.weight"] + shift
    if not cfg.tie_word_embeddings:
        yield "output.weight", sd["lm_head.weight"]


def write_gguf(arch: str, reference, path) -> None:
    cfg = reference.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    w.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if arch.startswith("gemma"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(cfg.sliding_window)
        if cfg.final_logit_softcapping:
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        if arch == "gemma2":
            w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    else:
        w.add_rope_dimension_count(head_dim)
    if arch == "qwen3moe":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if arch == "granite":
        w.add_attention_scale(cfg.attention_multiplier)
        w.add_embedding_scale(cfg.embedding_multiplier)
        w.add_residual_scale(cfg.residual_multiplier)
        w.add_logit_scale(cfg.logits_scaling)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [chr(0x100 + i) for i in range(VOCAB - 4)] + ["ĀĀ"])
    w.add_token_types([3, 3, 3] + [1] * (VOCAB - 3))
    w.add_token_merges(["Ā Ā"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, tensor in gguf_tensors(arch, cfg, reference.state_dict()):
        w.add_tensor(name, tensor.detach().float().contiguous().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_reference(arch: str, tiny_models):
    """The HF model a faithful GGUF of ``arch`` computes: Gemma's queries scaled by the head size."""
    from transformers import AutoModelForCausalLM

    folder, reference = tiny_models(arch)
    if not arch.startswith("gemma"):
        return reference
    head_dim = reference.config.head_dim
    return AutoModelForCausalLM.from_pretrained(
        folder, query_pre_attn_scalar=head_dim, attn_implementation="eager", dtype=torch.float32
    ).eval()


@pytest.mark.parametrize("arch", FAMILIES)
def test_gguf_logits_match_the_hf_model(arch, tiny_models, tmp_path):
    reference = gguf_reference(arch, tiny_models)
    path = tmp_path / f"{arch}.gguf"
    write_gguf(arch, reference, path)
    lm = load_model(path, device="cpu", dtype="float32")
    assert lm.config.arch == arch and lm.file_format == "gguf"
    tokens = torch.randint(3, VOCAB, (1, 24), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = reference(tokens).logits
        assert (lm.model(tokens) - expected).abs().max().item() <= 1e-4


def test_the_gemma_writer_follows_llama_cpp_conventions(tiny_models, tmp_path):
    """transformers' own GGUF loader (which subtracts the 1 from Gemma's norms) reads the test's Gemma 2 file
    back into the same model, given the values it takes from its defaults instead of the file."""
    from transformers import AutoModelForCausalLM

    folder, reference = tiny_models("gemma2")
    write_gguf("gemma2", reference, tmp_path / "m.gguf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    defaults = dict(query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    same = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **defaults).eval()
    tokens = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        assert (theirs(tokens).logits - same(tokens).logits).abs().max().item() <= 1e-4
