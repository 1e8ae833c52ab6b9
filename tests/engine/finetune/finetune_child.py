"""A fine-tuning run in its own process, for the kill -9 test (`test_finetune_kill.py`).

``python -m tests.engine.finetune.finetune_child MODEL DATA OUT [--resume] [--step-delay S]``: LoRA on a tiny model
with a checkpoint every 2 steps, one thread (the same arithmetic in every process), no export."""

from __future__ import annotations

import argparse
import time

import torch

from engine.finetune import FinetuneConfig, finetune
from engine.loading.loader import load_model

CONFIG = FinetuneConfig(
    seq_len=24, steps=10, lr=5e-3, batch_size=2, grad_accum=2, dropout=0.1, checkpoint_every=2, keep_checkpoints=2
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--step-delay", type=float, default=0.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    lm = load_model(args.model, device="cpu", dtype="float32")

    def progress(_p) -> None:
        print(f"step {_p.step}", flush=True)
        time.sleep(args.step_delay)  # widen the window the kill can land in (training or checkpointing)

    result = finetune(lm, [args.data], args.out, CONFIG, progress=progress, resume=args.resume, export=False)
    print(f"done {result.status} {result.step}", flush=True)


if __name__ == "__main__":
    main()
