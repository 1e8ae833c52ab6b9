"""Launch: a window is on screen before torch loads, and the main window says the model is loading until it
is ready."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from desktop.launch_window import LaunchWindow
from desktop.main_window import MainWindow
from desktop.settings import Settings

pytestmark = pytest.mark.gui


def test_the_launch_window_needs_no_torch():
    """What `desktop.app` shows first imports Qt only; torch (seconds) comes after the window is up."""
    code = (
        "import sys, desktop.app, desktop.launch_window, desktop.settings; "
        "print(sorted(m for m in ('torch', 'desktop.main_window', 'engine.loading.loader') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_launch_window_is_shown_where_the_main_window_was(qtbot, make_window, dirs):
    first = make_window()
    first.resize(760, 600)  # within the 800×800 offscreen screen
    first.move(40, 30)
    qtbot.wait(20)
    first.close()
    launch = LaunchWindow(Settings(dirs.settings_file).geometry("geometry"))
    qtbot.addWidget(launch)
    started = time.monotonic()
    launch.show_now()
    assert time.monotonic() - started < 1.0 and launch.isVisible()
    assert launch.size() == first.size() and launch.windowTitle() == "Ember"
    assert "Starting" in launch.message.text()


def test_the_window_is_shown_before_the_model_is_loaded_and_says_so(qtbot, shared_default_model, dialogs, dirs):
    window = MainWindow(dirs)
    qtbot.addWidget(window)
    window.show()
    # Loading runs on the worker thread; nothing of it has reached the window yet.
    assert window.isVisible() and window.model_info is None
    assert window.model_chip.state == "Loading…" and window.model_chip.text() == "Loading the default model…  ▾"
    assert window.windowTitle() == "Ember"
    qtbot.waitUntil(lambda: window.model_chip.state == "Ready", timeout=60_000)
    assert window.model_info is not None and window.windowTitle() == f"Ember — {window.model_info.name}"
