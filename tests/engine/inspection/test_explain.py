"""The numbers behind "How it works", on the default model and on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch

from engine.generation.sampling import Sampler, SamplerSettings, apply_penalties, filter_logits
from engine.inspection.explain import (
    embedding_map,
    explain,
    nearest_neighbours,
    next_token_distribution,
    pca_2d,
    rotary_angles,
    sampler_steps,
    suggest_heads,
    swap_words,
    tokens,
    word_order_demo,
)
from engine.loading.loader import load_model
from tests.engine.tiny_models import FAMILIES


@pytest.fixture(scope="module")
def lm():
    return load_model(None)


@pytest.fixture(scope="module")
def walk(lm):
    ids = lm.tokenizer.encode("The cat chased the mouse because it was")
    return explain(lm.model, lm.tokenizer, ids, SamplerSettings(seed=7))


def test_tokens_mark_pieces_that_continue_a_word(lm):
    ids = lm.tokenizer.encode("unbelievably good")
    toks = tokens(lm.tokenizer, ids)
    assert [t.id for t in toks] == ids and "".join(t.piece for t in toks) == "unbelievably good"
    assert not toks[0].continues_word and any(t.continues_word for t in toks[1:-1])
    assert not toks[-1].continues_word  # " good" starts a new word


def test_neighbours_are_sorted_by_cosine_similarity_and_exclude_the_token(lm):
    king = lm.tokenizer.encode(" king")[0]
    found = nearest_neighbours(lm.model, lm.tokenizer, [king], k=10)[king]
    w = lm.model.tok_emb.weight.detach().float()
    direct = torch.nn.functional.cosine_similarity(w[king][None], w, dim=-1)
    direct[king] = -2
    assert [n.id for n in found] == torch.topk(direct, 10).indices.tolist()
    assert all(abs(n.similarity - float(direct[n.id])) < 1e-4 for n in found)
    sims = [n.similarity for n in found]
    assert sims == sorted(sims, reverse=True) and king not in [n.id for n in found]
    assert " queen" in [n.text for n in found]


def test_projection_is_deterministic_and_centred(lm):
    x = torch.randn(12, 32, generator=torch.Generator().manual_seed(0))
    a, b = pca_2d(x), pca_2d(x.clone())
    assert torch.equal(a, b) and a.shape == (12, 2)
    assert a.mean(0).abs().max() < 1e-5 and a[:, 0].var() >= a[:, 1].var()
    ids = lm.tokenizer.encode("The king and the queen")
    nb = nearest_neighbours(lm.model, lm.tokenizer, ids)
    first, second = embedding_map(lm.model, lm.tokenizer, ids, nb), embedding_map(lm.model, lm.tokenizer, ids, nb)
    assert first == second and sum(p.in_prompt for p in first) == len(set(ids))


def test_rotary_angles_are_position_times_frequency(lm):
    angles = rotary_angles(lm.model, [0, 1, 5])
    inv = lm.model.rotary.inv_freq
    assert torch.allclose(angles, torch.stack([0 * inv, inv, 5 * inv]))
    assert angles.shape == (3, lm.config.rotary_dim // 2)


def test_swapping_word_order_changes_the_distribution(lm):
    assert swap_words("cats chase mice") == "mice chase cats"
    assert swap_words("The cat chased the mouse.") == "The mouse chased the cat."
    demo = word_order_demo(lm.model, lm.tokenizer, "cats chase mice", "mice chase cats")
    assert demo.difference > 0.05
    assert [c.id for c in demo.top] != [c.id for c in demo.swapped_top] or demo.top[0].logprob != pytest.approx(
        demo.swapped_top[0].logprob, abs=1e-3
    )


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05),
        SamplerSettings(temperature=1.3, top_k=0, top_p=1.0, min_p=0.1, repetition_penalty=1.3),
        SamplerSettings(temperature=0.0),
    ],
)
def test_sampler_before_after_matches_the_sampler(walk, lm, settings):
    logits = walk.inspection.logits[-1]
    steps = sampler_steps(logits, walk.ids, settings, lm.tokenizer, k=10)
    final = filter_logits(apply_penalties(logits, walk.ids, settings), settings).log_softmax(-1)
    last = steps[-1]
    for c in last.after:
        assert c.logprob == pytest.approx(float(final[c.id]), abs=1e-5) or c.logprob == float(final[c.id])
    assert last.kept_after == int(torch.isfinite(final).sum())
    for a, b in zip(steps, steps[1:], strict=False):  # each step starts where the one before ended
        assert [c.logprob for c in a.after] == [c.logprob for c in b.before]
    if not settings.is_greedy:
        _, drawn_from = Sampler(settings)(logits, walk.ids)
        assert all(
            c.logprob == pytest.approx(float(drawn_from[c.id]), abs=1e-5)
            for c in last.after
            if math.isfinite(c.logprob)
        )
    names = [s.name for s in steps]
    assert names == (
        ["greedy"]
        if settings.is_greedy
        else [n for n in ("penalties", "temperature", "top-k", "top-p", "min-p") if n in names]
    )


def test_explain_on_the_default_model(walk, lm):
    assert walk.ids == lm.tokenizer.encode("The cat chased the mouse because it was")
    assert len(walk.lens) == lm.config.n_layer and len(walk.sharpening) == lm.config.n_layer
    assert walk.lens[-1][0].id == walk.inspection.top_raw[-1][0].id
    assert walk.word_order is not None and walk.word_order.swapped_text == "The mouse chased the cat because it was"
    assert walk.positions["kind"] == "rotary" and walk.positions["angles"].shape[0] == len(walk.ids)
    # The pronoun's suggested heads look back past the previous word, at the nouns.
    it = len(walk.ids) - 2
    heads = suggest_heads(walk.inspection.attention, it)
    assert len(heads) == 5 and heads == sorted(heads, key=lambda h: -h[2])
    layer, head, share = heads[0]
    row = walk.inspection.attention[layer][head, it].float()
    assert share == pytest.approx(float(row[1 : it - 1].sum()), abs=1e-4)
    # The sampled token is the one a seeded Sampler draws.
    token, _ = Sampler(SamplerSettings(seed=7))(walk.inspection.logits[-1], walk.ids)
    assert walk.sampled_id == token


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_explain_on_tiny_models(tiny_models, arch):
    folder, _ = tiny_models(arch)
    tiny = load_model(folder)
    ids = tiny.tokenizer.encode("w1 w2 w3 w4 w5 w6")
    e = explain(tiny.model, tiny.tokenizer, ids, SamplerSettings(seed=1))
    assert len(e.tokens) == len(ids) and len(e.lens) == tiny.config.n_layer
    if arch == "gpt2":
        assert e.positions["kind"] == "learned"
        assert torch.equal(e.positions["vectors"], tiny.model.pos_emb.weight[: len(ids)].float())
        with pytest.raises(ValueError, match="learns position vectors"):
            rotary_angles(tiny.model, 3)
    else:
        assert e.positions["kind"] == "rotary"
        assert torch.allclose(e.positions["angles"][3], 3 * tiny.model.rotary.inv_freq)
    for t, found in e.neighbours.items():
        assert t not in [n.id for n in found]
        assert [n.similarity for n in found] == sorted((n.similarity for n in found), reverse=True)
    assert e.word_order is not None and e.word_order.swapped_text == "w6 w2 w3 w4 w5 w1"
    assert 0.0 < e.word_order.difference <= 1.0
    assert e.steps and e.steps[-1].kept_after >= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_the_walk_covers_every_new_family(tiny_models, family):
    """How it works on each family added later (rope-free layers, local and global rope, post-norms, experts):
    every step computed, its next-token distribution the model's own."""
    folder, _ = tiny_models(family)
    tiny = load_model(folder, dtype="float32")
    ids = [5, 9, 20, 33, 40, 7]
    walk = explain(tiny.model, tiny.tokenizer, ids, SamplerSettings(seed=3))
    with torch.inference_mode():
        want = torch.log_softmax(tiny.model(torch.tensor([ids]))[0, -1].float(), dim=-1)
    assert torch.allclose(next_token_distribution(tiny.model, ids), want, atol=1e-5)
    assert len(walk.tokens) == len(ids) and 0 <= walk.sampled_id < tiny.config.vocab_size
    assert len(walk.lens) == tiny.config.n_layer and len(walk.sharpening) == tiny.config.n_layer
