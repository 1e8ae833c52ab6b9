"""What the families beyond Llama's shape declare besides their sizes, read as transformers and llama.cpp
read it: which layers use the sliding window (Gemma 2 and 3), which have no rope (SmolLM3), Gemma 3's
local rope base, Granite's multipliers, Gemma's attention scale and soft-caps, Qwen3-MoE's experts.

A ``config.json`` lists the layers (``layer_types``, ``no_rope_layers``) or gives their period; GGUF has no
key for either, so the periods llama.cpp hard-codes are used. Every value is checked through `Declared`
(`engine.loading.model_check`). Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.loading.model_check import ConfigError, Declared, describe

GEMMA = ("gemma2", "gemma3")
# Which layers slide when a file does not list them: Gemma 2 alternates (even layers local), Gemma 3 has
# five local layers to one global (transformers' defaults; llama.cpp's set_swa_pattern).
SLIDING_PERIOD = {"gemma2": 2, "gemma3": 6}
NOPE_PERIOD = 4  # SmolLM3: every 4th layer has no rope (HF's no_rope_layer_interval; llama.cpp hard-codes 4)
# GGUF has no key for Gemma's query_pre_attn_scalar: llama.cpp scales queries by the head size, except for
# the 27B models' n_embd / n_head, which it knows by their layer count (its LLM_TYPE_27B).
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
_LAYER_TYPES = ("sliding_attention", "full_attention")


def every(period: int, n_layer: int, *, last: bool) -> tuple[int, ...]:
    """The layers ``i`` with ``(i + 1) % period == 0`` (``last``: the last of each period), or all others."""
    return tuple(i for i in range(n_layer) if ((i + 1) % period == 0) == last)


def _per_layer(cfg: Mapping[str, Any], key: str, n_layer: int, allowed: tuple) -> list | None:
    """A per-layer list of ``config.json`` (one of ``allowed`` per layer), None when absent."""
    value = cfg.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n_layer or any(v not in allowed or type(v) is bool for v in value):
        choices = " or ".join(map(repr, allowed))
        raise ConfigError(f"{key} is {describe(value)}; expected a list of {n_layer} values, each {choices}")
    return value


def _per_layer_indices(cfg: Mapping[str, Any], key: str, n_layer: int) -> set[int]:
    """A ``config.json`` list of layer indices (empty when absent)."""
    value = cfg.get(key) or []
    if not isinstance(value, list) or any(type(i) is not int or not 0 <= i < n_layer for i in value):
        raise ConfigError(f"{key} is {describe(value)}; expected a list of layer indices in 0..{n_layer - 1}")
    return set(value)


def _capping(d: Declared, field: str, default: float | None) -> float | None:
    """A soft-cap that JSON null turns off (Declared reads null as absent, which means the default)."""
    if d.keys[field] in d.values and d.values[d.keys[field]] is None:
        return None
    return d(field, default)


def hf_rope_parameters(arch: str, cfg: Mapping[str, Any]) -> tuple[Mapping[str, Any], float | None]:
    """``cfg`` with Gemma 3's per-layer-type ``rope_parameters`` (transformers 5) replaced by the global layers'
    own, and the local layers' rope base (None when the file gives none)."""
    rope = cfg.get("rope_parameters")
    if arch != "gemma3" or not isinstance(rope, Mapping) or "full_attention" not in rope:
        return cfg, None
    local = rope.get("sliding_attention")
    theta = local.get("rope_theta") if isinstance(local, Mapping) else None
    return {**cfg, "rope_parameters": rope["full_attention"]}, theta


