"""Hugging Face folders: ``config.json`` and ``*.safetensors`` (single or sharded), never pickles."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from engine.errors import ModelFileError
from engine.loading.config import ModelConfig
from engine.loading.families import GEMMA

if TYPE_CHECKING:  # imported where tensors are made: reading a folder's config and shapes needs no torch
    import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_FILE = "model.safetensors.index.json"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # Recursion: nested too deep
        raise ModelFileError(path, f"cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelFileError(path, "expected a JSON object")
    return data


def read_config(folder: Path) -> ModelConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFileError(folder, "no config.json: not a Hugging Face model folder")
    cfg = read_json(path)
    if "auto_map" in cfg or cfg.get("trust_remote_code"):
        raise ModelFileError(
            path,
            "the model asks to run its own Python code (auto_map); Ember never runs code "
            "from model files. Use a model whose architecture Ember supports.",
        )
    try:
        return ModelConfig.from_hf(cfg)
    except ValueError as e:  # engine.loading.model_check.ConfigError, naming the key
        raise ModelFileError(path, f"unusable config: {e}") from None


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the safetensors headers alone (no data read, no torch)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError) as e:
            raise ModelFileError(f, f"not a readable safetensors file: {e}") from None
    return shapes


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files, from the shard index when there is one; pickles are refused."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFileError(index, "no weight_map in the shard index")
        names = sorted(set(weight_map.values()))
        for n in names:
            if not isinstance(n, str) or Path(n).name != n or not (folder / n).is_file():
                raise ModelFileError(index, f"shard {n!r} is missing or outside the folder")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ModelFileError(
            folder,
            f"only pickle weights ({', '.join(pickles)}); Ember never unpickles. Convert them to "
            "safetensors first (e.g. save_pretrained(..., safe_serialization=True) in transformers).",
        )
    raise ModelFileError(folder, "no *.safetensors weights found")


class SafetensorsSource:
    """Lazily reads named tensors from one or more safetensors files (memory-mapped)."""

    def __init__(self, files: list[Path]) -> None:
        self._where: dict[str, Path] = {}
        self._handles = {}
        for f in files:
            try:
                handle = safe_open(str(f), framework="pt")
            except (SafetensorError, OSError) as e:
                raise ModelFileError(f, f"not a readable safetensors file: {e}") from None
            self._handles[f] = handle
            for name in handle.keys():
                self._where[name] = f

    def names(self) -> set[str]:
        return set(self._where)

    def dtype_counts(self) -> dict[str, int]:
        """How many tensors each storage dtype has (read from the headers, no data)."""
        counts: dict[str, int] = {}
        for name, path in self._where.items():
            kind = self._handles[path].get_slice(name).get_dtype().lower()
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def get(self, name: str) -> torch.Tensor:
        path = self._where.get(name)
        if path is None:
            raise ModelFileError(next(iter(self._handles), "<folder>"), f"missing tensor {name}")
        try:
            return self._handles[path].get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise ModelFileError(path, f"cannot read tensor {name}: {e}") from None


def hf_state_dict(cfg: ModelConfig, names: set[str], get: Callable[[str], torch.Tensor]):
    """Yield ``(our_name, tensor)`` pairs from HF tensor names."""
    if cfg.arch == "gpt2":
        yield from _gpt2(cfg, names, get)
        return
    import torch

    cat = torch.cat
    gemma = cfg.arch in GEMMA

    def norm(name: str) -> torch.Tensor:
        """Gemma's RMSNorm multiplies by 1 + w (as llama.cpp's converter writes it): ours by the weight."""
        return get(name).float() + 1.0 if gemma else get(name)

    yield "tok_emb.weight", get("model.embed_tokens.weight")
    for i in range(cfg.n_layer):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        if cfg.pre_norms:
            yield o + "attn_norm.weight", norm(p + "input_layernorm.weight")
            mlp_norm = "pre_feedforward_layernorm" if gemma else "post_attention_layernorm"
            yield o + "mlp_norm.weight", norm(p + mlp_norm + ".weight")
        if cfg.post_norms:  # OLMo 2's and Gemma's post_attention_layernorm follows attention
            yield o + "attn_post_norm.weight", norm(p + "post_attention_layernorm.weight")
            yield o + "mlp_post_norm.weight", norm(p + "post_feedforward_layernorm.weight")
        a = p + "self_attn."
        if cfg.arch == "phi3":
            yield o + "attn.wqkv.weight", get(a + "qkv_proj.weight")
            yield o + "mlp.w_gate_up.weight", get(p + "mlp.gate_up_proj.weight")
        else:
            yield o + "attn.wqkv.weight", cat([get(a + f"{x}_proj.weight") for x in "qkv"])
        if p + "mlp.gate.weight" in names:  # a mixture of experts: the router and each expert's projections
            yield o + "mlp.router.weight", get(p + "mlp.gate.weight")
            e = [f"{p}mlp.experts.{j}." for j in range(cfg.n_expert)]
            gate_up = [cat([get(x + "gate_proj.weight"), get(x + "up_proj.weight")]) for x in e]
            yield o + "mlp.w_gate_up", torch.stack(gate_up)
            yield o + "mlp.w_down", torch.stack([get(x + "down_proj.weight") for x in e])
        elif cfg.arch != "phi3":
            yield o + "mlp.w_gate_up.weight", cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
        if cfg.qkv_bias:
            yield o + "attn.wqkv.bias", cat([get(a + f"{x}_proj.bias") for x in "qkv"])
        if cfg.qk_norm:
            yield o + "attn.q_norm.weight", norm(a + "q_norm.weight")
            yield o + "attn.k_norm.weight", norm(a + "k_norm.weight")
        yield o + "attn.wo.weight", get(a + "o_proj.weight")
        if p + "mlp.gate.weight" not in names:
            yield o + "mlp.w_down.weight", get(p + "mlp.down_proj.weight")
    yield "norm.weight", norm("model.norm.weight")
    if not cfg.tie_embeddings:
        yield "lm_head.weight", get("lm_head.weight")


def _gpt2(cfg: ModelConfig, names: set[str], get: Callable[[str], torch.Tensor]):
    pre = "transformer." if "transformer.wte.weight" in names else ""
    yield "tok_emb.weight", get(pre + "wte.weight")
    yield "pos_emb.weight", get(pre + "wpe.weight")
    # GPT-2 stores its projections as Conv1D, (in, out): transpose to (out, in).
    pairs = {
        "attn_norm": ("ln_1", False),
        "attn.wqkv": ("attn.c_attn", True),
        "attn.wo": ("attn.c_proj", True),
        "mlp_norm": ("ln_2", False),
        "mlp.w_up": ("mlp.c_fc", True),
        "mlp.w_down": ("mlp.c_proj", True),
    }
    for i in range(cfg.n_layer):
        for ours, (theirs, conv1d) in pairs.items():
            w = get(f"{pre}h.{i}.{theirs}.weight")
            yield f"layers.{i}.{ours}.weight", w.t() if conv1d else w
            yield f"layers.{i}.{ours}.bias", get(f"{pre}h.{i}.{theirs}.bias")
    yield "norm.weight", get(pre + "ln_f.weight")
    yield "norm.bias", get(pre + "ln_f.bias")
    if not cfg.tie_embeddings:
        yield "lm_head.weight", get("lm_head.weight")
