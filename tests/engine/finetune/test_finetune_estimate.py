"""The run estimate counts what the trainer will train, and scales as it should."""

from __future__ import annotations

import pytest

from engine.finetune import ALL_TARGETS
from engine.finetune.estimate import DECODE_EFFICIENCY, estimate_run, lora_params, measure_matmul_rate
from engine.finetune.lora import add_lora
from engine.finetune.probes import MAX_TOKENS
from engine.loading.loader import load_model


@pytest.mark.parametrize("targets", [ALL_TARGETS, ("q_proj", "v_proj"), ("down_proj",)])
def test_lora_parameter_count_matches_the_adapter(tiny_models, targets):
    folder, _ = tiny_models("qwen2")
    model = load_model(folder, dtype="float32").model
    add_lora(model, rank=4, targets=targets)
    actual = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora_params(model.cfg, 4, targets) == actual


def test_full_counts_every_weight_and_time_scales(tiny_models):
    folder, _ = tiny_models("llama")
    model = load_model(folder, dtype="float32").model
    cfg = model.cfg
    assert cfg.n_params == sum(p.numel() for p in model.parameters())
    common = dict(rank=8, targets=ALL_TARGETS, seq_len=32, batch_size=2, grad_accum=1, train_chunks=10, epochs=1.0)
    lora = estimate_run(cfg, method="lora", steps=None, flops_per_second=1e9, **common)
    full = estimate_run(cfg, method="full", steps=None, flops_per_second=1e9, **common)
    assert lora.steps == 5 and lora.tokens == 5 * 2 * 32  # ceil(10 chunks / batch 2)
    assert full.trainable_params == cfg.n_params and full.optimizer_bytes == 3 * 4 * cfg.n_params
    assert full.memory_bytes > lora.memory_bytes and full.seconds > lora.seconds
    double = estimate_run(cfg, method="lora", steps=10, flops_per_second=1e9, **common)
    assert double.seconds == pytest.approx(2 * lora.seconds)
    assert estimate_run(cfg, method="lora", steps=3, **common).seconds is None  # no rate measured
    assert measure_matmul_rate(0.02, 64) > 1e6


def test_recall_questions_merged_outputs_and_short_chunks_count(tiny_models):
    folder, _ = tiny_models("llama")
    cfg = load_model(folder, dtype="float32").model.cfg
    common = dict(method="lora", rank=8, targets=ALL_TARGETS, seq_len=32, batch_size=2, grad_accum=1, train_chunks=10)
    plain = estimate_run(cfg, steps=None, epochs=1.0, flops_per_second=1e9, **common)
    asked = estimate_run(cfg, steps=None, epochs=1.0, flops_per_second=1e9, probes=8, **common)
    written = estimate_run(cfg, steps=None, epochs=1.0, flops_per_second=1e9, export=True, **common)
    assert plain.probe_seconds == 0 and plain.export_seconds == 0 and plain.seconds == plain.train_seconds
    # eight questions asked twice, MAX_TOKENS greedy steps each
    assert asked.probe_seconds == pytest.approx(
        2 * 8 * MAX_TOKENS * 2 * cfg.n_params / (1e9 * DECODE_EFFICIENCY["cpu"])
    )
    assert asked.seconds == pytest.approx(plain.seconds + asked.probe_seconds)
    assert written.seconds > plain.seconds
    short = estimate_run(cfg, steps=None, epochs=1.0, flops_per_second=1e9, train_tokens=10 * 16, **common)
    assert short.tokens == plain.tokens // 2 and short.train_seconds < plain.train_seconds
    bf16 = estimate_run(cfg, steps=None, epochs=1.0, dtype_bytes=2, **common)
    assert bf16.weights_bytes < plain.weights_bytes and bf16.seconds is None
