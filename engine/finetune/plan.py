"""The run's settings chosen from the data: how many passes, how fast, and whether to hold text out.

A few hundred tokens of notes and a few megabytes of text need different runs. Small corpora are read
many times at a high learning rate, with questions made from their facts (`engine.finetune.lessons`),
until the facts can be recalled; large ones once, gently, so the model learns their style without
forgetting what it knew. `plan` returns the choices with the reason for each, which the CLI prints and
the panel shows; anything the user sets explicitly wins.

Measured on SmolLM2-135M with three folders of invented-fact notes (README, "Fine-tuning"): 12 passes at
1e-3 with rank 16 (48 optimizer steps) recalled 3 of 4 facts asked in the user's own words; 12 passes over
one short note (12 steps) recalled none, hence the floor of `MIN_STEPS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from engine.finetune.data import Dataset
from engine.finetune.probes import MAX_PROBES
from engine.finetune.train import FinetuneConfig, dataset_for

SMALL_TOKENS = 20_000  # prose tokens up to which facts are drilled (many passes, high rate)
LESSONS_UP_TO = 200_000  # prose tokens up to which questions are made from the facts
MIN_STEPS = 40  # optimizer steps a drilled corpus gets at least, however small
MAX_EPOCHS = 60
HOLD_OUT_FROM = 50  # chunks from which a validation split costs little
VALIDATION_SHARE = 0.05
PLANNED = ("epochs", "lr", "rank", "alpha", "lessons", "val_fraction")  # what `plan` chooses


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


def plan(prose_tokens: int, chunks: int, train_chunks: int, batch_size: int) -> Plan:
    """Settings for ``prose_tokens`` tokens of text in ``chunks`` chunks, which become ``train_chunks``
    training chunks once questions are made from them (the same number when they are not)."""
    size = f"{prose_tokens:,} tokens"
    lessons = prose_tokens <= LESSONS_UP_TO
    if prose_tokens <= SMALL_TOKENS:
        # A fact read once is recalled only after it has been seen many times: 12 passes, fewer over a
        # larger corpus to keep the time near the same, and never under MIN_STEPS optimizer steps.
        epochs = max(4, min(12, round(12 * (4_000 / max(prose_tokens, 1)) ** 0.5)))
        epochs = min(MAX_EPOCHS, max(epochs, math.ceil(MIN_STEPS * batch_size / max(train_chunks, 1))))
        rate, rank = 1e-3, 16
        why = [
            f"{epochs} passes at learning rate {rate:g}: your files hold {size}, and a fact read once is "
            "recalled only after it has been seen many times"
        ]
    elif prose_tokens <= LESSONS_UP_TO:
        epochs, rate, rank = max(1, min(4, round(4 * (SMALL_TOKENS / prose_tokens) ** 0.5 + 0.5))), 5e-4, 16
        why = [f"{epochs} passes at learning rate {rate:g} over {size}"]
    else:
        epochs, rate, rank = 1, 2e-4, 8
        why = [f"one pass at learning rate {rate:g}: {size} is enough text to learn from once"]
    if lessons:
        why.append("questions and answers made from your files' facts are trained too, so they can be asked in chat")
    if chunks >= HOLD_OUT_FROM:
        val = VALIDATION_SHARE
        why.append(f"{val:.0%} of the {chunks} chunks held out to measure the loss on text it did not train on")
    else:
        val = 0.0
        why.append(
            f"no validation split: with {chunks} chunk{'s' * (chunks != 1)} of text every one is needed for "
            "training; the recall questions measure what it learned"
        )
    return Plan(float(epochs), rate, rank, lessons, val, tuple(why))


def planned_config(lm, paths: Iterable[str | Path], settings: dict) -> tuple[FinetuneConfig, Plan, Dataset]:
    """The run's config: ``settings`` (FinetuneConfig fields; a missing or None field is chosen) over the
    plan for these files, and the files' dataset for that config. The files are read and tokenized once
    when the first build serves (questions made, nothing held out: a small corpus), twice otherwise."""
    paths = list(paths)
    given = {k: v for k, v in settings.items() if v is not None}
    first = FinetuneConfig(**{"probes": MAX_PROBES, **given})
    first.val_fraction = 0.0
    first.lessons = given.get("lessons", True)
    data = dataset_for(lm, paths, first)
    chosen = plan(data.prose_tokens, data.prose_chunks, len(data.train), first.batch_size)
    auto = {k: v for k, v in chosen.settings().items() if k not in given}
    if "rank" in given and "alpha" not in given:
        auto["alpha"] = 2.0 * given["rank"]
    config = replace(FinetuneConfig(**{"probes": MAX_PROBES, **given}), **auto)
    if (config.lessons, config.val_fraction) != (first.lessons, first.val_fraction):
        data = dataset_for(lm, paths, config)
    return config, chosen, data
