"""Streaming generation: prefill the prompt once, then one token at a time from the KV cache.

The prompt's beginning that the cache already holds (the conversation so far, from the previous reply) is
not run again: only the new tokens are prefilled (`Transformer.reusable_prefix`, by longest common prefix
as llama.cpp's server slots do). An edit, a regenerated reply, another conversation or other weights share
less or nothing with what the cache holds, and run from where they differ.

A long prompt is prefilled in chunks of `PREFILL_CHUNK` tokens with the stop signal checked between them,
so a reply stopped (or a server client gone) during a prompt of thousands of tokens ends within one chunk
instead of after the whole prompt (8,000 tokens: about 35 s on a 2-core CPU).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from engine.generation.sampling import Sampler, SamplerSettings
from engine.model import Transformer
from engine.stop_signal import StopSignal, is_stopped
from engine.text.detokenize import StreamingDetokenizer
from engine.text.stop_strings import StopMatcher
from engine.text.tokenizer import Tokenizer

CACHE_STEP = 256  # the KV cache grows in steps of this many positions
PREFILL_CHUNK = 512  # prompt tokens a prefill pass takes before it looks at the stop signal again


@dataclass(frozen=True)
class Alternative:
    id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its id, the text it completed (may be empty while a UTF-8 character or a
    possible stop string is incomplete), its log-probability under the model and the model's top
    alternatives at that position (raw, before sampling settings)."""

    id: int
    text: str
    logprob: float
    top: tuple[Alternative, ...]


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values the cache already held (not run again)
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        run = self.prompt_tokens - self.cached_tokens
        return run / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        # The first generated token comes out of the prefill; the others each cost one decode step.
        steps = self.generated_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds else 0.0


@dataclass
class Generation:
    """Iterate over it for `TokenEvent`s. Afterwards `finish_reason` is one of ``eos``, ``stop``
    (a stop string), ``length`` (max_tokens), ``context`` (the context window is full) or
    ``cancelled``, and `text` is the whole reply (stop string excluded)."""

    model: Transformer
    tokenizer: Tokenizer
    prompt_ids: Sequence[int]
    settings: SamplerSettings = field(default_factory=SamplerSettings)
    max_tokens: int = 256
    stop_strings: Sequence[str] = ()
    should_stop: StopSignal = None
    top_n: int = 5
    context_length: int | None = None
    ignore_eos: bool = False  # keep going past end-of-text (benchmarks)
    ids: list[int] = field(default_factory=list, init=False)
    text: str = field(default="", init=False)
    finish_reason: str | None = field(default=None, init=False)
    seed: int | None = field(default=None, init=False)  # the seed used: replays the reply (in bf16, on an equal cache)
    stats: GenerationStats = field(default_factory=GenerationStats, init=False)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        limit = min(self.context_length or self.model.cfg.max_seq_len, self.model.cfg.max_seq_len)
        self.context_length = limit
        if not self.prompt_ids:
            raise ValueError("the prompt is empty")
        if len(self.prompt_ids) >= limit:
            raise ValueError(f"the prompt has {len(self.prompt_ids)} tokens; the context holds {limit}")

    def _event(self, token: int, logprobs: torch.Tensor, text: str) -> TokenEvent:
        top = torch.topk(logprobs, min(self.top_n, logprobs.shape[-1]))
        alternatives = tuple(
            Alternative(int(i), self.tokenizer.piece(int(i)), float(lp))
            for lp, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
        return TokenEvent(token, text, float(logprobs[token]), alternatives)

    def _prefill(self, prompt: list[int], cached: int) -> torch.Tensor | None:
        """The logits after the whole prompt, whose first ``cached`` positions the cache holds already, or
        None when stopped between two chunks of it."""
        model = self.model
        for start in range(cached, len(prompt), PREFILL_CHUNK):
            if start > cached and is_stopped(self.should_stop):
                return None
            chunk = torch.tensor([prompt[start : start + PREFILL_CHUNK]], device=model.device)
            logits = model(chunk, start, last_only=True)[0, -1]
        return logits

    def __iter__(self) -> Iterator[TokenEvent]:
        model, prompt = self.model, list(self.prompt_ids)
        needed = min(len(prompt) + self.max_tokens, self.context_length)
        model.grow_cache(min(-(-needed // CACHE_STEP) * CACHE_STEP, model.cfg.max_seq_len))
        cached = model.reusable_prefix(prompt)
        sampler = Sampler(self.settings, model.device)
        self.seed = sampler.seed
        detok = StreamingDetokenizer(self.tokenizer, skip_special=True)
        stops = StopMatcher(self.stop_strings)
        self.stats.prompt_tokens = len(prompt)
        self.stats.cached_tokens = cached
        history = list(prompt)

        with torch.inference_mode():
            t_step = time.perf_counter()
            logits = self._prefill(prompt, cached)
            if logits is None:
                self.finish_reason = "cancelled"
                return
            pos = len(prompt)
            while True:
                token, _ = sampler(logits, history)
                logprobs = torch.log_softmax(logits, dim=-1)
                # Time spent in the model and sampler only, not in whoever consumes the events.
                elapsed = time.perf_counter() - t_step
                if self.ids:
                    self.stats.decode_seconds += elapsed
                else:
                    self.stats.prefill_seconds = elapsed
                history.append(token)
                self.ids.append(token)
                self.stats.generated_tokens = len(self.ids)
                pos += 1
                if token in self.tokenizer.eos_ids and not self.ignore_eos:
                    self.finish_reason = "eos"
                elif len(self.ids) >= self.max_tokens:
                    self.finish_reason = "length"
                elif pos >= self.context_length:
                    self.finish_reason = "context"
                piece, stopped = stops.push(detok.push(token))
                if stopped:
                    self.finish_reason = "stop"
                elif self.finish_reason:
                    piece += stops.push(detok.flush())[0] + stops.flush()
                self.text += piece
                yield self._event(token, logprobs, piece)
                if self.finish_reason:
                    return
                if is_stopped(self.should_stop):
                    self.text += stops.push(detok.flush())[0] + stops.flush()
                    self.finish_reason = "cancelled"
                    return
                t_step = time.perf_counter()
                logits = model(torch.tensor([[token]], device=model.device), pos - 1)[0, -1]
