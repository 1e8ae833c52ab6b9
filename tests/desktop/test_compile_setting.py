"""The model panel's "Compile for faster replies": the load compiles the decoding step with a busy bar and
says so in the facts, replies go through the compiled step, and the choice survives a restart; without a
compiler the model loads uncompiled and the panel says why."""

from __future__ import annotations

import pytest
import torch
from PySide6.QtCore import QTimer

from engine.compiling import BUILDING
from engine.model.compiled import unavailable_reason
from tests.desktop.helpers import greedy, send_and_wait
from tests.engine.test_gguf_architectures import write_gguf
from tests.engine.tiny_models import make_tiny_model

pytestmark = pytest.mark.gui
gguf = pytest.importorskip("gguf")
LOAD_TIMEOUT_MS = 600_000  # a first build; milliseconds once the cache holds it


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf("llama", make_tiny_model("llama", tmp_path / "hf"), path, qtype=gguf.GGMLQuantizationType.Q4_1)
    return path


def _load(qtbot, window, path) -> None:
    window.model_panel.compile.setChecked(True)
    window.model_panel.request(str(path))
    qtbot.waitUntil(
        lambda: window.model_info is not None and window.model_info["path"] == str(path), timeout=LOAD_TIMEOUT_MS
    )


@pytest.mark.skipif(unavailable_reason(torch.device("cpu")) is not None, reason="no C++ compiler")
def test_compiling_on_load_shows_a_busy_bar_and_replies_go_through_it(qtbot, window, make_window, tiny_gguf):
    panel = window.model_panel
    busy: set[str] = set()  # the status while the bar is busy (no fraction), sampled on the UI thread
    timer = QTimer(interval=10)
    timer.timeout.connect(lambda: panel.progress.maximum() == 0 and busy.add(panel.status.text()))
    timer.start()
    _load(qtbot, window, tiny_gguf)
    timer.stop()
    assert busy <= {f"{BUILDING}…"}  # busy only while building: a library already in the cache loads at once
    assert panel.progress.maximum() == 100 and not panel.progress.isVisible()
    assert "decoding compiled" in panel.facts.text() and "Not compiled" not in panel.facts.text()

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


def test_without_a_compiler_the_model_loads_uncompiled_and_says_why(qtbot, window, tiny_gguf, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    _load(qtbot, window, tiny_gguf)
    facts = window.model_panel.facts.text()
    assert "Not compiled, running uncompiled" in facts and "no-such-compiler-here" in facts
    assert window.worker.model.model.compiled_step is None
    assert "decoding compiled" not in facts and window.settings.get("model/compile")
