"""``ember --self-test``: prove that this installation works, end to end, without a screen or a network.

It starts the real main window offscreen on a temporary data directory (deleted afterwards, so the
user's conversations and settings are never touched), waits for its worker to load the default model,
sends one message through the window as the Send button would, checks that the greedy reply streamed
in and was saved, runs one inspection pass (`engine.inspection.inspect.inspect`) over prompt and reply,
writes a LoRA adapter's merged model as a GGUF and reads it back (`_export`: the fine-tuning export, with
the `gguf` package the bundle must carry), and prints a short summary. Exit status 0 when all of that
worked; 1 with the reason on stderr otherwise. Works the same from source (``python -m desktop
--self-test``) and from the bundle (``Ember --self-test``).

``--screenshot PATH`` also saves a picture of the window once the reply is in.
"""

from __future__ import annotations

import faulthandler
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROMPT = "Hello! In one sentence, what is a flame?"
MAX_TOKENS = 24
DEFAULT_TIMEOUT = 300.0  # seconds for the whole test; a hang dumps every thread's stack and exits
LOGPROB_TOLERANCE = 0.05  # generation (KV cache, fused attention) vs the inspection pass (explicit softmax)
# In bf16 (the CPU default) logits of 16-32 are rounded to steps of 0.125, so two passes over the same text
# (one token at a time from the cache, and all at once) can differ by about a step.
BF16_LOGPROB_TOLERANCE = 0.25


class SelfTestFailed(Exception):
    pass


def run(screenshot: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT) -> int:
    t0 = time.monotonic()
    stream = sys.stderr if sys.stderr is not None else sys.stdout
    if stream is not None:  # a hang must not block CI forever: dump every thread's stack and exit
        faulthandler.dump_traceback_later(timeout, exit=True, file=stream)
    try:
        with tempfile.TemporaryDirectory(prefix="ember-self-test-") as tmp:
            lines = _run(Path(tmp), Path(screenshot) if screenshot else None, timeout)
    except SelfTestFailed as e:
        print(f"Ember self-test FAILED: {e}", file=sys.stderr)
        return 1
    except Exception:
        print(f"Ember self-test FAILED with an unexpected error:\n{traceback.format_exc()}", file=sys.stderr)
        return 1
    finally:
        faulthandler.cancel_dump_traceback_later()
    print("Ember self-test")
    for line in lines:
        print(f"  {line}")
    print(f"passed in {time.monotonic() - t0:.1f} s")
    return 0


def _export(lm, root: Path) -> str:
    """A small random LoRA adapter on the model, merged into its float32 weights and written as a GGUF
    (f16), as "Write merged model" does; the file loads back and answers as the merged model did."""
    import torch

    from engine.finetune.export import float32_merged, save_peft_adapter
    from engine.finetune.gguf_export import save_merged_gguf
    from engine.finetune.lora import add_lora
    from engine.loading.loader import load_model

    t0 = time.monotonic()
    ids = torch.tensor([lm.encode_prompt("The merged model")])

    def logits(model_path, *adapter) -> torch.Tensor:  # one model in memory at a time
        model = float32_merged(model_path, "cpu", *adapter) if adapter else load_model(model_path, dtype="float32")
        with torch.no_grad():
            return model.model(ids), model

    tuned = load_model(lm.path, device="cpu", dtype="float32", pack=False)
    gen = torch.Generator().manual_seed(0)
    for layer in add_lora(tuned.model, rank=2, targets=("q_proj", "down_proj")):
        layer.lora_B.data = torch.randn(layer.lora_B.shape, generator=gen) * 0.05
    adapter = save_peft_adapter(tuned, root / "export" / "adapter")
    del tuned
    want, merged = logits(lm.path, adapter)
    path = save_merged_gguf(merged, root / "export" / "model.gguf", "f16")
    del merged
    got, _ = logits(path)
    base, _ = logits(lm.path)
    gap, moved = float((got - want).abs().max()), float((want - base).abs().max())
    if gap > 0.1 * moved:  # f16 rounding of the weights only; the adapter's change is far larger
        raise SelfTestFailed(f"the merged GGUF answers differently from the merged model: logits differ by {gap:.3f}")
    size = path.stat().st_size / 2**20
    return f"merged GGUF of a LoRA adapter written ({size:.0f} MiB) and read back in {time.monotonic() - t0:.1f} s"


def _wait(app, condition: Callable[[], bool], deadline: float, what: str, dialogs: list) -> None:
    from PySide6.QtCore import QEventLoop

    while not condition():
        if dialogs:
            kind, title, text = dialogs[0]
            raise SelfTestFailed(f"{what}: the app showed a {kind} dialog: {title}: {text}")
        if time.monotonic() > deadline:
            raise SelfTestFailed(f"timed out {what}")
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.01)


