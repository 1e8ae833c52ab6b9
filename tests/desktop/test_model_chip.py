"""The model chip above the chat: what answers, in what state, and the menu that switches models; the Model
panel's Recent list naming the loaded model."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QHBoxLayout, QToolButton, QWidget

from desktop.model_chip import ModelChip, quantization, size_text

pytestmark = pytest.mark.gui


def test_the_chip_names_the_loaded_model_its_size_quantization_and_device(qtbot, window):
    window.resize(1600, 760)  # a chat wide enough for the whole name (narrower, it is shortened: below)
    info = window.model_info
    chip = window.model_chip
    qtbot.waitUntil(lambda: "…" not in chip.text())
    assert chip.state == "Ready" and chip.isVisible()
    assert chip.text() == "SmolLM2-135M-Instruct.Q4_1 · 135M · Q4_1 · cpu · Ready  ▾"  # the file name, no .gguf
    assert chip.geometry().bottom() < window.chat.geometry().top()  # above the chat
    assert window.model_panel.recent_paths() == [info.path]  # the default model is listed as loaded
    assert window.settings.get("model/path") == ""  # and a restart still asks for the default


def test_the_chip_menu_lists_recent_models_and_opens_a_file(qtbot, window, dialogs, tmp_path):
    window.resize(1600, 760)  # room for the whole text
    assert window.model_chip.popupMode() == QToolButton.ToolButtonPopupMode.InstantPopup  # a click opens it
    menu = window.model_chip.menu()
    menu.aboutToShow.emit()
    texts = [a.text() for a in menu.actions() if not a.isSeparator()]
    assert texts == [window.model_info.path.rsplit("/", 1)[-1], "Default model", "Open model file…"]

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)
    dialogs.open_path = str(broken)
    [a for a in menu.actions() if a.text() == "Open model file…"][0].trigger()
    assert dialogs.titles("open") == ["Open a GGUF model"]
    assert window.model_chip.state == "Loading…"  # at once, before the worker starts
    qtbot.waitUntil(lambda: window.model_chip.state == "Error", timeout=30_000)
    assert window.model_chip.text() == "Load failed · SmolLM2-135M-Instruct.Q4_1 still answers  ▾"
    assert "truncated GGUF header" in window.model_chip.toolTip()

    menu.aboutToShow.emit()
    with qtbot.waitSignal(window.model_panel.loadRequested) as request:
        [a for a in menu.actions() if a.text() == "Default model"][0].trigger()
    assert request.args[0] == ""
    qtbot.waitUntil(lambda: window.model_chip.state == "Ready", timeout=30_000)


def test_a_narrow_chip_is_shortened_in_the_middle_and_whole_in_its_tooltip(qtbot, window):
    window.resize(1600, 760)
    qtbot.waitUntil(lambda: "…" not in window.model_chip.text())
    whole = window.model_chip.text()
    window.resize(560, 700)
    qtbot.wait(100)
    assert window.model_chip.text() == whole  # at the window's narrowest the chip still fits
    chip = ModelChip(lambda: [])
    row = QWidget()
    QHBoxLayout(row).addWidget(chip)
    qtbot.addWidget(row)
    chip.show_ready(window.model_info)
    row.resize(260, 40)
    row.show()
    qtbot.waitUntil(lambda: "…" in chip.text())
    assert chip.text().startswith("SmolLM2") and chip.text().endswith("Ready  ▾")
    assert whole.removesuffix("  ▾") in chip.toolTip()
    row.resize(800, 40)
    qtbot.waitUntil(lambda: chip.text() == whole)


def test_size_and_quantization_words():
    assert size_text(134_515_008) == "135M" and size_text(1_543_714_304) == "1.5B"

    class Info:
        weight_types = (("F32", 61), ("Q4_K", 150), ("Q6_K", 20))
        dtype = "bfloat16"

    assert quantization(Info) == "Q4_K"
    Info.weight_types = (("F32", 10), ("BF16", 100))
    assert quantization(Info) == "bfloat16"
