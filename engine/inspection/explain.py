"""The numbers behind "How it works": a guided walk through one forward pass on the user's own text.

Each step of the walk has a function here, all Qt-free and plain data in, plain data out:

1. tokens: `tokens` (ids, pieces, special tokens, pieces that continue a word);
2. embeddings: `nearest_neighbours` (cosine similarity in the embedding table) and `embedding_map`
   (a deterministic 2-D PCA of the prompt's tokens and a few of their neighbours);
3. positions: `rotary_angles` (RoPE models) or `position_vectors` (GPT-2), and `word_order_demo`
   (the same words in another order give another next-token distribution);
4. attention: `suggest_heads` (heads whose chosen token looks strongly at earlier tokens);
5. layers: the logit lens of `engine.inspection.inspect` at the last position, with `lens_sharpening`;
6. next token: `sampler_steps` (the distribution before and after each sampler step, computed with
   `engine.generation.sampling` itself, so the last step is exactly what the sampler draws from).

`explain` runs them all for one token sequence, in one inspection pass plus two short passes for the
word-order demonstration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine.generation.sampling import Sampler, SamplerSettings, apply_penalties, filter_logits
from engine.inspection.inspect import Candidate, Inspection, inspect, logit_lens
from engine.model import Transformer
from engine.text.tokenizer import Tokenizer


@dataclass(frozen=True)
class Token:
    id: int
    piece: str
    special: bool
    continues_word: bool  # a sub-word piece glued to the token before it (no space between)


@dataclass(frozen=True)
class Neighbour:
    id: int
    text: str
    similarity: float  # cosine similarity with the chosen token's embedding


@dataclass(frozen=True)
class MapPoint:
    id: int
    text: str
    x: float
    y: float
    in_prompt: bool  # a token of the prompt (else a neighbour of one)


@dataclass(frozen=True)
class SamplerStep:
    name: str  # "temperature", "top-k", ...
    setting: str  # "0.7", "40", ...
    before: list[Candidate]  # the top tokens going in (log-probabilities)
    after: list[Candidate]  # the same tokens coming out (-inf when removed)
    kept_before: int  # how many tokens are still possible before and after
    kept_after: int


@dataclass(frozen=True)
class WordOrder:
    text: str
    swapped_text: str
    top: list[Candidate]
    swapped_top: list[Candidate]
    difference: float  # total variation distance between the two next-token distributions, in [0, 1]


@dataclass(frozen=True)
class Explanation:
    """Everything the six steps show, for the token sequence ``ids``."""

    ids: list[int]
    tokens: list[Token]
    inspection: Inspection
    neighbours: dict[int, list[Neighbour]]  # token id -> nearest neighbours
    map_points: list[MapPoint]
    positions: dict  # {"kind": "rotary", "angles": (T, n_freq)} or {"kind": "learned", "vectors": (T, n)}
    word_order: WordOrder | None
    lens: list[list[Candidate]]  # per layer, at the last position
    sharpening: list[float]  # per layer, probability of the final top token
    steps: list[SamplerStep]
    sampled_id: int  # the token the sampler picked for this walk
    sampled_text: str
    settings: dict = field(default_factory=dict)


def tokens(tokenizer: Tokenizer, ids: Sequence[int]) -> list[Token]:
    """The tokens of ``ids``, with sub-word pieces (glued to a word-ending token before them) marked."""
    out: list[Token] = []
    for t in ids:
        piece, special = tokenizer.piece(t), tokenizer.is_special(t)
        prev = out[-1] if out else None
        continues = (
            prev is not None and not special and not prev.special and piece[:1].isalnum() and prev.piece[-1:].isalnum()
        )
        out.append(Token(t, piece, special, bool(continues)))
    return out


def _unit_rows(model: Transformer) -> torch.Tensor:
    """The embedding table with every row scaled to length 1, float32 on the model's device."""
    w = model.tok_emb.weight.detach().float()
    return w / w.norm(dim=-1, keepdim=True).clamp(min=1e-8)


