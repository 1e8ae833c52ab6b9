"""The conversation's cache kept between replies (engine/model/transformer.py `reusable_prefix`): a prompt
runs only the tokens the cache does not already hold, and every reply equals the one a fresh prefill
gives, whatever came before (the next turn, an edit, a regenerated reply, other weights, a grown cache)."""

from __future__ import annotations

import pytest
import torch

from engine.finetune.lora import add_lora, lora_disabled, merge_lora
from engine.generation.generate import Generation
from engine.generation.sampling import SamplerSettings
from engine.loading.loader import load_model

GREEDY = SamplerSettings(temperature=0.0)
TOKENS = 12


@pytest.fixture(scope="module")
def lm():
    return load_model(device="cpu", dtype="float32")


def prompt(lm, *turns: str) -> list[int]:
    roles = ("user", "assistant")
    return lm.encode_prompt(lm.render_chat([{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]))


def reply(lm, ids: list[int]) -> Generation:
    gen = Generation(lm.model, lm.tokenizer, ids, GREEDY, max_tokens=TOKENS)
    list(gen)
    return gen


def fresh(lm, ids: list[int]) -> tuple[list[int], list[float]]:
    """The reference: the same prompt on an empty cache."""
    lm.model.drop_cache()
    gen = Generation(lm.model, lm.tokenizer, ids, GREEDY, max_tokens=TOKENS)
    logprobs = [e.logprob for e in gen]
    return gen.ids, logprobs


def warm(lm, ids: list[int], monkeypatch) -> tuple[Generation, list[float], int]:
    """A reply on whatever the cache holds now: the generation, its log-probabilities and how many prompt
    tokens the model ran."""
    ran: list[int] = []
    forward = lm.model.forward  # every pass: prefill chunks through `run`, decoding steps through the eager step
    monkeypatch.setattr(
        lm.model, "forward", lambda tokens, *a, **k: (ran.append(tokens.shape[1]), forward(tokens, *a, **k))[1]
    )
    gen = Generation(lm.model, lm.tokenizer, ids, GREEDY, max_tokens=TOKENS)
    logprobs = [e.logprob for e in gen]
    monkeypatch.undo()
    prompt_ran = sum(ran) - (len(gen.ids) - 1)  # each generated token but the last runs once
    return gen, logprobs, prompt_ran


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def same_reply(got: tuple[list[int], list[float]], expected: tuple[list[int], list[float]]) -> None:
    assert got[0] == expected[0]
    assert max(abs(a - b) for a, b in zip(got[1], expected[1], strict=True)) < 1e-4


def test_the_next_turn_runs_only_its_new_tokens(lm, monkeypatch):
    first = prompt(lm, "Name three rivers in Europe.")
    lm.model.drop_cache()
    answer = reply(lm, first)
    second = prompt(lm, "Name three rivers in Europe.", answer.text, "Which of them is the longest?")
    gen, logprobs, ran = warm(lm, second, monkeypatch)
    assert gen.stats.cached_tokens >= len(first)  # the whole first prompt, and as much of the reply as matches
    assert ran == len(second) - gen.stats.cached_tokens
    same_reply((gen.ids, logprobs), fresh(lm, second))


def test_an_edited_message_runs_from_where_the_prompts_differ(lm, monkeypatch):
    before = prompt(lm, "My cat is called Tom. He is grey and likes the garden. What colour is he?")
    edited = prompt(lm, "My cat is called Tom. He is black and likes the garden. What colour is he?")
    lm.model.drop_cache()
    reply(lm, before)
    gen, logprobs, ran = warm(lm, edited, monkeypatch)
    assert 0 < gen.stats.cached_tokens == common_prefix(before, edited) < len(edited) - 5
    assert ran == len(edited) - gen.stats.cached_tokens
    same_reply((gen.ids, logprobs), fresh(lm, edited))


def test_a_regenerated_reply_runs_only_the_last_prompt_token(lm, monkeypatch):
    ids = prompt(lm, "Write one sentence about the moon.")
    lm.model.drop_cache()
    reply(lm, ids)
    gen, logprobs, ran = warm(lm, ids, monkeypatch)
    assert (gen.stats.cached_tokens, ran) == (len(ids) - 1, 1)
    same_reply((gen.ids, logprobs), fresh(lm, ids))


def test_other_weights_reuse_nothing(lm, monkeypatch):
    ids = prompt(lm, "What is the capital of Italy?")
    lm.model.drop_cache()
    base = reply(lm, ids)
    with torch.no_grad():  # a weight changed in place (what a training step or a merge does)
        lm.model.norm.weight.mul_(1.5)
    try:
        gen, logprobs, ran = warm(lm, ids, monkeypatch)
        assert (gen.stats.cached_tokens, ran) == (0, len(ids))
        same_reply((gen.ids, logprobs), fresh(lm, ids))
    finally:
        with torch.no_grad():
            lm.model.norm.weight.div_(1.5)
    assert fresh(lm, ids)[0] == base.ids


def test_an_adapter_attached_switched_off_or_merged_reuses_nothing(tmp_path, monkeypatch):
    lm = load_model(device="cpu", dtype="float32")
    ids = prompt(lm, "Say hello to the reader.")
    reply(lm, ids)
    layers = add_lora(lm.model, rank=4)
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.normal_(0, 0.02)  # an adapter that changes the outputs
    gen, _, ran = warm(lm, ids, monkeypatch)
    assert (gen.stats.cached_tokens, ran) == (0, len(ids))
    with lora_disabled(lm.model):
        base, base_logprobs, ran = warm(lm, ids, monkeypatch)
        assert (base.stats.cached_tokens, ran) == (0, len(ids))
        same_reply((base.ids, base_logprobs), fresh(lm, ids))
    tuned, tuned_logprobs, ran = warm(lm, ids, monkeypatch)
    assert (tuned.stats.cached_tokens, ran) == (0, len(ids))
    expected = fresh(lm, ids)
    same_reply((tuned.ids, tuned_logprobs), expected)
    merge_lora(lm.model)
    merged, merged_logprobs, ran = warm(lm, ids, monkeypatch)
    assert (merged.stats.cached_tokens, ran) == (0, len(ids))
    assert merged.ids == expected[0]


def test_a_cache_that_grows_keeps_what_it_holds(lm, monkeypatch):
    first = prompt(lm, "Count from one to five.")
    lm.model.drop_cache()
    lm.model.setup_cache(len(first) + TOKENS + 1)  # just enough for the first reply
    answer = reply(lm, first)
    second = prompt(lm, "Count from one to five.", answer.text, "Now count backwards from ten, in words, slowly.")
    gen, logprobs, _ = warm(lm, second, monkeypatch)
    assert lm.model.cache_capacity > len(first) + TOKENS + 1
    assert gen.stats.cached_tokens >= len(first)
    same_reply((gen.ids, logprobs), fresh(lm, second))


def test_another_pass_over_the_cache_is_remembered(lm, monkeypatch):
    """An explanation or comparison pass that writes the cache (`model(ids)` from position 0) leaves it
    holding its own tokens: the next reply reuses what those share with its prompt, and no more."""
    ids = prompt(lm, "Tell me a fact about whales.")
    other = prompt(lm, "Tell me a fact about sharks, please.")
    lm.model.drop_cache()
    reply(lm, ids)
    with torch.inference_mode():
        lm.model(torch.tensor([other]))
    gen, logprobs, ran = warm(lm, ids, monkeypatch)
    assert gen.stats.cached_tokens == common_prefix(ids, other) and ran == len(ids) - gen.stats.cached_tokens
    same_reply((gen.ids, logprobs), fresh(lm, ids))


def test_a_pass_that_fails_half_way_leaves_no_record_of_its_tokens(lm, monkeypatch):
    """A pass stopped by an error in its 20th layer has written the first 19 layers' keys and values only:
    the next reply runs those positions again."""
    ids = prompt(lm, "List two colours of the rainbow.")
    edited = prompt(lm, "List two colours of the sky at night.")
    lm.model.drop_cache()
    reply(lm, ids)
    layer = lm.model.layers[19]

    def broken(*_args, **_kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(layer, "forward", broken)
    with pytest.raises(RuntimeError, match="injected"):
        reply(lm, edited)
    monkeypatch.undo()
    shared = common_prefix(ids, edited)
    assert lm.model.cached_ids == ids[:shared]
    gen, logprobs, ran = warm(lm, edited, monkeypatch)
    assert gen.stats.cached_tokens == shared and ran == len(edited) - shared
    same_reply((gen.ids, logprobs), fresh(lm, edited))


def test_a_model_moved_to_another_dtype_gets_a_new_cache(monkeypatch):
    """``model.to(dtype)`` keeps each parameter object and its version: the cache's own dtype tells."""
    lm = load_model(device="cpu", dtype="float32")
    ids = prompt(lm, "Name a planet.")
    reply(lm, ids)
    lm.model.to(torch.bfloat16)
    gen, logprobs, ran = warm(lm, ids, monkeypatch)
    assert (gen.stats.cached_tokens, ran) == (0, len(ids)) and lm.model.caches[0].k.dtype == torch.bfloat16
    assert (gen.ids, logprobs) == fresh(lm, ids)
