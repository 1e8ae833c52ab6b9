"""The tuned model as one merged GGUF file, written with the ``gguf`` package the way llama.cpp's
``convert_hf_to_gguf.py`` writes it, so Ember, llama.cpp and the apps built on it can load it.

The metadata (architecture sizes, rope, tokenizer, chat template) is copied from the GGUF the model was
loaded from; only ``general.file_type`` is set anew. The weights are the merged ones
(`engine.finetune.export.merged_state_dict`), renamed to llama.cpp's tensor names: Ember's fused
``wqkv`` and ``w_gate_up`` are split again (Phi-3 and GPT-2 keep them fused, as llama.cpp does), and
Llama/Mistral q/k rows are permuted back to llama.cpp's interleaved rope layout (the inverse of
`engine.weights.from_gguf.unpermute`).

Tensor types: ``f32`` (exact), ``f16`` (the default: half the size, logits within ~1e-3) or ``q8_0``;
1-D tensors (norms, biases) stay F32 as in llama.cpp, and a matrix whose rows do not fit Q8_0's
32-value blocks falls back to F16.

A base model loaded from a Hugging Face folder has no GGUF tokenizer metadata to copy; converting
``tokenizer.json`` to llama.cpp's pre-tokenizer table is llama.cpp's converter's job, so such runs
raise `GGUFExportUnsupported` with that advice (the merged safetensors folder is still written).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from engine.errors import EmberError
from engine.finetune.export import merged_state_dict
from engine.loading.config import ModelConfig
from engine.weights.from_gguf import PERMUTED_QK_ARCHS

GGUF_TYPES = ("f16", "f32", "q8_0")
# Keys the writer sets itself or that describe the old file's tensors, not the model.
_SKIP_KEYS = ("general.architecture", "general.file_type", "general.quantization_version")


class GGUFExportUnsupported(EmberError):
    """The model cannot be written as GGUF (e.g. it was loaded from a Hugging Face folder)."""


def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's ``permute``: rotate-half rows to interleaved pairs (inverse of ``unpermute``)."""
    shape = w.shape
    w = w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])  # (nh, 2, hd/2, ...)
    return w.transpose(1, 2).reshape(shape)  # (nh, hd/2, 2, ...) -> rows


def gguf_tensors(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(llama.cpp name, tensor)`` pairs from our merged state dict: the inverse of
    `engine.weights.from_gguf.gguf_state_dict`."""
    q, kv, inter = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.intermediate_size
    fused = cfg.arch in ("phi3", "gpt2")
    yield "token_embd.weight", state["tok_emb.weight"]
    if cfg.learned_positions:
        yield "position_embd.weight", state["pos_emb.weight"]
    for i in range(cfg.n_layer):
        o, b = f"layers.{i}.", f"blk.{i}."
        for suffix in ("weight", "bias") if cfg.layer_norm else ("weight",):
            if cfg.pre_norms:
                yield b + f"attn_norm.{suffix}", state[o + f"attn_norm.{suffix}"]
                yield b + f"ffn_norm.{suffix}", state[o + f"mlp_norm.{suffix}"]
        if cfg.post_norms:  # Gemma's as 1 + w, as llama.cpp has them and our model holds them
            yield b + "post_attention_norm.weight", state[o + "attn_post_norm.weight"]
            yield b + "post_ffw_norm.weight", state[o + "mlp_post_norm.weight"]
        for suffix in ("weight", "bias") if cfg.qkv_bias or cfg.linear_bias else ("weight",):
            wqkv = state[o + f"attn.wqkv.{suffix}"]
            if fused:
                yield b + f"attn_qkv.{suffix}", wqkv
                continue
            tq, tk, tv = wqkv.split([q, kv, kv])
            if cfg.arch in PERMUTED_QK_ARCHS:
                tq, tk = permute(tq, cfg.n_head), permute(tk, cfg.n_kv_head)
            yield b + f"attn_q.{suffix}", tq
            yield b + f"attn_k.{suffix}", tk
            yield b + f"attn_v.{suffix}", tv
        if cfg.qk_norm:
            yield b + "attn_q_norm.weight", state[o + "attn.q_norm.weight"]
            yield b + "attn_k_norm.weight", state[o + "attn.k_norm.weight"]
        yield b + "attn_output.weight", state[o + "attn.wo.weight"]
        if cfg.linear_bias:
            yield b + "attn_output.bias", state[o + "attn.wo.bias"]
            yield b + "ffn_up.weight", state[o + "mlp.w_up.weight"]
            yield b + "ffn_up.bias", state[o + "mlp.w_up.bias"]
            yield b + "ffn_down.bias", state[o + "mlp.w_down.bias"]
        elif o + "mlp.router.weight" in state:  # a mixture of experts
            yield b + "ffn_gate_inp.weight", state[o + "mlp.router.weight"]
            gate, up = state[o + "mlp.w_gate_up"].split([cfg.expert_size] * 2, dim=1)
            yield b + "ffn_gate_exps.weight", gate
            yield b + "ffn_up_exps.weight", up
            yield b + "ffn_down_exps.weight", state[o + "mlp.w_down"]
            continue
        elif fused:  # Phi-3: gate and up fused, gate first
            yield b + "ffn_up.weight", state[o + "mlp.w_gate_up.weight"]
        else:
            gate, up = state[o + "mlp.w_gate_up.weight"].split([inter, inter])
            yield b + "ffn_gate.weight", gate
            yield b + "ffn_up.weight", up
        yield b + "ffn_down.weight", state[o + "mlp.w_down.weight"]
    yield "output_norm.weight", state["norm.weight"]
    if cfg.layer_norm:
        yield "output_norm.bias", state["norm.bias"]
    if not cfg.tie_embeddings:
        yield "output.weight", state["lm_head.weight"]


def _encode(gguf, name: str, t: torch.Tensor, outtype: str):
    """(array, raw dtype or None) for one tensor in the chosen type."""
    a = t.detach().to(torch.float32).cpu().contiguous().numpy()
    if a.ndim == 1 or outtype == "f32":
        return a, None
    if outtype == "q8_0" and a.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(a, qtype), qtype
    return a.astype(np.float16), None


def save_merged_gguf(lm, path: str | Path, outtype: str = "f16") -> Path:
    """Write the tuned model (adapters folded in) as one GGUF file at ``path``, atomically."""
    if outtype not in GGUF_TYPES:
        raise ValueError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, got {outtype!r}")
    import gguf

    src = Path(lm.path)
    if src.is_dir() or lm.file_format != "gguf":
        raise GGUFExportUnsupported(
            f"{src.name} was loaded from a Hugging Face folder, which has no GGUF tokenizer metadata to copy; "
            "convert the merged folder with llama.cpp's convert_hf_to_gguf.py instead"
        )
    cfg = lm.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        for key, fld in reader.fields.items():
            if key.startswith("GGUF.") or key in _SKIP_KEYS:
                continue
            vtype = fld.types[0]
            sub = fld.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, fld.contents(), vtype, sub_type=sub)
        file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
        writer.add_file_type(file_type.get(outtype, gguf.LlamaFileType.MOSTLY_Q8_0))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, t in gguf_tensors(cfg, merged_state_dict(lm.model)):
            array, raw = _encode(gguf, name, t, outtype)
            writer.add_tensor(name, array, raw_dtype=raw)
        for t in reader.tensors:  # Llama 3.1's per-frequency rope factors are not a weight we train
            if t.name == "rope_freqs.weight":
                writer.add_tensor(t.name, np.array(t.data, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        del reader
    return path
