"""Each family added after the first six opens in the window and answers: a tiny random model of each
(written as a Hugging Face folder, as tests/engine does) loaded through the Model panel, a message sent
through the chat, and the reply saved."""

from __future__ import annotations

import pytest

from tests.desktop.helpers import greedy, send_and_wait
from tests.engine.tiny_models import FAMILIES, make_tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_a_new_family_opens_in_the_window_and_answers(qtbot, window, dialogs, tmp_path, family):
    folder = tmp_path / family
    make_tiny_model(family, folder)
    window.model_panel.request(str(folder))
    qtbot.waitUntil(lambda: window.settings.get("model/path") == str(folder), timeout=60_000)
    assert not dialogs.titles("warning"), dialogs.texts("warning")
    assert window.model_info.architecture == window.worker.model.config.arch
    assert f"Architecture: {window.model_info.architecture}" in window.model_panel.facts.text()
    greedy(window, max_tokens=6)
    send_and_wait(qtbot, window, "w5 w9 w20")
    reply = window.store.messages(window.cid)[-1]
    assert reply.role == "assistant" and reply.status == "complete"
    assert reply.meta["generated_tokens"] == 6  # a random model's tokens may decode to nothing visible
    assert not dialogs.titles("warning") and not dialogs.titles("critical")
