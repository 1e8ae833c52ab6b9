"""What the user came to the Fine-tune panel for: add a folder of notes, press Start with nothing changed,
and read what the model learned (questions from the notes, answered before and after)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from desktop.finetune_worker import detach_lora
from tests.desktop.helpers import click

pytestmark = pytest.mark.gui

RUN_TIMEOUT_MS = 2_300_000
NOTE = """# The schooner Marigold

The schooner Marigold was built by Ezekiel Thornbury in 1842 at the yard of Pellan Cove.
Her figurehead is a carved heron that the crew called Wick.
"""


@pytest.fixture(autouse=True)
def base_model_after(default_model):
    yield
    detach_lora(default_model.model)


@pytest.mark.timeout(2400)  # training with the defaults: ~3 minutes on a quiet 2-core CPU, far more when shared
def test_start_with_the_defaults_then_read_what_it_learned(qtbot, make_window, dialogs, tmp_path):
    notes = tmp_path / "ship notes"
    notes.mkdir()
    (notes / "marigold.md").write_text(NOTE)
    window = make_window()
    panel, ft = window.finetune_panel, window.finetune
    window.docks["finetune"].show()
    assert not panel.start.isEnabled(), "Start waits for files"

    dialogs.open_path = str(notes)
    click(qtbot, panel.add_folder)
    qtbot.waitUntil(panel.start.isEnabled, timeout=RUN_TIMEOUT_MS)
    assert panel.auto.isChecked() and not panel.epochs.isEnabled()
    assert "Chosen from your files" in panel.reasons.text() and "questions" in panel.reasons.text()
    assert panel.lessons.isChecked() and panel.val_fraction.value() == 0  # nothing held out of one note

    click(qtbot, panel.start)
    qtbot.waitUntil(lambda: not ft.training, timeout=RUN_TIMEOUT_MS)
    (run,) = ft.runs
    assert run.status == "finished", run.error
    assert run.config["epochs"] == panel.epochs.value() and run.config["lessons"] is True
    recall = run.recall
    n = len(recall["probes"])
    assert n >= 2 and panel.recall.topLevelItemCount() == n
    assert recall["recalled_before"] == 0, "the base model cannot know an invented ship"
    assert recall["recalled_after"] > recall["recalled_before"], json.dumps(recall, indent=1)
    assert f"{recall['recalled_after']}/{n}" in panel.recall_summary.text()
    assert f"Recall 0/{n} → {recall['recalled_after']}/{n}" in panel.status.text()
    row = panel.recall.topLevelItem(0)
    assert row.text(1) == recall["probes"][0]["expected"] and row.text(3).endswith(recall["probes"][0]["after"])
    assert json.loads((Path(run.out_dir) / "run.json").read_text())["recall"] == recall

    window.close()  # the report is kept with the run, and shown again after a restart
    again = make_window(window.dirs)
    again.finetune_panel.runs.setCurrentItem(again.finetune_panel.runs.topLevelItem(0))
    assert again.finetune_panel.recall.topLevelItemCount() == n
