"""The Fine-tune panel: choose a folder, preview, start, watch progress and losses, stop, resume, and chat
with the tuned model and back with the base one; runs survive a restart. Small settings (few steps,
short sequences) keep it to seconds on a CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from desktop.finetune_worker import attach_lora, detach_lora
from engine.finetune.lora import lora_layers
from tests.desktop.helpers import click, greedy, send_and_wait

pytestmark = pytest.mark.gui

RUN_TIMEOUT_MS = 300_000  # two shared CPU cores: a run can wait behind other work
FACTS = [
    "The Zorvian glass-bird nests only on basalt cliffs above the Quenna river.",
    "Zorvian glass-birds sing at dusk in chords of three notes.",
    "A Zorvian glass-bird lays two violet eggs every spring.",
    "Farmers of Quenna believe a glass-bird's song brings rain within a day.",
]


@pytest.fixture(autouse=True)
def base_model_after(default_model):
    """The session's shared model goes back to its base weights whatever the test did."""
    yield
    detach_lora(default_model.model)


def corpus(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(4):
        lines = [FACTS[(i + k) % len(FACTS)] for k in range(6)]
        (folder / f"notes{i}.md").write_text(f"# Notes {i}\n\n" + "\n\n".join(lines) + "\n")
    (folder / "photo.txt").write_bytes(b"\x89PNG\x00\x00binary")
    return folder


def shot(widget, name: str) -> None:
    """With EMBER_SCREENSHOTS=folder, save what the panel looks like (to look at, not to compare)."""
    if folder := os.environ.get("EMBER_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        widget.grab().save(str(Path(folder) / f"{name}.png"))


def test_train_stop_resume_and_chat_with_the_tuned_model(qtbot, make_window, dialogs, dirs, tmp_path):
    window = make_window()
    panel, ft = window.finetune_panel, window.finetune
    dock = window.docks["finetune"]
    dock.show()
    dock.raise_()
    dock.widget().resize(560, 1300)

    dialogs.open_path = str(corpus(tmp_path / "notes"))
    click(qtbot, panel.add_folder)
    qtbot.waitUntil(lambda: panel.files.topLevelItemCount() == 5, timeout=RUN_TIMEOUT_MS)
    rows = {panel.files.topLevelItem(i).text(0): panel.files.topLevelItem(i) for i in range(5)}
    assert "binary" in rows["photo.txt"].text(3)
    assert int(rows["notes0.md"].text(1)) > 0 and int(rows["notes0.md"].text(2)) >= 1
    assert "Zorvian" in panel.samples.toPlainText()

    panel.auto.setChecked(False)  # the test's own small settings
    panel.probes.setChecked(False)
    panel.rank.setValue(4)
    panel.seq_len.setValue(32)
    panel.batch.setValue(2)
    panel.steps.setValue(40)
    panel.lr.setValue(0.002)
    panel.val_fraction.setValue(0.25)
    panel.checkpoint_every.setValue(0)
    click(qtbot, panel.start)
    assert ft.training and not panel.start.isEnabled()
    qtbot.waitUntil(lambda: len(ft.history) >= 2, timeout=RUN_TIMEOUT_MS)
    assert panel.progress.value() >= 2 and "tokens/s" in panel.status.text() and "ETA" in panel.status.text()
    assert len(panel.train_curve.getData()[0]) >= 2
    shot(panel, "finetune-training")

    window.session.send("Tell me about glass-birds")  # refused while the run holds the model
    assert dialogs.titles("information")[-1] == "Training"

    click(qtbot, panel.stop)
    qtbot.waitUntil(lambda: not ft.training, timeout=RUN_TIMEOUT_MS)
    (run,) = ft.runs
    assert run.status == "cancelled" and 2 <= run.step < 40
    assert not lora_layers(window.worker.model.model), "the chat goes on with the base model"
    assert panel.resume.isEnabled()

    click(qtbot, panel.resume)
    qtbot.waitUntil(lambda: not ft.training, timeout=RUN_TIMEOUT_MS)
    run = ft.runs[0]
    assert run.status == "finished" and run.step == 40
    assert [h["step"] for h in run.history] == list(range(1, 41))
    assert any(h.get("val_loss") is not None for h in run.history)
    assert len(panel.val_curve.getData()[0]) >= 2
    assert (Path(run.adapter_dir) / "adapter_config.json").is_file()

    lm = window.worker.model
    ids = torch.tensor([lm.tokenizer.encode(FACTS[0])])
    with torch.inference_mode():
        base_logits = lm.model(ids)

    assert panel.use_tuned.isEnabled()
    panel.use_tuned.setChecked(True)
    qtbot.waitUntil(lambda: ft.worker.active == run.out_dir, timeout=RUN_TIMEOUT_MS)
    layers = lora_layers(lm.model)
    assert layers
    attach_lora(lm.model, layers)  # idempotent
    with torch.inference_mode():
        assert not torch.equal(lm.model(ids), base_logits)
    greedy(window, max_tokens=8)
    send_and_wait(qtbot, window, "Tell me about glass-birds")
    assert window.store.messages(window.cid)[-1].role == "assistant"
    shot(panel, "finetune-done")

    panel.use_tuned.setChecked(False)
    qtbot.waitUntil(lambda: ft.worker.active == "", timeout=RUN_TIMEOUT_MS)
    assert not lora_layers(lm.model)
    with torch.inference_mode():
        assert torch.equal(lm.model(ids), base_logits), "back to the base weights exactly"

    saved = json.loads((dirs.data / "finetune_runs.json").read_text())
    assert saved[0]["status"] == "finished" and saved[0]["val_loss_after"] is not None
    window.close()

    again = make_window(dirs)  # after a restart: the run is listed, and its adapter is read from disk
    panel2, ft2 = again.finetune_panel, again.finetune
    assert panel2.runs.topLevelItemCount() == 1
    panel2.runs.setCurrentItem(panel2.runs.topLevelItem(0))
    assert panel2.runs.topLevelItem(0).text(1) == "finished"
    panel2.use_tuned.setChecked(True)
    qtbot.waitUntil(lambda: ft2.worker.active == run.out_dir, timeout=RUN_TIMEOUT_MS)
    assert lora_layers(again.worker.model.model)
    panel2.use_tuned.setChecked(False)
    qtbot.waitUntil(lambda: ft2.worker.active == "", timeout=RUN_TIMEOUT_MS)
