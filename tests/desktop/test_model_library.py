"""Your models, in the real window against a temporary home folder: the apps' models listed with their facts,
an added folder scanned and remembered across a restart, a row opened by double-click, Enter or Open, and
a broken file that says why instead of opening."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import pytest
from PySide6.QtCore import Qt

from desktop.library_worker import LibraryScanner
from desktop.messages import ScanRequest
from desktop.panels.library_box import COLUMNS
from engine.loading.model_library import model_places
from tests.desktop.helpers import open_panel
from tests.engine.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.gui
SCAN_TIMEOUT_MS = 20_000


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home folder with one LM Studio model and one GPT4All model; the window's scan looks only there."""
    home = tmp_path / "home"
    lms = home / ".lmstudio" / "models" / "someone" / "Tiny-GGUF"
    lms.mkdir(parents=True)
    write_tiny_gguf(lms / "tiny.F32.gguf")
    gpt4all = home / ".local" / "share" / "nomic.ai" / "GPT4All"
    gpt4all.mkdir(parents=True)
    write_tiny_gguf(gpt4all / "chat.gguf", {"llama.context_length": (4096, gguf.GGUFValueType.UINT32)})
    monkeypatch.setenv("HOME", str(home))
    for name in ("HF_HOME", "HF_HUB_CACHE", "OLLAMA_MODELS"):
        monkeypatch.delenv(name, raising=False)
    return home


def rows(window) -> dict[str, list[str]]:
    tree = window.model_panel.library.tree
    items = [tree.topLevelItem(i) for i in range(tree.topLevelItemCount())]
    return {item.text(0): [item.text(c) for c in range(len(COLUMNS))] for item in items}


def wait_scanned(qtbot, window, count: int) -> None:
    qtbot.waitUntil(
        lambda: len(rows(window)) == count and window.model_panel.library.rescan.isEnabled(), timeout=SCAN_TIMEOUT_MS
    )


def select(window, name: str) -> None:
    tree = window.model_panel.library.tree
    tree.setCurrentItem(
        next(tree.topLevelItem(i) for i in range(tree.topLevelItemCount()) if tree.topLevelItem(i).text(0) == name)
    )


def test_apps_models_are_listed_and_an_added_folder_survives_a_restart(
    qtbot, make_window, home, dirs, dialogs, tmp_path
):
    window = make_window()
    open_panel(qtbot, window, "model")
    wait_scanned(qtbot, window, 2)
    lms = home / ".lmstudio" / "models" / "someone" / "Tiny-GGUF" / "tiny.F32.gguf"
    size = f"{lms.stat().st_size / 1e3:.0f} KB"
    assert rows(window) == {
        "someone/Tiny-GGUF/tiny.F32.gguf": [
            "someone/Tiny-GGUF/tiny.F32.gguf",
            "llama",
            size,
            "F32",
            "64",
            "LM Studio",
            "Yes",
        ],
        "chat.gguf": ["chat.gguf", "llama", size, "F32", "4,096", "GPT4All", "Yes"],
    }
    assert window.model_panel.library.status.text() == "2 models found, 2 open in Ember."

    added = tmp_path / "more models"
    (added / "sub").mkdir(parents=True)
    shutil.copy(lms, added / "sub" / "copy.gguf")
    (added / "broken.gguf").write_bytes(lms.read_bytes()[:100])
    dialogs.open_path = str(added)
    qtbot.mouseClick(window.model_panel.library.add_folder, Qt.MouseButton.LeftButton)
    wait_scanned(qtbot, window, 4)
    listed = rows(window)
    assert listed["sub/copy.gguf"][-2:] == ["Added folder", "Yes"]
    assert listed["broken.gguf"][-1].startswith("No: ") and "truncated" in listed["broken.gguf"][-1]
    assert window.settings.get("model/library_folders") == [str(added)]

    select(window, "broken.gguf")
    assert not window.model_panel.library.open.isEnabled()
    window.close()

    again = make_window(dirs)  # a restart on the same settings
    wait_scanned(qtbot, again, 4)
    assert set(rows(again)) == set(listed)


def test_a_row_opens_by_double_click_enter_or_open(qtbot, make_window, home):
    window = make_window()
    open_panel(qtbot, window, "model")
    wait_scanned(qtbot, window, 2)
    library, tree = window.model_panel.library, window.model_panel.library.tree
    chat = str(home / ".local" / "share" / "nomic.ai" / "GPT4All" / "chat.gguf")

    select(window, "chat.gguf")
    with qtbot.waitSignal(window.model_panel.loadRequested) as request:
        qtbot.keyClick(tree, Qt.Key.Key_Return)
    assert request.args[0] == chat
    qtbot.waitUntil(lambda: window.model_info is not None and window.model_info.path == chat, timeout=30_000)
    assert window.model_info.context_length == 4096

    select(window, "someone/Tiny-GGUF/tiny.F32.gguf")
    assert library.open.isEnabled()
    with qtbot.waitSignal(window.model_panel.loadRequested) as request:
        qtbot.mouseClick(library.open, Qt.MouseButton.LeftButton)
    assert request.args[0].endswith("tiny.F32.gguf")
    qtbot.waitUntil(lambda: library.isEnabled(), timeout=30_000)

    select(window, "chat.gguf")
    rect = tree.visualItemRect(tree.currentItem())
    assert rect.isValid() and tree.viewport().rect().contains(rect.center())
    with qtbot.waitSignal(window.model_panel.loadRequested) as request:
        qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())  # a double-click's first
        qtbot.mouseDClick(tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert request.args[0] == chat
    qtbot.waitUntil(lambda: library.isEnabled(), timeout=30_000)


def test_a_scan_stopped_midway_says_so(qtbot, home):
    """The scanner's stop flag (set when the window closes) ends a scan after the file it is reading."""
    scanner = LibraryScanner()
    scanner.stop_flag.set()
    with qtbot.waitSignal(scanner.scanned) as found:
        scanner.requestScan.emit(ScanRequest(tuple(model_places(home, "linux"))))
    assert found.args[0].models == () and found.args[0].stopped
