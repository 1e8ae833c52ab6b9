"""Fixtures for the desktop tests: a data directory per test, modal dialogs that answer at once, and main
windows on the real default model.

Loading the default model takes seconds, so it is loaded once per session and every window's worker is
handed that same object when it asks for the default model. The windows stay independent: each has its
own data directory, settings, store, worker and thread; a generation always starts from an empty KV
cache; attributes a test changes on the model go through ``monkeypatch`` and are put back. Other paths
(a broken file, say) are loaded for real.

Windows start with compiled decoding off (the app's default is on): a build in the background would
compete with the timing tests for the machine's cores, and would give the shared model a compiled step
other tests do not expect. `test_compile_setting` turns it on.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt starts: no screen needed

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox

from desktop import engine_worker, settings
from desktop.main_window import MainWindow
from desktop.paths import DataDirs, data_dirs
from engine.loading.loader import LoadedModel, load_model
from engine.model.transformer import Transformer

LOAD_TIMEOUT_MS = 60_000


@pytest.fixture(autouse=True)
def uncompiled_by_default(monkeypatch) -> None:
    monkeypatch.setitem(settings.DEFAULTS, "model/compile", False)


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    return load_model(None)


@pytest.fixture
def shared_default_model(default_model, monkeypatch) -> LoadedModel:
    real = engine_worker.load_model

    def load(path=None, *, device="auto", dtype="auto", **kwargs):
        if path is None and device == "auto" and dtype == "auto":
            return default_model
        return real(path, device=device, dtype=dtype, **kwargs)

    monkeypatch.setattr(engine_worker, "load_model", load)
    return default_model


@dataclass
class Dialogs:
    """Stands in for every modal dialog the app opens; records what was shown and answers as told."""

    shown: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, title, text)
    question: QMessageBox.StandardButton = QMessageBox.StandardButton.Yes
    text: tuple[str, bool] = ("", False)  # QInputDialog.getText / getMultiLineText
    save_path: str = ""
    open_path: str = ""

    def titles(self, kind: str) -> list[str]:
        return [title for k, title, _ in self.shown if k == kind]

    def texts(self, kind: str) -> list[str]:
        return [text for k, _, text in self.shown if k == kind]


@pytest.fixture
def dialogs(monkeypatch) -> Dialogs:
    d = Dialogs()

    def message(kind: str, answer=QMessageBox.StandardButton.Ok) -> Callable[..., Any]:
        def show(_parent, title, text, *_args, **_kwargs):
            d.shown.append((kind, title, text))
            return d.question if kind == "question" else answer

        return show

    for kind in ("question", "warning", "information", "critical"):
        monkeypatch.setattr(QMessageBox, kind, message(kind))

    def ask(kind: str) -> Callable[..., Any]:
        def show(_parent, title, label, *_args, **_kwargs):
            d.shown.append((kind, title, label))
            return d.text

        return show

    monkeypatch.setattr(QInputDialog, "getText", ask("getText"))
    monkeypatch.setattr(QInputDialog, "getMultiLineText", ask("getMultiLineText"))

    def file(kind: str) -> Callable[..., Any]:
        def show(_parent, title, *_args, **_kwargs):
            d.shown.append((kind, title, ""))
            path = d.save_path if kind == "save" else d.open_path
            return path if kind == "folder" else (path, "")

        return show

    monkeypatch.setattr(QFileDialog, "getSaveFileName", file("save"))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", file("open"))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", file("folder"))
    return d


@pytest.fixture
def dirs(tmp_path) -> DataDirs:
    return data_dirs(tmp_path / "ember").create()


@pytest.fixture
def make_window(qtbot, shared_default_model, dialogs, dirs) -> Callable[..., MainWindow]:
    """``make_window(dirs=None)``: a shown main window with the default model loaded; closed at the end."""

    def make(on: DataDirs | None = None) -> MainWindow:
        window = MainWindow(on or dirs)
        qtbot.addWidget(window)
        window.show()
        qtbot.waitUntil(
            lambda: window.worker.model is not None and window.model_info is not None, timeout=LOAD_TIMEOUT_MS
        )
        return window

    return make


@pytest.fixture
def window(make_window) -> MainWindow:
    return make_window()


@pytest.fixture
def fresh_prefill(monkeypatch) -> None:
    """Every prompt prefilled whole, none of it taken from the KV cache, for tests that compare a bf16 greedy
    reply with a reference run: in bf16 the logits depend on how a prompt splits into cached and new tokens
    (other kernels, other rounding), and a near-tie can flip, as llama.cpp documents for its cache_prompt.
    That the cache is reused correctly is tested in float32 (tests/engine/generation/test_prefix_cache.py)."""
    reusable = Transformer.reusable_prefix
    monkeypatch.setattr(Transformer, "reusable_prefix", lambda self, ids: reusable(self, ids) and 0)
