"""The Model panel's context setting: Auto loads a model whose own context would not fit with the longest that
does, the estimate follows the setting, and a chosen context is what the model loads with, kept for next time."""

from __future__ import annotations

import re

import gguf
import pytest
import torch
from PySide6.QtCore import Qt

from engine.loading.model_file import peek_config
from engine.memory import estimate_bytes
from tests.desktop.helpers import open_panel
from tests.engine.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.gui
CPU = torch.device("cpu")
LOAD_TIMEOUT_MS = 30_000


@pytest.fixture
def long_model(tmp_path):
    """The tiny model declaring 32,768 positions."""
    return write_tiny_gguf(tmp_path / "long.gguf", {"llama.context_length": (32768, gguf.GGUFValueType.UINT32)})


def load(qtbot, window, path) -> None:
    window.model_panel.request(str(path))
    qtbot.waitUntil(
        lambda: window.model_info is not None and window.model_info.path == str(path), timeout=LOAD_TIMEOUT_MS
    )


def needed_and_kv(text: str) -> tuple[int, int]:
    """The MiB needed and the KV cache's MiB in the estimate's text."""
    kv = re.search(r"KV cache ([\d,]+) MiB", text)
    need = re.search(r"about ([\d,]+) MiB needed", text)
    assert kv and need, text
    return int(need.group(1).replace(",", "")), int(kv.group(1).replace(",", ""))


def test_auto_loads_a_model_too_long_for_memory_with_what_fits(qtbot, window, long_model, monkeypatch):
    cfg = peek_config(long_model)
    free = (estimate_bytes(cfg, torch.bfloat16, CPU, 4096) + estimate_bytes(cfg, torch.bfloat16, CPU, 8192)) // 2
    monkeypatch.setattr("engine.memory.available_bytes", lambda device: free)  # the memory probe
    open_panel(qtbot, window, "model")
    load(qtbot, window, long_model)
    assert window.model_info.context_length == 4096
    panel = window.model_panel
    assert panel.context.currentText() == "Auto: 4,096 tokens"
    assert panel.context.itemText(panel.context.count() - 1) == "32,768 tokens (the model's longest)"
    assert "4,096 tokens of context" in panel.estimate.text() and panel.estimate.text().endswith("— fits")
    assert window.settings.get("model/context") == 0


def test_the_estimate_follows_the_setting_and_the_choice_is_loaded_and_kept(
    qtbot, make_window, dirs, long_model, monkeypatch
):
    window = make_window()
    open_panel(qtbot, window, "model")
    panel = window.model_panel
    assert panel.config is not None and panel.config.max_seq_len == 8192  # the default model's
    before = needed_and_kv(panel.estimate.text())
    panel.context.setFocus()
    qtbot.keyClick(panel.context, Qt.Key.Key_Home)  # the keyboard picks the first item: Auto
    qtbot.keyClick(panel.context, Qt.Key.Key_Down)  # then 512 tokens
    assert panel.context.currentText() == "512 tokens" and panel.context_choice() == 512
    shorter = needed_and_kv(panel.estimate.text())
    assert "512 tokens of context" in panel.estimate.text()
    assert shorter[1] < before[1] and before[0] - shorter[0] == pytest.approx(before[1] - shorter[1], abs=1)

    qtbot.keyClick(panel.context, Qt.Key.Key_Down)  # 1,024 tokens, for the next load
    load(qtbot, window, long_model)
    assert window.model_info.context_length == 1024
    assert panel.context.currentText() == "1,024 tokens"
    assert window.settings.get("model/context") == 1024
    window.close()

    again = make_window(dirs)  # a restart: the choice is kept, here for the default model
    assert again.model_panel.context_choice() == 1024 and again.model_panel.context.currentText() == "1,024 tokens"
