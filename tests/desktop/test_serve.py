"""Serving the loaded model from the app: the Model panel's switch starts `EmberServer` on 127.0.0.1, the
unmodified ``openai`` client uses it while the app chats with the same model (the two take turns on the
model's lock, so both greedy replies equal a direct engine generation), and switching it off closes the
port."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import openai
import pytest

from desktop import engine_worker
from engine.generation.generate import Generation
from engine.generation.sampling import SamplerSettings
from tests.desktop.helpers import click, greedy, open_panel, type_and_send, wait_idle

pytestmark = pytest.mark.gui

OUT = Path(__file__).resolve().parents[2] / "out"
QUESTION = [{"role": "user", "content": "Name three colours."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def direct(lm, ids: list[int], settings: SamplerSettings, max_tokens: int) -> str:
    with lm.lock:
        gen = Generation(lm.model, lm.tokenizer, ids, settings, max_tokens=max_tokens, context_length=lm.context_length)
        for _ in gen:
            pass
    return gen.text


def test_serve_while_chatting_then_stop(qtbot, window, default_model, dialogs, fresh_prefill):
    box = window.model_panel.serve
    open_panel(qtbot, window, "model")
    assert box.toggle.isEnabled() and not box.url.isVisible()
    port = free_port()
    box.port.setValue(port)
    click(qtbot, box.toggle)
    url = f"http://127.0.0.1:{port}/v1"
    assert box.toggle.isChecked() and window.serving.url == url, box.status.text()
    assert box.url.isVisible() and box.url.text() == url and not box.port.isEnabled()
    OUT.mkdir(exist_ok=True)
    qtbot.wait(50)  # the layout settles
    window.model_panel.grab().save(str(OUT / "model_panel_serving.png"))

    # The app chats while another program asks the server; the two requests overlap.
    greedy(window, 24)
    answer: dict = {}

    def ask() -> None:
        try:
            with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60) as client:
                reply = client.chat.completions.create(
                    model=default_model.name, messages=QUESTION, max_tokens=24, temperature=0
                )
            answer["text"] = reply.choices[0].message.content
        except Exception as e:  # reported by the assertion below
            answer["error"] = repr(e)

    type_and_send(qtbot, window, "What is the capital of France?")
    assert window.session.reply is not None
    other = threading.Thread(target=ask)
    other.start()
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: not other.is_alive(), timeout=60_000)
    assert "error" not in answer, answer

    lm = default_model
    expected_server = direct(lm, lm.encode_prompt(lm.render_chat(QUESTION)), SamplerSettings(temperature=0), 24)
    assert answer["text"] == expected_server
    user, reply = window.store.messages(window.cid)
    fit = window.session.fit(window.session.history(upto_turn=reply.turn))
    expected_chat = direct(lm, fit.ids, SamplerSettings(**window.sampling.settings()), 24)
    assert reply.status == "complete" and reply.content == expected_chat
    assert not dialogs.texts("warning")

    # Off: the port is closed, and the settings remember it.
    click(qtbot, box.toggle)
    assert not box.toggle.isChecked() and window.serving.server is None and not box.url.isVisible()
    assert refused(port)
    assert window.settings.get("server/port") == port


def test_reload_restarts_and_close_stops(qtbot, window, default_model, monkeypatch):
    box = window.model_panel.serve
    port = free_port()
    box.port.setValue(port)
    box.toggle.setChecked(True)
    first = window.serving.server
    assert first is not None

    # Loading another model restarts the server on it, at the same address.
    other = type(default_model)(**{**vars(default_model), "lock": threading.Lock()})
    monkeypatch.setattr(engine_worker, "load_model", lambda *_args, **_kwargs: other)
    window.model_panel.request("")
    qtbot.waitUntil(lambda: window.serving.server is not first, timeout=30_000)
    assert window.serving.server.app.state.api.lm is other and window.serving.url.endswith(f":{port}/v1")
    with openai.OpenAI(base_url=window.serving.url, api_key="x", max_retries=0, timeout=60) as client:
        assert [m.id for m in client.models.list()] == [default_model.name]

    window.close()
    assert window.serving.server is None and refused(port)
