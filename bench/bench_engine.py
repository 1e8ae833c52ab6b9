"""Ember's engine against `transformers` on the same GGUF, same prompt, same lengths, in one run.

Each engine runs in its own subprocess (so peak RSS is its own), interleaved over several rounds;
prints the medians and the ratios.
    python bench/bench_engine.py [--model PATH] [--prompt-tokens 500] [--gen-tokens 256] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PARAGRAPH = (
    "The history of computing is a story of abstraction. Early machines were programmed by rewiring "
    "panels; later, stored programs let the same hardware run many tasks. Compilers turned readable "
    "code into machine instructions, operating systems shared one computer among many users, and "
    "networks joined computers into something larger than any of them. Each step hid detail so that "
    "people could think about bigger problems. "
)


def make_prompt(tokenizer_encode, n_tokens: int) -> list[int]:
    text = PARAGRAPH
    while len(tokenizer_encode(text)) < n_tokens:
        text += PARAGRAPH
    return tokenizer_encode(text)[:n_tokens]


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(model_path: str, n_prompt: int, n_gen: int) -> dict:
    from engine.generate import Generation
    from engine.loader import load_model
    from engine.sampling import SamplerSettings

    t0 = time.perf_counter()
    lm = load_model(model_path, device="cpu")
    load = time.perf_counter() - t0
    prompt = make_prompt(lambda t: lm.tokenizer.encode(t, add_bos=False), n_prompt)
    greedy = SamplerSettings(temperature=0.0)
    # One short warm-up, as llama.cpp's own benchmark does.
    list(Generation(lm.model, lm.tokenizer, prompt[:16], greedy, max_tokens=4))
    gen = Generation(lm.model, lm.tokenizer, prompt, greedy, max_tokens=n_gen, ignore_eos=True)
    text = "".join(e.text for e in gen)
    s = gen.stats
    return {
        "load_s": load,
        "prefill_tps": s.prefill_tokens_per_second,
        "decode_tps": s.decode_tokens_per_second,
        "generated": s.generated_tokens,
        "peak_rss_mib": peak_rss_mib(),
        "text": text[:80],
    }


def run_transformers(model_path: str, n_prompt: int, n_gen: int) -> dict:
    import os

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(model_path))
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    load = time.perf_counter() - t0
    prompt = make_prompt(lambda t: tok.encode(t, add_special_tokens=False), n_prompt)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        model.generate(ids[:, :16], max_new_tokens=4, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        model(ids, use_cache=True)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n_gen, min_new_tokens=n_gen, do_sample=False)
        total = time.perf_counter() - t0
    generated = out.shape[1] - ids.shape[1]
    decode = (generated - 1) / max(total - prefill, 1e-9)
    return {
        "load_s": load,
        "prefill_tps": n_prompt / prefill,
        "decode_tps": decode,
        "generated": generated,
        "peak_rss_mib": peak_rss_mib(),
        "text": tok.decode(out[0, ids.shape[1] :])[:80],
    }


ENGINES = {"ember": run_ours, "transformers": run_transformers}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--prompt-tokens", type=int, default=500)
    p.add_argument("--gen-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model is None:
        from engine.default_model import default_model_path

        args.model = str(default_model_path())
    import torch

    torch.set_num_threads(args.threads)
    if args.engine:
        print(json.dumps(ENGINES[args.engine](args.model, args.prompt_tokens, args.gen_tokens)))
        return
    runs: dict[str, list[dict]] = {engine: [] for engine in ENGINES}
    for _ in range(args.rounds):
        for engine in ENGINES:
            cmd = [
                sys.executable,
                __file__,
                "--engine",
                engine,
                "--model",
                args.model,
                "--threads",
                str(args.threads),
                "--prompt-tokens",
                str(args.prompt_tokens),
                "--gen-tokens",
                str(args.gen_tokens),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[engine].append(json.loads(out.strip().splitlines()[-1]))
    results = {
        engine: {key: rs[0][key] if key == "text" else statistics.median(r[key] for r in rs) for key in rs[0]}
        for engine, rs in runs.items()
    }
    print(
        f"model {args.model}\nprompt {args.prompt_tokens} tokens, {args.gen_tokens} generated, greedy, "
        f"{args.threads} threads, CPU, fp32, medians of {args.rounds} interleaved rounds\n"
    )
    print(f"{'engine':<14}{'load s':>9}{'prefill tok/s':>15}{'decode tok/s':>14}{'peak RSS MiB':>14}")
    for name, r in results.items():
        print(
            f"{name:<14}{r['load_s']:>9.2f}{r['prefill_tps']:>15.1f}{r['decode_tps']:>14.1f}{r['peak_rss_mib']:>14.0f}"
        )
    a, b = results["ember"], results["transformers"]
    print(
        f"\nember / transformers: load {b['load_s'] / a['load_s']:.1f}x faster, prefill "
        f"{a['prefill_tps'] / b['prefill_tps']:.2f}x, decode {a['decode_tps'] / b['decode_tps']:.2f}x, "
        f"peak RSS {a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x"
    )
    for name, r in results.items():
        print(f"{name} text: {r['text']!r}")


if __name__ == "__main__":
    main()
