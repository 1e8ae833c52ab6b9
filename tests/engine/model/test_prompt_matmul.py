"""How packed layers multiply a prompt: the plan follows the timed costs, the timing is kept per machine and
shape, and a loaded model's packed layers all follow the plan its loader timed."""

from __future__ import annotations

import json

import pytest
import torch

from engine.model import prompt_matmul as pm
from engine.model.int4_linear import DENSE_ROWS, Int4Linear

ROWS = pm.ROWS


def _times(int4, bf16, float32, unpack_bf16, unpack_float32):
    return {
        "int4": int4,
        "bf16": bf16,
        "float32": float32,
        "unpack bf16": unpack_bf16,
        "unpack float32": unpack_float32,
    }


def test_a_cpu_with_native_bf16_multiplies_every_prompt_in_bf16():
    # Zen 4 at 128 rows by 3072 x 576: bf16 beats the kernel already, float32 never beats bf16
    assert pm.plan(_times(3000, 1800, 3900, 700, 900)) == ((ROWS, "bf16"),)


def test_where_bf16_is_emulated_float32_takes_over_from_the_kernel_past_the_crossing():
    # the kernel 40 µs a row; float32 8000 µs of unpacking and 20 µs a row, equal to the kernel at 400 rows;
    # bf16 20 µs a row dearer than the kernel
    plan = pm.plan(_times(40 * ROWS, 60 * ROWS + 500, 8000 + 20 * ROWS, 500, 8000))
    assert plan == ((ROWS, "int4"), (401, "float32"))
    costs = {"int4": lambda r: 40 * r, "float32": lambda r: 8000 + 20 * r, "bf16": lambda r: 500 + 60 * r}
    for rows in (ROWS, 399, 400, 401, 2000):  # the plan's format is the cheapest at every length
        chosen = [name for first, name in plan if rows >= first][-1]
        assert costs[chosen](rows) == min(c(rows) for c in costs.values())


def test_a_cpu_where_nothing_beats_the_kernel_keeps_it():
    assert pm.plan(_times(1000, 5000, 4000, 900, 800)) == ((ROWS, "int4"),)


def _packed(in_features: int, out_features: int) -> Int4Linear:
    layer = Int4Linear(in_features, out_features, bias=False)
    gen = torch.Generator().manual_seed(out_features)
    layer.packed = torch.randint(0, 256, layer.packed.shape, dtype=torch.uint8, generator=gen)
    layer.scale_zero = (torch.rand(layer.scale_zero.shape, generator=gen) * 0.01).to(torch.bfloat16)
    return layer


def _packed_tiny_model() -> torch.nn.Module:
    """Packed layers of three shapes: the largest (out 192 x in 128) is timed."""
    return torch.nn.Sequential(_packed(64, 128), _packed(128, 192), _packed(192, 64), torch.nn.Linear(64, 64))


def test_the_largest_packed_layer_is_timed_and_the_times_kept_per_machine_and_shape(tmp_path, monkeypatch):
    model = _packed_tiny_model()
    layer = pm.timed_layer(model)
    assert (layer.in_features, layer.out_features) == (128, 192)
    measured = pm.measure(layer)
    assert set(measured) == set(pm.TIMED) and all(0 < t < 1e7 for t in measured.values())
    assert layer.prompt_plan == Int4Linear.prompt_plan  # timing leaves the layer as it was

    file = tmp_path / "prompt_matmul.json"
    monkeypatch.setattr(pm, "measure", lambda layer: _times(3000, 1800, 3900, 700, 900))
    first = pm.choose(model, file)
    assert (first.plan, first.source) == (((ROWS, "bf16"),), "measured")

    def no_timing(layer):
        raise AssertionError("timed again although this machine's times were kept")

    monkeypatch.setattr(pm, "measure", no_timing)
    again = pm.choose(model, file)
    assert (again.plan, again.source, again.micros) == (first.plan, "cached", first.micros)
    assert (
        again.describe() == f"bf16 from {ROWS} rows (cached at {ROWS} rows: int4 3.0 ms, bf16 1.8 ms, float32 3.9 ms)"
    )
    monkeypatch.setattr(pm, "machine_key", lambda: "another CPU")
    monkeypatch.setattr(pm, "measure", lambda layer: _times(1000, 5000, 4000, 900, 800))
    other = pm.choose(model, file)
    assert (other.plan, other.source) == (((ROWS, "int4"),), "measured")
    assert len(json.loads(file.read_text())) == 2  # both machines' times, side by side

    pm.use(model, other)
    assert all(m.prompt_plan == other.plan for m in model.modules() if isinstance(m, Int4Linear))


def test_a_model_without_packed_layers_has_nothing_to_time(tmp_path):
    assert pm.choose(torch.nn.Sequential(torch.nn.Linear(64, 64)), tmp_path / "prompt_matmul.json") is None
    assert not (tmp_path / "prompt_matmul.json").exists()


@pytest.mark.parametrize("junk", [b"\x00not json", b"[1, 2]", b'{"k": {"micros": {"int4": "rm -rf"}}}'])
def test_a_damaged_file_is_timed_again(tmp_path, monkeypatch, junk):
    file = tmp_path / "prompt_matmul.json"
    file.write_bytes(junk)
    monkeypatch.setattr(pm, "measure", lambda layer: _times(1000, 5000, 4000, 900, 800))
    assert pm.choose(_packed_tiny_model(), file).source == "measured"


def test_the_loader_gives_every_packed_layer_the_plan_it_timed(tmp_path):
    from engine.loading.loader import load_model

    lm = load_model(cache_dir=tmp_path)
    assert lm.prompt_matmul is not None and lm.prompt_matmul.source == "measured"
    packed = [m for m in lm.model.modules() if isinstance(m, Int4Linear)]
    assert len(packed) == 4 * lm.config.n_layer and all(m.prompt_plan == lm.prompt_matmul.plan for m in packed)
    assert lm.prompt_matmul.plan[0][0] == DENSE_ROWS
    assert load_model(cache_dir=tmp_path).prompt_matmul.source == "cached"
