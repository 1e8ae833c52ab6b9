"""Every size and setting a model file declares, checked before the loader allocates or loops by it.

GGUF metadata and a Hugging Face ``config.json`` say how big a model is, and the loader builds what they
say: a layer count of a million would be a million blocks, a head count of 0 a division by zero. Three
checks stand between a file's numbers and any use of them, each refusing with a `ConfigError` that names
the key and what it may be (the loader adds the file's path: `ModelFileError`):

1. `Declared` reads one value: of the right type (no string, bool, list, NaN or infinity; no float where
   an integer belongs) and in its range in `RULES`.
2. `check_values` holds the values against each other: the heads divide the width, the key/value heads
   divide the heads, the rotary part of a head is even and fits in it (llama3 rope scaling's frequency
   factors are ordered where it is read).
3. `check_tensors` holds them against the tensors the file really has: the layer count, the embedding's
   width, the attention and feed-forward projections, the position table.

The ranges are wide enough for every published model and narrow enough that nothing sized by them can
exhaust memory or time before step 3 has run. Torch-free, so that a bad file is refused before torch is
imported.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.loading.config import ModelConfig


class ConfigError(ValueError):
    """A declared value that cannot be used; the message names the key and what it should be."""


@dataclass(frozen=True)
class Rule:
    """What one value may be: an integer, or a finite real number, in ``[low, high]`` (``(low, high]``)."""

    kind: type  # int or float
    low: float
    high: float
    low_open: bool = False

    def __str__(self) -> str:
        if self.kind is int:
            return f"an integer in {self.low}..{self.high}"
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def admits(self, value: int | float) -> bool:
        above = self.low < value if self.low_open else self.low <= value
        return above and value <= self.high  # False for NaN


# For scale, the largest published values: 126 layers, 128 heads, width 16384 and feed-forward 53248
# (Llama 3.1 405B); a vocabulary of 262144 (Gemma 3); a context of 10M (Llama 4 Scout); head size 256.
MAX_CONTEXT = 1 << 24
RULES: dict[str, Rule] = {
    "vocab_size": Rule(int, 1, 1 << 22),
    "n_layer": Rule(int, 1, 1024),
    "n_head": Rule(int, 1, 4096),
    "n_kv_head": Rule(int, 1, 4096),
    "n_embd": Rule(int, 1, 1 << 17),
    "intermediate_size": Rule(int, 1, 1 << 20),
    "max_seq_len": Rule(int, 1, MAX_CONTEXT),
    "head_dim": Rule(int, 1, 4096),
    "rotary_dim": Rule(int, 2, 4096),  # GGUF's rope.dimension_count; HF says partial_rotary_factor
    "sliding_window": Rule(int, 1, MAX_CONTEXT),
    "norm_eps": Rule(float, 0.0, 1.0, low_open=True),
    "rope_theta": Rule(float, 1.0, 1e12),
    "partial_rotary_factor": Rule(float, 0.0, 1.0, low_open=True),
    # rope scaling (the keys of HF's rope_scaling, as transformers checks them)
    "factor": Rule(float, 1.0, 1024.0),
    "low_freq_factor": Rule(float, 0.0, 1024.0, low_open=True),
    "high_freq_factor": Rule(float, 0.0, 1024.0, low_open=True),
    "original_max_position_embeddings": Rule(int, 1, MAX_CONTEXT),
    # the families' own (engine.loading.families): Granite's multipliers are about 0.008..220 in
    # published models, Gemma's caps 30 and 50, its query scalars 144..256
    "embedding_scale": Rule(float, 0.0, 1e4, low_open=True),
    "attention_scale": Rule(float, 0.0, 1e4, low_open=True),
    "residual_scale": Rule(float, 0.0, 1e4, low_open=True),
    "logits_scaling": Rule(float, 0.0, 1e4, low_open=True),
    "attn_softcap": Rule(float, 0.0, 1e6, low_open=True),
    "final_softcap": Rule(float, 0.0, 1e6, low_open=True),
    "query_pre_attn_scalar": Rule(float, 0.0, 1e8, low_open=True),
    "rope_local_theta": Rule(float, 1.0, 1e12),
    "no_rope_layer_interval": Rule(int, 1, 1024),
    "sliding_window_pattern": Rule(int, 1, 1024),
    "n_expert": Rule(int, 1, 4096),  # 512 in the largest published (Qwen3-Next)
    "n_expert_used": Rule(int, 1, 4096),
    "expert_size": Rule(int, 1, 1 << 20),
    "decoder_sparse_step": Rule(int, 1, 1024),
}
LLAMA3_SCALING = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")

_REQUIRED = object()


def describe(value: Any) -> str:
    """A value for a message, its type named when that is what is wrong: ``str '12'``, ``ndarray [1 2]``."""
    if value is None:
        return "missing"
    text = repr(value) if not hasattr(value, "ndim") else str(value)
    text = text[:40] + "..." if len(text) > 40 else text
    return text if type(value) in (int, float) else f"{type(value).__name__} {text}"


def check_value(key: str, value: Any, rule: Rule) -> int | float:
    """``value`` (declared under ``key``) as an int or float, once it is known to satisfy ``rule``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (rule.kind is int and not isinstance(value, int)):
        raise ConfigError(f"{key} is {describe(value)}; expected {rule}")
    if not rule.admits(value):
        raise ConfigError(f"{key} is {value!r}; expected {rule}")
    return rule.kind(value)


