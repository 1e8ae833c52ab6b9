"""Samplers match transformers' logits processors, are reproducible, and validate their settings."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from engine.generation.sampling import Sampler, SamplerSettings, apply_penalties, filter_logits

VOCAB = 512
NO_TRUNCATION = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0}


def _logits(seed: int, vocab: int = VOCAB, scale: float = 3.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=generator) * scale


def _hf_filter(logits: torch.Tensor, s: SamplerSettings) -> torch.Tensor:
    """transformers' warpers, chosen and ordered as ``generate(do_sample=True)`` does."""
    warpers = LogitsProcessorList()
    if s.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(s.temperature))
    if s.top_k:
        warpers.append(TopKLogitsWarper(top_k=s.top_k))
    if s.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=s.top_p))
    if s.min_p > 0.0:
        warpers.append(MinPLogitsWarper(min_p=s.min_p))
    if s.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(mass=s.typical_p))
    input_ids = torch.zeros((1, 1), dtype=torch.long)
    return warpers(input_ids, logits.float().unsqueeze(0).clone())[0]


# --- truncation samplers against transformers ---------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"temperature": 0.5},
        {"temperature": 2.5},
        {"top_k": 1},
        {"top_k": 17},
        {"top_k": VOCAB * 2},
        {"top_p": 0.01},
        {"top_p": 0.5},
        {"top_p": 0.95},
        {"min_p": 0.01},
        {"min_p": 0.2},
        {"min_p": 1.0},
        {"typical_p": 0.05},
        {"typical_p": 0.5},
        {"typical_p": 0.95},
    ],
    ids=str,
)
def test_each_sampler_matches_transformers(overrides: dict[str, float]):
    s = SamplerSettings(**{"temperature": 1.0, **NO_TRUNCATION, **overrides})
    for seed in range(5):
        logits = _logits(seed)
        ours = filter_logits(logits, s)
        assert ours.dtype == torch.float32
        assert torch.equal(ours, _hf_filter(logits, s)), f"seed {seed}"
        assert torch.isfinite(ours).any()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    temperature=st.floats(0.05, 5.0),
    top_k=st.integers(0, 100),
    top_p=st.floats(0.01, 1.0),
    min_p=st.floats(0.0, 1.0),
    typical_p=st.floats(0.01, 1.0),
)
def test_sampler_chain_matches_transformers(
    seed: int, temperature: float, top_k: int, top_p: float, min_p: float, typical_p: float
):
    s = SamplerSettings(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p)
    logits = _logits(seed)
    ours = filter_logits(logits, s)
    assert torch.equal(ours, _hf_filter(logits, s))
    assert torch.isfinite(ours).sum() >= 1


def test_default_settings_match_transformers():
    s = SamplerSettings()
    for seed in range(10):
        logits = _logits(seed, vocab=32_000, scale=4.0)
        assert torch.equal(filter_logits(logits, s), _hf_filter(logits, s))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_filtered_in_float32(dtype: torch.dtype):
    logits = _logits(3).to(dtype)
    s = SamplerSettings(temperature=0.8, top_k=50, top_p=0.9)
    ours = filter_logits(logits, s)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, filter_logits(logits.float(), s))
    penalized = apply_penalties(logits, [1, 2, 2], SamplerSettings(repetition_penalty=1.3))
    assert penalized.dtype == torch.float32


def test_greedy_filter_keeps_only_the_argmax():
    logits = _logits(7)
    kept = filter_logits(logits, SamplerSettings.greedy())
    best = int(logits.argmax())
    assert kept[best] == logits[best]
    assert torch.isinf(kept).sum() == VOCAB - 1


# --- penalties --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0, 10.0])
def test_repetition_penalty_matches_transformers(penalty: float):
    logits = _logits(11)
    history = [5, 9, 5, 300, 0, 511, 9, 9]
    s = SamplerSettings(repetition_penalty=penalty, repetition_window=0)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([history]), logits.unsqueeze(0).clone())[0]
    assert torch.equal(apply_penalties(logits, history, s), expected)
    assert torch.equal(apply_penalties(logits, torch.tensor(history, dtype=torch.int32), s), expected)


