"""GGUF tensor names (llama.cpp's) to ours, undoing llama.cpp's q/k permutation for Llama models.

Projection weights come from ``get_linear``, which may return `Int4Groups` (kept 4-bit) instead of a
dense tensor; row permutations and concatenations work on either.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.gguf.int4_groups import Int4Groups
from engine.loading.config import PERMUTED_QK_ARCHS, ModelConfig

Weight = torch.Tensor | Int4Groups


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's ``permute``: interleaved rope rows back to the rotate-half layout."""
    shape = w.shape
    w = w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:])  # (nh, hd/2, 2, ...)
    return w.transpose(1, 2).reshape(shape)  # (nh, 2, hd/2, ...) -> rows


def unpermute_rows(w: Weight, n_head: int) -> Weight:
    """`unpermute` as a row reordering, for dense tensors and `Int4Groups` alike."""
    if isinstance(w, torch.Tensor):
        return unpermute(w, n_head)
    return w.rows(unpermute(torch.arange(w.shape[0]), n_head))


def cat_rows(parts: list[Weight]) -> Weight:
    """Stack weights by rows; any dense part makes the result dense."""
    if all(isinstance(p, Int4Groups) for p in parts):
        return Int4Groups.cat(parts)
    return torch.cat([p if isinstance(p, torch.Tensor) else p.dequantize() for p in parts])


def gguf_state_dict(
    cfg: ModelConfig,
    names: set[str],
    get: Callable[[str], torch.Tensor],
    get_linear: Callable[[str], Weight] | None = None,
):
    """Yield ``(our_name, weight)`` pairs from GGUF tensor names; projection weights come from
    ``get_linear`` (default ``get``)."""
    get_linear = get_linear or get
    permuted = cfg.arch in PERMUTED_QK_ARCHS
    yield "tok_emb.weight", get("token_embd.weight")
    if cfg.learned_positions:
        yield "pos_emb.weight", get("position_embd.weight")
    for i in range(cfg.n_layer):
        p, o = f"blk.{i}.", f"layers.{i}."
        for suffix in ("weight", "bias") if cfg.layer_norm else ("weight",):
            if cfg.pre_norms:
                yield o + f"attn_norm.{suffix}", get(p + f"attn_norm.{suffix}")
                yield o + f"mlp_norm.{suffix}", get(p + f"ffn_norm.{suffix}")
        if cfg.post_norms:  # Gemma's norms are stored as 1 + w already: the converter adds the 1
            yield o + "attn_post_norm.weight", get(p + "post_attention_norm.weight")
            yield o + "mlp_post_norm.weight", get(p + "post_ffw_norm.weight")
        for suffix in ("weight", "bias") if cfg.qkv_bias or cfg.linear_bias else ("weight",):
            load = get_linear if suffix == "weight" else get
            if p + f"attn_qkv.{suffix}" in names:
                yield o + f"attn.wqkv.{suffix}", load(p + f"attn_qkv.{suffix}")
                continue
            q, k, v = (load(p + f"attn_{x}.{suffix}") for x in "qkv")
            if permuted:
                q, k = unpermute_rows(q, cfg.n_head), unpermute_rows(k, cfg.n_kv_head)
            yield o + f"attn.wqkv.{suffix}", cat_rows([q, k, v])
        if cfg.qk_norm:
            yield o + "attn.q_norm.weight", get(p + "attn_q_norm.weight")
            yield o + "attn.k_norm.weight", get(p + "attn_k_norm.weight")
        yield o + "attn.wo.weight", get_linear(p + "attn_output.weight")
        if cfg.linear_bias:
            yield o + "attn.wo.bias", get(p + "attn_output.bias")
            yield o + "mlp.w_up.weight", get_linear(p + "ffn_up.weight")
            yield o + "mlp.w_up.bias", get(p + "ffn_up.bias")
            yield o + "mlp.w_down.bias", get(p + "ffn_down.bias")
        elif p + "ffn_gate_inp.weight" in names:  # a mixture of experts: (n_expert, rows, cols) each
            yield o + "mlp.router.weight", get(p + "ffn_gate_inp.weight")
            yield o + "mlp.w_gate_up", torch.cat([get(p + "ffn_gate_exps.weight"), get(p + "ffn_up_exps.weight")], 1)
            yield o + "mlp.w_down", get(p + "ffn_down_exps.weight")
            continue
        elif p + "ffn_gate.weight" in names:
            gate_up = [get_linear(p + "ffn_gate.weight"), get_linear(p + "ffn_up.weight")]
            yield o + "mlp.w_gate_up.weight", cat_rows(gate_up)
        else:  # Phi-3 stores gate and up fused, gate first
            yield o + "mlp.w_gate_up.weight", get_linear(p + "ffn_up.weight")
        yield o + "mlp.w_down.weight", get_linear(p + "ffn_down.weight")
    yield "norm.weight", get("output_norm.weight")
    if cfg.layer_norm:
        yield "norm.bias", get("output_norm.bias")
    if not cfg.tie_embeddings:
        yield "lm_head.weight", get_linear("output.weight")
