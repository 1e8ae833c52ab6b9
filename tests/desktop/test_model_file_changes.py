"""The loaded model's file deleted or replaced under the running window: the window says so (naming the
file), stays up, and keeps chatting on the weights in memory; reloading a replaced file loads the new one."""

from __future__ import annotations

import os
import shutil

import pytest

from desktop.engine_worker import fingerprint
from engine.loading.default_model import default_model_path
from tests.desktop.helpers import greedy, send_and_wait
from tests.hardening import count

pytestmark = pytest.mark.gui

NOTICE_TIMEOUT_MS = 5_000
LOAD_TIMEOUT_MS = 60_000


@pytest.fixture
def loaded_copy(qtbot, window, tmp_path):
    """The window with a copy of the default model, loaded for real from tmp_path."""
    copy = tmp_path / "models" / "copy.gguf"
    copy.parent.mkdir()
    shutil.copyfile(default_model_path(), copy)
    window.model_panel.request(str(copy))
    qtbot.waitUntil(
        lambda: window.model_info is not None and window.model_info.path == str(copy), timeout=LOAD_TIMEOUT_MS
    )
    assert not window.model_notice.isVisible()
    greedy(window, max_tokens=8)
    return copy


def assert_chat_works(qtbot, window, text: str) -> None:
    send_and_wait(qtbot, window, text)
    reply = window.store.messages(window.cid)[-1]
    assert reply.role == "assistant" and reply.status == "complete" and reply.content.strip()


def test_a_deleted_model_file_is_reported_and_the_chat_goes_on(qtbot, window, dialogs, loaded_copy):
    loaded_copy.unlink()
    qtbot.waitUntil(window.model_notice.isVisible, timeout=NOTICE_TIMEOUT_MS)
    assert "copy.gguf was deleted" in window.model_notice.text()
    status = window.model_panel.status.text()
    assert "copy.gguf was deleted" in status and "chatting goes on" in status and str(loaded_copy) in status
    assert "Reload" not in window.model_notice.text()  # nothing to reload from
    assert window.worker.model.path == loaded_copy and dialogs.shown == []  # said, not a dialog or a crash

    assert_chat_works(qtbot, window, "What is the capital of France?")
    assert window.model_notice.isVisible()
    count("model file: deleted or replaced while loaded")


def test_a_replaced_model_file_is_reported_and_reload_loads_the_new_one(qtbot, window, dialogs, loaded_copy):
    old = window.model_info.fingerprint
    data = bytearray(loaded_copy.read_bytes())
    at = data.index(b"Smollm2 135M")
    data[at : at + 7] = b"Replace"  # same length: another file that still loads
    incoming = loaded_copy.with_name("download.part")
    incoming.write_bytes(data)
    os.replace(incoming, loaded_copy)  # as a download manager or a copy tool replaces a file

    qtbot.waitUntil(window.model_notice.isVisible, timeout=NOTICE_TIMEOUT_MS)
    assert "copy.gguf changed on disk" in window.model_notice.text() and "Reload" in window.model_notice.text()
    assert "copy.gguf was replaced on disk" in window.model_panel.status.text()
    assert window.model_info.fingerprint == old  # still the model loaded before
    assert_chat_works(qtbot, window, "Say hello.")

    window.model_notice.linkActivated.emit("reload")  # the Reload link
    new = fingerprint(loaded_copy)
    qtbot.waitUntil(
        lambda: window.model_info is not None and window.model_info.fingerprint == new, timeout=LOAD_TIMEOUT_MS
    )
    assert new != old and not window.model_notice.isVisible()
    assert_chat_works(qtbot, window, "Say hello again.")
    count("model file: deleted or replaced while loaded")


def test_the_model_file_put_back_clears_the_notice(qtbot, window, loaded_copy):
    kept = loaded_copy.with_name("kept.gguf")
    os.replace(loaded_copy, kept)  # moved away ...
    qtbot.waitUntil(window.model_notice.isVisible, timeout=NOTICE_TIMEOUT_MS)
    os.replace(kept, loaded_copy)  # ... and back, the same bytes
    qtbot.waitUntil(lambda: not window.model_notice.isVisible(), timeout=NOTICE_TIMEOUT_MS)
    assert "back on disk" in window.model_panel.status.text()
