"""Training tokens/s of Ember's LoRA fine-tuning against `transformers` + `peft` on the same model.

Same GGUF (transformers loads it with ``gguf_file=``, dequantized), the same token ids (cut once, with
Ember's tokenizer, and handed to all), the same LoRA settings (rank, alpha, dropout, the seven
projections), batch, sequence length, AdamW and clipping at 1.0, on the CPU. Ember runs its real loop
(`engine.finetune.finetune`) with the base weights in the dtype it picks by measurement
(`engine.finetune.precision`: bf16 where this CPU runs bf16 matmuls clearly faster), and once more in
float32. transformers + peft runs the plain loop one writes by hand (forward, backward, clip, step; no
Trainer overhead) with the model in float32, its default, and once with the model in bf16 (peft keeps
the adapters float32). Each run is its own process, interleaved over several rounds; the first optimizer
step of each is a warm-up and not timed. Prints the CPU, the medians and the ratios.

    python bench/bench_finetune.py [--model PATH] [--steps 6] [--batch 4] [--seq-len 128] [--rank 8]
                                   [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_engine import PARAGRAPH, cpu_name, peak_rss_mib  # this folder: the scripts run from it

ENGINES = ("ember", "ember-f32", "hf", "hf-bf16")
LABELS = {
    "ember": "Ember (default: {dtype})",
    "ember-f32": "Ember, float32",
    "hf": "transformers + peft, float32",
    "hf-bf16": "transformers + peft, bf16 model",
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rates(stamps: list[float], args) -> dict:
    """Steps 2 .. N+1 (step 1 is the warm-up): tokens/s over all of them and over the median step (which a
    moment of contention from other processes moves less)."""
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    per_step = args.batch * args.seq_len
    return {
        "tokens_per_s": len(steps) * per_step / sum(steps),
        "median_step_tokens_per_s": per_step / statistics.median(steps),
        "peak_rss_mib": peak_rss_mib(),
    }


def engine_dtype(engine: str) -> str:
    if engine == "ember":
        from engine.finetune.precision import training_dtype

        return str(training_dtype("cpu")).removeprefix("torch.")
    return "bfloat16" if engine == "hf-bf16" else "float32"


def make_chunks(model_path: str, n: int, seq_len: int) -> list[list[int]]:
    """``n`` chunks of ``seq_len + 1`` token ids (inputs and shifted targets), from Ember's tokenizer."""
    from engine.loading.loader import load_model

    tok = load_model(model_path, device="cpu", dtype="float32").tokenizer
    ids = tok.encode(PARAGRAPH * (1 + n * (seq_len + 1) // 60), add_bos=False)
    need = n * (seq_len + 1)
    while len(ids) < need:
        ids = ids + ids
    return [ids[i * (seq_len + 1) : (i + 1) * (seq_len + 1)] for i in range(n)]


def run_ember(model_path: str, chunks: list[list[int]], args, dtype: str) -> dict:
    from engine.finetune import FinetuneConfig, finetune
    from engine.finetune.data import Dataset, Example
    from engine.loading.loader import load_model

    lm = load_model(model_path, device="cpu", dtype=dtype, pack=False)
    data = Dataset([Example(c, [1] * len(c)) for c in chunks], [], [], args.seq_len)
    cfg = FinetuneConfig(
        rank=args.rank,
        alpha=2.0 * args.rank,
        dropout=args.dropout,
        target_modules=TARGETS,
        seq_len=args.seq_len,
        batch_size=args.batch,
        steps=args.steps + 1,
        lr=2e-4,
        warmup_steps=0,
        val_fraction=0.0,
        eval_every=10**9,
        gguf="none",
    )
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        finetune(lm, data, out, cfg, progress=lambda p: stamps.append(time.perf_counter()), export=False)
    return _rates(stamps, args)


def run_hf(model_path: str, chunks: list[list[int]], args, dtype: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = Path(model_path)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=getattr(torch, dtype))
    config = LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, lora_dropout=args.dropout, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    stamps = []
    for _ in range(args.steps + 1):
        pick = torch.randint(len(chunks), (args.batch,), generator=gen).tolist()
        batch = torch.tensor([chunks[i] for i in pick])
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return _rates(stamps, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a GGUF file (default: the default model)")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps (plus one warm-up)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--chunks", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model is None:
        from engine.loading.default_model import default_model_path

        args.model = str(default_model_path())

    if args.engine:  # a child: one engine, one run, a JSON line
        import torch

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        chunks = json.loads(Path(args.chunks).read_text())
        run = run_ember if args.engine.startswith("ember") else run_hf
        result = run(args.model, chunks, args, engine_dtype(args.engine))
        print(json.dumps(result))
        return

    chunks = make_chunks(args.model, max(16, 4 * args.batch), args.seq_len)
    results: dict[str, list[dict]] = {e: [] for e in ENGINES}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(chunks, f)
    common = ["--model", args.model, "--chunks", f.name, "--threads", str(args.threads), "--steps", str(args.steps)]
    common += ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--rank", str(args.rank)]
    common += ["--dropout", str(args.dropout)]
    try:
        for r in range(args.rounds):
            for engine in ENGINES if r % 2 == 0 else reversed(ENGINES):
                cmd = [sys.executable, __file__, "--engine", engine, *common]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                res = json.loads(out.strip().splitlines()[-1])
                results[engine].append(res)
                print(
                    f"round {r + 1} {engine:9s}: {res['tokens_per_s']:.1f} tok/s "
                    f"(median step {res['median_step_tokens_per_s']:.1f}), "
                    f"peak RSS {res['peak_rss_mib']:.0f} MiB"
                )
    finally:
        Path(f.name).unlink(missing_ok=True)

    med = {e: statistics.median(x["tokens_per_s"] for x in results[e]) for e in ENGINES}
    med_step = {e: statistics.median(x["median_step_tokens_per_s"] for x in results[e]) for e in ENGINES}
    rss = {e: statistics.median(x["peak_rss_mib"] for x in results[e]) for e in ENGINES}
    import torch

    from engine.finetune.precision import cpu_speedup_bf16

    print(f"\n{cpu_name()}, torch {torch.__version__}; bf16 matmul {cpu_speedup_bf16():.1f}x float32's speed here")
    print(
        f"{Path(args.model).name}: LoRA r{args.rank} on all 7 projections, batch {args.batch} x {args.seq_len} "
        f"tokens, {args.steps} timed steps, {args.threads} threads, CPU, medians of {args.rounds} interleaved rounds"
    )
    for e in ENGINES:
        label = LABELS[e].format(dtype=engine_dtype("ember"))
        print(
            f"  {label:34s} {med[e]:7.1f} training tok/s (median step {med_step[e]:6.1f})  "
            f"peak RSS {rss[e]:5.0f} MiB  {med[e] / med['hf']:.2f}x"
        )
    print(f"  ratio Ember default / transformers+peft float32: {med['ember'] / med['hf']:.2f}x")


if __name__ == "__main__":
    main()
