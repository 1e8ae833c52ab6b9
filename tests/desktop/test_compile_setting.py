"""The model panel's "Compile for faster replies": after the load, the decoding step is built in the
background with a busy bar while the model answers; then the facts say so and replies go through the
compiled step; closing the window stops the build; the choice survives a restart; without a compiler the
model stays uncompiled and the panel says why."""

from __future__ import annotations

import subprocess
import time

import pytest
import torch

from desktop import settings
from engine.compiled import library
from engine.compiled.library import BUILDING
from engine.compiled.step import unavailable_reason
from engine.weights.pack_cache import CACHE_DIR_ENV
from tests.desktop.helpers import greedy, open_panel, send_and_wait
from tests.engine.compiled.test_compiled import _running_in_session
from tests.engine.tiny_models import make_tiny_model
from tests.engine.weights.test_gguf_architectures import write_gguf

pytestmark = pytest.mark.gui
gguf = pytest.importorskip("gguf")
LOAD_TIMEOUT_MS = 600_000  # a first build; milliseconds once the cache holds it


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf("llama", make_tiny_model("llama", tmp_path / "hf"), path, qtype=gguf.GGMLQuantizationType.Q4_1)
    return path


def _load(qtbot, window, path) -> None:
    open_panel(qtbot, window, "model")  # its progress bar is what the user watches
    window.model_panel.compile.setChecked(True)
    window.model_panel.request(str(path))
    qtbot.waitUntil(
        lambda: window.model_info is not None and window.model_info.path == str(path), timeout=LOAD_TIMEOUT_MS
    )


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache, so the compiled step is really built."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))


@pytest.mark.skipif(unavailable_reason(torch.device("cpu")) is not None, reason="no C++ compiler")
def test_the_model_answers_while_its_step_compiles_then_replies_go_through_it(
    qtbot, window, make_window, tiny_gguf, fresh_cache
):
    panel = window.model_panel
    _load(qtbot, window, tiny_gguf)  # loaded: the build has only begun
    qtbot.waitUntil(lambda: panel.progress.isVisible() and panel.progress.maximum() == 0, timeout=10_000)
    assert panel.status.text().startswith(BUILDING) and "answers meanwhile" in panel.status.text()
    greedy(window, max_tokens=4)
    send_and_wait(qtbot, window, "a b")  # the model answers, uncompiled, during the build
    assert window.store.messages(window.cid)[-1].status == "complete"

    qtbot.waitUntil(lambda: "decoding compiled" in window.model_info.precision, timeout=LOAD_TIMEOUT_MS)
    assert panel.progress.maximum() == 100 and not panel.progress.isVisible()
    assert "decoding compiled" in panel.facts.text() and "Not compiled" not in panel.facts.text()
    assert "replies are faster now" in panel.status.text()

    model = window.worker.model.model
    steps: list[int] = []
    compiled = model.compiled_step
    model.compiled_step = lambda m, tokens, start: steps.append(start) or compiled(m, tokens, start)
    greedy(window, max_tokens=6)
    send_and_wait(qtbot, window, "a b c")
    reply = window.store.messages(window.cid)[-1]
    assert reply.role == "assistant" and reply.status == "complete"
    assert len(steps) == reply.meta["generated_tokens"] - 1  # every token after the first, compiled

    window.close()
    assert make_window().model_panel.compile.isChecked()  # the choice survives a restart


def _record_children(monkeypatch) -> list[subprocess.Popen]:
    children: list[subprocess.Popen] = []
    real = subprocess.Popen
    monkeypatch.setattr(library.subprocess, "Popen", lambda *a, **k: children.append(real(*a, **k)) or children[-1])
    return children


@pytest.mark.skipif(unavailable_reason(torch.device("cpu")) is not None, reason="no C++ compiler")
def test_closing_the_window_mid_build_stops_the_compiler(qtbot, window, tiny_gguf, fresh_cache, monkeypatch):
    children = _record_children(monkeypatch)
    _load(qtbot, window, tiny_gguf)
    qtbot.waitUntil(lambda: len(children) == 1, timeout=10_000)
    t0 = time.monotonic()
    window.close()
    assert time.monotonic() - t0 < 5 and children[0].poll() is not None  # killed before the window closed
    assert children[0].returncode != 0 and _running_in_session(children[0].pid) == []
    assert window.worker.model.model.compiled_step is None


@pytest.mark.skipif(unavailable_reason(torch.device("cpu")) is not None, reason="no C++ compiler")
def test_loading_another_model_mid_build_stops_it_and_no_stale_result_arrives(
    qtbot, window, tiny_gguf, fresh_cache, monkeypatch
):
    children = _record_children(monkeypatch)
    _load(qtbot, window, tiny_gguf)
    qtbot.waitUntil(lambda: len(children) == 1, timeout=10_000)
    compiled: list[dict] = []
    window.worker.compiled.connect(compiled.append)
    window.model_panel.compile.setChecked(False)
    window.model_panel.request("")  # the default model, uncompiled
    qtbot.waitUntil(lambda: window.model_info.path != str(tiny_gguf), timeout=LOAD_TIMEOUT_MS)
    qtbot.waitUntil(lambda: children[0].poll() is not None, timeout=5_000)
    qtbot.wait(500)
    assert compiled == [] and not window.model_panel.progress.isVisible()
    assert "decoding compiled" not in window.model_info.precision


def test_without_a_compiler_the_model_loads_uncompiled_and_says_why(qtbot, window, tiny_gguf, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    _load(qtbot, window, tiny_gguf)
    qtbot.waitUntil(lambda: window.model_info.compile_warning is not None, timeout=10_000)
    facts = window.model_panel.facts.text()
    assert "Not compiled, running uncompiled" in facts and "no-such-compiler-here" in facts
    assert window.worker.model.model.compiled_step is None
    assert "decoding compiled" not in facts and window.settings.get("model/compile")


def test_where_compiling_cannot_work_the_setting_is_greyed_out_with_the_reason(qtbot, make_window, monkeypatch):
    """As in the bundled app, which ships no C++ headers: nothing is attempted, nothing to read in red."""
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setitem(settings.DEFAULTS, "model/compile", True)  # the app's default
    window = make_window()
    box = window.model_panel.compile
    assert not box.isEnabled() and not box.isChecked()
    assert "no-such-compiler-here" in box.toolTip()
    window.model_panel.request("")
    qtbot.waitUntil(lambda: window.model_panel.progress.isHidden(), timeout=LOAD_TIMEOUT_MS)
    assert window.model_info.compile_warning is None
