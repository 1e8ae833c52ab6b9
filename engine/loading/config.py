"""`ModelConfig`: the shape of a transformer, read from an HF `config.json` or GGUF metadata.

One vocabulary for sizes throughout the engine: ``n_layer, n_head, n_kv_head, n_embd, head_dim``.
The constructors read every value through `engine.loading.model_check`, so a file's bad value is refused with a
`ConfigError` naming its key before anything is sized by it. Importing this module does no torch work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.loading.families import GEMMA, gguf_family_values, hf_family_values, hf_rope_parameters
from engine.loading.model_check import (
    GGUF_NAMES,
    LLAMA3_SCALING,
    RULES,
    ConfigError,
    Declared,
    check_tensors,
    check_value,
    check_values,
    describe,
)

ARCHITECTURES = (
    *("llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3"),
    *("smollm3", "granite", "olmo2", "gemma2", "gemma3", "qwen3moe"),
)
# llama.cpp permutes these families' q/k rows so that rope can rotate adjacent pairs (interleaved layout);
# NeoX-style archs (Qwen, Phi-3, OLMo 2, Gemma) are stored as Hugging Face has them.
PERMUTED_QK_ARCHS = ("llama", "mistral", "smollm3", "granite")
# The families added after the first six: they read HF's per-layer ``layer_types`` (engine.loading.families).
_LAYER_TYPED = ("smollm3", "granite", "olmo2", "gemma2", "gemma3", "qwen3moe")

_HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gpt2": "gpt2",
    "phi3": "phi3",
    "smollm3": "smollm3",
    "granite": "granite",
    "olmo2": "olmo2",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "qwen3_moe": "qwen3moe",
}

_ROPE_TYPES = ("default", "linear", "llama3")

# Field -> key: GGUF's after the "<arch>." prefix, and config.json's (GPT-2 spells them its own way).
_GGUF_KEYS = {
    "n_layer": "block_count",
    "n_head": "attention.head_count",
    "n_kv_head": "attention.head_count_kv",
    "n_embd": "embedding_length",
    "intermediate_size": "feed_forward_length",
    "max_seq_len": "context_length",
    "head_dim": "attention.key_length",
    "rotary_dim": "rope.dimension_count",
    "norm_eps": "attention.layer_norm_rms_epsilon",
    "rope_theta": "rope.freq_base",
    "factor": "rope.scaling.factor",
    "sliding_window": "attention.sliding_window",
    "embedding_scale": "embedding_scale",
    "attention_scale": "attention.scale",
    "residual_scale": "residual_scale",
    "logits_scaling": "logit_scale",
    "attn_softcap": "attn_logit_softcapping",
    "final_softcap": "final_logit_softcapping",
    "rope_local_theta": "rope.freq_base_swa",
    "n_expert": "expert_count",
    "n_expert_used": "expert_used_count",
    "expert_size": "expert_feed_forward_length",
}
_HF_KEYS = {
    "vocab_size": "vocab_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "n_embd": "hidden_size",
    "intermediate_size": "intermediate_size",
    "max_seq_len": "max_position_embeddings",
    "head_dim": "head_dim",
    "norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
    "partial_rotary_factor": "partial_rotary_factor",
    "sliding_window": "sliding_window",
    "qkv_bias": "attention_bias",  # read as a flag; here for messages
    "embedding_scale": "embedding_multiplier",
    "attention_scale": "attention_multiplier",
    "residual_scale": "residual_multiplier",
    "logits_scaling": "logits_scaling",
    "attn_softcap": "attn_logit_softcapping",
    "final_softcap": "final_logit_softcapping",
    "query_pre_attn_scalar": "query_pre_attn_scalar",
    "no_rope_layer_interval": "no_rope_layer_interval",
    "sliding_window_pattern": "sliding_window_pattern",
    "rope_local_theta": "rope_local_base_freq",
    "n_expert": "num_experts",
    "n_expert_used": "num_experts_per_tok",
    "expert_size": "moe_intermediate_size",
    "decoder_sparse_step": "decoder_sparse_step",
}
_HF_GPT2_KEYS = {
    "vocab_size": "vocab_size",
    "n_layer": "n_layer",
    "n_head": "n_head",
    "n_kv_head": "n_head",
    "n_embd": "n_embd",
    "intermediate_size": "n_inner",
    "max_seq_len": "n_positions",
    "norm_eps": "layer_norm_epsilon",
}


@dataclass
class ModelConfig:
    arch: str
    vocab_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    intermediate_size: int
    max_seq_len: int
    head_dim: int = 0  # 0: n_embd // n_head
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear"|"llama3", "factor": ..., ...}
    partial_rotary_factor: float = 1.0
    rotary_dim: int = 0  # 0: int(head_dim * partial_rotary_factor), as transformers has it; GGUF declares it whole
    sliding_window: int | None = None
    sliding_layers: tuple[int, ...] | None = None  # the layers the window applies to; None: every layer
    nope_layers: tuple[int, ...] = ()  # layers without rope (SmolLM3)
    rope_local_theta: float | None = None  # the sliding layers' own rope base (Gemma 3's local layers)
    embedding_scale: float = 1.0  # the embeddings times this (Granite; Gemma: sqrt(n_embd), set here)
    attention_scale: float = 0.0  # the query-key product times this; 0: 1 / sqrt(head_dim)
    residual_scale: float = 1.0  # each block's outputs times this before they join the residual (Granite)
    logits_scaling: float = 1.0  # the logits divided by this (Granite)
    attn_softcap: float | None = None  # attention scores as cap * tanh(score / cap) (Gemma 2)
    final_softcap: float | None = None  # the same on the logits
    n_expert: int = 0  # a mixture of experts in place of the MLP (Qwen3-MoE); 0: none
    n_expert_used: int = 0  # the experts each token goes to
    expert_size: int = 0  # an expert's intermediate size
    norm_topk: bool = False  # the chosen experts' router probabilities renormalised to sum to 1
    dense_layers: tuple[int, ...] = ()  # layers that keep the plain MLP (HF's mlp_only_layers, sparse step)
    # Derived from `arch` in __post_init__:
    layer_norm: bool = field(init=False)  # LayerNorm with bias (GPT-2) instead of RMSNorm
    learned_positions: bool = field(init=False)  # GPT-2's position table instead of RoPE
    gated_mlp: bool = field(init=False)  # SwiGLU (gate, up, down) instead of GELU (fc, proj)
    qk_norm: bool = field(init=False)  # RMSNorm on q and k (Qwen3, Gemma 3: each head's; OLMo 2: the whole)
    qk_norm_whole: bool = field(init=False)  # that norm over the whole projection, all heads at once (OLMo 2)
    linear_bias: bool = field(init=False)  # every linear layer has a bias (GPT-2)
    pre_norms: bool = field(init=False)  # a norm before attention and before the MLP (all but OLMo 2)
    post_norms: bool = field(init=False)  # a norm on attention's and the MLP's outputs (OLMo 2, Gemma)
    gelu_gate: bool = field(init=False)  # the gated MLP's gate through GELU (tanh) instead of SiLU (Gemma)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unsupported architecture {self.arch!r}; supported: {', '.join(ARCHITECTURES)}")
        if self.head_dim == 0:
            self.head_dim = self.n_embd // self.n_head
        if self.rotary_dim == 0:
            self.rotary_dim = int(self.head_dim * self.partial_rotary_factor)
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        scaling = self.rope_scaling
        if scaling is not None and scaling.get("rope_type", "default") not in _ROPE_TYPES:
            raise ValueError(
                f"unsupported rope scaling {scaling.get('rope_type')!r}; supported: {', '.join(_ROPE_TYPES)}"
            )
        self.layer_norm = self.learned_positions = self.linear_bias = self.arch == "gpt2"
        self.gated_mlp = self.arch != "gpt2"
        # Layer lists as tuples whatever came in (a JSON list, say): a config's repr keys the compiled step
        # (engine.compiled.step.structure_key).
        self.nope_layers, self.dense_layers = tuple(self.nope_layers), tuple(self.dense_layers)
        if self.sliding_layers is not None:
            self.sliding_layers = tuple(self.sliding_layers)
        self.qk_norm = self.arch in ("qwen3", "olmo2", "gemma3", "qwen3moe")
        self.qk_norm_whole = self.arch == "olmo2"
        self.pre_norms = self.arch != "olmo2"
        self.post_norms = self.arch in ("olmo2", *GEMMA)
        self.gelu_gate = self.arch in GEMMA
        if self.arch in GEMMA:  # Gemma scales its embeddings by the square root of their width
            self.embedding_scale = math.sqrt(self.n_embd)
        if self.arch == "qwen2":
            self.qkv_bias = True

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer``, None when it attends to every earlier position."""
        if self.sliding_window is None or (self.sliding_layers is not None and layer not in self.sliding_layers):
            return None
        return self.sliding_window

    def local_rope(self, layer: int) -> bool:
        """Whether ``layer`` rotates by the local rope base (`rope_local_theta`) instead of `rope_theta`."""
        return self.rope_local_theta is not None and self.window(layer) is not None

    @property
    def n_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, hd = self.n_embd, self.head_dim
        qkv = d * hd * (self.n_head + 2 * self.n_kv_head)
        attn = qkv + self.n_head * hd * d
        mlp = (3 if self.gated_mlp else 2) * d * self.intermediate_size
        norms = 2 * d * (self.pre_norms + self.post_norms)
        qk_norms = (qkv - self.n_kv_head * hd * d) // d if self.qk_norm_whole else 2 * hd * self.qk_norm
        per_layer = attn + mlp + norms + qk_norms
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        pos = self.max_seq_len * d if self.learned_positions else 0
        # A mixture of experts' layers hold the experts and their router instead of the MLP.
        moe = (self.n_expert * (3 * d * self.expert_size + d) - mlp) * (self.n_layer - len(self.dense_layers))
        return self.n_layer * per_layer + (moe if self.n_expert else 0) + emb + pos + d

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """From a Hugging Face ``config.json`` dict (transformers 4.x or 5.x spelling), every value checked
        (`engine.loading.model_check`); `ConfigError` names the key."""
        model_type = cfg.get("model_type")
        if model_type not in _HF_MODEL_TYPES:
            raise ConfigError(f"model_type is {describe(model_type)}; supported: {', '.join(_HF_MODEL_TYPES)}")
        arch = _HF_MODEL_TYPES[model_type]
        keys = hf_keys(arch)
        cfg, local_theta = hf_rope_parameters(arch, cfg)
        d = Declared(cfg, keys)
        n_head, n_embd = d("n_head"), d("n_embd")
        values: dict[str, Any] = dict(arch=arch, vocab_size=d("vocab_size"), n_layer=d("n_layer"), n_head=n_head)
        if arch == "gpt2":
            values.update(
                n_kv_head=n_head,
                n_embd=n_embd,
                intermediate_size=d("intermediate_size", 4 * n_embd),
                max_seq_len=d("max_seq_len"),
                norm_eps=d("norm_eps", 1e-5),
                tie_embeddings=d.flag("tie_word_embeddings", True),
            )
            check_values(values, keys)
            return cls(**values)
        # transformers 5 keeps rope_theta, partial_rotary_factor and the scaling in rope_parameters;
        # 4.x has the first two at the top level and the scaling in rope_scaling.
        rope = d.mapping("rope_parameters")
        in_rope = Declared(rope, keys, prefix="rope_parameters.")
        rope = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
        source = "rope_parameters"
        if not rope or rope.get("rope_type", rope.get("type")) == "default":
            source, rope = "rope_scaling", d.mapping("rope_scaling")
        values.update(
            n_kv_head=d("n_kv_head", n_head),
            n_embd=n_embd,
            intermediate_size=d("intermediate_size"),
            max_seq_len=d("max_seq_len", 2048),
            head_dim=d("head_dim", 0),
            norm_eps=d("norm_eps", 1e-6),
            tie_embeddings=d.flag("tie_word_embeddings", False),
            qkv_bias=d.flag("attention_bias", False),
            rope_theta=in_rope("rope_theta", None) or d("rope_theta", 10000.0),
            rope_scaling=_rope_scaling(rope, source),
            partial_rotary_factor=in_rope("partial_rotary_factor", None) or d("partial_rotary_factor", 1.0),
            sliding_window=d("sliding_window", None) if d.flag("use_sliding_window", True) else None,
        )
        if arch in _LAYER_TYPED:
            values.update(hf_family_values(arch, cfg, d, values["n_layer"], local_theta))
        check_values(values, keys)
        return cls(**values)

    @classmethod
    def from_gguf(cls, meta: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]]) -> ModelConfig:
        """From GGUF metadata, every value checked (`engine.loading.model_check`), the whole against the tensors'
        shapes; sizes the metadata omits are read off the tensors. `ConfigError` names the key."""
        arch = meta.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise ConfigError(f"general.architecture is {describe(arch)}; supported: {', '.join(ARCHITECTURES)}")
        keys = gguf_keys(arch)
        d = Declared(meta, keys)
        embedding = tensor_shapes.get("token_embd.weight")
        if not embedding:
            raise ConfigError("the file has no token_embd.weight (the token embeddings)")
        n_head, n_embd = d("n_head"), d("n_embd")
        values: dict[str, Any] = dict(
            arch=arch,
            vocab_size=check_value("the row count of token_embd.weight", embedding[0], RULES["vocab_size"]),
            n_layer=d("n_layer"),
            n_head=n_head,
            n_kv_head=d("n_kv_head", n_head),
            n_embd=n_embd,
            intermediate_size=d("intermediate_size"),
            max_seq_len=d("max_seq_len"),
            head_dim=d("head_dim", 0),
            norm_eps=d("norm_eps"),
            tie_embeddings="output.weight" not in tensor_shapes,
            qkv_bias="blk.0.attn_q.bias" in tensor_shapes,
        )
        if arch != "gpt2":  # GPT-2 has learned positions, no rope
            head_dim = values["head_dim"] or n_embd // n_head  # 0 only when check_values refuses the heads
            if arch in PERMUTED_QK_ARCHS and head_dim % 2:
                said = (
                    f"{keys['head_dim']} {head_dim}"
                    if values["head_dim"]
                    else f"{keys['n_embd']} {n_embd} / {keys['n_head']} {n_head}"
                )
                raise ConfigError(
                    f"{said} makes a head {head_dim} features; expected an even number (llama.cpp stores a {arch} "
                    "head's query and key rows in interleaved pairs)"
                )
            rotary_dim = d("rotary_dim", 0)  # 0: not declared, all of a head rotates
            scaling_type = d.text(f"{arch}.rope.scaling.type")
            if scaling_type not in (None, "none", "linear"):
                raise ConfigError(f"{arch}.rope.scaling.type is {scaling_type!r}; supported: none, linear")
            values.update(
                rope_theta=d("rope_theta", 10000.0),
                rope_scaling={"rope_type": "linear", "factor": d("factor")} if scaling_type == "linear" else None,
                rotary_dim=rotary_dim,
                partial_rotary_factor=_rotary_factor(rotary_dim, head_dim) if rotary_dim and head_dim else 1.0,
                sliding_window=d("sliding_window", None),
            )
            values.update(gguf_family_values(arch, d, values["n_layer"], n_embd, n_head, head_dim))
        check_values(values, keys)
        cfg = cls(**values)
        check_tensors(cfg, tensor_shapes, keys, GGUF_NAMES)
        return cfg


