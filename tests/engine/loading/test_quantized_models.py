"""A tiny model whose every matrix is in one of the newer block types loads, with gguf-py's values."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from engine.gguf import GGMLType
from engine.loading.loader import load_model
from tests.engine.tiny_gguf import write_tiny_gguf

TYPES = (GGMLType.IQ4_NL, GGMLType.IQ4_XS, GGMLType.Q2_K, GGMLType.Q3_K)
SIZES = dict(n_embd=256, n_head=2, n_kv_head=1, head_dim=128, ff=256)  # every row a whole number of 256-blocks


@pytest.mark.parametrize("ggml_type", TYPES, ids=[t.name for t in TYPES])
def test_tiny_model_in_each_type_loads_with_reference_weights(tmp_path, ggml_type: GGMLType) -> None:
    path = write_tiny_gguf(tmp_path / f"tiny-{ggml_type.name}.gguf", sizes=SIZES, weight_type=ggml_type)
    lm = load_model(path, device="cpu", dtype="float32", check_memory=False, cache_dir=tmp_path / "cache")
    assert lm.weight_types == {ggml_type.name: 16, "F32": 5}  # 2 blocks of 7 matrices, embeddings, head; norms

    reference = {t.name: t for t in gguf.GGUFReader(path).tensors}
    ours = lm.model.state_dict()
    for gguf_name, our_name in (
        ("blk.0.ffn_down.weight", "layers.0.mlp.w_down.weight"),
        ("blk.1.attn_output.weight", "layers.1.attn.wo.weight"),
        ("output.weight", "lm_head.weight"),
    ):
        ref = reference[gguf_name]
        expected = gguf.quants.dequantize(ref.data, ref.tensor_type).reshape(ours[our_name].shape)
        assert torch.equal(ours[our_name], torch.from_numpy(np.array(expected))), gguf_name

    logits = lm.model(torch.tensor([[1, 5, 9, 3]]))
    assert logits.shape[-1] >= 32 and torch.isfinite(logits).all()
