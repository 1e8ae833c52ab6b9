"""`ModelConfig`: the shape of a transformer, read from an HF `config.json` or GGUF metadata.

One vocabulary for sizes throughout the engine: ``n_layer, n_head, n_kv_head, n_embd, head_dim``.
Importing this module does no torch work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "phi3")

_HF_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gpt2": "gpt2",
    "phi3": "phi3",
}

_ROPE_TYPES = ("default", "linear", "llama3")


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
    sliding_window: int | None = None
    # Derived from `arch` in __post_init__:
    layer_norm: bool = field(init=False)  # LayerNorm with bias (GPT-2) instead of RMSNorm
    learned_positions: bool = field(init=False)  # GPT-2's position table instead of RoPE
    gated_mlp: bool = field(init=False)  # SwiGLU (gate, up, down) instead of GELU (fc, proj)
    qk_norm: bool = field(init=False)  # RMSNorm on each head's q and k (Qwen3)
    linear_bias: bool = field(init=False)  # every linear layer has a bias (GPT-2)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unsupported architecture {self.arch!r}; supported: {', '.join(ARCHITECTURES)}")
        if self.head_dim == 0:
            self.head_dim = self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        scaling = self.rope_scaling
        if scaling is not None and scaling.get("rope_type", "default") not in _ROPE_TYPES:
            raise ValueError(
                f"unsupported rope scaling {scaling.get('rope_type')!r}; supported: {', '.join(_ROPE_TYPES)}"
            )
        self.layer_norm = self.learned_positions = self.linear_bias = self.arch == "gpt2"
        self.gated_mlp = self.arch != "gpt2"
        self.qk_norm = self.arch == "qwen3"
        if self.arch == "qwen2":
            self.qkv_bias = True

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def n_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, hd = self.n_embd, self.head_dim
        qkv = d * hd * (self.n_head + 2 * self.n_kv_head)
        attn = qkv + self.n_head * hd * d
        mlp = (3 if self.gated_mlp else 2) * d * self.intermediate_size
        per_layer = attn + mlp + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        pos = self.max_seq_len * d if self.learned_positions else 0
        return self.n_layer * per_layer + emb + pos + d

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """From a Hugging Face ``config.json`` dict (transformers 4.x or 5.x spelling)."""
        model_type = cfg.get("model_type")
        if model_type not in _HF_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(_HF_MODEL_TYPES)}")
        arch = _HF_MODEL_TYPES[model_type]
        if arch == "gpt2":
            n_embd = cfg["n_embd"]
            return cls(
                arch=arch,
                vocab_size=cfg["vocab_size"],
                n_layer=cfg["n_layer"],
                n_head=cfg["n_head"],
                n_kv_head=cfg["n_head"],
                n_embd=n_embd,
                intermediate_size=cfg.get("n_inner") or 4 * n_embd,
                max_seq_len=cfg["n_positions"],
                norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
                tie_embeddings=cfg.get("tie_word_embeddings", True),
            )
        rope = dict(cfg.get("rope_parameters") or {})
        rope_theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
        partial = rope.pop("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
        if not rope or rope.get("rope_type", rope.get("type")) == "default":
            rope = dict(cfg.get("rope_scaling") or {})
        if rope:
            rope.setdefault("rope_type", rope.pop("type", "default"))
        sliding = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        return cls(
            arch=arch,
            vocab_size=cfg["vocab_size"],
            n_layer=cfg["num_hidden_layers"],
            n_head=cfg["num_attention_heads"],
            n_kv_head=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            n_embd=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            head_dim=cfg.get("head_dim") or 0,
            norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_embeddings=cfg.get("tie_word_embeddings", False),
            qkv_bias=bool(cfg.get("attention_bias", False)),
            rope_theta=float(rope_theta),
            rope_scaling=rope if rope and rope["rope_type"] != "default" else None,
            partial_rotary_factor=float(partial),
            sliding_window=sliding,
        )

    @classmethod
    def from_gguf(cls, meta: Mapping[str, Any], tensor_shapes: Mapping[str, tuple[int, ...]]) -> ModelConfig:
        """From GGUF metadata; sizes the metadata omits are read off the tensors."""
        arch = meta.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")

        def get(key: str, default: Any = None) -> Any:
            value = meta.get(f"{arch}.{key}", default)
            if value is None:
                raise ValueError(f"missing metadata key {arch}.{key}")
            return value

        n_embd = int(get("embedding_length"))
        n_head = int(get("attention.head_count"))
        vocab = tensor_shapes["token_embd.weight"][0]
        head_dim = int(meta.get(f"{arch}.attention.key_length", 0)) or n_embd // n_head
        rope_dims = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
        scaling_type = meta.get(f"{arch}.rope.scaling.type")
        rope_scaling = None
        if scaling_type == "linear":
            rope_scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
        elif scaling_type not in (None, "none"):
            raise ValueError(f"unsupported rope scaling {scaling_type!r} in GGUF metadata")
        eps_key = "attention.layer_norm_epsilon" if arch == "gpt2" else "attention.layer_norm_rms_epsilon"
        return cls(
            arch=arch,
            vocab_size=vocab,
            n_layer=int(get("block_count")),
            n_head=n_head,
            n_kv_head=int(meta.get(f"{arch}.attention.head_count_kv", n_head)),
            n_embd=n_embd,
            intermediate_size=int(get("feed_forward_length")),
            max_seq_len=int(get("context_length")),
            head_dim=head_dim,
            norm_eps=float(get(eps_key)),
            tie_embeddings="output.weight" not in tensor_shapes,
            qkv_bias="blk.0.attn_q.bias" in tensor_shapes,
            rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
            rope_scaling=rope_scaling,
            partial_rotary_factor=rope_dims / head_dim,
            sliding_window=meta.get(f"{arch}.attention.sliding_window"),
        )
