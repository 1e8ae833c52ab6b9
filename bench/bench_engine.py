"""Ember's engine against llama.cpp and `transformers` on the same GGUF, the same token ids, the same lengths.

    python bench/bench_engine.py [--model PATH] [--prompt-tokens 500] [--gen-tokens 256] [--threads 2] [--rounds 5]

Engines (each run in its own subprocess, so peak RSS is its own, interleaved over the rounds):
- ``ember``: the default CPU mode (bf16, 4-bit weights packed), loaded from its weight cache;
  ``ember-first-load`` times the load with an empty cache (packing from the GGUF and writing the cache).
- ``ember-compiled``: ``ember`` with its decoding step compiled ahead of time (``--compile``; needs a C++
  compiler), timed apart from the load: the first round builds it, later rounds load the built one.
- ``ember-exact``: float32 dequantized weights, the reference for the quality columns.
- ``transformers-bf16``: transformers from the same GGUF in bf16.
- ``llama.cpp``: llama-cpp-python, when installed (``make bench-peers`` builds it, 15-20 minutes).

Quality, against ``ember-exact``: the largest logit difference over the first 128 prompt positions,
and the index of the first generated token where greedy output departs from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARAGRAPH = (
    "The history of computing is a story of abstraction. Early machines were programmed by rewiring "
    "panels; later, stored programs let the same hardware run many tasks. Compilers turned readable "
    "code into machine instructions, operating systems shared one computer among many users, and "
    "networks joined computers into something larger than any of them. Each step hid detail so that "
    "people could think about bigger problems. "
)
LOGIT_POSITIONS = 128


def make_prompt(tokenizer_encode, n_tokens: int) -> list[int]:
    text = PARAGRAPH
    while len(tokenizer_encode(text)) < n_tokens:
        text += PARAGRAPH
    return tokenizer_encode(text)[:n_tokens]


def cpu_name() -> str:
    """The CPU's name, family and model, and whether it has AVX-512 bf16 (the figures depend on all three)."""
    try:
        info = dict(line.split(":", 1) for line in open("/proc/cpuinfo").read().split("\n\n")[0].splitlines())
    except (OSError, ValueError):
        return platform.processor() or "unknown CPU"
    info = {k.strip(): v.strip() for k, v in info.items()}
    bf16 = "AVX-512 bf16" if "avx512_bf16" in info.get("flags", "").split() else "no AVX-512 bf16"
    return f"{info.get('model name')} (family {info.get('cpu family')}, model {info.get('model')}, {bf16})"


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the parent's
    high-water mark across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ember(args, dtype: str, compile: bool = False) -> dict:
    import torch

    from engine.generation.generate import Generation
    from engine.generation.sampling import SamplerSettings
    from engine.loading.loader import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model, device="cpu", dtype=dtype, cache_dir=args.cache_dir)
    load = time.perf_counter() - t0
    compile_s = {}
    if compile:
        from engine.compiled.library import compile_decoding

        # its own cache, kept over the rounds: round 1 builds the compiled step, later rounds load it
        compile_s["compile_s"] = compile_decoding(lm, cache_dir=Path(args.out_dir) / "compiled-cache")
    prompt = args.prompt
    with torch.inference_mode():
        logits = lm.model(torch.tensor([prompt[:LOGIT_POSITIONS]]))[0].float().numpy()
    greedy = SamplerSettings(temperature=0.0)
    list(Generation(lm.model, lm.tokenizer, prompt[:16], greedy, max_tokens=4))  # warm-up, as llama-bench does
    gen = Generation(lm.model, lm.tokenizer, prompt, greedy, max_tokens=args.gen_tokens, ignore_eos=True)
    events = list(gen)
    s = gen.stats
    return {
        "load_s": load,
        **compile_s,
        "from_cache": lm.from_cache,
        "prefill_tps": s.prefill_tokens_per_second,
        "decode_tps": s.decode_tokens_per_second,
        "peak_rss_mib": peak_rss_mib(),
        "ids": [e.id for e in events],
        "logits": logits,
    }


def run_ember(args) -> dict:
    return _ember(args, "auto")


def run_ember_compiled(args) -> dict:
    return _ember(args, "auto", compile=True)


def run_ember_exact(args) -> dict:
    return _ember(args, "float32")


def run_ember_first_load(args) -> dict:
    from engine.loading.loader import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model, device="cpu", cache_dir=args.cache_dir)
    assert not lm.from_cache
    return {"load_s": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}


def run_transformers_bf16(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(os.path.abspath(args.model))
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16).eval()
    load = time.perf_counter() - t0
    ids = torch.tensor([args.prompt])
    with torch.inference_mode():
        logits = model(ids[:, :LOGIT_POSITIONS]).logits[0].float().numpy()
        model.generate(ids[:, :16], max_new_tokens=4, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        model(ids, use_cache=True)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens, do_sample=False)
        total = time.perf_counter() - t0
    generated = out[0, ids.shape[1] :].tolist()
    return {
        "load_s": load,
        "prefill_tps": len(args.prompt) / prefill,
        "decode_tps": (len(generated) - 1) / max(total - prefill, 1e-9),
        "peak_rss_mib": peak_rss_mib(),
        "ids": generated,
        "logits": logits,
    }