def hf_family_values(arch: str, cfg: Mapping[str, Any], d: Declared, n_layer: int, local_theta) -> dict[str, Any]:
    """The family's settings from a ``config.json`` (``local_theta``: from `hf_rope_parameters`)."""
    values: dict[str, Any] = {}
    types = _per_layer(cfg, "layer_types", n_layer, _LAYER_TYPES)
    if types is not None:
        values["sliding_layers"] = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    elif arch in SLIDING_PERIOD:
        period = d("sliding_window_pattern", SLIDING_PERIOD[arch])
        values["sliding_layers"] = every(period, n_layer, last=False)
    if arch == "smollm3":
        uses = _per_layer(cfg, "no_rope_layers", n_layer, (0, 1))
        if uses is not None:
            values["nope_layers"] = tuple(i for i, use in enumerate(uses) if not use)
        else:
            values["nope_layers"] = every(d("no_rope_layer_interval", NOPE_PERIOD), n_layer, last=True)
    if arch == "granite":  # transformers' defaults: 1.0 each, the attention scale included
        for field in ("embedding_scale", "attention_scale", "residual_scale", "logits_scaling"):
            values[field] = d(field, 1.0)
    if arch in GEMMA:
        values["attention_scale"] = d("query_pre_attn_scalar", 256) ** -0.5
        values["attn_softcap"] = _capping(d, "attn_softcap", 50.0 if arch == "gemma2" else None)
        values["final_softcap"] = _capping(d, "final_softcap", 30.0 if arch == "gemma2" else None)
    if arch == "qwen3moe":  # a layer is dense when listed in mlp_only_layers or off the sparse step
        only = _per_layer_indices(cfg, "mlp_only_layers", n_layer)
        step = d("decoder_sparse_step", 1)
        # transformers 5 writes num_local_experts; the published configs say num_experts
        experts = Declared(cfg, {"n_expert": "num_experts" if "num_experts" in cfg else "num_local_experts"})
        n_expert, used = experts("n_expert"), d("n_expert_used")
        if used > n_expert:
            raise ConfigError(
                f"{d.keys['n_expert_used']} is {used}; expected at most {experts.keys['n_expert']} {n_expert}"
            )
        values.update(
            n_expert=n_expert,
            n_expert_used=used,
            expert_size=d("expert_size"),
            norm_topk=d.flag("norm_topk_prob", False),
            dense_layers=tuple(i for i in range(n_layer) if i in only or (i + 1) % step),
        )
    if arch == "gemma3":  # transformers 5 says rope_parameters.sliding_attention.rope_theta, 4.x rope_local_base_freq
        local = Declared(
            {"rope_theta": local_theta}, {"rope_local_theta": "rope_theta"}, "rope_parameters.sliding_attention."
        )
        values["rope_local_theta"] = local("rope_local_theta", None) or d("rope_local_theta", 10000.0)
    return values


def gguf_family_values(arch: str, d: Declared, n_layer: int, n_embd: int, n_head: int, head_dim: int) -> dict[str, Any]:
    """The family's settings from GGUF metadata, with llama.cpp's defaults where it has no key."""
    values: dict[str, Any] = {}
    if arch == "smollm3":
        values["nope_layers"] = every(NOPE_PERIOD, n_layer, last=True)
    if arch == "granite":  # the converter writes each multiplier; llama.cpp's defaults where one is absent
        values.update(
            embedding_scale=d("embedding_scale", 1.0),
            attention_scale=d("attention_scale", 0.0),
            residual_scale=d("residual_scale", 1.0),
            logits_scaling=d("logits_scaling", 1.0),
        )
    if arch in GEMMA:
        values["sliding_layers"] = every(SLIDING_PERIOD[arch], n_layer, last=False)
        query_scalar = n_embd / n_head if n_layer == _GEMMA_27B_LAYERS[arch] else head_dim
        values.update(
            attention_scale=query_scalar**-0.5,
            attn_softcap=d("attn_softcap", 50.0 if arch == "gemma2" else None),
            final_softcap=d("final_softcap", 30.0 if arch == "gemma2" else None),
        )
    if arch == "gemma3":
        values["rope_local_theta"] = d("rope_local_theta", 10000.0)
    if arch == "qwen3moe":  # llama.cpp: every layer a mixture, the chosen experts' weights renormalised
        values.update(
            n_expert=d("n_expert"), n_expert_used=d("n_expert_used"), expert_size=d("expert_size"), norm_topk=True
        )
    return values
