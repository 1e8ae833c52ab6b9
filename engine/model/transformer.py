"""A decoder-only transformer covering Llama, Mistral, Qwen2, Qwen3, Phi-3, GPT-2, SmolLM3, Granite, OLMo 2,
Gemma 2, Gemma 3 and Qwen3-MoE (each family's differences are `ModelConfig` fields, read per layer by `Block`).

Weights use our own names (see `engine.weights.names`): fused ``wqkv`` and ``w_gate_up`` projections,
``attn_norm``/``mlp_norm`` per block, ``tok_emb``, ``norm`` and ``lm_head`` at the ends.

Precision: the residual stream and the norms are float32 whatever the weights' dtype; projections,
rotary embeddings, attention and the KV cache run in the model's dtype. With bf16 weights this keeps
the 30-odd additions into the residual from rounding to 8 bits each time, which is what makes greedy
output depart later from the float32 reference than a model run wholly in bf16.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.loading.config import ModelConfig
from engine.model import eager_step
from engine.model.decode_attention import DecodeAttention, attend, cache_dtype
from engine.model.kv_cache import KVCache
from engine.model.linear import Linear
from engine.model.rope import RotaryTable, apply_rotary, inverse_frequencies


class RMSNorm(nn.Module):
    """Normalised in float32, as the reference implementations do; the weight is kept in float32 (see
    `Transformer.keep_norms_float32`). The q/k norms of Qwen3 get model-dtype input and return it."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # Spelled out: on the CPU this is half the time of F.rms_norm, whose kernel runs more ops.
            return x * torch.rsqrt(x.square().mean(-1, keepdim=True).add_(self.eps)) * self.weight
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """GPT-2's norm on the float32 residual stream, whatever its weights' dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


def make_embedding(n: int, dim: int) -> nn.Embedding:
    """An embedding table left uninitialised: weights always come from a file, and the random init
    (normal_) costs about a second on the meta device the first time it runs."""
    return nn.Embedding(n, dim, _weight=torch.empty(n, dim))


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    return LayerNorm(dim, eps=cfg.norm_eps) if cfg.layer_norm else RMSNorm(dim, cfg.norm_eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.wqkv = Linear(cfg.n_embd, q_dim + 2 * kv_dim, bias=cfg.qkv_bias or cfg.linear_bias)
        self.wo = Linear(q_dim, cfg.n_embd, bias=cfg.linear_bias)
        self.whole_qk_norm = cfg.qk_norm_whole  # OLMo 2: one norm over all heads' q (and k)
        q_norm, k_norm = (q_dim, kv_dim) if cfg.qk_norm_whole else (cfg.head_dim, cfg.head_dim)
        self.q_norm = RMSNorm(q_norm, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(k_norm, cfg.norm_eps) if cfg.qk_norm else None
        self.scale = cfg.attention_scale or 1 / math.sqrt(cfg.head_dim)
        self.softcap = cfg.attn_softcap
        self.decode_kernel = "sdpa"  # see engine.model.decode_attention

    def project(self, x: torch.Tensor, rotary) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, nh, T, hd), keys and values (B, nkv, T, hd), normed and rotated (``rotary`` None: not
        rotated, a layer without rope)."""
        B, T, _ = x.shape
        nh, nkv = self.n_head, self.n_kv_head
        qkv = self.wqkv(x)  # (B, T, (nh + 2 nkv) hd)
        if self.whole_qk_norm:
            q, k, v = qkv.split((nh * self.head_dim, nkv * self.head_dim, nkv * self.head_dim), dim=-1)
            qkv = torch.cat((self.q_norm(q), self.k_norm(k), v), dim=-1)
        qkv = qkv.view(B, T, -1, self.head_dim)  # (B, T, nh + 2 nkv, hd)
        if self.q_norm is not None and not self.whole_qk_norm:
            q, k, v = qkv.split((nh, nkv, nkv), dim=2)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=2)
        else:  # narrow: one op per view, where [:, :, a:b] is one per dimension
            qk, v = qkv.narrow(2, 0, nh + nkv), qkv.narrow(2, nh + nkv, nkv)
        if rotary is not None:  # queries and keys rotated together: half the ops of one pass each
            qk = apply_rotary(qk, *rotary)
        q, k = qk.narrow(2, 0, nh), qk.narrow(2, nh, nkv)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh|nkv, T, hd)

    def scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Attention scores before masking, (B, nh, Tq, hd) x (B, nh, Tk, hd) -> (B, nh, Tq, Tk) float32:
        scaled, and soft-capped where the family caps them (Gemma 2)."""
        scores = (q.float() @ k.float().transpose(-1, -2)) * self.scale
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        return scores

    def output(self, y: torch.Tensor) -> torch.Tensor:
        """Merge heads and project: (B, nh, T, hd) -> (B, T, n_embd)."""
        B, _, T, _ = y.shape
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x, rotary, cache: KVCache | None, start: int, mask) -> torch.Tensor:
        q, k, v = self.project(x, rotary)
        if cache is not None:
            k, v = cache.update(start, k, v)  # (B, nkv, start+T, hd)
        gqa = self.n_head != self.n_kv_head
        if self.softcap is not None:  # the fused kernel cannot cap scores: spelled out
            group = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, start+T, hd)
            scores = self.scores(q, k)
            Tq, Tk = q.shape[2], k.shape[2]
            if mask is None and Tq > 1:  # plain causal: query i, at position Tk - Tq + i, sees the keys up to it
                mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            y = (torch.softmax(scores, dim=-1).to(v.dtype) @ v).to(q.dtype)
        else:
            # The kernel this machine chose (`set_decode_attention`), for prompts and training's backward too.
            causal = mask is None and q.shape[2] > 1
            y = attend(self.decode_kernel, q, k, v, mask=mask, is_causal=causal, gqa=gqa, scale=self.scale)
        return self.output(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.gated_mlp
        self.gelu_gate = cfg.gelu_gate
        if self.gated:  # SwiGLU (GeGLU for Gemma): gate and up fused, gate first
            self.w_gate_up = Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=False)
        else:
            self.w_up = Linear(cfg.n_embd, cfg.intermediate_size, bias=cfg.linear_bias)
        self.w_down = Linear(cfg.intermediate_size, cfg.n_embd, bias=cfg.linear_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.w_gate_up(x).chunk(2, dim=-1)
            gate = F.gelu(gate, approximate="tanh") if self.gelu_gate else F.silu(gate)
            return self.w_down(gate * up)
        return self.w_down(F.gelu(self.w_up(x), approximate="tanh"))


class Experts(nn.Module):
    """A mixture of experts in place of the MLP (Qwen3-MoE): the router's softmax over ``n_expert`` experts
    picks each token's top ``n_expert_used`` (renormalised to sum to 1 with ``norm_topk``), and the token's
    output is their SwiGLU outputs weighted by those probabilities. Each expert's gate and up rows are
    stacked like `MLP`'s: ``w_gate_up`` (n_expert, 2 expert_size, n_embd), ``w_down`` (n_expert, n_embd,
    expert_size). Only the chosen experts run, on their tokens."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.router = Linear(cfg.n_embd, cfg.n_expert, bias=False)
        self.w_gate_up = nn.Parameter(torch.empty(cfg.n_expert, 2 * cfg.expert_size, cfg.n_embd))
        self.w_down = nn.Parameter(torch.empty(cfg.n_expert, cfg.n_embd, cfg.expert_size))
        self.used, self.norm_topk = cfg.n_expert_used, cfg.norm_topk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(self.w_down.dtype)  # (N, n_embd)
        probs = torch.softmax(self.router(flat).float(), dim=-1)  # (N, n_expert)
        weights, chosen = probs.topk(self.used, dim=-1)  # (N, used)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(flat.dtype)
        out = torch.zeros_like(flat)
        for e in chosen.unique().tolist():
            rows, slot = (chosen == e).nonzero(as_tuple=True)  # the tokens sent to expert e
            gate, up = F.linear(flat[rows], self.w_gate_up[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.w_down[e])  # (n, n_embd)
            out.index_add_(0, rows, y * weights[rows, slot, None])
        return out.view(shape)


class Block(nn.Module):
    """One layer: attention then the MLP, each added to the residual stream. Norms before each (``attn_norm``,
    ``mlp_norm``; all but OLMo 2), on each one's output (``attn_post_norm``, ``mlp_post_norm``; OLMo 2 and
    Gemma), or both; what joins the residual is scaled by ``residual_scale`` (Granite)."""

    def __init__(self, cfg: ModelConfig, i: int) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.n_embd) if cfg.pre_norms else None
        self.attn = Attention(cfg)
        self.attn_post_norm = make_norm(cfg, cfg.n_embd) if cfg.post_norms else None
        self.mlp_norm = make_norm(cfg, cfg.n_embd) if cfg.pre_norms else None
        self.mlp = Experts(cfg) if cfg.n_expert and i not in cfg.dense_layers else MLP(cfg)
        self.mlp_post_norm = make_norm(cfg, cfg.n_embd) if cfg.post_norms else None
        self.residual_scale = cfg.residual_scale
        self.window = cfg.window(i)  # None: every earlier position
        self.rope = None if i in cfg.nope_layers else ("local" if cfg.local_rope(i) else "global")

    def attn_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.attn_norm is None else self.attn_norm(x)

    def add(self, x: torch.Tensor, y: torch.Tensor, post_norm: nn.Module | None) -> torch.Tensor:
        """``x`` plus a sublayer's output ``y``, normed and scaled as the family has it."""
        if post_norm is not None:
            y = post_norm(y)
        return x + (y if self.residual_scale == 1.0 else y * self.residual_scale)

    def add_mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(x, self.mlp(x if self.mlp_norm is None else self.mlp_norm(x)), self.mlp_post_norm)

    def forward(self, x, rotary, cache, start, mask) -> torch.Tensor:
        x = self.add(x, self.attn(self.attn_input(x), rotary, cache, start, mask), self.attn_post_norm)
        return self.add_mlp(x)


