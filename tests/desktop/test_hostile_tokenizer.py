"""A model folder whose tokenizer.json splits text with a catastrophic regex, opened in the window: refused
within 2 s with the file named, the event loop never stalls, and the model already loaded keeps chatting.

Without the guard the folder would load, and the first message with a long run of "a" would freeze the
whole window (the regex runs in Rust holding the GIL: 1.5 s for 330 characters, growing with the text).
"""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QTimer
from tokenizers import Regex, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from tests.desktop.helpers import click, greedy, send_and_wait
from tests.engine.tiny_models import make_tiny_model
from tests.hardening import count, figure

pytestmark = pytest.mark.gui

REFUSE_WITHIN_S = 2.0
# The longest the event loop may go without running a 10 ms timer. The probe that catches this pattern
# runs it once until Oniguruma's retry limit, holding the GIL: 0.1 s on an idle machine, 0.2-0.4 s on a
# busy 2-core one. Unguarded, the same pattern would freeze the window for seconds on every long message.
MAX_STALL_S = 1.0


def test_a_tokenizer_with_a_catastrophic_regex_is_refused_and_the_window_stays_responsive(
    qtbot, window, dialogs, tmp_path
):
    greedy(window, max_tokens=8)
    previous = window.model_info
    folder = tmp_path / "hostile-model"
    folder.mkdir()
    make_tiny_model("llama", folder)
    tokenizer = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"(a|aa)+$"), behavior="isolated")  # looks harmless
    tokenizer.save(str(folder / "tokenizer.json"))

    ticks: list[float] = []
    heartbeat = QTimer(interval=10)
    heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))
    heartbeat.start()
    dialogs.open_path = str(folder)
    t0 = time.perf_counter()
    click(qtbot, window.model_panel.open_folder)
    qtbot.waitUntil(lambda: dialogs.titles("warning") == ["Could not load the model"], timeout=10_000)
    took = time.perf_counter() - t0
    heartbeat.stop()

    message = dialogs.texts("warning")[0]
    assert str(folder / "tokenizer.json") in message and "backtracks catastrophically" in message
    assert "Ember refuses it" in window.model_panel.status.text()
    assert took < REFUSE_WITHIN_S, f"refused after {took:.2f} s"
    stall = max(b - a for a, b in zip([t0, *ticks], [*ticks, time.perf_counter()], strict=True))
    assert stall < MAX_STALL_S, f"the event loop stalled for {stall:.2f} s"
    figure("tokenizer: hostile regex refused in the window", f"{took:.2f} s, longest event-loop stall {stall:.2f} s")

    assert window.model_info == previous
    send_and_wait(qtbot, window, "Hello!")
    assert window.store.messages(window.cid)[-1].status == "complete"
    count("tokenizer: catastrophic regexes refused")