class Declared:
    """Reads a file's metadata (or config) by field, through ``keys`` (field -> the file's key), each value
    checked against its rule in `RULES`; messages name the key after ``prefix`` (the enclosing object's)."""

    def __init__(self, values: Mapping[str, Any], keys: Mapping[str, str], prefix: str = "") -> None:
        self.values = values
        self.keys = keys
        self.prefix = prefix

    def __call__(self, field: str, default: Any = _REQUIRED) -> Any:
        """The value of ``field``; ``default`` when the file leaves it out (JSON null counts as left out)."""
        key = self.keys[field]
        value = self.values.get(key)
        if value is None:
            if default is _REQUIRED:
                raise ConfigError(f"{self.prefix}{key} is missing; expected {RULES[field]}")
            return default
        return check_value(self.prefix + key, value, RULES[field])

    def flag(self, key: str, default: bool) -> bool:
        value = self.values.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.prefix}{key} is {describe(value)}; expected true or false")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.values.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.prefix}{key} is {describe(value)}; expected an object")
        return dict(value)

    def text(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{self.prefix}{key} is {describe(value)}; expected a string")
        return value


def check_values(values: Mapping[str, Any], keys: Mapping[str, str]) -> None:
    """The values of a `ModelConfig` (its constructor's arguments) against each other."""

    def key(field: str) -> str:
        return keys.get(field, field)

    n_head, n_kv_head, n_embd = values["n_head"], values["n_kv_head"], values["n_embd"]
    head_dim = values.get("head_dim") or 0
    if not head_dim and n_embd % n_head:
        raise ConfigError(
            f"{key('n_head')} is {n_head}; expected {RULES['n_head']} and a divisor of {key('n_embd')} {n_embd}"
        )
    if values.get("n_expert_used", 0) > values.get("n_expert", 0):
        raise ConfigError(
            f"{key('n_expert_used')} is {values['n_expert_used']}; expected at most {key('n_expert')} "
            f"{values['n_expert']}"
        )
    if n_head % n_kv_head:
        raise ConfigError(
            f"{key('n_kv_head')} is {n_kv_head}; expected {RULES['n_kv_head']} and a divisor of "
            f"{key('n_head')} {n_head}"
        )
    source = f"{key('head_dim')} {head_dim}" if head_dim else f"{key('n_embd')} {n_embd} / {key('n_head')} {n_head}"
    head_dim = head_dim or n_embd // n_head
    factor = values.get("partial_rotary_factor", 1.0)
    declared = values.get("rotary_dim") or 0  # GGUF's rope.dimension_count; 0: not declared
    rotary = declared or int(head_dim * factor)
    if values["arch"] != "gpt2" and (rotary % 2 or not 2 <= rotary <= head_dim):  # GPT-2: no rope
        expected = f"expected an even number in 2..{head_dim}, the head size ({source})"
        if declared:
            raise ConfigError(f"{key('rotary_dim')} is {declared}; {expected}")
        if factor != 1.0:
            raise ConfigError(
                f"{key('partial_rotary_factor')} is {factor!r}, which makes {rotary} of a head's features rotate; "
                + expected
            )
        # Nothing declared about rotation: all of a head rotates, so it is the head size that is wrong.
        unsaid = f"{key('rotary_dim')} not given" if "rotary_dim" in keys else f"{key('partial_rotary_factor')} 1"
        raise ConfigError(
            f"{source} makes a head {head_dim} features, all rotating ({unsaid}); expected an even number of at least 2"
        )


@dataclass(frozen=True)
class TensorNames:
    """Where a format keeps each weight: ``{i}`` is the layer; a name missing from the file is skipped
    (the other layout of the same weight may be there, e.g. fused q/k/v)."""

    layer: re.Pattern[str]  # matches a layer's tensor names; group 1 is the layer index
    embed: str
    output: str
    positions: str
    attn: dict[str, str]  # q, k, v, qkv, o, q_norm, k_norm, attn_norm, mlp_norm, attn_post_norm, mlp_post_norm
    mlp: dict[str, str]  # gate, up, gate_up, down
    transposed: bool = False  # layers' projections stored (in, out): GPT-2's Conv1D in Hugging Face files


GGUF_NAMES = TensorNames(
    layer=re.compile(r"blk\.(\d+)\."),
    embed="token_embd.weight",
    output="output.weight",
    positions="position_embd.weight",
    attn={
        "q": "blk.{i}.attn_q.weight",
        "k": "blk.{i}.attn_k.weight",
        "v": "blk.{i}.attn_v.weight",
        "qkv": "blk.{i}.attn_qkv.weight",
        "o": "blk.{i}.attn_output.weight",
        "q_norm": "blk.{i}.attn_q_norm.weight",
        "k_norm": "blk.{i}.attn_k_norm.weight",
        "attn_norm": "blk.{i}.attn_norm.weight",
        "mlp_norm": "blk.{i}.ffn_norm.weight",
        "attn_post_norm": "blk.{i}.post_attention_norm.weight",
        "mlp_post_norm": "blk.{i}.post_ffw_norm.weight",
    },
    mlp={
        "gate": "blk.{i}.ffn_gate.weight",
        "up": "blk.{i}.ffn_up.weight",
        "down": "blk.{i}.ffn_down.weight",
        "router": "blk.{i}.ffn_gate_inp.weight",
        "gate_exps": "blk.{i}.ffn_gate_exps.weight",
        "up_exps": "blk.{i}.ffn_up_exps.weight",
        "down_exps": "blk.{i}.ffn_down_exps.weight",
    },
)
HF_NAMES = TensorNames(
    layer=re.compile(r"model\.layers\.(\d+)\."),
    embed="model.embed_tokens.weight",
    output="lm_head.weight",
    positions="",
    attn={
        "q": "model.layers.{i}.self_attn.q_proj.weight",
        "k": "model.layers.{i}.self_attn.k_proj.weight",
        "v": "model.layers.{i}.self_attn.v_proj.weight",
        "qkv": "model.layers.{i}.self_attn.qkv_proj.weight",
        "o": "model.layers.{i}.self_attn.o_proj.weight",
        "q_norm": "model.layers.{i}.self_attn.q_norm.weight",
        "k_norm": "model.layers.{i}.self_attn.k_norm.weight",
        "attn_norm": "model.layers.{i}.input_layernorm.weight",
        "mlp_norm": "model.layers.{i}.post_attention_layernorm.weight",
    },
    mlp={
        "gate": "model.layers.{i}.mlp.gate_proj.weight",
        "up": "model.layers.{i}.mlp.up_proj.weight",
        "gate_up": "model.layers.{i}.mlp.gate_up_proj.weight",
        "down": "model.layers.{i}.mlp.down_proj.weight",
        "router": "model.layers.{i}.mlp.gate.weight",
        "gate_exp": "model.layers.{i}.mlp.experts.0.gate_proj.weight",
        "up_exp": "model.layers.{i}.mlp.experts.0.up_proj.weight",
        "down_exp": "model.layers.{i}.mlp.experts.0.down_proj.weight",
    },
)


# The norms of the families with post-norms: OLMo 2 has only those (its post_attention_layernorm is what
# follows attention, not the MLP's pre-norm as in Llama); Gemma has both.
_HF_POST_NORMS = {
    "attn_post_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "mlp_post_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
}
HF_POST_NORM_NAMES = {
    "olmo2": {"attn_norm": "", "mlp_norm": "", **_HF_POST_NORMS},
    "gemma": {"mlp_norm": "model.layers.{i}.pre_feedforward_layernorm.weight", **_HF_POST_NORMS},
}


def hf_names(arch: str, tensor_names: Collection[str]) -> TensorNames:
    """Where a Hugging Face folder of ``arch`` keeps each weight; GPT-2's names may lack ``transformer.``."""
    family = "gemma" if arch.startswith("gemma") else arch
    if family in HF_POST_NORM_NAMES:
        attn = {k: v for k, v in {**HF_NAMES.attn, **HF_POST_NORM_NAMES[family]}.items() if v}
        return TensorNames(HF_NAMES.layer, HF_NAMES.embed, HF_NAMES.output, "", attn, HF_NAMES.mlp)
    if arch != "gpt2":
        return HF_NAMES
    prefix = "transformer." if "transformer.wte.weight" in tensor_names else ""
    h = prefix + "h.{i}."
    return TensorNames(
        layer=re.compile(re.escape(prefix) + r"h\.(\d+)\."),
        embed=prefix + "wte.weight",
        output="lm_head.weight",
        positions=prefix + "wpe.weight",
        attn={"qkv": h + "attn.c_attn.weight", "o": h + "attn.c_proj.weight", "attn_norm": h + "ln_1.weight"},
        mlp={"up": h + "mlp.c_fc.weight", "down": h + "mlp.c_proj.weight", "mlp_norm": h + "ln_2.weight"},
        transposed=True,
    )


def check_tensors(
    cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]], keys: Mapping[str, str], names: TensorNames
) -> None:
    """The config against the tensors' shapes (read from the file's header, nothing loaded)."""

    def key(field: str) -> str:
        return f"{keys[field]} {getattr(cfg, field)}" if field in keys else f"{field} {getattr(cfg, field)}"

    found = {int(m.group(1)) for name in shapes if (m := names.layer.match(name))}
    if found != set(range(cfg.n_layer)):
        layers = f"tensors for layers {_spans(found)}" if found else "no layer tensors"
        raise ConfigError(f"{key('n_layer')} does not match the file, which has {layers}")
    d, hd, ff = cfg.n_embd, cfg.head_dim, cfg.intermediate_size
    q, kv = cfg.n_head * hd, cfg.n_kv_head * hd
    q_norm, k_norm = ((q,), ("n_head", "head_dim")), ((kv,), ("n_kv_head", "head_dim"))
    if not cfg.qk_norm_whole:  # one norm for every head
        q_norm = k_norm = ((hd,), ("head_dim",))
    heads, width, mlp = ("n_head", "head_dim", "n_embd"), ("n_embd",), ("intermediate_size", "n_embd")
    # Phi-3's GGUF ffn_up holds gate and up (a mixture of experts' layer 0 has no gate of its own either)
    fused_gate = cfg.gated_mlp and not cfg.n_expert and names.mlp.get("gate", "").format(i=0) not in shapes
    up_rows = 2 * ff if fused_gate else ff
    per_layer = {
        "q": ((q, d), heads),
        "k": ((kv, d), ("n_kv_head", "head_dim", "n_embd")),
        "v": ((kv, d), ("n_kv_head", "head_dim", "n_embd")),
        "qkv": ((q + 2 * kv, d), ("n_head", "n_kv_head", "head_dim", "n_embd")),
        "o": ((d, q), heads),
        "q_norm": q_norm,
        "k_norm": k_norm,
        "attn_norm": ((d,), width),
        "mlp_norm": ((d,), width),
        "attn_post_norm": ((d,), width),
        "mlp_post_norm": ((d,), width),
        "gate": ((ff, d), mlp),
        "up": ((up_rows, d), mlp),
        "gate_up": ((2 * ff, d), mlp),
        "down": ((d, ff), mlp),
        "router": ((cfg.n_expert, d), ("n_expert", "n_embd")),
        "gate_exps": ((cfg.n_expert, cfg.expert_size, d), ("n_expert", "expert_size", "n_embd")),
        "up_exps": ((cfg.n_expert, cfg.expert_size, d), ("n_expert", "expert_size", "n_embd")),
        "down_exps": ((cfg.n_expert, d, cfg.expert_size), ("n_expert", "n_embd", "expert_size")),
        "gate_exp": ((cfg.expert_size, d), ("expert_size", "n_embd")),
        "up_exp": ((cfg.expert_size, d), ("expert_size", "n_embd")),
        "down_exp": ((d, cfg.expert_size), ("n_embd", "expert_size")),
    }
    expected = [
        (names.embed, (cfg.vocab_size, d), ("vocab_size", "n_embd")),
        (names.output, (cfg.vocab_size, d), ("vocab_size", "n_embd")),
    ]
    if cfg.learned_positions:
        expected.append((names.positions, (cfg.max_seq_len, d), ("max_seq_len", "n_embd")))
    for role, template in {**names.attn, **names.mlp}.items():
        shape, fields = per_layer[role]
        shape = shape[::-1] if names.transposed else shape
        expected += [(template.format(i=i), shape, fields) for i in range(cfg.n_layer)]
    q_weight = names.attn.get("q", "").format(i=0)
    q_bias = q_weight.removesuffix(".weight") + ".bias"
    if cfg.qkv_bias and q_weight in shapes and q_bias not in shapes:  # GGUF: qkv_bias is read off the tensors
        why = f"{keys['qkv_bias']} true" if "qkv_bias" in keys and cfg.arch != "qwen2" else f"architecture {cfg.arch}"
        raise ConfigError(f"{why} gives the attention projections biases, but the file has no {q_bias}")
    for name, shape, fields in expected:
        actual = shapes.get(name)
        if actual is not None and tuple(actual) != shape:
            says = ", ".join(key(f) for f in fields)
            raise ConfigError(f"{name} is {list(actual)}, but {says} make it {list(shape)}")


def _spans(indices: set[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0..2, 5"``; at most a few spans shown."""
    spans: list[list[int]] = []
    for i in sorted(indices):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    text = [f"{a}..{b}" if a != b else str(a) for a, b in spans[:4]]
    return ", ".join(text) + (", ..." if len(spans) > 4 else "")