class Transformer(nn.Module):
    """``forward(tokens (B, T), start) -> logits (B, T or 1, vocab)`` in float32.

    With a cache set up (`setup_cache`), tokens are the ones at positions ``start .. start+T`` and
    earlier positions come from the cache; without one, ``start`` must be 0 and the whole sequence
    is given. The cache remembers which tokens it holds (`cached_ids`), so that the next prompt that
    begins the same way, the conversation's next turn, runs only its new tokens (`reusable_prefix`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = make_embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = make_embedding(cfg.max_seq_len, cfg.n_embd) if cfg.learned_positions else None
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = make_norm(cfg, cfg.n_embd)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.rotary = None if cfg.learned_positions else RotaryTable(inverse_frequencies(cfg))
        local = any(layer.rope == "local" for layer in self.layers)  # Gemma 3's local layers' own base
        self.rotary_local = RotaryTable(inverse_frequencies(cfg, local=True)) if local else None
        self.caches: list[KVCache] | None = None
        self.cached_ids: list[int] = []  # the tokens at positions 0.. whose keys and values the cache holds
        self._cache_weights: list = []  # (weak reference, version) of each weight those were computed with
        self.compiled_step = None  # decoding steps compiled ahead of time, see engine.compiled.step
        self.decode_attention = DecodeAttention("sdpa")  # the loader times the kernels (set_decode_attention)

    def set_decode_attention(self, choice: DecodeAttention) -> None:
        """Attention by ``choice.kernel`` in every layer, over a cache in its dtype
        (`engine.model.decode_attention`); a cache of another dtype is dropped."""
        if self.caches and self.caches[0].k.dtype != cache_dtype(choice.kernel, self.dtype):
            self.drop_cache()
        self.decode_attention = choice
        for layer in self.layers:
            layer.attn.decode_kernel = choice.kernel

    @property
    def cache_dtype(self) -> torch.dtype:
        """The KV cache's dtype: the model's, or float32 where this machine decodes faster over that."""
        return cache_dtype(self.decode_attention.kernel, self.dtype)

    def keep_norms_float32(self) -> Transformer:
        """Norm weights in float32 whatever the model dtype: they are tiny, and the residual stream they
        scale is float32 (see the module docstring)."""
        for m in self.modules():
            if isinstance(m, (RMSNorm, LayerNorm)):
                m.float()
        return self

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_emb.weight.dtype

    @property
    def cache_capacity(self) -> int:
        return self.caches[0].capacity if self.caches else 0

    def setup_cache(self, capacity: int, batch: int = 1) -> None:
        """Preallocate the KV cache for ``capacity`` positions (at most the model's context length)."""
        if capacity > self.cfg.max_seq_len:
            raise ValueError(f"cache capacity {capacity} exceeds the context length {self.cfg.max_seq_len}")
        cfg = self.cfg
        self.caches = [
            KVCache(batch, cfg.n_kv_head, capacity, cfg.head_dim, device=self.device, dtype=self.cache_dtype)
            for _ in range(cfg.n_layer)
        ]
        self.cached_ids = []

    def grow_cache(self, capacity: int) -> None:
        """A batch-1 cache of at least ``capacity`` positions that keeps what the cache holds now."""
        same = self.caches and (self.caches[0].k.dtype, self.caches[0].k.device) == (self.cache_dtype, self.device)
        if not same:  # none yet, or the model moved to another dtype or device since
            self.setup_cache(capacity)
            return
        if self.cache_capacity >= capacity and self.caches[0].k.shape[0] == 1:
            return
        old, kept = self.caches, list(self.cached_ids)
        self.setup_cache(capacity)
        if old and old[0].k.shape[0] == 1:
            n = min(len(kept), old[0].capacity)
            for new, prev in zip(self.caches, old, strict=True):
                new.update(0, prev.k[:, :, :n], prev.v[:, :, :n])
            self.cached_ids = kept[:n]

    def drop_cache(self) -> None:
        self.caches = None
        self.cached_ids = []

    def forget_cache(self) -> None:
        """The model now computes other keys and values with the same weights (an adapter switched off or
        on): what the cache holds is not reused."""
        self.cached_ids = []

    def reusable_prefix(self, ids: Sequence[int]) -> int:
        """How many of the first positions of ``ids`` the cache already holds, as these weights compute them:
        those need not run again (at most ``len(ids) - 1``: the last one runs for its logits). The weights
        are noted here, so call it before running ``ids``; a weight changed or replaced since the last call
        (a LoRA adapter attached or merged, a fine-tuning step) empties the cache's record."""
        weights = [*self.parameters(), *self.buffers()]
        same = len(weights) == len(self._cache_weights) and all(
            ref() is w and version == w._version for w, (ref, version) in zip(weights, self._cache_weights, strict=True)
        )
        if not same:
            self.cached_ids = []
            self._cache_weights = [(weakref.ref(w), w._version) for w in weights]
        n = 0
        for cached, wanted in zip(self.cached_ids, ids[: len(ids) - 1], strict=False):
            if cached != wanted:
                break
            n += 1
        return n

    def allowed_keys(self, start: int, T: int, window: int | None) -> torch.Tensor:
        """Bool (T, start+T): which keys each query may attend to (causal, and the sliding ``window``: a
        layer's `Block.window`)."""
        q_pos = torch.arange(start, start + T, device=self.device)[:, None]
        k_pos = torch.arange(start + T, device=self.device)[None, :]
        allowed = k_pos <= q_pos
        if window is not None:
            allowed &= q_pos - k_pos < window
        return allowed

    def _mask(self, start: int, T: int, window: int | None) -> torch.Tensor | None:
        """None when plain causal attention is right (the fused kernel's own masking), else `allowed_keys`."""
        if (start == 0 or T == 1) and (window is None or start + T <= window):
            return None
        return self.allowed_keys(start, T, window)

    def rotations(self, start: int, T: int, rotary=None) -> dict:
        """Each kind of layer's rotary rows (`Block.rope`) for positions ``start .. start+T``: the global
        table's (``rotary`` when given), the local one's, and None for layers without rope."""
        if rotary is None and self.rotary is not None:
            rotary = self.rotary.get(start, T, self.device, self.dtype)
        local = None if self.rotary_local is None else self.rotary_local.get(start, T, self.device, self.dtype)
        return {"global": rotary, "local": local, None: None}

    def embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """The residual stream's start, ``(B, T) -> (B, T, n_embd)`` float32."""
        x = self.tok_emb(tokens).float()  # (B, T, n_embd)
        if self.cfg.embedding_scale != 1.0:
            x = x * self.cfg.embedding_scale
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + tokens.shape[1], device=tokens.device))
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and output projection, ``(B, T, n_embd) -> (B, T, vocab)`` float32."""
        x = self.norm(x)
        if self.lm_head is None:
            logits = F.linear(x.to(self.dtype), self.tok_emb.weight).float()
        else:
            logits = self.lm_head(x).float()
        if self.cfg.logits_scaling != 1.0:
            logits = logits / self.cfg.logits_scaling
        if self.cfg.final_softcap is not None:
            logits = torch.tanh(logits / self.cfg.final_softcap) * self.cfg.final_softcap
        return logits

    def forward(self, tokens: torch.Tensor, start: int = 0, *, last_only: bool = False) -> torch.Tensor:
        T = tokens.shape[1]
        if self.caches is None and start != 0:
            raise ValueError("start > 0 needs a KV cache (call setup_cache first)")
        if start + T > (self.cache_capacity if self.caches else self.cfg.max_seq_len):
            raise ValueError(f"positions up to {start + T} exceed the cache or context length")
        # What the cache holds from ``start`` on is overwritten: forgotten first, so that a pass that fails
        # half-way (some layers written, others not) leaves no record of tokens it did not finish.
        recorded = bool(self.caches) and tokens.shape[0] == 1 and start <= len(self.cached_ids)
        del self.cached_ids[start if recorded else 0 :]
        decoding = self._decoding(T, start)
        if decoding and self.compiled_step is not None:
            logits = self.compiled_step(self, tokens, start)
        elif decoding and eager_step.serves(self, tokens):
            logits = eager_step.step(self, tokens, start)
        else:
            logits = self.run(tokens, start, last_only)
        if recorded:
            self.cached_ids.extend(tokens[0].tolist())
        return logits

    def _decoding(self, T: int, start: int) -> bool:
        """A step the compiled graph (see engine.compiled.step) or else `engine.model.eager_step` serves: one
        token at position 2 or later, in inference mode, on the KV cache, with no mask to build."""
        return (
            T == 1
            and start >= 2
            and bool(self.caches)
            and torch.is_inference_mode_enabled()
            and (self._mask(start, 1, self.cfg.sliding_window) is None)
        )

    def run(self, tokens: torch.Tensor, start: int, last_only: bool = False, rotary=None) -> torch.Tensor:
        """`forward` without its checks: what `engine.compiled.step` exports, given the step's rotary
        rows (cos, sin) instead of the table."""
        T = tokens.shape[1]
        x = self.embed(tokens, start)
        rotations = self.rotations(start, T, rotary)
        masks = {layer.window: self._mask(start, T, layer.window) for layer in self.layers}
        for i, layer in enumerate(self.layers):
            cache = self.caches[i] if self.caches else None
            x = layer(x, rotations[layer.rope], cache, start, masks[layer.window])
        if last_only:
            x = x[:, -1:]
        return self.head(x)