@torch.inference_mode()
def nearest_neighbours(
    model: Transformer, tokenizer: Tokenizer, token_ids: Sequence[int], k: int = 8
) -> dict[int, list[Neighbour]]:
    """For each token id, the ``k`` tokens whose embeddings point the most the same way (cosine
    similarity), most similar first, never the token itself nor ids past the tokenizer's vocabulary."""
    unit = _unit_rows(model)
    n = min(unit.shape[0], tokenizer.vocab_size)
    unique = list(dict.fromkeys(int(t) for t in token_ids))
    if not unique:
        return {}
    sims = unit[unique] @ unit[:n].T  # (U, n)
    rows = torch.arange(len(unique))
    sims[rows, torch.tensor(unique)] = float("-inf")  # not the token itself
    top = torch.topk(sims, min(k, n - 1), dim=-1)
    return {
        t: [Neighbour(i, tokenizer.piece(i), s) for i, s in zip(ids, vals, strict=True)]
        for t, ids, vals in zip(unique, top.indices.tolist(), top.values.tolist(), strict=True)
    }


def pca_2d(vectors: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (N, 2): the two directions of largest spread, each signed so that its largest
    loading is positive (the same input always gives the same picture)."""
    x = vectors.double()
    x = x - x.mean(dim=0, keepdim=True)
    if x.shape[0] < 2:
        return torch.zeros(x.shape[0], 2)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # rows of vh: principal directions
    comps = vh[:2]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * torch.where(signs == 0, 1.0, signs)
    out = x @ comps.T
    if out.shape[1] < 2:
        out = torch.cat([out, torch.zeros(out.shape[0], 2 - out.shape[1], dtype=out.dtype)], dim=1)
    return out.float()


@torch.inference_mode()
def embedding_map(
    model: Transformer,
    tokenizer: Tokenizer,
    ids: Sequence[int],
    neighbours: dict[int, list[Neighbour]],
    per_token: int = 2,
    max_tokens: int = 24,
) -> list[MapPoint]:
    """The prompt's distinct tokens (at most ``max_tokens``, specials left out) and ``per_token`` of
    each one's neighbours, placed in 2-D by PCA of their embeddings (scaled to length 1)."""
    prompt = [t for t in dict.fromkeys(int(i) for i in ids) if not tokenizer.is_special(t)][:max_tokens]
    chosen = list(prompt)
    for t in prompt:
        chosen += [n.id for n in neighbours.get(t, [])[:per_token] if n.id not in chosen]
    if not chosen:
        return []
    xy = pca_2d(_unit_rows(model)[chosen].cpu())  # directions only, as the cosine similarity sees them
    in_prompt = set(prompt)
    return [
        MapPoint(t, tokenizer.piece(t), float(x), float(y), t in in_prompt)
        for t, (x, y) in zip(chosen, xy.tolist(), strict=True)
    ]


def rotary_angles(model: Transformer, positions: Sequence[int] | int) -> torch.Tensor:
    """Rotation angles in radians, ``(len(positions), rotary_dim // 2)``: position times each frequency."""
    if model.rotary is None:
        raise ValueError("this model learns position vectors instead of rotating (no rotary table)")
    pos = torch.arange(positions) if isinstance(positions, int) else torch.tensor(list(positions))
    return torch.outer(pos.float(), model.rotary.inv_freq.float())


def position_vectors(model: Transformer, n: int) -> torch.Tensor:
    """GPT-2 style: the learned vectors added for positions ``0 .. n-1``, ``(n, n_embd)`` float32."""
    if model.pos_emb is None:
        raise ValueError("this model rotates queries and keys (RoPE) instead of learning position vectors")
    return model.pos_emb.weight.detach()[:n].float().cpu()


def positions_view(model: Transformer, n: int) -> dict:
    if model.rotary is not None:
        return {"kind": "rotary", "angles": rotary_angles(model, n), "theta": model.cfg.rope_theta}
    return {"kind": "learned", "vectors": position_vectors(model, n)}


DETERMINERS = frozenset("the a an this that my your his her its our their".split())


def swap_words(text: str) -> str:
    """Two words swapped, punctuation left in place: the first two words that follow a determiner
    ("The cat chased the mouse" -> "The mouse chased the cat"), else the first and last word
    ("cats chase mice" -> "mice chase cats")."""
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if any(ch.isalnum() for ch in w)]
    if len(spots) < 2:
        return text
    nouns = [i for j, i in enumerate(spots[1:]) if words[spots[j]].lower() in DETERMINERS]
    a, b = (nouns[0], nouns[1]) if len(nouns) >= 2 else (spots[0], spots[-1])

    def core(w: str) -> tuple[str, str, str]:
        start = next(i for i, ch in enumerate(w) if ch.isalnum())
        end = len(w) - next(i for i, ch in enumerate(reversed(w)) if ch.isalnum())
        return w[:start], w[start:end], w[end:]

    (pa, wa, sa), (pb, wb, sb) = core(words[a]), core(words[b])
    words[a], words[b] = pa + wb + sa, pb + wa + sb
    return " ".join(words)