def _rotary_factor(rotary_dim: int, head_dim: int) -> float:
    """``rotary_dim / head_dim`` as a float from which transformers' ``int(head_dim * factor)`` (what an exported
    ``config.json`` is read with) gives ``rotary_dim`` back: 30 / 44 * 44 is 29.999..., so one step up."""
    factor = rotary_dim / head_dim
    if int(head_dim * factor) < rotary_dim:
        factor = math.nextafter(factor, 2.0)
    return factor


def gguf_keys(arch: str) -> dict[str, str]:
    """Field -> the GGUF metadata key it is read from."""
    keys = {field: f"{arch}.{key}" for field, key in _GGUF_KEYS.items()}
    if arch == "gpt2":
        keys["norm_eps"] = "gpt2.attention.layer_norm_epsilon"
    return keys


def hf_keys(arch: str) -> dict[str, str]:
    """Field -> the ``config.json`` key it is read from."""
    return dict(_HF_GPT2_KEYS if arch == "gpt2" else _HF_KEYS)


def _rope_scaling(rope: dict[str, Any], source: str) -> dict[str, Any] | None:
    """HF's rope scaling (``source``: rope_parameters or rope_scaling) as `ModelConfig.rope_scaling`."""
    type_key = "rope_type" if "rope_type" in rope else "type"
    kind = rope.get(type_key, "default")
    if kind not in _ROPE_TYPES:
        raise ConfigError(f"{source}.{type_key} is {describe(kind)}; supported: {', '.join(_ROPE_TYPES)}")
    if kind == "default":
        return None
    d = Declared(rope, {field: field for field in LLAMA3_SCALING}, prefix=f"{source}.")
    fields = ("factor",) if kind == "linear" else LLAMA3_SCALING
    scaling = {"rope_type": kind, **{field: d(field) for field in fields}}
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ConfigError(
            f"{source}.high_freq_factor is {scaling['high_freq_factor']}; expected more than "
            f"{source}.low_freq_factor {scaling['low_freq_factor']}"
        )
    return scaling
