"""The run's settings chosen from the data: how many passes, how fast, and whether to hold text out.

A few hundred tokens of notes and a few megabytes of text need different runs. Small corpora are read
many times at a high learning rate, with questions made from their facts (`engine.finetune.lessons`),
until the facts can be recalled; large ones once, gently, so the model learns their style without
forgetting what it knew. `plan` returns the choices with the reason for each, which the CLI prints and
the panel shows; anything the user sets explicitly wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from engine.finetune.data import build_dataset
from engine.finetune.probes import MAX_PROBES
from engine.finetune.train import FinetuneConfig

SMALL_TOKENS = 20_000  # prose tokens up to which facts are drilled (lessons, many epochs, high rate)
LARGE_TOKENS = 500_000  # prose tokens from which one pass is enough
HOLD_OUT_FROM = 50  # chunks from which a validation split costs little
VALIDATION_SHARE = 0.05


@dataclass(frozen=True)
class Plan:
    epochs: float
    lr: float
    rank: int
    lessons: bool
    val_fraction: float
    reasons: tuple[str, ...]

    def settings(self) -> dict:
        """As `engine.finetune.FinetuneConfig` fields."""
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "rank": self.rank,
            "alpha": 2.0 * self.rank,
            "lessons": self.lessons,
            "val_fraction": self.val_fraction,
        }


def plan(prose_tokens: int, chunks: int) -> Plan:
    """Settings for a corpus of ``prose_tokens`` tokens of text in ``chunks`` training chunks."""
    size = f"{prose_tokens:,} tokens"
    if prose_tokens <= SMALL_TOKENS:
        # Each fact has to be seen a dozen or so times before it comes back in chat; fewer passes over a
        # larger corpus keep the time near the same.
        epochs = float(max(4, min(12, round(12 * (4_000 / max(prose_tokens, 1)) ** 0.5))))
        rate, rank = 1e-3, 16
        why = [
            f"{epochs:g} passes at learning rate {rate:g}: your files hold {size}, and a fact read once in a small "
            "corpus is recalled only after it has been seen many times",
            "questions and answers made from your files' facts are trained too, so they can be asked for in chat",
        ]
        lessons = True
    elif prose_tokens < LARGE_TOKENS:
        epochs = float(max(1, min(4, round(4 * (SMALL_TOKENS / prose_tokens) ** 0.5 + 0.5))))
        rate, rank, lessons = 5e-4, 16, True
        why = [f"{epochs:g} passes at learning rate {rate:g} over {size}", "questions made from the facts as well"]
    else:
        epochs, rate, rank, lessons = 1.0, 2e-4, 8, False
        why = [f"one pass at learning rate {rate:g}: {size} is enough text to learn from once"]
    if chunks >= HOLD_OUT_FROM:
        val = VALIDATION_SHARE
        why.append(f"{val:.0%} of the {chunks} chunks held out to measure the loss on text it did not train on")
    else:
        val = 0.0
        why.append(
            f"no validation split: with {chunks} chunks every one is needed for training; the recall questions "
            "measure what it learned"
        )
    return Plan(epochs, rate, rank, lessons, val, tuple(why))


PLANNED = ("epochs", "lr", "rank", "alpha", "lessons", "val_fraction")  # what `plan` chooses


def planned_config(lm, paths: Iterable[str | Path], settings: dict) -> tuple[FinetuneConfig, Plan]:
    """The run's config: ``settings`` (FinetuneConfig fields; a missing or None field is chosen) over the
    plan for these files. Reads and tokenizes the files once to measure them."""
    paths = list(paths)
    given = {k: v for k, v in settings.items() if v is not None}
    seq_len = min(given.get("seq_len", FinetuneConfig.seq_len), lm.config.max_seq_len - 1)
    sized = build_dataset(paths, lm.tokenizer, lm.render_chat, seq_len=seq_len, val_fraction=0.0)
    chosen = plan(sized.prose_tokens, len(sized.train))
    auto = {k: v for k, v in chosen.settings().items() if k not in given}
    if "rank" in given and "alpha" not in given:
        auto["alpha"] = 2.0 * given["rank"]
    config = replace(FinetuneConfig(**{"probes": MAX_PROBES, **given}), **auto)
    return config, chosen