def test_repetition_window_only_counts_recent_tokens():
    logits = _logits(12)
    history = list(range(100))
    s = SamplerSettings(repetition_penalty=1.5, repetition_window=10)
    expected = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([history[-10:]]), logits.unsqueeze(0).clone())[0]
    assert torch.equal(apply_penalties(logits, history, s), expected)
    assert torch.equal(apply_penalties(logits, history[:90], s)[90:], logits[90:])


@pytest.mark.parametrize(("presence", "frequency", "window"), [(0.5, 0.0, 0), (0.0, 0.3, 0), (1.5, -0.7, 6)])
def test_presence_and_frequency_penalties_match_counts(presence: float, frequency: float, window: int):
    logits = _logits(13)
    history = [3, 3, 3, 7, 8, 8, 100, 3, 7]
    s = SamplerSettings(presence_penalty=presence, frequency_penalty=frequency, repetition_window=window)
    counts = Counter(history[-window:] if window else history)
    expected = logits.clone()
    for token, count in counts.items():
        expected[token] -= presence + frequency * count
    torch.testing.assert_close(apply_penalties(logits, history, s), expected, rtol=0, atol=1e-6)


def test_penalties_leave_the_input_alone_and_handle_edge_cases():
    logits = _logits(14)
    original = logits.clone()
    s = SamplerSettings(repetition_penalty=2.0, presence_penalty=1.0, frequency_penalty=1.0)
    out = apply_penalties(logits, [1, 2, VOCAB + 5], s)  # an id beyond the output head is ignored
    assert torch.equal(logits, original)
    assert out.data_ptr() != logits.data_ptr()
    assert torch.equal(out[3:], logits[3:]) and not torch.equal(out[1:3], logits[1:3])
    assert torch.equal(apply_penalties(logits, [], s), logits)
    unchanged = apply_penalties(logits, [1, 2, 3], SamplerSettings())
    assert torch.equal(unchanged, logits) and unchanged.data_ptr() != logits.data_ptr()


# --- the sampler ------------------------------------------------------------------------------------------


def _draw(sampler: Sampler, steps: int = 40) -> list[int]:
    history: list[int] = []
    for step in range(steps):
        token, _ = sampler(_logits(step, scale=1.0), history)
        history.append(token)
    return history


def test_same_seed_gives_the_same_tokens_and_different_seeds_differ():
    s = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    first = _draw(Sampler(s))
    assert _draw(Sampler(s)) == first
    assert _draw(Sampler(SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1235))) != first


def test_random_seed_is_exposed_and_replays():
    sampler = Sampler(SamplerSettings(temperature=1.0, top_k=0))
    assert isinstance(sampler.seed, int) and sampler.seed >= 0
    tokens = _draw(sampler, steps=20)
    assert _draw(Sampler(SamplerSettings(temperature=1.0, top_k=0, seed=sampler.seed)), steps=20) == tokens


def test_greedy_picks_the_argmax_of_the_penalized_logits():
    logits = _logits(21)
    best = int(logits.argmax())
    token, log_probs = Sampler(SamplerSettings.greedy())(logits, [])
    assert token == best
    torch.testing.assert_close(log_probs, torch.log_softmax(logits, -1))
    penalized = Sampler(SamplerSettings.greedy(repetition_penalty=10.0))(logits, [best])[0]
    assert penalized != best
    assert penalized == int(apply_penalties(logits, [best], SamplerSettings(repetition_penalty=10.0)).argmax())


def test_returned_log_probs_are_the_filtered_distribution():
    logits = _logits(22).to(torch.bfloat16)
    s = SamplerSettings(temperature=0.9, top_k=30, top_p=0.8, repetition_penalty=1.2, seed=5)
    token, log_probs = Sampler(s)(logits, [4, 5, 6])
    expected = torch.log_softmax(filter_logits(apply_penalties(logits, [4, 5, 6], s), s), -1)
    assert log_probs.dtype == torch.float32 and log_probs.shape == (VOCAB,)
    assert torch.equal(log_probs, expected)
    assert math.isfinite(log_probs[token]) and math.isclose(float(log_probs.exp().sum()), 1.0, rel_tol=1e-5)


def test_sampler_rejects_batched_logits():
    with pytest.raises(ValueError, match="1-D"):
        Sampler(SamplerSettings(seed=0))(torch.zeros(2, VOCAB), [])


# Chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_CRITICAL = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12}


