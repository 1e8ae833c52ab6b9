"""Training in bf16 where the CPU is faster at it: the dtype chosen by measurement, the LoRA dropout, and
merged outputs that keep the float32 base weights."""

from __future__ import annotations

import json
import random

import pytest
import torch

from engine.finetune import FinetuneConfig, finetune, precision
from engine.finetune.lora import ByteDropout
from engine.loading.loader import load_model


def test_dtype_follows_the_measured_speed(monkeypatch):
    assert precision.cpu_speedup_bf16() > 0
    monkeypatch.setattr(precision, "cpu_speedup_bf16", lambda: 3.0)
    assert precision.training_dtype("cpu") == torch.bfloat16
    assert precision.training_dtype("cpu", "full") == torch.float32  # AdamW's small steps vanish in bf16
    monkeypatch.setattr(precision, "cpu_speedup_bf16", lambda: 1.1)  # a CPU without native bf16
    assert precision.training_dtype("cpu") == torch.float32


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_byte_dropout_drops_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    drop = ByteDropout(p).train()
    x = torch.ones(400_000, requires_grad=True)
    y = drop(x)
    dropped = float((y == 0).float().mean())
    assert dropped == pytest.approx(p, abs=4 * (p * (1 - p) / x.numel()) ** 0.5 + 1 / 65536)
    assert float(y.detach().mean()) == pytest.approx(1.0, abs=0.01)
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the gradient flows through the kept elements only
    assert torch.equal(drop.eval()(x), x)
    bf16 = ByteDropout(p).train()(torch.ones(1000, dtype=torch.bfloat16))
    assert bf16.dtype == torch.bfloat16


def test_a_bf16_run_writes_merged_outputs_from_the_float32_base(tiny_models, tmp_path):
    folder, _ = tiny_models("llama")
    data = tmp_path / "data"
    data.mkdir()
    r = random.Random(1)
    for i in range(3):
        (data / f"d{i}.txt").write_text(" ".join(f"w{r.randrange(3, 90)}" for _ in range(60)))
    lm = load_model(folder, dtype="bfloat16", pack=False)
    cfg = FinetuneConfig(seq_len=24, steps=4, lr=1e-2, batch_size=2, rank=4, val_fraction=0.0, gguf="none")
    result = finetune(lm, [data], tmp_path / "run", cfg)
    seconds = json.loads((tmp_path / "run" / "run.json").read_text())["seconds"]
    assert seconds["training"] > 0 and seconds["outputs"] > 0 and seconds["recall_questions"] >= 0
    base = load_model(folder, dtype="float32").model
    merged = load_model(result.merged_dir, dtype="float32").model
    # weights no adapter touches are the float32 base's, not rounded to bf16
    assert torch.equal(merged.norm.weight, base.norm.weight)
    assert not torch.equal(merged.norm.weight, base.norm.weight.bfloat16().float())
    assert torch.equal(merged.tok_emb.weight, base.tok_emb.weight)
    # the adapter is in: the merged float32 model answers as the bf16 model with its adapter did
    ids = torch.tensor([[1, 5, 9, 20, 33, 40, 7, 81, 3]])
    with torch.no_grad():
        tuned, plain, out = lm.model(ids).float(), base(ids), merged(ids)
    assert (out - plain).abs().max() > 0.05  # training moved it
    assert (out - tuned).abs().max() < 0.1 * (out - plain).abs().max()
