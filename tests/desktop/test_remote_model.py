"""Remote models through the Model panel's widgets, against Ember's own OpenAI-compatible server started
on a free loopback port (sharing the session's default model): connect, pick the model, chat, stop,
regenerate, fall back to the local model; a refused key and an unreachable server give clear messages
and lose nothing; the key stays out of the database and settings.ini."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from engine.server.ember_server import EmberServer
from tests.desktop.helpers import button, click, greedy, send_and_wait, type_and_send, wait_idle

pytestmark = pytest.mark.gui

KEY = "sk-ember-test-0123456789"
WRONG = "sk-wrong-9876543210"
MODEL_ID = "ember-test-model"
OUT = Path(__file__).resolve().parents[2] / "out"
LONG_PROMPT = "Write a long story about a dragon who learns to bake bread. Use many paragraphs."


@pytest.fixture(scope="module")
def server(default_model):
    srv = EmberServer(default_model, api_key=KEY, model_id=MODEL_ID).start()
    yield srv
    srv.stop()


def connect(qtbot, window, url: str, key: str) -> None:
    """Type the address and key into the Model panel's remote box and press Connect."""
    box = window.model_panel.remote
    window.docks["model"].show()
    window.docks["model"].raise_()
    box.url.clear()
    qtbot.keyClicks(box.url, url)
    box.key.clear()
    qtbot.keyClicks(box.key, key)
    click(qtbot, box.connect_button)
    qtbot.waitUntil(lambda: box.connect_button.isEnabled(), timeout=15_000)


def use_remote(qtbot, window, server) -> None:
    box = window.model_panel.remote
    connect(qtbot, window, server.url, KEY)
    assert box.models.isEnabled() and box.models.currentText() == MODEL_ID, box.status.text()
    click(qtbot, box.use_button)
    assert window.remote.active == {"base_url": server.url, "model": MODEL_ID}
    assert "(remote)" in window.windowTitle()


def test_chat_stop_regenerate_and_back_to_local(qtbot, window, server, dirs, dialogs):
    use_remote(qtbot, window, server)
    assert "needs a local model" in window.prompts.preview.toPlainText()

    greedy(window, 12)
    send_and_wait(qtbot, window, "What is the capital of France?")
    [user, reply] = window.store.messages(window.cid)
    assert user.content == "What is the capital of France?"
    assert reply.status == "complete" and reply.content.strip(), reply
    assert reply.meta["model"] == MODEL_ID and reply.meta["endpoint"] == server.url
    assert reply.meta["finish_reason"] in ("stop", "length") and reply.meta["generated_tokens"] > 0
    assert window.chat.widgets[-1].message.content == reply.content
    assert "tokens/s" in window.chat.readout.text()

    # Stop mid-reply: what was written is kept, marked stopped.
    greedy(window, 400)
    type_and_send(qtbot, window, LONG_PROMPT)
    qtbot.waitUntil(lambda: len(window.chat.streaming.message.content) > 20, timeout=60_000)
    click(qtbot, window.chat.stop)
    wait_idle(qtbot, window)
    stopped = window.store.messages(window.cid)[-1]
    assert stopped.status == "stopped" and stopped.meta["finish_reason"] == "cancelled"
    assert len(stopped.content) > 20 and stopped.meta["endpoint"] == server.url

    # Regenerate: a second version of the stopped reply, from the server.
    greedy(window, 8)
    window.session.regenerate_last()
    wait_idle(qtbot, window)
    again = window.store.messages(window.cid)[-1]
    assert (again.variant, again.variants) == (1, 2) and again.status == "complete"
    assert again.meta["model"] == MODEL_ID

    # What needs the weights says so.
    window.session.continue_reply(again.turn)
    assert "needs a local model" in window.statusBar().currentMessage()
    window.inspector.inspect_last()  # the tokens, from the server's logprobs; attention and the lens say no
    assert "need a local model" in window.inspector_panel.summary.text()

    # Back to the local model: the conversation goes on there.
    box = window.model_panel.remote
    click(qtbot, box.local_button)
    assert window.remote.active is None and "(remote)" not in window.windowTitle()
    assert window.prompts.preview.toPlainText().strip() and "needs a local" not in window.prompts.preview.toPlainText()
    greedy(window, 6)
    send_and_wait(qtbot, window, "Thanks!")
    local = window.store.messages(window.cid)[-1]
    assert local.status == "complete" and local.meta["model_fingerprint"] and "endpoint" not in local.meta
    assert len(window.store.messages(window.cid)) == 6
    assert not dialogs.texts("warning")

    # The endpoint is remembered (address and model), the key only in the key store.
    assert box.recent_entries() == [(server.url, MODEL_ID)]
    window.close()
    settings = dirs.settings_file.read_text(encoding="utf-8")
    assert server.url.split("//")[1] in settings and MODEL_ID in settings
    for path in dirs.data.iterdir():
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in settings


