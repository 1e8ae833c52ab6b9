"""The fine-tune panel's estimate before Start, full fine-tuning from the panel, the merged exports of a
LoRA run, and the compare view: base and tuned replies side by side, generated on the worker thread while
the UI keeps running, and the per-token log-probability difference on the tuned reply and on pasted text."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QTimer, QUrl

from desktop.finetune_worker import detach_lora
from desktop.panels.compare import CompareDialog
from engine.finetune.compare import logprob_difference
from engine.finetune.estimate import EXPORT_SECONDS_PER_PARAM
from engine.finetune.lora import lora_layers
from engine.generation.generate import Generation
from engine.generation.sampling import SamplerSettings
from engine.loading.loader import load_model
from tests.desktop.helpers import click
from tests.desktop.test_finetune_panel import RUN_TIMEOUT_MS, corpus, shot

pytestmark = pytest.mark.gui
PROMPT = "Where does the Zorvian glass-bird nest?"


@pytest.fixture(autouse=True)
def base_model_after(default_model):
    yield
    detach_lora(default_model.model)


def _panel(qtbot, make_window, dialogs, tmp_path):
    window = make_window()
    panel, ft = window.finetune_panel, window.finetune
    dock = window.docks["finetune"]
    dock.show()
    dock.raise_()
    dock.widget().resize(560, 1400)
    dialogs.open_path = str(corpus(tmp_path / "notes"))
    click(qtbot, panel.add_folder)
    qtbot.waitUntil(lambda: panel.files.topLevelItemCount() == 5, timeout=RUN_TIMEOUT_MS)
    panel.auto.setChecked(False)  # the test's own small settings
    panel.probes.setChecked(False)
    panel.seq_len.setValue(32)
    panel.batch.setValue(2)
    panel.val_fraction.setValue(0.25)
    panel.checkpoint_every.setValue(0)
    return window, panel, ft


def _secs(text: str) -> int:
    h_m_s = re.search(r"time about ([\d:]+)", text).group(1).split(":")
    return sum(int(x) * 60**i for i, x in enumerate(reversed(h_m_s)))


def _gib(text: str) -> float:
    return float(re.search(r"memory about ([\d.]+) GiB", text).group(1))


def test_estimate_of_time_and_memory_before_start(qtbot, make_window, dialogs, tmp_path):
    window, panel, _ = _panel(qtbot, make_window, dialogs, tmp_path)
    qtbot.waitUntil(lambda: "memory about" in panel.estimate.text(), timeout=RUN_TIMEOUT_MS)
    preview = panel._preview  # the machine's matmul rates, measured on the worker with the preview
    assert preview.flops_per_second > 1e8 and preview.full_flops_per_second > 1e8
    panel.probes.setChecked(False)  # the recall questions' time is tested in tests/engine/finetune
    panel.steps.setValue(100)
    lora = panel.estimate.text()
    assert lora.startswith("100 optimizer steps") and re.search(r"time about \d+:\d\d", lora)
    assert panel.rank.isEnabled()

    panel.method.setCurrentIndex(panel.method.findData("full"))
    full = panel.estimate.text()
    assert not panel.rank.isEnabled()
    n = window.worker.model.config.n_params
    assert _gib(full) > _gib(lora) + 3 * n * 4 / 2**30 * 0.9  # gradients and two AdamW moments of every weight
    assert f"{n / 1e6:.1f} M trainable" in full

    panel.steps.setValue(200)  # twice the steps, twice the training time; the merged outputs' the same
    export = n * EXPORT_SECONDS_PER_PARAM
    assert _secs(panel.estimate.text()) == pytest.approx(2 * _secs(full) - export, abs=2)
    assert panel.config()["method"] == "full"
    shot(panel, "finetune-estimate")


def _greedy(model, lm, prompt_ids, n):
    model.drop_cache()
    gen = Generation(model, lm.tokenizer, prompt_ids, SamplerSettings(temperature=0.0), max_tokens=n)
    for _ in gen:
        pass
    model.drop_cache()
    return gen.text


def test_lora_run_compare_view_and_merged_exports(qtbot, make_window, dialogs, tmp_path):
    window, panel, ft = _panel(qtbot, make_window, dialogs, tmp_path)
    panel.rank.setValue(8)
    panel.steps.setValue(6)
    panel.lr.setValue(0.01)  # far from the base in a few steps, so the replies differ
    click(qtbot, panel.start)
    qtbot.waitUntil(lambda: not ft.training, timeout=RUN_TIMEOUT_MS)
    (run,) = ft.runs
    assert run.status == "finished", run.error
    assert panel.compare.isEnabled() and panel.export.isEnabled()
    assert "Adapter:" in panel.outputs.text()
    lm = window.worker.model
    assert ft.worker.active == "" and not lora_layers(lm.model)

    # The compare view
    click(qtbot, panel.compare)
    dialog = ft.compare_dialog
    assert isinstance(dialog, CompareDialog) and dialog.isVisible()
    dialog.prompt.setPlainText(PROMPT)
    dialog.max_tokens.setValue(12)
    ticks: list[float] = []
    timer = QTimer(interval=20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    click(qtbot, dialog.compare)
    assert dialog.stop.isEnabled() and not dialog.compare.isEnabled()
    qtbot.waitUntil(lambda: dialog.compare.isEnabled(), timeout=RUN_TIMEOUT_MS)
    timer.stop()
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) > 10 and max(gaps) < 0.5, (
        f"the UI stalled for {max(gaps):.2f} s"
    )  # generation is off the UI thread
    assert dialog.status.text().startswith("Done")
    base_text, tuned_text = dialog.base_reply.toPlainText(), dialog.tuned_reply.toPlainText()
    assert base_text and tuned_text and base_text != tuned_text
    shot(dialog, "finetune-compare")

    # Independently: greedy replies of the base model and of the model with the run's adapter
    prompt_ids = lm.encode_prompt(lm.render_chat([{"role": "user", "content": PROMPT}]))
    assert ft.worker.active == "" and not lora_layers(lm.model), "the chat's model is as it was"
    with torch.inference_mode():
        assert _greedy(lm.model, lm, prompt_ids, 12) == base_text
    tuned = load_model(lm.path, dtype="float32")
    from engine.finetune import load_peft_adapter

    load_peft_adapter(tuned.model, run.adapter_dir, merge=False)
    with torch.inference_mode():
        assert _greedy(tuned.model, lm, prompt_ids, 12) == tuned_text

    # The difference view: the tuned reply's tokens, coloured, with their numbers
    n_reply = len(dialog.tokens)
    assert n_reply >= 1 and "background-color" in dialog.diff_view.toHtml()
    assert "mean difference" in dialog.details.text()
    dialog.score_text.setPlainText("The Zorvian glass-bird nests only on basalt cliffs above the Quenna river.")
    click(qtbot, dialog.score)
    qtbot.waitUntil(lambda: dialog.score.isEnabled() and len(dialog.tokens) != n_reply, timeout=RUN_TIMEOUT_MS)
    ids = lm.tokenizer.encode(dialog.score_text.toPlainText(), add_bos=lm.tokenizer.add_bos)
    expected = logprob_difference(tuned, ids)  # the adapter is on `tuned`: its own base pass turns it off
    assert [t.id for t in dialog.tokens] == ids[1:]
    # The chat's model may hold bf16 / packed int4 weights; the independent copy is float32. In bf16 logits
    # of 16-32 come in steps of 0.125, so each of the two log-probabilities can be off by about one step.
    tol = 2e-3 if lm.model.dtype == torch.float32 else 0.3
    for shown, exp in zip(dialog.tokens, expected, strict=True):
        assert shown.diff == pytest.approx(exp.diff, abs=tol)
    assert sum(t.diff for t in dialog.tokens) > 0, "the tuned model finds its training text likelier"
    dialog._on_token_hovered(QUrl("tok:0"))
    assert "difference" in dialog.details.text() and "base" in dialog.details.text()
    dialog.close()

    # The merged outputs of the LoRA run
    click(qtbot, panel.export)
    qtbot.waitUntil(lambda: not ft.exporting, timeout=RUN_TIMEOUT_MS)
    outputs = ft.runs[0].outputs
    assert Path(outputs["merged_dir"], "model.safetensors").is_file() and Path(outputs["gguf_path"]).is_file()
    assert "GGUF:" in panel.outputs.text()
    shot(panel, "finetune-outputs")
    merged = load_model(outputs["gguf_path"], dtype="float32")
    with torch.inference_mode():
        x = torch.tensor([ids])
        torch.testing.assert_close(merged.model(x), tuned.model(x), atol=0.1, rtol=0)  # f16 rounding
    window.close()


def test_full_finetune_from_the_panel(qtbot, make_window, dialogs, tmp_path):
    window, panel, ft = _panel(qtbot, make_window, dialogs, tmp_path)
    lm = window.worker.model
    ids = torch.tensor([lm.tokenizer.encode("Zorvian glass-birds sing at dusk")])
    with torch.inference_mode():
        before = lm.model(ids)
    panel.method.setCurrentIndex(panel.method.findData("full"))
    panel.steps.setValue(2)
    panel.lr.setValue(1e-4)
    click(qtbot, panel.start)
    qtbot.waitUntil(lambda: not ft.training, timeout=RUN_TIMEOUT_MS * 2)
    (run,) = ft.runs
    assert run.status == "finished", run.error
    assert run.config["method"] == "full" and not run.adapter_dir
    outputs = run.outputs
    assert Path(outputs["merged_dir"], "model.safetensors").is_file() and Path(outputs["gguf_path"]).is_file()
    assert "full," in panel.runs.topLevelItem(0).text(4)
    with torch.inference_mode():
        assert torch.equal(lm.model(ids), before), "a full run trains a copy: the chat's weights are untouched"
    assert not panel.use_tuned.isEnabled() and panel.compare.isEnabled() and not panel.export.isEnabled()
    tuned = load_model(outputs["gguf_path"], dtype="float32")
    with torch.inference_mode():
        assert not torch.allclose(tuned.model(ids), before, atol=1e-3)

    click(qtbot, panel.compare)  # the tuned side is the run's merged folder, loaded beside the chat's model
    dialog = ft.compare_dialog
    dialog.prompt.setPlainText(PROMPT)
    dialog.max_tokens.setValue(4)
    click(qtbot, dialog.compare)
    qtbot.waitUntil(lambda: dialog.compare.isEnabled(), timeout=RUN_TIMEOUT_MS)
    assert dialog.status.text().startswith("Done"), dialog.status.text()
    assert dialog.base_reply.toPlainText() and dialog.tuned_reply.toPlainText() and dialog.tokens
    dialog.close()
    window.close()


def test_disk_full_during_a_checkpoint_then_resume_from_the_panel(qtbot, make_window, dialogs, tmp_path, monkeypatch):
    import errno

    import engine.finetune.train as train

    window, panel, ft = _panel(qtbot, make_window, dialogs, tmp_path)
    panel.steps.setValue(6)
    panel.checkpoint_every.setValue(2)
    real = train.save_file

    def full_disk(tensors, path, *a, **k):
        if "step-00000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(train, "save_file", full_disk)
    click(qtbot, panel.start)
    qtbot.waitUntil(lambda: not ft.training, timeout=RUN_TIMEOUT_MS)
    (run,) = ft.runs
    assert run.status == "failed" and "the disk is full" in run.error
    assert "previous checkpoint step-00000002 is intact" in panel.status.text()
    assert panel.resume.isEnabled()

    monkeypatch.setattr(train, "save_file", real)  # space freed
    click(qtbot, panel.resume)
    qtbot.waitUntil(lambda: not ft.training, timeout=RUN_TIMEOUT_MS)
    run = ft.runs[0]
    assert run.status == "finished" and run.step == 6
    assert [h["step"] for h in run.history] == [1, 2, 3, 4, 5, 6]
    window.close()


def test_a_score_stopped_while_the_model_is_busy_says_so(qtbot, window):
    """Stop pressed while another pass holds the model: the dialog hears that nothing was scored, instead
    of waiting for an answer that never comes."""
    worker, lm = window.finetune.worker, window.worker.model
    with qtbot.waitSignal(worker.compareFailed, timeout=10_000) as failed:
        with lm.lock:
            worker.compare_stop.clear()
            worker.requestScore.emit("", "", "lora", "Some text to score.")
            qtbot.wait(200)  # the worker is waiting for the model
            worker.compare_stop.set()
            qtbot.waitUntil(lambda: failed.signal_triggered, timeout=10_000)
    assert "stopped" in failed.args[0]
