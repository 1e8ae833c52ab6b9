"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) end to end."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.generation import generate
from engine.generation.generate import Generation
from engine.generation.sampling import SamplerSettings
from engine.loading.default_model import FILENAME, default_model_path
from engine.loading.loader import load_model

GREEDY = SamplerSettings(temperature=0.0)


@pytest.fixture(scope="module")
def smollm():
    return load_model(device="cpu", dtype="float32")


def chat_ids(lm, question: str) -> list[int]:
    return lm.encode_prompt(lm.render_chat([{"role": "user", "content": question}]))


@pytest.mark.slow
def test_logits_match_transformers_on_the_same_gguf(smollm):
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = torch.tensor([chat_ids(smollm, "Write a haiku about the sea, then explain it. ñ 東京 🙂")])
    with torch.no_grad():
        expected = reference.eval()(ids).logits
        got = smollm.model(ids)
    assert (got - expected).abs().max().item() <= 1e-4


def test_describes_itself(smollm):
    cfg = smollm.config
    assert (cfg.arch, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head) == ("llama", 30, 576, 9, 3)
    assert cfg.tie_embeddings and smollm.file_format == "gguf"
    assert smollm.weight_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert not smollm.template.is_fallback
    assert smollm.path.name == FILENAME


def test_greedy_answer_names_paris(smollm):
    gen = Generation(
        smollm.model, smollm.tokenizer, chat_ids(smollm, "What is the capital of France?"), GREEDY, max_tokens=40
    )
    events = list(gen)
    assert "Paris" in gen.text
    assert gen.finish_reason == "eos"
    assert "".join(e.text for e in events) == gen.text
    assert gen.text == smollm.tokenizer.decode(gen.ids, skip_special=True)


def test_events_carry_logprobs_and_alternatives(smollm):
    """Under greedy decoding each token is the top alternative, and its logprob is the model's own."""
    prompt = chat_ids(smollm, "Name three colours.")
    gen = Generation(smollm.model, smollm.tokenizer, prompt, GREEDY, max_tokens=6, top_n=4)
    events = list(gen)
    with torch.no_grad():
        logprobs = torch.log_softmax(smollm.model(torch.tensor([prompt + gen.ids])), dim=-1)[0]
    for i, e in enumerate(events):
        assert len(e.top) == 4 and e.top[0].id == e.id
        assert [a.logprob for a in e.top] == sorted((a.logprob for a in e.top), reverse=True)
        assert e.logprob == pytest.approx(logprobs[len(prompt) - 1 + i, e.id].item(), abs=1e-4)
        assert e.top[0].text == smollm.tokenizer.piece(e.id)


def test_same_seed_same_text(smollm):
    prompt = chat_ids(smollm, "Tell me a story about a fox.")

    def run(seed: int) -> str:
        settings = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        gen = Generation(smollm.model, smollm.tokenizer, prompt, settings, max_tokens=24)
        list(gen)
        return gen.text

    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_stops_on_max_tokens_stop_string_and_cancel(smollm):
    prompt = chat_ids(smollm, "Count from one to twenty in words, separated by commas.")
    gen = Generation(smollm.model, smollm.tokenizer, prompt, GREEDY, max_tokens=5)
    list(gen)
    assert (gen.finish_reason, len(gen.ids)) == ("length", 5)

    full = Generation(smollm.model, smollm.tokenizer, prompt, GREEDY, max_tokens=30)
    list(full)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    cut = Generation(smollm.model, smollm.tokenizer, prompt, GREEDY, max_tokens=30, stop_strings=[stop])
    pieces = "".join(e.text for e in cut)
    assert cut.finish_reason == "stop"
    assert cut.text == pieces == full.text[: full.text.index(stop)]

    flag = threading.Event()
    cancelled = Generation(smollm.model, smollm.tokenizer, prompt, GREEDY, max_tokens=30, should_stop=flag)
    for n, _ in enumerate(cancelled, start=1):
        if n == 3:
            flag.set()
    assert (cancelled.finish_reason, len(cancelled.ids)) == ("cancelled", 3)
    assert cancelled.ids == full.ids[:3]


def test_a_long_prompt_is_prefilled_in_chunks_and_a_stop_ends_it_between_them(smollm, monkeypatch):
    """A prompt of several chunks gives the reply a one-pass prefill gives; a stop during the prefill ends
    the reply after the chunk being computed, with no token (not after the whole prompt)."""
    notes = " ".join(f"The lamp in room {i} is {'red' if i % 3 else 'green'}." for i in range(1, 30))
    prompt = chat_ids(smollm, notes + " Which colour is the lamp in room 9?")
    monkeypatch.setattr(generate, "PREFILL_CHUNK", 10_000)
    smollm.model.drop_cache()  # the whole prompt runs each time, not only what the cache lacks
    one_pass = Generation(smollm.model, smollm.tokenizer, prompt, GREEDY, max_tokens=8)
    first = next(iter(one_pass)).logprob
    list(one_pass)
    monkeypatch.setattr(generate, "PREFILL_CHUNK", 64)
    assert len(prompt) > 3 * 64
    smollm.model.drop_cache()
    chunked = Generation(smollm.model, smollm.tokenizer, prompt, GREEDY, max_tokens=8)
    assert next(iter(chunked)).logprob == pytest.approx(first, abs=1e-3)
    list(chunked)
    assert chunked.ids == one_pass.ids and chunked.text == one_pass.text

    passes: list[int] = []
    run = smollm.model.run
    monkeypatch.setattr(
        smollm.model, "run", lambda tokens, *a, **k: (passes.append(tokens.shape[1]), run(tokens, *a, **k))[1]
    )
    smollm.model.drop_cache()
    stopped = Generation(smollm.model, smollm.tokenizer, prompt, GREEDY, max_tokens=8, should_stop=lambda: True)
    assert list(stopped) == [] and stopped.finish_reason == "cancelled"
    assert passes == [64]


def test_context_limit_ends_generation(smollm):
    prompt = chat_ids(smollm, "Hello")
    gen = Generation(
        smollm.model, smollm.tokenizer, prompt, GREEDY, max_tokens=100, context_length=len(prompt) + 4, ignore_eos=True
    )
    list(gen)
    assert (gen.finish_reason, len(gen.ids)) == ("context", 4)
    with pytest.raises(ValueError, match="context holds"):
        Generation(smollm.model, smollm.tokenizer, prompt, GREEDY, context_length=len(prompt))
