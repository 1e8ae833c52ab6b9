"""Time and peak memory of inspecting a 512-token conversation on the default model.

    python bench/bench_inspect.py [--tokens 512] [--threads 2]
Runs in its own process so the peak RSS is the inspection's; prints a one-line summary.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from engine.inspection.inspect import inspect, logit_lens
    from engine.loading.loader import load_model

    lm = load_model(device="cpu")
    turns = []
    while True:
        turns += [
            {"role": "user", "content": "Tell me about the history of computing, briefly."},
            {
                "role": "assistant",
                "content": "Machines went from rewired panels to stored programs, "
                "then compilers, operating systems and networks; each step hid detail.",
            },
        ]
        ids = lm.encode_prompt(lm.render_chat(turns, add_generation_prompt=False))
        if len(ids) >= args.tokens:
            ids = ids[: args.tokens]
            break
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    result = inspect(lm.model, lm.tokenizer, ids)
    t_inspect = time.perf_counter() - t0
    t0 = time.perf_counter()
    logit_lens(lm.model, lm.tokenizer, result, position=len(ids) - 1)
    t_lens = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kept = sum(a.numel() * a.element_size() for a in result.attention.values()) / 2**20
    print(
        f"inspect {len(ids)} tokens, {lm.config.n_layer} layers x {lm.config.n_head} heads: "
        f"{t_inspect:.2f} s; logit lens for one position {t_lens * 1000:.0f} ms; attention kept {kept:.0f} MiB; "
        f"peak RSS {peak:.0f} MiB (model loaded: {rss_before:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