def _run(root: Path, screenshot: Path | None, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout - 5
    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    import PySide6
    import torch
    from PySide6.QtWidgets import QMessageBox

    from desktop import crash
    from desktop.main_window import MainWindow
    from desktop.messages import Token
    from desktop.paths import APP_AUTHOR, APP_NAME, data_dirs
    from desktop.settings import Settings
    from engine.compiled import prebuilt
    from engine.inspection.inspect import inspect

    dirs = data_dirs(root).create()
    crash.install(dirs.logs, interactive=False)
    errors_before = len(crash.errors)
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setOrganizationName(APP_AUTHOR)
    app.setApplicationName(APP_NAME)

    # Greedy and short, so the reply is quick and the same on every run.
    settings = Settings(dirs.settings_file)
    settings.set("sampling/preset", "Greedy")
    settings.set("chat/max_tokens", MAX_TOKENS)
    settings.sync()

    # Any dialog is a failure, and a modal one would wait forever for a click nobody makes.
    dialogs: list[tuple[str, str, str]] = []
    saved = {kind: getattr(QMessageBox, kind) for kind in ("warning", "critical", "information", "question")}

    def record(kind: str) -> Callable[..., Any]:
        def show(_parent, title, text, *_args, **_kwargs):
            dialogs.append((kind, title, text))
            return QMessageBox.StandardButton.No if kind == "question" else QMessageBox.StandardButton.Ok

        return show

    for kind in saved:
        setattr(QMessageBox, kind, record(kind))
    window = None
    try:
        window = MainWindow(dirs)
        window.show()
        _wait(app, lambda: window.model_info is not None, deadline, "loading the default model", dialogs)
        info = window.model_info
        lm = window.worker.model
        if prebuilt.shipped_here():  # the bundle's own compiled step installs at once: the reply runs through it
            compiled: list = []
            window.worker.compiled.connect(compiled.append)
            _wait(app, lambda: bool(compiled) or lm.model.compiled_step is not None, deadline, "compiling", dialogs)
            if lm.model.compiled_step is None:
                raise SelfTestFailed(f"the shipped compiled decoding step did not load: {compiled[0].compile_warning}")
        decoding = "compiled" if lm.model.compiled_step is not None else "uncompiled"
        if prebuilt.shipped_here():
            decoding += f", shipped for {prebuilt.level()}"
        decoding += f"; attention {lm.model.decode_attention.describe()}"

        ended: dict[str, Any] = {}  # "result": the GenerationResult, or "failed": the message
        tokens: list[Token] = []
        window.worker.tokens.connect(tokens.extend)
        window.worker.generationFinished.connect(lambda result: ended.update(result=result))
        window.worker.generationFailed.connect(lambda message: ended.update(failed=message))
        window.session.send(PROMPT)
        _wait(app, lambda: bool(ended), deadline, "waiting for the reply", dialogs)
        app.processEvents()
        if "failed" in ended:
            raise SelfTestFailed(f"generation failed: {ended['failed']}")
        reply = ended["result"]
        text = reply.text
        if not text.strip() or not tokens:
            raise SelfTestFailed(f"the reply is empty (finish reason {reply.finish_reason})")
        saved_reply = window.store.messages(window.cid)[-1]
        if saved_reply.role != "assistant" or saved_reply.content != text or saved_reply.status != "complete":
            raise SelfTestFailed(f"the reply was not saved as it was written: {saved_reply!r}")

        # One inspection pass over what the model saw and wrote, attention kept for the last layer.
        prompt_ids = lm.encode_prompt(lm.render_chat([{"role": "user", "content": PROMPT}]))
        ids = prompt_ids + [t.id for t in tokens]
        last = lm.config.n_layer - 1
        t_inspect = time.monotonic()
        result = inspect(lm.model, lm.tokenizer, ids, layers=[last])
        inspect_seconds = time.monotonic() - t_inspect
        attention = result.attention[last]
        if len(result.ids) != len(ids) or tuple(attention.shape[1:]) != (len(ids), len(ids)):
            raise SelfTestFailed(f"the inspection covers {len(result.ids)} tokens of {len(ids)}")
        if not bool(torch.isfinite(attention.float()).all()):
            raise SelfTestFailed("the inspection's attention weights are not finite")
        gaps = [
            abs(result.token_logprobs[len(prompt_ids) + i] - t.logprob)
            for i, t in enumerate(tokens)
            if t.logprob > -math.inf
        ]
        tolerance = LOGPROB_TOLERANCE if lm.model.dtype == torch.float32 else BF16_LOGPROB_TOLERANCE
        if not gaps or max(gaps) > tolerance:
            worst = max(gaps) if gaps else float("nan")
            raise SelfTestFailed(f"the inspection disagrees with generation: log-probabilities differ by {worst:.4f}")

        exported = _export(lm, root)

        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            app.processEvents()
            if not window.grab().save(str(screenshot)):
                raise SelfTestFailed(f"could not save the screenshot to {screenshot}")
        window.close()
        app.processEvents()
        window.deleteLater()
        window = None
        app.processEvents()
    finally:
        if window is not None:
            window.close()
        for kind, fn in saved.items():
            setattr(QMessageBox, kind, fn)
    new_errors = crash.errors[errors_before:]
    if new_errors:
        raise SelfTestFailed(f"{len(new_errors)} unhandled exception(s), the first: {new_errors[0]}")
    if dialogs:
        kind, title, message = dialogs[0]
        raise SelfTestFailed(f"the app showed a {kind} dialog: {title}: {message}")

    where = f"packaged ({Path(sys.executable).parent})" if getattr(sys, "frozen", False) else "from source"
    shown = text.strip().replace("\n", " ")
    lines = [
        f"mode:       {where}",
        f"versions:   Python {platform.python_version()}, torch {torch.__version__}, "
        f"PySide6 {PySide6.__version__} ({app.platformName()})",
        f"model:      {info.name} · {info.architecture} · {info.parameters / 1e6:.0f}M parameters · "
        f"{info.device} {info.dtype} · loaded in {info.load_seconds:.1f} s",
        f"decoding:   {decoding}",
        f"reply:      {reply.generated_tokens} tokens, {reply.decode_tps:.1f} tokens/s, "
        f"finish {reply.finish_reason}: {shown[:70]!r}",
        f"inspection: {len(ids)} positions, {lm.config.n_layer} layers, attention of layer {last} "
        f"({attention.shape[0]} heads) in {inspect_seconds:.2f} s; log-probabilities match generation "
        f"within {max(gaps):.1e}",
        f"export:     {exported}",
    ]
    if screenshot is not None:
        lines.append(f"screenshot: {screenshot}")
    return lines