@torch.inference_mode()
def next_token_distribution(model: Transformer, ids: Sequence[int]) -> torch.Tensor:
    """Log-probabilities of the next token after ``ids``, ``(vocab,)`` float32 on the CPU."""
    if model.caches:  # the chat's cache, written over from position 0: grown to fit
        model.grow_cache(len(ids))
    logits = model(torch.tensor([list(ids)], device=model.device), last_only=True)[0, -1]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def _top(logprobs: torch.Tensor, tokenizer: Tokenizer, k: int) -> list[Candidate]:
    top = torch.topk(logprobs, k)
    pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
    return [Candidate(i, tokenizer.piece(i), lp) for i, lp in pairs]


def word_order_demo(model: Transformer, tokenizer: Tokenizer, text: str, swapped: str, k: int = 5) -> WordOrder:
    """The next-token distribution after ``text`` and after ``swapped`` (the same words reordered)."""
    a = next_token_distribution(model, tokenizer.encode(text))
    b = next_token_distribution(model, tokenizer.encode(swapped))
    difference = float(0.5 * (a.exp() - b.exp()).abs().sum())
    return WordOrder(text, swapped, _top(a, tokenizer, k), _top(b, tokenizer, k), difference)


def suggest_heads(attention: dict[int, torch.Tensor], position: int, k: int = 5) -> list[tuple[int, int, float]]:
    """(layer, head, share) of the ``k`` heads in which the token at ``position`` gives the largest share
    of its attention to earlier tokens, most first. Left out of the share: the token itself, the token
    just before it (many heads only look one back) and the first token (where many heads park attention
    they do not need), as long as something is left; so a pronoun's suggestions look back at the nouns."""
    lo, hi = (1, position - 1) if position >= 3 else (0, position)
    scores = []
    for layer, w in attention.items():
        row = w[:, position].float()  # (n_head, T)
        share = row[:, lo:hi].sum(dim=-1)
        scores += [(layer, h, float(s)) for h, s in enumerate(share.tolist())]
    scores.sort(key=lambda s: (-s[2], s[0], s[1]))
    return scores[:k]


@torch.inference_mode()
def lens_sharpening(model: Transformer, inspection: Inspection, position: int) -> list[float]:
    """Per layer, the probability the logit lens gives the model's final top token at ``position``."""
    x = inspection.residuals[:, position].to(model.device)  # (n_layer, n_embd)
    probs = torch.softmax(model.head(x[None])[0], dim=-1)  # (n_layer, V)
    final = int(probs[-1].argmax())
    return probs[:, final].tolist()


SAMPLER_STEPS = ("temperature", "top-k", "top-p", "min-p", "typical-p")


def _only(settings: SamplerSettings, upto: str) -> SamplerSettings:
    """``settings`` with only the steps up to and including ``upto`` switched on."""
    off = {"top-k": {"top_k": 0}, "top-p": {"top_p": 1.0}, "min-p": {"min_p": 0.0}, "typical-p": {"typical_p": 1.0}}
    later = SAMPLER_STEPS[SAMPLER_STEPS.index(upto) + 1 :]
    changes: dict = {}
    for name in later:
        changes.update(off[name])
    return dataclasses.replace(settings, **changes)