def run_llama_cpp(args) -> dict:
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(
        args.model,
        n_ctx=len(args.prompt) + args.gen_tokens + 16,
        n_batch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=True,
        verbose=False,
    )
    load = time.perf_counter() - t0
    head = args.prompt[:LOGIT_POSITIONS]
    llm.eval(head)
    logits = np.array(llm.scores[: len(head)], dtype=np.float32)
    llm.reset()
    llm.eval(args.prompt[:16])  # warm-up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(args.prompt)
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    prefill = time.perf_counter() - t0
    ids = [token]
    t0 = time.perf_counter()
    while len(ids) < args.gen_tokens:
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        ids.append(token)
    decode = time.perf_counter() - t0
    return {
        "load_s": load,
        "prefill_tps": len(args.prompt) / prefill,
        "decode_tps": (len(ids) - 1) / decode,
        "peak_rss_mib": peak_rss_mib(),
        "ids": ids,
        "logits": logits,
    }


ENGINES = {
    "ember-first-load": run_ember_first_load,
    "ember": run_ember,
    "ember-compiled": run_ember_compiled,
    "ember-exact": run_ember_exact,
    "transformers-bf16": run_transformers_bf16,
    "llama.cpp": run_llama_cpp,
}


def _child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    args.prompt = json.loads(Path(args.prompt_file).read_text())
    result = ENGINES[args.engine](args)
    logits = result.pop("logits", None)
    if logits is not None:
        np.save(Path(args.out_dir) / f"{args.engine}.npy", logits)
    print(json.dumps(result))


def _departure(ids: list[int], reference: list[int]) -> int | None:
    """The index of the first token that differs from the reference; None when none does."""
    return next((i for i, (a, b) in enumerate(zip(ids, reference, strict=False)) if a != b), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--prompt-tokens", type=int, default=500)
    p.add_argument("--gen-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--prompt-file", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.model is None:
        from engine.loading.default_model import default_model_path

        args.model = str(default_model_path())
    if args.engine:
        _child(args)
        return
    import torch

    from engine.loading.loader import load_model

    tokenizer = load_model(args.model, device="cpu", dtype="float32").tokenizer
    prompt = make_prompt(lambda t: tokenizer.encode(t, add_bos=False), args.prompt_tokens)
    from engine.compiled.step import unavailable_reason

    skip = {"llama.cpp"} if importlib.util.find_spec("llama_cpp") is None else set()
    if unavailable_reason(torch.device("cpu")):
        skip.add("ember-compiled")
    engines = [e for e in ENGINES if e not in skip]
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = Path(tmp) / "prompt.json"
        prompt_file.write_text(json.dumps(prompt))
        for r in range(args.rounds):
            cache_dir = Path(tmp) / f"cache-{r}"  # empty for ember-first-load, then warm for ember
            for engine in engines:
                cmd = [sys.executable, __file__, "--engine", engine, "--model", args.model]
                cmd += ["--threads", str(args.threads), "--gen-tokens", str(args.gen_tokens)]
                cmd += ["--prompt-file", str(prompt_file), "--out-dir", tmp, "--cache-dir", str(cache_dir)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                runs[engine].append(json.loads(out.strip().splitlines()[-1]))
        reference = runs["ember-exact"][0]["ids"]
        ref_logits = np.load(Path(tmp) / "ember-exact.npy")
        quality = {}
        for engine in engines:
            if (Path(tmp) / f"{engine}.npy").exists():
                diff = float(np.abs(np.load(Path(tmp) / f"{engine}.npy") - ref_logits).max())
                quality[engine] = (diff, _departure(runs[engine][0]["ids"], reference))
    print(
        f"model {args.model}\nprompt {len(prompt)} tokens, {args.gen_tokens} generated, greedy, {args.threads} "
        f"threads, CPU, medians of {args.rounds} interleaved rounds\n"
    )
    med = {
        e: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k.endswith(("_s", "_tps", "_mib"))}
        for e, rs in runs.items()
    }
    print(
        f"{'engine':<20}{'load s':>8}{'prefill tok/s':>15}{'decode tok/s':>14}{'peak RSS MiB':>14}"
        f"{'max |dlogit|':>14}{'departs at':>12}"
    )
    for name, r in med.items():
        diff, dep = quality.get(name, (None, None))
        cols = [f"{r['load_s']:>8.2f}"]
        cols += [f"{r[k]:>15.1f}" if k in r else f"{'':>15}" for k in ("prefill_tps",)]
        cols += [f"{r[k]:>14.1f}" if k in r else f"{'':>14}" for k in ("decode_tps",)]
        cols += [f"{r['peak_rss_mib']:>14.0f}"]
        cols += [f"{diff:>14.3f}" if diff is not None else f"{'':>14}"]
        cols += [f"{'never' if dep is None and diff is not None else dep if dep is not None else '':>12}"]
        print(f"{name:<20}" + "".join(cols))
    peer = "llama.cpp" if "llama.cpp" in med else "transformers-bf16"
    a, b = med["ember"], med[peer]
    if "ember-compiled" in runs:
        compiles = [r["compile_s"] for r in runs["ember-compiled"]]
        median = med["ember-compiled"]["compile_s"]
        print(f"\nember-compiled: building took {compiles[0]:.1f} s in round 1, loading it a median {median:.2f} s")
        c = med["ember-compiled"]
        print(f"ember-compiled / {peer}: decode {c['decode_tps'] / med[peer]['decode_tps']:.2f}x")
    print(
        f"\nember / {peer}: load (cached) {b['load_s'] / a['load_s']:.2f}x faster, first load "
        f"{med['ember-first-load']['load_s']:.2f} s, prefill {a['prefill_tps'] / b['prefill_tps']:.2f}x, "
        f"decode {a['decode_tps'] / b['decode_tps']:.2f}x, peak RSS {a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x"
    )


if __name__ == "__main__":
    main()
