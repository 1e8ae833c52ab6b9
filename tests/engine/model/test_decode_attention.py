"""The decode attention kernel: each candidate computes the same attention, the faster one is chosen on this
machine, and the choice is kept per machine and shape."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from engine.model import decode_attention as da


def _qkv(dtype, keys=40):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 1, 16, generator=gen)
    k, v = torch.randn(1, 2, keys, 16, generator=gen), torch.randn(1, 2, keys, 16, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_every_kernel_computes_the_same_attention():
    q, k, v = _qkv(torch.bfloat16)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    for kernel in da.KERNELS:
        y = da.attend(kernel, q, k, v, gqa=True)
        assert y.dtype == torch.bfloat16 and y.shape == exact.shape
        assert (y.float() - exact).abs().max() < 0.02, kernel  # bf16 rounding of the inputs and output only
    f32 = da.attend("sdpa_f32", q, k, v, gqa=True)
    in_f32 = da.attend("sdpa_f32", q.float(), k.float(), v.float(), gqa=True)
    assert torch.equal(f32, in_f32.to(torch.bfloat16))  # float32 inside, rounded once at the end


@pytest.mark.parametrize(("n_head", "n_kv_head", "head_dim"), [(6, 2, 16), (9, 3, 64), (4, 1, 256), (8, 8, 32)])
def test_one_query_attends_with_each_groups_heads_folded_into_rows(n_head, n_kv_head, head_dim):
    """A decoding step's query heads folded over their group's keys: the grouped attention, to float32's
    rounding, in either kernel."""
    gen = torch.Generator().manual_seed(n_head)
    q = torch.randn(1, n_head, 1, head_dim, generator=gen)
    k, v = (torch.randn(1, n_kv_head, 300, head_dim, generator=gen) for _ in range(2))
    gqa = n_head != n_kv_head
    grouped = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), enable_gqa=gqa)
    for kernel in da.KERNELS:
        y = da.attend(kernel, q, k, v, gqa=gqa)
        assert y.shape == (1, n_head, 1, head_dim)
        assert (y.double() - grouped).abs().max() < 1e-6


def test_the_faster_kernel_is_chosen_and_kept(tmp_path, monkeypatch):
    file = tmp_path / "decode_attention.json"
    monkeypatch.setattr(da, "measure", lambda *a: {"sdpa": 380.0, "sdpa_f32": 79.0})
    first = da.choose(9, 3, 64, torch.bfloat16, "cpu", file)
    assert (first.kernel, first.source) == ("sdpa_f32", "measured") and first.micros["sdpa"] == 380.0

    def no_timing(*a):
        raise AssertionError("timed again although this machine's choice was kept")

    monkeypatch.setattr(da, "measure", no_timing)
    again = da.choose(9, 3, 64, torch.bfloat16, "cpu", file)
    assert (again.kernel, again.source) == ("sdpa_f32", "cached") and again.micros == first.micros
    assert "sdpa_f32 (cached: sdpa 380 µs, sdpa_f32 79 µs)" == again.describe()

    monkeypatch.setattr(da, "measure", lambda *a: {"sdpa": 30.0, "sdpa_f32": 70.0})
    other_shape = da.choose(16, 16, 64, torch.bfloat16, "cpu", file)  # another shape is timed for itself
    assert (other_shape.kernel, other_shape.source) == ("sdpa", "measured")  # bf16 more than twice as fast
    monkeypatch.setattr(da, "measure", lambda *a: {"sdpa": 40.0, "sdpa_f32": 60.0})
    assert da.choose(4, 2, 16, torch.bfloat16, "cpu", file).kernel == "sdpa_f32"  # 1.5x: not worth the rounding
    monkeypatch.setattr(da, "machine_key", lambda: "another CPU")
    assert da.choose(9, 3, 64, torch.bfloat16, "cpu", file).source == "measured"  # another machine too


def test_a_gain_near_the_margin_is_timed_again_before_it_is_kept(tmp_path, monkeypatch):
    """A busy moment can slow one kernel's timing; a gain near `MIN_GAIN` is timed again and each kernel's
    best kept, so one noisy measurement does not decide for this machine from then on."""
    times = iter([{"sdpa": 176.0, "sdpa_f32": 300.0}, {"sdpa": 77.0, "sdpa_f32": 290.0}])
    calls = []
    monkeypatch.setattr(da, "measure", lambda *a: calls.append(a) or next(times))
    choice = da.choose(9, 3, 64, torch.bfloat16, "cpu", tmp_path / "d.json")
    assert len(calls) == 2 and choice.kernel == "sdpa" and choice.micros == {"sdpa": 77.0, "sdpa_f32": 290.0}
    calls.clear()
    monkeypatch.setattr(da, "measure", lambda *a: calls.append(a) or {"sdpa": 79.0, "sdpa_f32": 380.0})
    assert da.choose(4, 2, 16, torch.bfloat16, "cpu", tmp_path / "d.json").kernel == "sdpa"
    assert len(calls) == 1  # a clear gain: timed once
    calls.clear()
    monkeypatch.setattr(da, "measure", lambda *a: calls.append(a) or {"sdpa": 40.0, "sdpa_f32": 60.0})
    assert da.choose(2, 2, 16, torch.bfloat16, "cpu", tmp_path / "d.json").kernel == "sdpa_f32"
    assert len(calls) == 1 + da.RETRIES  # near a tie every time: timed three times, then not worth it


def test_float32_attention_keeps_a_float32_cache_holding_the_bf16_values():
    """The float32 kernel's cache holds exactly what a bf16 cache would hold for the same inputs (the
    projections are bf16): the first layer's rows, whose input does not depend on attention, are equal.
    Switching kernels drops a cache of the other dtype."""
    from engine.loading.loader import load_model

    lm = load_model(dtype="bfloat16", pack=False)
    model = lm.model
    ids = torch.tensor([lm.encode_prompt("The ferry leaves the island at seven and returns")])
    rows = {}
    for kernel in da.KERNELS:
        model.set_decode_attention(da.DecodeAttention(kernel))
        assert model.caches is None or model.caches[0].k.dtype == model.cache_dtype
        model.grow_cache(ids.shape[1] + 4)
        assert model.caches[0].k.dtype == (torch.float32 if kernel == "sdpa_f32" else torch.bfloat16)
        with torch.inference_mode():
            model(ids, 0)
        rows[kernel] = [t[:, :, : ids.shape[1]].float() for t in (model.caches[0].k, model.caches[0].v)]
    assert all(torch.equal(a, b) for a, b in zip(rows["sdpa"], rows["sdpa_f32"], strict=True))
    model.set_decode_attention(da.DecodeAttention("sdpa"))
    assert model.caches is None and model.cached_ids == []


def test_nothing_to_choose_in_float32_and_a_damaged_file_is_timed_again(tmp_path, monkeypatch):
    assert da.choose(9, 3, 64, torch.float32, "cpu", None) == da.DecodeAttention("sdpa")
    file = tmp_path / "decode_attention.json"
    monkeypatch.setattr(da, "measure", lambda *a: {"sdpa": 10.0, "sdpa_f32": 25.0})
    key = f"{da.machine_key()}|9x3x64|bfloat16"
    entries = ({"micros": {"sdpa": "rm -rf", "sdpa_f32": 1}}, {"micros": {"sdpa": -1, "sdpa_f32": 0}}, {"micros": 3})
    for junk in (b"\x00not json", b"[1, 2]", *(json.dumps({key: e}).encode() for e in entries)):
        file.write_bytes(junk)
        assert da.choose(9, 3, 64, torch.bfloat16, "cpu", file).source == "measured"
    file.unlink()
    file.mkdir()  # cannot be written: measured, and no error
    assert da.choose(9, 3, 64, torch.bfloat16, "cpu", file).kernel == "sdpa"


def test_the_real_measurement_times_both_kernels():
    micros = da.measure(4, 2, 16, torch.bfloat16)
    assert set(micros) == set(da.KERNELS) and all(0 < t < 1e6 for t in micros.values())


@pytest.mark.parametrize("kernel", da.KERNELS)
def test_decoding_with_each_kernel_matches_the_full_pass(kernel):
    from engine.loading.loader import load_model

    lm = load_model(dtype="bfloat16", pack=False)
    model = lm.model
    model.set_decode_attention(da.DecodeAttention(kernel))
    ids = torch.tensor([lm.encode_prompt("The lighthouse keeper wrote in her log that the")])
    with torch.inference_mode():
        full = model(ids)[0, -1].float()
        model.setup_cache(ids.shape[1] + 4)
        model(ids[:, :-1], 0)
        step = model(ids[:, -1:], ids.shape[1] - 1)[0, -1].float()
    assert full.argmax() == step.argmax()
    assert (full - step).abs().max() < 0.5  # bf16: logits of 16-32 round to steps of 0.125
