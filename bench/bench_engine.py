"""Ember's engine against llama.cpp and `transformers` on the same GGUF, the same token ids, the same lengths.

    python bench/bench_engine.py [--model PATH] [--prompt-tokens 50,500,3000] [--gen-tokens 128] [--threads 2]
                                 [--rounds 3]

Prints the CPU (model, family, the flags the kernels dispatch on), torch's and llama-cpp-python's versions
and the threads with the figures. Every engine runs in its own subprocess (so peak RSS is its own) once a
round, the engines taking turns; each loads once, warms up, then for each prompt length prefills it on an
empty cache and decodes ``--gen-tokens`` greedy tokens. Medians over the rounds.

- ``ember``: the default CPU mode (bf16, 4-bit weights packed), loaded from its weight cache, uncompiled:
  what ``ember-cli generate`` runs until a compiled step is built; ``ember-first-load`` times the load
  with an empty cache (packing from the GGUF and writing the cache).
- ``ember-compiled``: ``ember`` with its decoding step compiled for this machine, what the app runs (it
  builds the step in the background on load) and ``ember-cli generate`` once a step is built (by
  ``ember-cli compile``, which ``make run`` and ``make chat`` run first, or ``--compile``). The first round
  builds it, later rounds load it; the build is timed apart.
- ``ember-shipped``: the step a bundle ships for this CPU's instruction-set level
  (`engine.compiled.prebuilt`: portable code, no VNNI or bf16 instructions), built before the rounds;
  the default model only.
- ``ember-exact``: float32 dequantized weights, the quality reference (the first round only).
- ``transformers-bf16``: transformers from the same GGUF in bf16.
- ``llama.cpp``: llama-cpp-python, when installed (``make bench-peers`` builds it for this CPU), with
  llama.cpp's default batches (2048, micro-batch 512) and without ``logits_all``, which would compute the
  head at every prompt position; its quality logits come from a second instance after the timing.

Quality, against ``ember-exact``: the largest logit difference over the first 128 prompt positions,
and the index of the first generated token where greedy output departs from it after the middle prompt.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")


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
    flags = set(info.get("flags", "").split())
    has = " ".join(f for f in KERNEL_FLAGS if f in flags) or "none of " + " ".join(KERNEL_FLAGS)
    return f"{info.get('model name')} (family {info.get('cpu family')}, model {info.get('model')}; flags: {has})"


def versions() -> str:
    import torch

    try:
        llama = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        llama = "not installed"
    return f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), llama-cpp-python {llama}"


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the parent's
    high-water mark across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prompts(args) -> dict[int, list[int]]:
    return {n: args.prompt[:n] for n in args.lengths}


def _ember(args, dtype: str, step: str | None = None, quality_only: bool = False) -> dict:
    import torch

    from engine.generation.generate import Generation
    from engine.generation.sampling import SamplerSettings
    from engine.loading.loader import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model, device="cpu", dtype=dtype, cache_dir=args.cache_dir)
    load = time.perf_counter() - t0
    extra = {}
    if step is not None:
        from engine.compiled.library import compile_decoding

        if step == "native":  # its own cache, kept over the rounds: round 1 builds the step, later rounds load it
            extra["compile_s"] = compile_decoding(lm, cache_dir=Path(args.out_dir) / "compiled-cache")
        else:
            compile_decoding(lm, build=False, prebuilt_dir=Path(args.out_dir) / "shipped")
    greedy = SamplerSettings(temperature=0.0)
    list(Generation(lm.model, lm.tokenizer, args.prompt[:16], greedy, max_tokens=4))  # warm-up, as llama-bench does
    rows, ids = {}, {}
    for n, prompt in _prompts(args).items():
        if quality_only and n != args.middle:
            continue
        lm.model.drop_cache()
        gen = Generation(lm.model, lm.tokenizer, prompt, greedy, max_tokens=args.gen_tokens, ignore_eos=True)
        ids[n] = [e.id for e in gen]
        rows[n] = {"prefill_tps": gen.stats.prefill_tokens_per_second, "decode_tps": gen.stats.decode_tokens_per_second}
        rows[n]["rss_mib"] = peak_rss_mib()  # the peak so far: over this prompt and the shorter ones
    rss = peak_rss_mib()
    lm.model.drop_cache()
    with torch.inference_mode():  # quality, after the peak is read (as llama.cpp's separate pass)
        logits = lm.model(torch.tensor([args.prompt[:LOGIT_POSITIONS]]))[0].float().numpy()
    return {"load_s": load, **extra, "rss_mib": rss, "rows": {} if quality_only else rows, "ids": ids, "logits": logits}


def run_ember(args) -> dict:
    return _ember(args, "auto")


def run_ember_compiled(args) -> dict:
    return _ember(args, "auto", step="native")


def run_ember_shipped(args) -> dict:
    return _ember(args, "auto", step="shipped")


def run_ember_exact(args) -> dict:
    return _ember(args, "float32", quality_only=True)


def run_ember_first_load(args) -> dict:
    from engine.loading.loader import load_model

    t0 = time.perf_counter()
    lm = load_model(args.model, device="cpu", cache_dir=args.cache_dir)
    assert not lm.from_cache
    return {"load_s": time.perf_counter() - t0, "rss_mib": peak_rss_mib()}


def run_transformers_bf16(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(os.path.abspath(args.model))
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16).eval()
    load = time.perf_counter() - t0
    rows, ids = {}, {}
    with torch.inference_mode():
        logits = model(torch.tensor([args.prompt[:LOGIT_POSITIONS]])).logits[0].float().numpy()
        model.generate(torch.tensor([args.prompt[:16]]), max_new_tokens=4, do_sample=False)  # warm-up
        for n, prompt in _prompts(args).items():
            x = torch.tensor([prompt])
            t0 = time.perf_counter()
            model(x, use_cache=True)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(x, max_new_tokens=args.gen_tokens, min_new_tokens=args.gen_tokens, do_sample=False)
            total = time.perf_counter() - t0
            ids[n] = out[0, x.shape[1] :].tolist()
            rows[n] = {"prefill_tps": n / prefill, "decode_tps": (len(ids[n]) - 1) / max(total - prefill, 1e-9)}
            rows[n]["rss_mib"] = peak_rss_mib()
    return {"load_s": load, "rss_mib": peak_rss_mib(), "rows": rows, "ids": ids, "logits": logits}


def run_llama_cpp(args) -> dict:
    from llama_cpp import Llama

    def last_logits(llm) -> np.ndarray:
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))

    t0 = time.perf_counter()
    llm = Llama(
        args.model,
        n_ctx=max(args.lengths) + args.gen_tokens + 16,
        n_batch=2048,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    load = time.perf_counter() - t0
    llm.eval(args.prompt[:16])  # warm-up
    rows, ids = {}, {}
    for n, prompt in _prompts(args).items():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        token = int(np.argmax(last_logits(llm)))
        prefill = time.perf_counter() - t0
        out = [token]
        t0 = time.perf_counter()
        while len(out) < args.gen_tokens:
            llm.eval([token])
            token = int(np.argmax(last_logits(llm)))
            out.append(token)
        ids[n] = out
        rows[n] = {"prefill_tps": n / prefill, "decode_tps": (len(out) - 1) / (time.perf_counter() - t0)}
        rows[n]["rss_mib"] = peak_rss_mib()
    rss = peak_rss_mib()
    del llm
    # quality in a separate pass: logits for every prompt position need logits_all
    check = Llama(args.model, n_ctx=LOGIT_POSITIONS + 16, n_threads=args.threads, logits_all=True, verbose=False)
    check.eval(args.prompt[:LOGIT_POSITIONS])
    logits = np.array(check.scores[:LOGIT_POSITIONS], dtype=np.float32)
    return {"load_s": load, "rss_mib": rss, "rows": rows, "ids": ids, "logits": logits}


ENGINES = {
    "ember-first-load": run_ember_first_load,
    "ember": run_ember,
    "ember-compiled": run_ember_compiled,
    "ember-shipped": run_ember_shipped,
    "ember-exact": run_ember_exact,
    "transformers-bf16": run_transformers_bf16,
    "llama.cpp": run_llama_cpp,
}
ONCE = {"ember-exact"}  # the reference: its output does not change between rounds


def _child(args) -> None:
    if args.engine != "llama.cpp":  # torch alone is ~275 MiB of RSS, which llama.cpp's peak must not carry
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


def _engines(args) -> list[str]:
    import torch

    from engine.compiled.step import unavailable_reason
    from engine.loading.default_model import default_model_path

    skip = {"llama.cpp"} if importlib.util.find_spec("llama_cpp") is None else set()
    if unavailable_reason(torch.device("cpu")):
        skip |= {"ember-compiled", "ember-shipped"}
    if Path(args.model).resolve() != default_model_path().resolve():
        skip.add("ember-shipped")  # a bundle ships the default model's step only
    return [e for e in ENGINES if e not in skip]


def _median(runs: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith(("_s", "_mib"))}
    for n in runs[0].get("rows", {}):
        for k in ("prefill_tps", "decode_tps", "rss_mib"):
            out[f"{k}@{n}"] = statistics.median(r["rows"][n][k] for r in runs)
    return out


def _report(args, engines, runs, quality) -> None:
    print(f"CPU: {cpu_name()}, {args.threads} threads; {versions()}")
    print(
        f"model {args.model}\nprompts of {', '.join(map(str, args.lengths))} tokens, {args.gen_tokens} greedy tokens "
        f"after each, medians of {args.rounds} interleaved rounds\n"
    )
    med = {e: _median(runs[e]) for e in engines}
    lens = args.lengths
    head = f"{'engine':<19}{'load s':>7}{'RSS MiB':>8}{'|dlogit|':>9}{'departs':>8}"
    head += "".join(f"{'prefill@' + str(n):>14}" for n in lens) + "".join(f"{'decode@' + str(n):>13}" for n in lens)
    print(head + "   (tok/s)")
    for name in engines:
        r = med[name]
        diff, dep = quality.get(name, (None, None))
        cols = f"{name:<19}{r['load_s']:>7.2f}{r['rss_mib']:>8.0f}"
        cols += f"{diff:>9.3f}{'never' if dep is None else dep:>8}" if diff is not None else f"{'':>17}"
        for k, width in (("prefill_tps", 14), ("decode_tps", 13)):
            cols += "".join(f"{r[f'{k}@{n}']:>{width}.1f}" if f"{k}@{n}" in r else f"{'':>{width}}" for n in lens)
        print(cols)
    peer = "llama.cpp" if "llama.cpp" in med else "transformers-bf16"
    b = med[peer]
    print(f"\nagainst {peer} (x faster), prompts of {', '.join(map(str, lens))} tokens:")
    for name in ("ember", "ember-compiled", "ember-shipped"):
        if name in med:
            a = med[name]
            pre = " ".join(f"{a[f'prefill_tps@{n}'] / b[f'prefill_tps@{n}']:.2f}" for n in lens)
            dec = " ".join(f"{a[f'decode_tps@{n}'] / b[f'decode_tps@{n}']:.2f}" for n in lens)
            print(f"  {name:<16} prefill {pre}   decode {dec}")
    a = med["ember"]
    print(
        f"  load: ember {a['load_s']:.2f} s from its cache, {med['ember-first-load']['load_s']:.2f} s the first time, "
        f"{peer} {b['load_s']:.2f} s; peak RSS ember {a['rss_mib']:.0f} MiB, {peer} {b['rss_mib']:.0f} MiB"
    )
    for name in ("ember", "ember-compiled", peer):
        if name in med:
            peaks = ", ".join(f"{med[name][f'rss_mib@{n}']:.0f}" for n in lens)
            print(f"  peak RSS of {name} after the prompts of {', '.join(map(str, lens))} tokens: {peaks} MiB")
    if "ember-compiled" in runs:
        builds = [r["compile_s"] for r in runs["ember-compiled"]]
        later = f", loading it a median {statistics.median(builds[1:]):.2f} s later" if len(builds) > 1 else ""
        print(f"  ember-compiled: building the step took {builds[0]:.1f} s in round 1{later}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--prompt-tokens", default="50,500,3000", help="prompt lengths, comma-separated")
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--prompt-file", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.lengths = sorted(int(n) for n in args.prompt_tokens.split(","))
    args.middle = args.lengths[len(args.lengths) // 2]
    if args.model is None:
        from engine.loading.default_model import default_model_path

        args.model = str(default_model_path())
    if args.engine:
        _child(args)
        return
    from engine.loading.loader import load_model

    tokenizer = load_model(args.model, device="cpu", dtype="float32").tokenizer
    prompt = make_prompt(lambda t: tokenizer.encode(t, add_bos=False), max(args.lengths))
    engines = _engines(args)
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        if "ember-shipped" in engines:
            from engine.compiled.prebuilt import prebuild

            prebuild(Path(tmp) / "shipped", progress=lambda line: print(line, file=sys.stderr), this_cpu_only=True)
        prompt_file = Path(tmp) / "prompt.json"
        prompt_file.write_text(json.dumps(prompt))
        for r in range(args.rounds):
            cache_dir = Path(tmp) / f"cache-{r}"  # empty for ember-first-load, then warm for ember
            for engine in engines:
                if r and engine in ONCE:
                    continue
                cmd = [sys.executable, __file__, "--engine", engine, "--model", args.model]
                cmd += ["--threads", str(args.threads), "--gen-tokens", str(args.gen_tokens)]
                cmd += ["--prompt-tokens", args.prompt_tokens, "--prompt-file", str(prompt_file)]
                cmd += ["--out-dir", tmp, "--cache-dir", str(cache_dir)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                runs[engine].append(json.loads(out.strip().splitlines()[-1]))
        reference = runs["ember-exact"][0]["ids"][str(args.middle)]
        ref_logits = np.load(Path(tmp) / "ember-exact.npy")
        quality = {}
        for engine in engines:
            if (Path(tmp) / f"{engine}.npy").exists():
                diff = float(np.abs(np.load(Path(tmp) / f"{engine}.npy") - ref_logits).max())
                quality[engine] = (diff, _departure(runs[engine][0]["ids"][str(args.middle)], reference))
    _report(args, engines, runs, quality)


if __name__ == "__main__":
    main()
