"""One decoding step, eagerly, in fewer ops: what `Transformer.forward` runs for a token on the KV cache when
no compiled step is loaded (`ember-cli generate` before one is built, the app while it builds one, a bundle
without one for its CPU, LoRA layers attached, devices other than the CPU).

In eager torch each op issued from Python costs 1-3 µs before it computes anything, and a decoding step of
a small model is mostly such ops: `Transformer.run` spends about 75 per layer (views, narrows and transposes
between the layouts a prompt needs, dtype casts that do nothing, module calls). On the 2-core Ice Lake test
machine a step of the default model took 20 ms that way, 17.5 ms here, 9.2 ms compiled. A single token of a
batch of one keeps the residual stream as one row and issues only the ops that compute: the projections' kernels
called directly, the rotation of queries and keys in one pass, the new key and value written into the
cache, attention by the kernel this machine chose (`engine.model.decode_attention.attend`).

The numbers are those of `Transformer.run`, bit for bit: the same ops in the same dtypes on the same
values, only fewer of them (tests/engine/model/test_eager_step.py compares every family). Layers whose
attention norms its queries and keys or caps its scores, and MLPs that are not gated (GPT-2) or are
experts, run their own modules, as does any projection that is not a plain `Linear` or `Int4Linear`
(a LoRA layer attached).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.gguf.int4_groups import GROUP
from engine.model.decode_attention import attend
from engine.model.int4_linear import DTYPE as INT4_DTYPE
from engine.model.int4_linear import Int4Linear
from engine.model.linear import Linear
from engine.model.rope import apply_rotary

_int4_mm = torch.ops.aten._weight_int4pack_mm_for_cpu


def serves(model, tokens: torch.Tensor) -> bool:
    """Whether `step` runs this decoding step (one token of a batch of one; `Transformer._decoding` holds)."""
    return tokens.shape[0] == 1 and model.caches[0].k.shape[0] == 1


def step(model, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """Logits ``(1, 1, vocab)`` float32 for ``tokens`` (1, 1) at position ``start``, its key and value written
    into ``model.caches``: `Transformer.run` for a decoding step."""
    x = model.embed(tokens, start)[0]  # (1, n_embd) float32: the residual stream
    rotations = model.rotations(start, 1)
    for layer, cache in zip(model.layers, model.caches, strict=True):
        h = layer.attn_input(x)
        attn = layer.attn
        if attn.q_norm is None and attn.softcap is None:
            y = _attention(attn, h, rotations[layer.rope], cache, start)
        else:
            y = attn(h[None], rotations[layer.rope], cache, start, None)[0]
        x = layer.add(x, y, layer.attn_post_norm)
        h = x if layer.mlp_norm is None else layer.mlp_norm(x)
        mlp = layer.mlp
        y = _gated_mlp(mlp, h) if getattr(mlp, "gated", False) else mlp(h)
        x = layer.add(x, y, layer.mlp_post_norm)
    return model.head(x[None])


def _attention(attn, h: torch.Tensor, rotary, cache, start: int) -> torch.Tensor:
    """`Attention.forward` for one row ``h`` (1, n_embd) without q/k norms or a soft cap: (1, n_embd)."""
    nh, nkv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
    heads = _project(attn.wqkv, h).view(1, nh + 2 * nkv, hd)  # queries, keys, values
    qk = heads.narrow(1, 0, nh + nkv)
    if rotary is not None:
        qk = apply_rotary(qk, *rotary)  # the table's rows (1, 1, hd) broadcast over the heads
    keys, values = cache.k.narrow(2, 0, start + 1), cache.v.narrow(2, 0, start + 1)  # (1, nkv, start+1, hd)
    keys.select(2, start).copy_(qk.narrow(1, nh, nkv))
    values.select(2, start).copy_(heads.narrow(1, nh + nkv, nkv))
    q = qk.narrow(1, 0, nh).view(1, nh, 1, hd)
    y = attend(attn.decode_kernel, q, keys, values, gqa=nh != nkv, scale=attn.scale)  # (1, nh, 1, hd)
    return _project(attn.wo, y.reshape(1, nh * hd))  # a view where the layout allows


def _gated_mlp(mlp, h: torch.Tensor) -> torch.Tensor:
    gate, up = _project(mlp.w_gate_up, h).chunk(2, dim=-1)
    gate = F.gelu(gate, approximate="tanh") if mlp.gelu_gate else F.silu(gate)
    return _project(mlp.w_down, gate * up)


def _project(layer, h: torch.Tensor) -> torch.Tensor:
    """``layer(h)`` for one row: the packed kernel or the dense product called directly."""
    kind = type(layer)
    if kind is Int4Linear:
        y = _int4_mm(h if h.dtype == INT4_DTYPE else h.to(INT4_DTYPE), layer.packed, GROUP, layer.scale_zero)
        return y if layer.bias is None else y + layer.bias
    if kind is Linear:
        return F.linear(h.to(layer.weight.dtype), layer.weight, layer.bias)
    return layer(h)
