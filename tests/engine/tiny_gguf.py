"""A tiny random Llama model written as a GGUF file from numpy alone, with any metadata value replaced.

What `test_metadata_edges` and `test_cli` write their crafted files with: the file is well formed, only
the values are wrong. Imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 32
SIZES = dict(n_layer=2, n_head=2, n_kv_head=1, n_embd=16, head_dim=8, ff=24, context=64)
DELETE = object()  # as a value in `write_tiny_gguf`'s ``metadata``: leave the key out


def base_metadata(gguf, sizes: dict[str, int] | None = None) -> dict[str, tuple[Any, Any]]:
    """Every key the loader reads, as ``key -> (value, GGUFValueType)``; ``sizes`` replace some of `SIZES`."""
    V = gguf.GGUFValueType
    s = {**SIZES, **(sizes or {})}
    tokens = ["<unk>", "<s>", "</s>"] + [chr(0x100 + i) for i in range(VOCAB - 4)] + ["ĀĀ"]
    return {
        "general.architecture": ("llama", V.STRING),
        "llama.block_count": (s["n_layer"], V.UINT32),
        "llama.context_length": (s["context"], V.UINT32),
        "llama.embedding_length": (s["n_embd"], V.UINT32),
        "llama.feed_forward_length": (s["ff"], V.UINT32),
        "llama.attention.head_count": (s["n_head"], V.UINT32),
        "llama.attention.head_count_kv": (s["n_kv_head"], V.UINT32),
        "llama.attention.key_length": (s["head_dim"], V.UINT32),
        "llama.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32),
        "llama.rope.dimension_count": (s.get("rotary_dim", s["head_dim"]), V.UINT32),
        "llama.rope.freq_base": (10000.0, V.FLOAT32),
        "llama.rope.scaling.type": ("linear", V.STRING),
        "llama.rope.scaling.factor": (2.0, V.FLOAT32),
        "llama.attention.sliding_window": (16, V.UINT32),
        "tokenizer.ggml.model": ("gpt2", V.STRING),
        "tokenizer.ggml.pre": ("default", V.STRING),
        "tokenizer.ggml.tokens": (tokens, V.ARRAY),
        "tokenizer.ggml.token_type": ([3, 3, 3] + [1] * (VOCAB - 3), V.ARRAY),
        "tokenizer.ggml.merges": (["Ā Ā"], V.ARRAY),
        "tokenizer.ggml.bos_token_id": (1, V.UINT32),
        "tokenizer.ggml.eos_token_id": (2, V.UINT32),
        "tokenizer.ggml.add_bos_token": (True, V.BOOL),
    }


def tensors(sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """The weights, in torch order (out, in), seeded; ``sizes`` replace some of `SIZES`."""
    s, rng = {**SIZES, **(sizes or {})}, np.random.default_rng(19)
    d, hd, ff = s["n_embd"], s["head_dim"], s["ff"]

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    out = {"token_embd.weight": w(VOCAB, d), "output_norm.weight": np.ones(d, np.float32), "output.weight": w(VOCAB, d)}
    for i in range(s["n_layer"]):
        b = f"blk.{i}."
        out |= {
            b + "attn_norm.weight": np.ones(d, np.float32),
            b + "ffn_norm.weight": np.ones(d, np.float32),
            b + "attn_q.weight": w(s["n_head"] * hd, d),
            b + "attn_k.weight": w(s["n_kv_head"] * hd, d),
            b + "attn_v.weight": w(s["n_kv_head"] * hd, d),
            b + "attn_output.weight": w(d, s["n_head"] * hd),
            b + "ffn_gate.weight": w(ff, d),
            b + "ffn_up.weight": w(ff, d),
            b + "ffn_down.weight": w(d, ff),
        }
    return out


def write_tiny_gguf(
    path: Path,
    metadata: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    sizes: dict[str, int] | None = None,
    weight_type: int | None = None,
) -> Path:
    """Write the tiny model to ``path`` with ``metadata`` (``key -> (value, GGUFValueType[, element type])``,
    or `DELETE`) replacing the base values, without the tensors in ``drop``, and with ``sizes`` (e.g.
    ``head_dim``, ``rotary_dim``) replacing some of `SIZES` in both the metadata and the tensors. With a
    block ``weight_type`` (a ggml type id) every matrix is random blocks of that type instead (`random_blocks`;
    its rows must be a multiple of the type's block size)."""
    import gguf

    from tests.engine.gguf_blocks import random_blocks

    V = gguf.GGUFValueType
    values = base_metadata(gguf, sizes)
    for key, value in (metadata or {}).items():
        if value is DELETE:
            values.pop(key, None)
        else:
            values[key] = value
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.kv_data[0].clear()  # the writer's own general.architecture: ours is in `values`
    for key, (value, vtype, *sub) in values.items():
        if vtype == V.ARRAY and not sub:
            first = value[0] if len(value) else 0
            sub = [V.STRING if isinstance(first, str) else V.INT32]
        writer.kv_data[0][key] = gguf.GGUFValue(value=value, type=vtype, sub_type=sub[0] if sub else None)
    rng = np.random.default_rng(23)
    for name, array in tensors(sizes).items():
        if name in drop:
            continue
        if weight_type is None or array.ndim != 2:
            writer.add_tensor(name, array)
            continue
        qtype = gguf.GGMLQuantizationType(weight_type)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        rows, row = array.shape
        blocks = random_blocks(qtype, rows * row // block_size, rng, scale=0.002)
        writer.add_tensor(name, blocks.reshape(rows, row // block_size * type_size), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
