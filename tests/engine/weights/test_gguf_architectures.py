"""Tiny random HF models written to GGUF the way llama.cpp's converter does (Llama q/k permuted for
interleaved rope, GPT-2 projections transposed, Phi-3 fused), then loaded by our engine: logits must
equal the HF model's. transformers loading the same GGUF checks that the test's writer follows
llama.cpp's conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.loading.loader import load_model
from tests.engine.tiny_models import VOCAB

gguf = pytest.importorskip("gguf")

ARCHS = ["llama", "qwen2", "qwen3", "phi3", "gpt2"]


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf permute: rotate-half rows to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(arch: str, cfg, sd: dict[str, torch.Tensor]):
    if arch == "gpt2":
        yield "token_embd.weight", sd["transformer.wte.weight"]
        yield "position_embd.weight", sd["transformer.wpe.weight"]
        names = {
            "ln_1": "attn_norm",
            "attn.c_attn": "attn_qkv",
            "attn.c_proj": "attn_output",
            "ln_2": "ffn_norm",
            "mlp.c_fc": "ffn_up",
            "mlp.c_proj": "ffn_down",
        }
        for i in range(cfg.num_hidden_layers):
            for hf, ours in names.items():
                w = sd[f"transformer.h.{i}.{hf}.weight"]
                yield f"blk.{i}.{ours}.weight", w if hf.startswith("ln") else w.t()
                yield f"blk.{i}.{ours}.bias", sd[f"transformer.h.{i}.{hf}.bias"]
        yield "output_norm.weight", sd["transformer.ln_f.weight"]
        yield "output_norm.bias", sd["transformer.ln_f.bias"]
        return
    yield "token_embd.weight", sd["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        yield b + "attn_norm.weight", sd[p + "input_layernorm.weight"]
        yield b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"]
        yield b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"]
        yield b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"]
        if arch == "phi3":
            yield b + "attn_qkv.weight", sd[p + "self_attn.qkv_proj.weight"]
            yield b + "ffn_up.weight", sd[p + "mlp.gate_up_proj.weight"]
            continue
        yield b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"]
        yield b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"]
        for x in "qkv":
            for kind in ("weight", "bias"):
                name = p + f"self_attn.{x}_proj.{kind}"
                if name in sd:
                    t = sd[name]
                    if arch == "llama" and x != "v":
                        t = permute(t, cfg.num_attention_heads if x == "q" else cfg.num_key_value_heads)
                    yield b + f"attn_{x}.{kind}", t
        if arch == "qwen3":
            yield b + "attn_q_norm.weight", sd[p + "self_attn.q_norm.weight"]
            yield b + "attn_k_norm.weight", sd[p + "self_attn.k_norm.weight"]
    yield "output_norm.weight", sd["model.norm.weight"]
    if "lm_head.weight" in sd and not cfg.tie_word_embeddings:
        yield "output.weight", sd["lm_head.weight"]


def write_gguf(arch: str, reference, path, qtype=None) -> None:
    """``qtype`` (a ``gguf.GGMLQuantizationType``): store the 2-D projection weights quantized, as
    llama.cpp's quantize tool does (embeddings and norms stay float32)."""
    cfg = reference.config
    w = gguf.GGUFWriter(str(path), arch)
    if arch == "gpt2":
        w.add_block_count(cfg.n_layer)
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        w.add_block_count(cfg.num_hidden_layers)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        w.add_rope_dimension_count(head_dim)
        if arch == "qwen3":
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [chr(0x100 + i) for i in range(VOCAB - 4)] + ["ĀĀ"])
    w.add_token_types([3, 3, 3] + [1] * (VOCAB - 3))
    w.add_token_merges(["Ā Ā"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    sd = reference.state_dict()
    for name, tensor in gguf_tensors(arch, cfg, sd):
        data = tensor.detach().float().contiguous().numpy().astype(np.float32)
        if qtype is not None and data.ndim == 2 and not name.startswith(("token_embd", "position_embd")):
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_logits_match_the_hf_model(arch, tiny_models, tmp_path):
    _, reference = tiny_models(arch)
    path = tmp_path / f"{arch}.gguf"
    write_gguf(arch, reference, path)
    lm = load_model(path, device="cpu", dtype="float32")
    assert lm.config.arch == arch and lm.file_format == "gguf"
    tokens = torch.randint(3, VOCAB, (1, 20), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = reference(tokens).logits
        assert (lm.model(tokens) - expected).abs().max().item() <= 1e-4


# transformers' GGUF loader cannot read these tiny Phi-3 / Qwen3 (head_dim) / GPT-2 configs back; llama covers
# the q/k permutation and qwen2 the biases.
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_writer_follows_llama_cpp_conventions(arch, tiny_models, tmp_path):
    """transformers' own GGUF loader reads the test's file back into the same model."""
    from transformers import AutoModelForCausalLM

    _, reference = tiny_models(arch)
    write_gguf(arch, reference, tmp_path / "m.gguf")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    tokens = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        assert (theirs(tokens).logits - reference(tokens).logits).abs().max().item() <= 1e-4


def _rewrite(path, metadata_edit=None, drop=(), add_tokens=0):
    """Copy a GGUF written by `write_gguf`, changing its metadata or tensors, through gguf's reader/writer."""
    reader = gguf.GGUFReader(str(path))
    out = path.with_name("edited.gguf")
    writer = gguf.GGUFWriter(str(out), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        if metadata_edit and key in metadata_edit:
            value = metadata_edit[key]
        if key == "tokenizer.ggml.tokens" and add_tokens:
            value = value + [f"extra{i}" for i in range(add_tokens)]
        if key == "tokenizer.ggml.token_type" and add_tokens:
            value = list(value) + [1] * add_tokens
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        if t.name not in drop:
            writer.add_tensor(t.name, np.array(t.data).reshape([int(d) for d in reversed(t.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (dict(metadata_edit={"llama.block_count": 1}), "llama.block_count 1 does not match .* layers 0..1"),
        (dict(metadata_edit={"llama.block_count": 3}), "llama.block_count 3 does not match .* layers 0..1"),
        (dict(metadata_edit={"llama.embedding_length": 48}), "embedding_length 48"),
        (dict(drop=("blk.1.attn_k.weight",)), "missing tensor blk.1.attn_k"),
        (dict(add_tokens=10), "tokenizer has 106 tokens but the embedding only 96"),
    ],
    ids=["fewer layers declared", "more layers declared", "hidden size", "tensor missing", "vocabulary"],
)
def test_metadata_that_disagrees_with_the_tensors_is_refused(edit, message, tiny_models, tmp_path):
    from engine.errors import ModelFileError
    from tests.hardening import count

    _, reference = tiny_models("llama")
    write_gguf("llama", reference, tmp_path / "m.gguf")
    bad = _rewrite(tmp_path / "m.gguf", **edit)
    with pytest.raises(ModelFileError, match=message):
        load_model(bad, device="cpu")
    count("GGUF: metadata disagreeing with the tensors refused")