def _pick(logprobs: torch.Tensor, ids: list[int], tokenizer: Tokenizer) -> list[Candidate]:
    return [Candidate(i, tokenizer.piece(i), float(logprobs[i])) for i in ids]


def sampler_steps(
    logits: torch.Tensor, history: Sequence[int], settings: SamplerSettings, tokenizer: Tokenizer, k: int = 10
) -> list[SamplerStep]:
    """The next-token distribution before and after each sampler step that is switched on.

    Each "after" is `engine.generation.sampling.filter_logits` with the steps so far switched on, so the last one
    is exactly the distribution the `Sampler` draws from. The tokens shown are the ``k`` most likely
    going into the first step. Penalties (when set) come first; greedy settings give one step."""
    raw = logits.float().cpu()
    penalized = apply_penalties(raw, list(history), settings)
    shown = torch.topk(penalized, k).indices.tolist()
    steps: list[SamplerStep] = []

    def add(name: str, setting: str, before: torch.Tensor, after: torch.Tensor) -> None:
        lb, la = torch.log_softmax(before, -1), torch.log_softmax(after, -1)
        steps.append(
            SamplerStep(
                name,
                setting,
                _pick(lb, shown, tokenizer),
                _pick(la, shown, tokenizer),
                int(torch.isfinite(before).sum()),
                int(torch.isfinite(after).sum()),
            )
        )

    s = settings
    if s.repetition_penalty != 1.0 or s.presence_penalty or s.frequency_penalty:
        add("penalties", f"repeat ×{s.repetition_penalty:g}", raw, penalized)
    if s.is_greedy:
        add("greedy", "temperature 0", penalized, filter_logits(penalized, s))
        return steps
    enabled = {
        "temperature": True,
        "top-k": bool(s.top_k),
        "top-p": s.top_p < 1.0,
        "min-p": s.min_p > 0.0,
        "typical-p": s.typical_p < 1.0,
    }
    values = {
        "temperature": f"{s.temperature:g}",
        "top-k": str(s.top_k),
        "top-p": f"{s.top_p:g}",
        "min-p": f"{s.min_p:g}",
        "typical-p": f"{s.typical_p:g}",
    }
    before = penalized
    for name in SAMPLER_STEPS:
        if not enabled[name]:
            continue
        after = filter_logits(penalized, _only(s, name))
        add(name, values[name], before, after)
        before = after
    return steps


def _word_order_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special=True)


def explain(
    model: Transformer,
    tokenizer: Tokenizer,
    ids: Sequence[int],
    settings: SamplerSettings | None = None,
    *,
    neighbours_k: int = 8,
    word_order: bool = True,
) -> Explanation:
    """Everything the six steps show for ``ids``; the sampled token is drawn with ``settings``
    (seeded when ``settings.seed`` is set)."""
    settings = settings or SamplerSettings()
    ids = list(ids)
    inspection = inspect(model, tokenizer, ids, settings=settings, keep_logits=True)
    last = len(ids) - 1
    neighbours = nearest_neighbours(model, tokenizer, [t for t in ids if not tokenizer.is_special(t)], neighbours_k)
    demo = None
    text = _word_order_text(tokenizer, ids)
    swapped = swap_words(text)
    if word_order and swapped != text:
        demo = word_order_demo(model, tokenizer, text, swapped)
    logits = inspection.logits[last]
    token, _ = Sampler(settings)(logits, ids)
    return Explanation(
        ids=ids,
        tokens=tokens(tokenizer, ids),
        inspection=inspection,
        neighbours=neighbours,
        map_points=embedding_map(model, tokenizer, ids, neighbours),
        positions=positions_view(model, len(ids)),
        word_order=demo,
        lens=logit_lens(model, tokenizer, inspection, last),
        sharpening=lens_sharpening(model, inspection, last),
        steps=sampler_steps(logits, ids, settings, tokenizer),
        sampled_id=token,
        sampled_text=tokenizer.piece(token),
        settings=dataclasses.asdict(settings),
    )
