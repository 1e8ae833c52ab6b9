"""Writing the results: a PEFT adapter folder, a merged Hugging Face folder; and reading adapters back.

PEFT layout: ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys are
``base_model.model.<HF module>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r), one pair per
unfused HF projection (see `engine.finetune.lora` for why our per-slice factors map one to one).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.errors import ModelFileError
from engine.finetune.lora import LoRALinear, add_lora, hf_layer_prefix, lora_layers
from engine.loading.config import ModelConfig
from engine.loading.families import GEMMA

PEFT_PREFIX = "base_model.model."
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _layer_index(name: str) -> tuple[int, str]:
    """``layers.3.attn.wqkv`` -> (3, "attn.wqkv")."""
    _, i, rel = name.split(".", 2)
    return int(i), rel


def _peft_target_name(cfg: ModelConfig, slice_name: str) -> str:
    short = slice_name.rsplit(".", 1)[-1]
    return slice_name if cfg.arch == "gpt2" and short == "c_proj" else short


def save_peft_adapter(lm, folder: str | Path, config=None) -> Path:
    """Write the model's LoRA layers as a PEFT adapter that loads onto the HF model of the same base."""
    model, cfg = lm.model, lm.config
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save")
    for name, layer in layers:
        i, _ = _layer_index(name)
        off = 0
        for k, s in enumerate(layer.slices):
            key = f"{PEFT_PREFIX}{hf_layer_prefix(cfg, i)}{s.name}"
            tensors[f"{key}.lora_A.weight"] = layer.lora_A[k].detach().float().contiguous().clone()
            tensors[f"{key}.lora_B.weight"] = layer.lora_B[off : off + s.size].detach().float().contiguous().clone()
            off += s.size
            targets.add(_peft_target_name(cfg, s.name))
    first = layers[0][1]
    dropout = config.dropout if config is not None else 0.0
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(lm.path),
        "r": first.rank,
        "lora_alpha": first.alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": cfg.arch == "gpt2",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return folder


def load_peft_adapter(model, folder: str | Path, *, merge: bool = True) -> None:
    """Put a PEFT LoRA adapter (ours or another tool's, same base) onto an Ember model, merged by default
    (into dense layers; over packed int4 layers it stays beside them, see `merge_lora`)."""
    folder = Path(folder)
    if (folder / "adapter").is_dir() and not (folder / "adapter_config.json").is_file():
        folder = folder / "adapter"  # the output folder of a run
    cfg_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise ModelFileError(
            folder, "not a PEFT adapter folder (needs adapter_config.json and adapter_model.safetensors)"
        )
    try:
        acfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(cfg_path, f"cannot read JSON: {e}") from None
    if acfg.get("peft_type", "LORA") != "LORA":
        raise ModelFileError(cfg_path, f"only LoRA adapters are supported, not {acfg.get('peft_type')}")
    if acfg.get("rank_pattern") or acfg.get("alpha_pattern") or acfg.get("use_dora"):
        raise ModelFileError(cfg_path, "adapters with rank_pattern, alpha_pattern or DoRA are not supported")
    rank, alpha = int(acfg["r"]), float(acfg.get("lora_alpha", acfg["r"]))
    targets = acfg.get("target_modules") or []
    if isinstance(targets, str):
        raise ModelFileError(cfg_path, "target_modules given as a regular expression are not supported")
    weights = load_file(str(weights_path))
    cfg = model.cfg
    add_lora(model, rank, alpha, 0.0, targets)
    if acfg.get("use_rslora"):
        for _, layer in lora_layers(model):
            layer.scaling = alpha / rank**0.5
    missing = []
    with torch.no_grad():
        for name, layer in lora_layers(model):
            i, _ = _layer_index(name)
            off = 0
            for k, s in enumerate(layer.slices):
                key = f"{PEFT_PREFIX}{hf_layer_prefix(cfg, i)}{s.name}"
                a, b = weights.get(f"{key}.lora_A.weight"), weights.get(f"{key}.lora_B.weight")
                if a is None or b is None:  # e.g. layers_to_transform: this slice stays unadapted
                    missing.append(key)
                    layer.lora_B[off : off + s.size].zero_()
                else:
                    if a.shape != layer.lora_A[k].shape or b.shape != (s.size, rank):
                        raise ModelFileError(weights_path, f"{key}: shapes do not match this model")
                    layer.lora_A[k].copy_(a)
                    layer.lora_B[off : off + s.size].copy_(b)
                off += s.size
    if missing and len(missing) == sum(len(layer.slices) for _, layer in lora_layers(model)):
        raise ModelFileError(weights_path, "no tensor of the adapter matches this model (another base model?)")
    for p in model.parameters():
        p.requires_grad_(False)
    if merge:
        from engine.finetune.lora import merge_lora

        merge_lora(model)


