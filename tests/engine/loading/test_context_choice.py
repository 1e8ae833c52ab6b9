"""The context a model loads with when its own would not fit: the longest step that does, up to a cap."""

from __future__ import annotations

import gguf
import pytest
import torch

from engine.errors import OutOfMemoryError
from engine.loading.loader import load_model
from engine.loading.model_file import peek_config
from engine.memory import context_steps, estimate_bytes, fitting_context, kv_cache_bytes
from tests.engine.tiny_gguf import write_tiny_gguf

CPU, BF16 = torch.device("cpu"), torch.bfloat16


@pytest.fixture
def long_context_model(tmp_path):
    """The tiny model declaring 32,768 positions (its KV cache at that length dwarfs its weights)."""
    return write_tiny_gguf(tmp_path / "long.gguf", {"llama.context_length": (32768, gguf.GGUFValueType.UINT32)})


def test_context_steps() -> None:
    assert context_steps(8192) == [512, 1024, 2048, 4096, 8192]
    assert context_steps(6000) == [512, 1024, 2048, 4096, 6000]
    assert context_steps(131072)[-2:] == [65536, 131072] and len(context_steps(131072)) == 9
    assert context_steps(64) == [64]


def test_kv_cache_grows_with_the_context(long_context_model) -> None:
    cfg = peek_config(long_context_model)
    per_position = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 2  # keys and values, bf16
    assert kv_cache_bytes(cfg, BF16, 1000) == 1000 * per_position
    gpu = torch.device("cuda")  # only named: the estimate allocates nothing
    assert estimate_bytes(cfg, BF16, gpu, 2048) - estimate_bytes(cfg, BF16, gpu, 1024) == 1024 * per_position
    # on the CPU the decode kernel may keep the cache in float32 (engine.model.decode_attention): twice that
    assert estimate_bytes(cfg, BF16, CPU, 2048) - estimate_bytes(cfg, BF16, CPU, 1024) == 2 * 1024 * per_position


def test_fitting_context_is_the_longest_step_that_fits_up_to_the_cap(long_context_model, monkeypatch) -> None:
    cfg = peek_config(long_context_model)
    for free_for, cap, expected in ((4096, 8192, 4096), (4095, 8192, 2048), (32768, 8192, 8192), (100, 8192, 512)):
        free = estimate_bytes(cfg, BF16, CPU, free_for)
        monkeypatch.setattr("engine.memory.available_bytes", lambda device, free=free: free)
        assert fitting_context(cfg, BF16, CPU, cap) == expected, free_for
    assert fitting_context(cfg, BF16, CPU, cap=32768) == 512  # still only room for 100 positions
    monkeypatch.setattr("engine.memory.available_bytes", lambda device: estimate_bytes(cfg, BF16, CPU, 32768))
    assert fitting_context(cfg, BF16, CPU, cap=32768) == 32768


def test_a_model_too_long_for_memory_loads_with_the_fitting_context(long_context_model, monkeypatch) -> None:
    cfg = peek_config(long_context_model)
    free = (estimate_bytes(cfg, BF16, CPU, 4096) + estimate_bytes(cfg, BF16, CPU, 8192)) // 2
    monkeypatch.setattr("engine.memory.available_bytes", lambda device: free)
    with pytest.raises(OutOfMemoryError, match="32768 positions of KV cache"):
        load_model(long_context_model, device="cpu", dtype="bfloat16")
    context = fitting_context(cfg, BF16, CPU)
    assert context == 4096
    lm = load_model(long_context_model, device="cpu", dtype="bfloat16", context_length=context)
    assert lm.context_length == 4096 and lm.config.max_seq_len == 32768
    assert lm.memory_estimate <= free
