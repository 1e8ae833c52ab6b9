"""``ember-cli``: model info, one-shot generation and an interactive terminal chat.

A bad file or flag exits non-zero with a one-line message and no traceback. Torch (about a second to
import) is imported only once a model is built: ``--help`` answers, and a bad model file is refused
(`engine.loading.model_file.peek_config`), without it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields

from engine.device import DEVICE_CHOICES, DTYPE_CHOICES
from engine.errors import EmberError
from engine.generation.sampler_settings import SamplerSettings

# flag -> SamplerSettings field
SAMPLER_FLAGS = {
    "temperature": ("temperature", float, "0 is greedy; higher is more random"),
    "top-k": ("top_k", int, "keep the k most likely tokens (0: off)"),
    "top-p": ("top_p", float, "keep the smallest set whose probability reaches p (1: off)"),
    "min-p": ("min_p", float, "drop tokens below p times the top token's probability (0: off)"),
    "typical-p": ("typical_p", float, "locally typical sampling (1: off)"),
    "repeat-penalty": ("repetition_penalty", float, "penalise recently seen tokens (1: off)"),
    "repeat-last-n": ("repetition_window", int, "how many recent tokens the penalties see (0: all)"),
    "presence-penalty": ("presence_penalty", float, "subtract once per token already present"),
    "frequency-penalty": ("frequency_penalty", float, "subtract per occurrence of a token"),
    "seed": ("seed", int, "random seed: the same seed gives the same text"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"ember-cli: error: {message} (see --help)\n")


def _model_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("model", nargs="?", help="a GGUF file or Hugging Face folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    p.add_argument("--ctx-size", type=int, default=None, help="context length to use (default: the model's)")
    return p


def _compile_option() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode through a step compiled ahead of time (about twice as fast on the CPU): built once per "
        "model shape, a minute or two, then loaded in milliseconds; needs a C++ compiler (default: such a step "
        "when one is already built, by the app or an earlier --compile; chat and serve build a missing one in "
        "the background, answering uncompiled until it is ready; --no-compile: never)",
    )
    return p


def _generation_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    defaults = {f.name: f.default for f in fields(SamplerSettings)}
    for flag, (name, kind, help_text) in SAMPLER_FLAGS.items():
        p.add_argument(
            f"--{flag}", dest=name, type=kind, default=defaults[name], help=f"{help_text} (default: {defaults[name]})"
        )
    p.add_argument("--max-tokens", type=int, default=256, help="stop after this many tokens (default: 256)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--system", help="a system message")
    p.add_argument(
        "--think",
        action=argparse.BooleanOptionalAction,
        help="let a reasoning model think before it answers, or not (models whose chat template takes "
        "enable_thinking, such as Qwen3; default: the template's own)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ember-cli", description="Run local language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", parents=[_model_options()], help="describe a model file")
    info.add_argument("--json", action="store_true", help="print JSON")
    running = [_model_options(), _compile_option()]  # the options of the commands that run the model
    gen = sub.add_parser("generate", parents=[*running, _generation_options()], help="generate text")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--json", action="store_true", help="one JSON object per generated token")
    gen.add_argument("--stats", action="store_true", help="print timings and memory to stderr at the end")
    gen.add_argument("--adapter", help="a LoRA adapter folder (PEFT layout, e.g. the 'adapter' of a finetune run)")
    sub.add_parser("chat", parents=[*running, _generation_options()], help="interactive chat")
    sub.add_parser(
        "compile",
        parents=[_model_options()],
        help="build the model's compiled decoding step now (once per model shape; generate, chat and serve use it)",
    )
    serve = sub.add_parser("serve", parents=running, help="serve the model over an OpenAI-compatible API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0: any free port)")
    serve.add_argument("--api-key", help="require this bearer key (default: $EMBER_API_KEY; needed off loopback)")
    serve.add_argument("--model-name", help="the model id clients use (default: the file name)")
    serve.add_argument("--max-queue", type=int, default=16, help="requests that may wait (default: 16)")
    _finetune_parser(sub)
    return parser


LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # engine.finetune.lora.ALL_TARGETS


def _finetune_parser(sub) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a model on your files (LoRA by default)")
    ft.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (.txt .md .pdf .docx .html .jsonl code)")
    ft.add_argument("--out", required=True, help="output folder: checkpoints, adapter/, merged/, model.gguf, run.json")
    ft.add_argument("--model", help="a GGUF file or Hugging Face folder (default: SmolLM2-135M-Instruct)")
    ft.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    ft.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="base weights while training (auto: bf16 where this device measures it faster, else float32)",
    )
    ft.add_argument("--full", action="store_true", help="train every weight instead of a LoRA adapter")
    ft.add_argument("--rank", type=int, help="LoRA rank (default: chosen from the data)")
    ft.add_argument("--alpha", type=float, help="LoRA alpha (default: twice the rank)")
    ft.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default: 0.05)")
    ft.add_argument("--targets", default=LORA_TARGETS, help="comma-separated modules to adapt")
    ft.add_argument("--steps", type=int, help="optimizer steps (default: from --epochs)")
    ft.add_argument("--epochs", type=float, help="passes over the data (default: chosen from the data)")
    ft.add_argument("--lr", type=float, help="peak learning rate (default: chosen from the data)")
    ft.add_argument("--seq-len", type=int, default=256, help="training length in tokens (default: 256)")
    ft.add_argument("--batch-size", type=int, default=4, help="sequences per micro-batch (default: 4)")
    ft.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    ft.add_argument("--val-fraction", type=float, help="chunks held out for validation (default: chosen)")
    ft.add_argument(
        "--lessons",
        action=argparse.BooleanOptionalAction,
        help="also train on questions and answers made from the files' facts (default: chosen from the data)",
    )
    ft.add_argument("--probes", type=int, default=8, help="recall questions asked before and after (default: 8)")
    ft.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: at the end)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    ft.add_argument("--no-export", action="store_true", help="skip writing the adapter and merged model")
    ft.add_argument(
        "--gguf",
        default="f16",
        choices=("f16", "f32", "q8_0", "none"),
        help="tensor type of the merged model.gguf (default: f16; none: no GGUF; needs a GGUF base model)",
    )


def _settings(args: argparse.Namespace) -> SamplerSettings:
    return SamplerSettings(**{name: getattr(args, name) for name, _, _ in SAMPLER_FLAGS.values()})


def _load(args: argparse.Namespace):
    from engine.loading.model_file import peek_config

    # A bad file is refused before torch is imported. load_model then reads the header again: a second parse,
    # about 45 ms for a real model's header (under 1 ms for the tests' tiny files), left as it is rather than
    # passing the config through load_model's signature.
    peek_config(args.model)
    from engine.loading.loader import load_model

    lm = load_model(args.model, device=args.device, dtype=args.dtype, context_length=args.ctx_size)
    if getattr(args, "adapter", None):
        from engine.finetune import load_peft_adapter

        load_peft_adapter(lm.model, args.adapter)
    wanted = getattr(args, "compile", False)
    if wanted is not False:
        _compile(lm, build=bool(wanted))
    return lm


@contextmanager
def _compiling_meanwhile(lm, args: argparse.Namespace) -> Iterator[None]:
    """For a long-running command left to its default (no --compile flag): a missing compiled step is built
    in the background (`engine.compiled.background`) while the model answers uncompiled, and the build is
    stopped, its processes killed, when the command ends."""
    from engine.compiled.background import BackgroundCompile
    from engine.compiled.step import unavailable_reason

    if args.compile is not None or lm.model.compiled_step is not None or unavailable_reason(lm.model.device):
        yield
        return

    def done(reason: str | None) -> None:
        print(f"[{'not compiled: ' + reason if reason else 'compiled decoding ready'}]", file=sys.stderr, flush=True)

    build = BackgroundCompile(lm, lambda line: print(f"[{line}, in the background]", file=sys.stderr), done)
    try:
        yield
    finally:
        build.stop(wait_s=5.0)


def _compile(lm, build: bool) -> None:
    """The compiled decoding step: built when ``build`` (a failure is fatal), else only one already built
    (none: eager, silently)."""
    from engine.compiled.library import compile_decoding
    from engine.errors import CompileUnavailableError

    try:
        seconds = compile_decoding(lm, _stderr, build=build)
    except CompileUnavailableError:
        if build:
            raise
        return
    if build:
        print(f"compiled decoding ready in {seconds:.1f} s", file=sys.stderr)


def _stderr(message: str) -> None:
    print(f"{message}...", file=sys.stderr, flush=True)


def cmd_info(args: argparse.Namespace) -> None:
    lm = _load(args)
    cfg = lm.config
    info = {
        "file": str(lm.path),
        "format": lm.file_format,
        "architecture": cfg.arch,
        "parameters": cfg.n_params,
        "layers": cfg.n_layer,
        "embedding": cfg.n_embd,
        "heads": cfg.n_head,
        "kv_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "feed_forward": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "context_length": cfg.max_seq_len,
        "rope_theta": None if cfg.learned_positions else cfg.rope_theta,
        "tied_embeddings": cfg.tie_embeddings,
        "weight_types": lm.weight_types,
        "chat_template": "ChatML (fallback)" if lm.template.is_fallback else "the model's own",
        "device": str(lm.model.device),
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        **{what.lower().replace(" ", "_"): chosen for what, chosen in lm.kernels},
        "load_seconds": round(lm.load_seconds, 3),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    width = max(map(len, info))
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} x{n}" for k, n in value.items())
        print(f"{key.replace('_', ' '):<{width}}  {value}")


def _generation(lm, ids: list[int], settings: SamplerSettings, args: argparse.Namespace):
    from engine.generation.generate import Generation

    return Generation(
        lm.model,
        lm.tokenizer,
        ids,
        settings,
        max_tokens=args.max_tokens,
        stop_strings=args.stop,
        context_length=lm.context_length,
    )


def _messages(system: str | None, user: str) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]


def cmd_generate(args: argparse.Namespace) -> None:
    settings = _settings(args)
    lm = _load(args)
    if args.chat or args.system:
        from engine.chat_prompt import render_prompt

        text = render_prompt(lm, _messages(args.system, args.prompt), think=args.think)
    else:
        text = args.prompt
    gen = _generation(lm, lm.encode_prompt(text), settings, args)
    for event in gen:
        if args.json:
            print(
                json.dumps(
                    {
                        "id": event.id,
                        "text": event.text,
                        "logprob": round(event.logprob, 6),
                        "top": [{"id": a.id, "text": a.text, "logprob": round(a.logprob, 6)} for a in event.top],
                    },
                    ensure_ascii=False,
                ),
                flush=True,
            )
        else:
            print(event.text, end="", flush=True)
    if not args.json:
        print()
    if args.stats:
        from engine.memory import MiB, peak_memory_bytes

        s = gen.stats
        print(
            f"load {lm.load_seconds:.2f} s | prompt {s.prompt_tokens} tokens, prefill "
            f"{s.prefill_tokens_per_second:.1f} tok/s | {s.generated_tokens} generated, decode "
            f"{s.decode_tokens_per_second:.1f} tok/s ({'compiled' if lm.model.compiled_step else 'eager'}) | "
            f"finish: {gen.finish_reason} | "
            f"peak memory {peak_memory_bytes(lm.model.device) / MiB:.0f} MiB",
            file=sys.stderr,
        )


def _fit_history(lm, messages: list[dict[str, str]], reserve: int, think: bool | None) -> list[int]:
    """Render the chat, dropping the oldest turns (never the system message) until it fits."""
    from engine.chat_prompt import render_prompt

    while True:
        ids = lm.encode_prompt(render_prompt(lm, messages, think=think))
        first = 1 if messages[0]["role"] == "system" else 0
        if len(ids) + reserve <= lm.context_length or len(messages) - first <= 1:
            return ids
        del messages[first : first + 2]
        print("[context full: dropped the oldest exchange]", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    settings = _settings(args)
    lm = _load(args)
    print(
        f"Ember chat with {lm.name} on {lm.model.device}. Enter to send, Ctrl+C stops a reply, "
        "/clear starts over, Ctrl+D or /quit leaves.",
        file=sys.stderr,
    )
    with _compiling_meanwhile(lm, args):
        _chat(lm, settings, args)


def _chat(lm, settings: SamplerSettings, args: argparse.Namespace) -> None:
    from engine.model_lock import hold

    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    while True:
        try:
            user = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if user in ("/quit", "/exit"):
            return
        if user == "/clear":
            messages = list(system)
            continue
        if not user:
            continue
        messages.append({"role": "user", "content": user})
        ids = _fit_history(lm, messages, min(args.max_tokens, lm.context_length // 2), args.think)
        gen = _generation(lm, ids, settings, args)
        t0 = time.perf_counter()
        with hold(lm):  # a compiled step built meanwhile is installed between replies
            try:
                for event in gen:
                    print(event.text, end="", flush=True)
            except KeyboardInterrupt:  # the partial reply is kept
                print(" [stopped]", end="")
        print(f"\n[{gen.stats.generated_tokens} tokens, {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
        messages.append({"role": "assistant", "content": gen.text})


def cmd_compile(args: argparse.Namespace) -> None:
    from engine.compiled.library import package_path

    lm = _load(args)
    _compile(lm, build=True)
    path = package_path(lm.model)
    print(path if path.exists() else "the step that came with the program")


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from engine.server.ember_server import check_bind, serve

    api_key = args.api_key or os.environ.get("EMBER_API_KEY") or None
    check_bind(args.host, api_key)  # before spending time on loading
    lm = _load(args)
    with _compiling_meanwhile(lm, args):
        serve(lm, args.host, args.port, api_key=api_key, model_id=args.model_name, max_queue=args.max_queue)


def cmd_finetune(args: argparse.Namespace) -> None:
    from engine.finetune import FinetuneConfig, finetune
    from engine.finetune.plan import planned_config
    from engine.finetune.train import check_trainable, dataset_for
    from engine.loading.loader import load_model

    settings = {
        "method": "full" if args.full else "lora",
        "rank": args.rank,
        "alpha": args.alpha,
        "dropout": args.lora_dropout,
        "target_modules": [t.strip() for t in args.targets.split(",") if t.strip()],
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "steps": args.steps,
        "epochs": args.epochs,
        "lr": args.lr,
        "val_fraction": args.val_fraction,
        "lessons": args.lessons,
        "probes": args.probes,
        "checkpoint_every": args.checkpoint_every,
        "seed": args.seed,
        "gguf": args.gguf,
    }
    # The base weights in the dtype this device trains fastest in (LoRA factors are float32 either way),
    # unless asked otherwise; the loader's own default may be a packed layout meant for chat.
    dtype = args.dtype
    if dtype == "auto":
        from engine.device import resolve_device
        from engine.finetune.precision import training_dtype

        method = "full" if args.full else "lora"
        dtype = str(training_dtype(resolve_device(args.device), method)).removeprefix("torch.")
    lm = load_model(args.model, device=args.device, dtype=dtype, pack=False)  # packed kernels have no backward
    from engine.finetune import latest_checkpoint

    ckpt = latest_checkpoint(args.out) if args.resume else None
    if ckpt is not None:  # the run's own settings, so the data and its order are the same: nothing to plan
        config = FinetuneConfig.from_dict(json.loads((ckpt / "state.json").read_text())["config"])
        config.gguf = args.gguf
        data = dataset_for(lm, args.paths, config)
        _report_files(data)
    else:
        config, chosen, data = planned_config(lm, args.paths, settings)
        _report_files(data)
        check_trainable(data)
        print("Settings chosen from your files (flags override them):", file=sys.stderr)
        for reason in chosen.reasons:
            print(f"  - {reason}", file=sys.stderr)
    if ckpt is None:
        print(_estimate_line(lm, config, data, export=not args.no_export), file=sys.stderr)
    started = time.perf_counter()

    def progress(p) -> None:
        width = 24
        done = int(width * p.step / p.total_steps)
        val = f" val {p.val_loss:.4f}" if p.val_loss is not None else ""
        eta = f"{p.eta_seconds:.0f}s" if p.eta_seconds != float("inf") else "?"
        line = (
            f"[{'#' * done}{'.' * (width - done)}] step {p.step}/{p.total_steps} epoch {p.epoch:.2f} "
            f"loss {p.train_loss:.4f}{val} lr {p.lr:.2e} {p.tokens_per_second:.0f} tok/s ETA {eta}"
        )
        print(line, file=sys.stderr, flush=True)

    result = finetune(lm, data, args.out, config, progress=progress, resume=args.resume, export=not args.no_export)
    if result.recall is not None:
        from engine.finetune.probes import report

        print(report(result.recall.to_json()))
    if result.val_loss_before is not None and result.val_loss_after is not None:
        print(
            f"validation loss {result.val_loss_before:.4f} -> {result.val_loss_after:.4f} "
            f"(perplexity {result.perplexity_before:.2f} -> {result.perplexity_after:.2f})"
        )
    print(f"{result.status} at step {result.step}/{result.total_steps}; checkpoint {result.checkpoint}")
    outputs = (("adapter", result.adapter_dir), ("merged model", result.merged_dir), ("merged GGUF", result.gguf_path))
    for label, path in outputs:
        if path is not None:
            print(f"{label}: {path}")
    if result.gguf_skipped:
        print(f"no GGUF: {result.gguf_skipped}", file=sys.stderr)
    print(f"took {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)


def _report_files(data) -> None:
    for r in data.reports:
        what = f"skipped: {r.skipped}" if r.skipped else f"{r.tokens} tokens, {r.chunks} chunks"
        print(f"  {r.path}: {what}" + "".join(f" [{n}]" for n in r.notes), file=sys.stderr)
    print(data.summary(), file=sys.stderr)


def _estimate_line(lm, config, data, *, export: bool) -> str:
    """The run's estimated time and memory on this machine now (~0.2 s to measure its matmul rate)."""
    from engine.finetune.estimate import estimate_config, measure_matmul_rate

    dtype = lm.model.dtype
    e = estimate_config(
        lm.config,
        config,
        data,
        device_type=lm.model.device.type,
        flops_per_second=measure_matmul_rate(dtype=dtype) if lm.model.device.type == "cpu" else None,
        dtype_bytes=dtype.itemsize,
        export=export,
    )
    if e.seconds is None:
        return f"Estimate: {e.steps} optimizer steps, memory about {e.memory_bytes / 2**30:.1f} GiB"
    return (
        f"Estimate: about {e.seconds / 60:.1f} min (training {e.train_seconds / 60:.1f}, recall questions "
        f"{e.probe_seconds / 60:.1f}, merged outputs {e.export_seconds / 60:.1f}) for {e.steps} optimizer steps "
        f"in {str(dtype).removeprefix('torch.')}; memory about {e.memory_bytes / 2**30:.1f} GiB"
    )


COMMANDS = {
    "info": cmd_info,
    "generate": cmd_generate,
    "chat": cmd_chat,
    "compile": cmd_compile,
    "serve": cmd_serve,
    "finetune": cmd_finetune,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (EmberError, ValueError, OSError) as e:
        print(f"ember-cli: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