def float32_merged(model_path: str | Path, device, adapter_dir: str | Path):
    """The model file loaded again in float32 (dense) with the LoRA adapter in ``adapter_dir`` merged in:
    what merged outputs are written from, since a bf16 or packed training copy would round every base
    weight."""
    from engine.loading.loader import load_model

    copy = load_model(model_path, device=str(device), dtype="float32", pack=False)
    load_peft_adapter(copy.model, adapter_dir, merge=True)
    return copy


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """Our-named weights with every LoRA update folded in; the model itself is left as it is."""
    state = {}
    lora = dict(lora_layers(model))
    for name, t in model.state_dict().items():
        if "lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base") and owner[: -len(".base")] in lora:
            layer: LoRALinear = lora[owner[: -len(".base")]]
            name = f"{owner[: -len('.base')]}.{leaf}"
            if leaf == "weight" and not layer.merged:
                t = t + layer.delta_weight()
        state[name] = t.detach()
    return state


def to_hf_names(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `engine.weights.from_hf.hf_state_dict`."""
    out: dict[str, torch.Tensor] = {}
    q, kv, inter = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.intermediate_size
    if cfg.arch == "gpt2":
        out["transformer.wte.weight"] = state["tok_emb.weight"]
        out["transformer.wpe.weight"] = state["pos_emb.weight"]
        pairs = {
            "attn_norm": "ln_1",
            "attn.wqkv": "attn.c_attn",
            "attn.wo": "attn.c_proj",
            "mlp_norm": "ln_2",
            "mlp.w_up": "mlp.c_fc",
            "mlp.w_down": "mlp.c_proj",
        }
        for i in range(cfg.n_layer):
            for ours, theirs in pairs.items():
                w = state[f"layers.{i}.{ours}.weight"]
                out[f"transformer.h.{i}.{theirs}.weight"] = w if "norm" in ours else w.t()
                out[f"transformer.h.{i}.{theirs}.bias"] = state[f"layers.{i}.{ours}.bias"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = state["norm.weight"], state["norm.bias"]
    else:
        gemma = cfg.arch in GEMMA
        shift = 1.0 if gemma else 0.0  # Gemma's RMSNorm multiplies by 1 + w: ours holds the 1 + w
        out["model.embed_tokens.weight"] = state["tok_emb.weight"]
        for i in range(cfg.n_layer):
            o, p = f"layers.{i}.", f"model.layers.{i}."
            a = p + "self_attn."
            if cfg.pre_norms:
                out[p + "input_layernorm.weight"] = state[o + "attn_norm.weight"] - shift
                mlp_norm = "pre_feedforward_layernorm" if gemma else "post_attention_layernorm"
                out[p + mlp_norm + ".weight"] = state[o + "mlp_norm.weight"] - shift
            if cfg.post_norms:
                out[p + "post_attention_layernorm.weight"] = state[o + "attn_post_norm.weight"] - shift
                out[p + "post_feedforward_layernorm.weight"] = state[o + "mlp_post_norm.weight"] - shift
            wqkv, gate_up = state[o + "attn.wqkv.weight"], state.get(o + "mlp.w_gate_up.weight")
            if o + "mlp.router.weight" in state:  # a mixture of experts, each expert's projections
                out[p + "mlp.gate.weight"] = state[o + "mlp.router.weight"]
                for j, (ej, dj) in enumerate(zip(state[o + "mlp.w_gate_up"], state[o + "mlp.w_down"], strict=True)):
                    e = f"{p}mlp.experts.{j}."
                    out[e + "gate_proj.weight"], out[e + "up_proj.weight"] = ej.split([cfg.expert_size] * 2)
                    out[e + "down_proj.weight"] = dj
            if cfg.arch == "phi3":
                out[a + "qkv_proj.weight"] = wqkv
                out[p + "mlp.gate_up_proj.weight"] = gate_up
            else:
                for x, t in zip("qkv", wqkv.split([q, kv, kv]), strict=True):
                    out[a + f"{x}_proj.weight"] = t
                if gate_up is not None:
                    out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate_up.split([inter, inter])
            if cfg.qkv_bias:
                for x, t in zip("qkv", state[o + "attn.wqkv.bias"].split([q, kv, kv]), strict=True):
                    out[a + f"{x}_proj.bias"] = t
            if cfg.qk_norm:
                out[a + "q_norm.weight"] = state[o + "attn.q_norm.weight"] - shift
                out[a + "k_norm.weight"] = state[o + "attn.k_norm.weight"] - shift
            out[a + "o_proj.weight"] = state[o + "attn.wo.weight"]
            if gate_up is not None:
                out[p + "mlp.down_proj.weight"] = state[o + "mlp.w_down.weight"]
        out["model.norm.weight"] = state["norm.weight"] - shift
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_config(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """A ``config.json`` for a model Ember built from a GGUF file (HF folders keep their own)."""
    dtype_name = str(dtype).removeprefix("torch.")
    if cfg.arch == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_positions": cfg.max_seq_len,
            "n_inner": cfg.intermediate_size,
            "layer_norm_epsilon": cfg.norm_eps,
            "tie_word_embeddings": cfg.tie_embeddings,
            "torch_dtype": dtype_name,
        }
    names = {
        "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "phi3": "Phi3ForCausalLM",
        "smollm3": "SmolLM3ForCausalLM",
        "granite": "GraniteForCausalLM",
        "olmo2": "Olmo2ForCausalLM",
        "gemma2": "Gemma2ForCausalLM",
        "gemma3": "Gemma3ForCausalLM",
        "qwen3moe": "Qwen3MoeForCausalLM",
    }
    out = {
        "model_type": {"gemma3": "gemma3_text", "qwen3moe": "qwen3_moe"}.get(cfg.arch, cfg.arch),
        "architectures": [names[cfg.arch]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.qkv_bias,
        "hidden_act": "silu",
        "torch_dtype": dtype_name,
    }
    if cfg.partial_rotary_factor != 1.0:
        out["partial_rotary_factor"] = cfg.partial_rotary_factor
    if cfg.sliding_window is not None:
        out["sliding_window"] = cfg.sliding_window
    out.update(_family_config(cfg))
    if "rope_parameters" in out:  # Gemma 3: a rope per kind of layer instead
        del out["rope_theta"], out["rope_scaling"]
    return out


def _family_config(cfg: ModelConfig) -> dict:
    """The ``config.json`` keys of the families added after the first six (engine.loading.families)."""
    out: dict = {}
    if cfg.arch in ("smollm3", "granite", "olmo2", "qwen3moe", *GEMMA):
        out["layer_types"] = ["sliding_attention" if cfg.window(i) else "full_attention" for i in range(cfg.n_layer)]
        out["use_sliding_window"] = cfg.sliding_window is not None
    if cfg.n_expert:
        out.update(
            num_experts=cfg.n_expert,
            num_experts_per_tok=cfg.n_expert_used,
            moe_intermediate_size=cfg.expert_size,
            norm_topk_prob=cfg.norm_topk,
            decoder_sparse_step=1,
            mlp_only_layers=list(cfg.dense_layers),
        )
    if cfg.arch == "smollm3":
        out["no_rope_layers"] = [int(i not in cfg.nope_layers) for i in range(cfg.n_layer)]
    if cfg.arch == "granite":
        out.update(
            embedding_multiplier=cfg.embedding_scale,
            attention_multiplier=cfg.attention_scale or cfg.head_dim**-0.5,
            residual_multiplier=cfg.residual_scale,
            logits_scaling=cfg.logits_scaling,
        )
    if cfg.arch in GEMMA:
        out.update(
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=round((cfg.attention_scale or cfg.head_dim**-0.5) ** -2),  # an int in transformers
            attn_logit_softcapping=cfg.attn_softcap,
            final_logit_softcapping=cfg.final_softcap,
        )
    if cfg.arch == "gemma3":  # transformers 5's spelling: a rope per kind of layer
        local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
        out["rope_parameters"] = {
            "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})},
            "sliding_attention": local,
        }
    return out


def save_merged_hf(lm, folder: str | Path) -> Path:
    """The tuned model (adapters folded in) as a Hugging Face folder: config, safetensors, tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = lm.config
    tensors = to_hf_names(cfg, merged_state_dict(lm.model))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    src = Path(lm.path)
    if src.is_dir():
        shutil.copyfile(src / "config.json", folder / "config.json")
        for name in (*_TOKENIZER_FILES, "generation_config.json"):
            if (src / name).is_file():
                shutil.copyfile(src / name, folder / name)
        return folder
    tok = lm.tokenizer
    config = hf_config(cfg, lm.model.dtype)
    # The tokenizer's ids, not the family's defaults (SmolLM3's 128000.. would not fit another vocabulary).
    eos = tok.inner.token_to_id(tok.eos_token) if tok.eos_token is not None else None
    config.update(bos_token_id=tok.bos_id, eos_token_id=eos, pad_token_id=None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok.inner.save(str(folder / "tokenizer.json"))
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "add_bos_token": tok.add_bos,
        "chat_template": None if lm.template.is_fallback else lm.template.source,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return folder