def test_wrong_key_and_unreachable_server_keep_the_conversation(qtbot, window, server, dirs, dialogs):
    box = window.model_panel.remote
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    connect(qtbot, window, f"http://127.0.0.1:{closed}", "")
    assert "cannot connect" in box.status.text() and not box.use_button.isEnabled()

    connect(qtbot, window, server.url, WRONG)
    assert "refused the API key" in box.status.text()

    use_remote(qtbot, window, server)
    greedy(window, 6)
    send_and_wait(qtbot, window, "Hello")
    assert [m.status for m in window.store.messages(window.cid)] == ["complete", "complete"]

    # The key is changed to a wrong one; the next message fails clearly and nothing is lost.
    box.key.clear()
    qtbot.keyClicks(box.key, WRONG)
    click(qtbot, box.use_button)
    send_and_wait(qtbot, window, "Are you there?")
    [message] = dialogs.texts("warning")
    assert "refused the API key (401)" in message and MODEL_ID in message
    messages = window.store.messages(window.cid)
    assert [(m.role, m.status) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "interrupted"),
    ]
    assert messages[2].content == "Are you there?"
    window.close()
    keys = json.loads((dirs.config / "api_keys.json").read_text()) if (dirs.config / "api_keys.json").exists() else {}
    assert WRONG not in dirs.settings_file.read_text(encoding="utf-8")
    assert all(WRONG.encode() not in p.read_bytes() for p in dirs.data.iterdir() if p.is_file())
    if window.remote.keys.backend == "file":
        assert keys == {server.url: WRONG}
        assert (dirs.config / "api_keys.json").stat().st_mode & 0o077 == 0


def test_inspector_shows_a_remote_reply_from_its_logprobs(qtbot, window, server, dialogs):
    use_remote(qtbot, window, server)
    greedy(window, 10)
    send_and_wait(qtbot, window, "What is the capital of France?")
    reply = window.store.messages(window.cid)[-1]
    kept = reply.meta["logprobs"]  # plain data in the reply's meta: [text, logprob, [[alternative, logprob]]]
    assert len(kept) == reply.meta["generated_tokens"] and all(len(t[2]) == 5 for t in kept)
    assert reply.content.startswith("".join(t[0] for t in kept).strip()[:8])

    click(qtbot, button(window.chat.widgets[-1], "See the tokens, probabilities and attention up to this message"))
    panel = window.inspector_panel
    assert panel.remote and panel.result.pieces[1:] == [t[0] for t in kept]
    assert panel.result.token_logprobs[1:] == [t[1] for t in kept]
    assert "(remote)" in panel.summary.text() and "need a local model" in panel.summary.text()
    assert panel.attention_page.currentIndex() == 1 and panel.lens_page.currentIndex() == 1
    assert "background-color" in panel.tokens.toHtml()  # coloured by probability

    panel.select(1)  # the reply's first token: the server's alternatives, and no forking
    assert panel.alternatives.count() == 5 and not panel.fork_button.isEnabled()
    assert panel.alternatives.item(0).text().startswith(panel.result.top_raw[0][0].text.replace(" ", "·"))
    OUT.mkdir(exist_ok=True)
    window.docks["inspector"].resize(680, 560)
    qtbot.wait(50)
    panel.grab().save(str(OUT / "inspector_remote.png"))
    panel.tabs.setCurrentIndex(1)
    qtbot.wait(20)
    panel.grab().save(str(OUT / "inspector_remote_attention.png"))

    # Back to the local model: a local inspection again has attention and the lens.
    click(qtbot, window.model_panel.remote.local_button)
    window.inspector.inspect_last()
    qtbot.waitUntil(lambda: not window.inspector.busy, timeout=60_000)
    assert not panel.remote and panel.attention_page.currentIndex() == 0 and panel.result.attention
    assert not dialogs.texts("warning")