def test_sampling_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.5, 1.2, 1.0, 0.3, 0.0, -0.5, -1.0, -3.0, -6.0])
    s = SamplerSettings(temperature=0.8, top_k=8, top_p=0.97, min_p=0.02, seed=2024)
    expected = torch.softmax(filter_logits(logits, s), -1)
    kept = torch.nonzero(expected > 0).flatten().tolist()
    assert 4 <= len(kept) < len(logits)
    sampler = Sampler(s)
    draws = 6000
    counts = Counter(sampler(logits, [])[0] for _ in range(draws))
    assert set(counts) <= set(kept)
    chi2 = sum((counts[t] - draws * float(expected[t])) ** 2 / (draws * float(expected[t])) for t in kept)
    assert chi2 < CHI2_CRITICAL[len(kept) - 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampler_runs_on_the_logits_device():
    s = SamplerSettings(repetition_penalty=1.2, presence_penalty=0.5, seed=9)
    logits = _logits(30).cuda().half()
    token, log_probs = Sampler(s, device="cuda")(logits, torch.tensor([1, 2, 3], device="cuda"))
    assert log_probs.device.type == "cuda" and log_probs.dtype == torch.float32
    assert math.isfinite(float(log_probs[token]))
    cpu_generator_token, _ = Sampler(s)(logits, [1, 2, 3])
    assert 0 <= cpu_generator_token < VOCAB


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -0.1, r"temperature must be in \[0, 5\], got -0.1"),
        ("temperature", 5.5, r"temperature must be in \[0, 5\]"),
        ("temperature", float("nan"), r"temperature must be a number in \[0, 5\]"),
        ("temperature", "hot", r"temperature must be a number in \[0, 5\], got 'hot'"),
        ("temperature", True, r"temperature must be a number"),
        ("top_k", -1, r"top_k must be >= 0, got -1"),
        ("top_k", 2.5, r"top_k must be an integer >= 0"),
        ("top_k", None, r"top_k must be an integer >= 0"),
        ("top_p", 0.0, r"top_p must be in \(0, 1\], got 0.0"),
        ("top_p", 1.5, r"top_p must be in \(0, 1\], got 1.5"),
        ("min_p", -0.01, r"min_p must be in \[0, 1\]"),
        ("min_p", 1.01, r"min_p must be in \[0, 1\]"),
        ("typical_p", 0, r"typical_p must be in \(0, 1\]"),
        ("typical_p", 2.0, r"typical_p must be in \(0, 1\]"),
        ("repetition_penalty", 0.0, r"repetition_penalty must be in \(0, 10\]"),
        ("repetition_penalty", 11.0, r"repetition_penalty must be in \(0, 10\]"),
        ("repetition_penalty", float("inf"), r"repetition_penalty must be in \(0, 10\]"),
        ("repetition_window", -5, r"repetition_window must be >= 0"),
        ("repetition_window", 1.0, r"repetition_window must be an integer >= 0"),
        ("presence_penalty", 2.5, r"presence_penalty must be in \[-2, 2\]"),
        ("presence_penalty", -2.01, r"presence_penalty must be in \[-2, 2\]"),
        ("frequency_penalty", 3, r"frequency_penalty must be in \[-2, 2\]"),
        ("frequency_penalty", "0.1", r"frequency_penalty must be a number in \[-2, 2\]"),
        ("seed", -1, r"seed must be in \[0, 18446744073709551615\]"),
        ("seed", 2**64, r"seed must be in \[0, 18446744073709551615\]"),
        ("seed", 1.0, r"seed must be an integer"),
    ],
)
def test_invalid_settings_raise_value_error_naming_field_and_range(field: str, value: object, message: str):
    with pytest.raises(ValueError, match=message):
        SamplerSettings(**{field: value})


def test_boundary_settings_are_accepted():
    SamplerSettings(temperature=0, top_k=0, top_p=1, min_p=1, typical_p=1, repetition_penalty=10, seed=0)
    SamplerSettings(temperature=5, min_p=0, presence_penalty=-2, frequency_penalty=2, seed=2**64 - 1)
    assert SamplerSettings.greedy().is_greedy and not SamplerSettings().is_greedy
    assert SamplerSettings.greedy(top_k=3).top_k == 3
    with pytest.raises(ValueError, match="top_p"):
        SamplerSettings.greedy(top_p=2.0)
