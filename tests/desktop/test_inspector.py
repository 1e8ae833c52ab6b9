"""The inspector on the live chat with the real default model: inspect a reply, hover and fork from an
alternative, open a layer/head map, select a token and see where it attends, read the logit lens."""

from __future__ import annotations

import math
import re

import pytest
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QColor, QFontMetrics, QPalette

from desktop.attention_maps import CELL
from desktop.panels.token_display import attention_shades, visible
from tests.desktop.helpers import button, click, greedy, send_and_wait, wait_idle

pytestmark = pytest.mark.gui
INSPECT_TIMEOUT_MS = 60_000


def chip_positions(html: str) -> set[int]:
    """The token positions that have a chip (a link) in the tokens view."""
    return {int(p) for p in re.findall(r"tok:(\d+)", html)}


@pytest.fixture
def inspected(qtbot, window):
    greedy(window, max_tokens=12)
    send_and_wait(qtbot, window, "What is the capital of France?")
    click(qtbot, button(window.chat.widgets[-1], "See the tokens, probabilities and attention up to this message"))
    qtbot.waitUntil(lambda: window.inspector_panel.result is not None, timeout=INSPECT_TIMEOUT_MS)
    return window


def test_inspecting_a_reply_shows_its_tokens_with_probabilities(inspected):
    panel, ctl = inspected.inspector_panel, inspected.inspector
    lm = inspected.worker.model
    result = panel.result
    assert result.ids == ctl.ids
    reply = lm.tokenizer.decode(result.ids[ctl.reply_start :], skip_special=True)
    assert reply.strip().startswith(inspected.store.messages(inspected.cid)[-1].content.strip()[:20])
    html = panel.tokens.toHtml()
    assert chip_positions(html) == set(range(len(result.ids)))
    assert "Paris" in html
    assert panel.position == ctl.reply_start  # the first token of the reply is selected
    # Under greedy decoding every reply token is the model's first choice.
    for p in range(ctl.reply_start, len(result.ids) - 2):
        assert result.top_raw[p - 1][0].id == result.ids[p]


def test_hover_shows_alternatives(qtbot, inspected, monkeypatch):
    panel = inspected.inspector_panel
    shown = []
    monkeypatch.setattr("desktop.panels.inspector.QToolTip.showText", lambda _pos, text, *_a: shown.append(text))
    position = inspected.inspector.reply_start + 2
    panel.tokens.highlighted.emit(QUrl(f"tok:{position}"))
    assert shown and "top choices" in shown[0]
    best = panel.result.top_raw[position - 1][0]
    assert f"{math.exp(best.logprob) * 100:.1f}%" in shown[0]


def test_clicking_an_alternative_forks_the_reply(qtbot, inspected):
    panel, ctl = inspected.inspector_panel, inspected.inspector
    position = ctl.reply_start + 1
    panel.tokens.anchorClicked.emit(QUrl(f"tok:{position}"))
    assert panel.position == position and panel.alternatives.count() >= 2
    panel.alternatives.setCurrentRow(1)
    chosen = panel.alternatives.currentItem().data(0x0100)
    assert chosen != panel.result.ids[position]
    kept = panel.result.ids[ctl.reply_start : position]
    click(qtbot, panel.fork_button)
    wait_idle(qtbot, inspected)
    messages = inspected.store.messages(inspected.cid)
    reply = messages[-1]
    assert (reply.variant, reply.variants) == (1, 2)  # the fork is a new version; the old one stays
    lm = inspected.worker.model
    assert reply.content.startswith(lm.tokenizer.decode(kept + [chosen], skip_special=True))
    # The inspector hears of the finished reply through its own queued slot, which may run just after the
    # window's (CI once read the summary in between).
    qtbot.waitUntil(lambda: "Out of date" in panel.summary.text())
    assert not panel.fork_button.isEnabled()


def test_fork_is_refused_on_the_prompt(inspected):
    panel = inspected.inspector_panel
    panel.select(3)  # a token of the system prompt, not the reply
    panel.alternatives.setCurrentRow(1)
    assert not panel.fork_button.isEnabled()


def row_colours(panel) -> list[list[QColor]]:
    """The colours each alternative's row is painted with (its probability bar: the tint, then the base)."""
    brushes = [panel.alternatives.item(r).background() for r in range(panel.alternatives.count())]
    return [[c for _, c in b.gradient().stops()] if b.gradient() else [b.color()] for b in brushes]


def test_alternatives_are_one_line_each_on_light_tints(qtbot, inspected):
    panel = inspected.inspector_panel
    panel.select(inspected.inspector.reply_start + 1)
    alts = panel.alternatives
    assert alts.count() >= 2
    line = alts.fontMetrics().height()
    for r in range(alts.count()):
        item = alts.item(r)
        assert "\n" not in item.text() and alts.visualItemRect(item).height() < 2 * line  # one line
        assert item.foreground().style() == Qt.BrushStyle.NoBrush  # the theme's own text colour
    text = alts.palette().color(QPalette.ColorRole.Text)
    for colours in row_colours(panel):
        assert all(c.lightness() >= 225 for c in colours)  # pale tints under dark text
        assert max(c.hsvSaturation() for c in colours) <= 60
        assert text.lightness() < 80
    first, last = (panel.result.top_raw[panel.position - 1][i] for i in (0, -1))
    assert first.logprob > last.logprob  # the likelier one has the longer bar
    bar_end = [
        b.gradient().stops()[1][0] if b.gradient() else 1.0
        for b in (alts.item(0).background(), alts.item(alts.count() - 1).background())
    ]
    assert bar_end[0] == pytest.approx(min(1.0, math.exp(first.logprob)), abs=1e-3) and bar_end[0] > bar_end[1]

    original = inspected.settings.get("ui/theme")
    inspected.set_theme("dark")
    try:
        text = alts.palette().color(QPalette.ColorRole.Text)
        assert text.lightness() > 180
        for colours in row_colours(panel):
            assert all(c.lightness() <= 90 for c in colours)  # deep tints under light text
        html = panel.tokens.toHtml()  # every chip on its tint, in the theme's text colour
        chips = re.findall(r'<a href="tok:\d+"><span style="([^"]*)"', html)
        assert chip_positions(html) == set(range(len(panel.result.ids))) and len(chips) >= len(panel.result.ids)
        link = alts.palette().color(QPalette.ColorRole.Link).name()  # the selected token's
        assert all("background-color:#" in style for style in chips)
        assert all(f"color:{text.name()};" in style or f"color:{link};" in style for style in chips)
    finally:
        inspected.set_theme(original)


def test_heatmap_labels_every_token_and_scrolls_inside_the_dock(qtbot, inspected):
    panel = inspected.inspector_panel
    n = len(panel.result.ids)
    left, top = panel.heatmap.getAxis("left"), panel.heatmap.getAxis("top")
    assert [label for _, label in left._tickLevels[0]] == [
        f"{i} {visible(p)[:10]}" for i, p in enumerate(panel.result.pieces)
    ]
    assert [label for _, label in top._tickLevels[0]] == [str(i) for i in range(n)]
    assert QFontMetrics(left.style["tickFont"]).height() <= CELL  # one row per label, no overlap
    assert panel.heatmap.minimumWidth() >= n * CELL
    assert panel.minimumSizeHint().width() < 420  # the map scrolls; it does not widen the dock


def test_attention_map_grid_and_row(qtbot, inspected):
    panel = inspected.inspector_panel
    result = panel.result
    n_layer, n_head = len(result.attention), result.attention[0].shape[0]
    assert panel.grid.pixmap().height() >= n_layer * 40 and panel.grid.pixmap().width() >= n_head * 40
    panel.grid.picked.emit(5, 2)  # as a click on the map of layer 5, head 2
    assert panel.layer.value() == 5 and panel.head.currentData() == 2
    shown = panel.heatmap.image.image
    expected = result.attention[5][2].float().sqrt().numpy()
    assert shown.shape == expected.shape and abs(shown - expected).max() < 1e-6
    position = inspected.inspector.reply_start + 3
    panel.heatmap.rowPicked.emit(position)
    assert panel.position == position
    shades = attention_shades(result.attention[5][2][position], position)
    assert max(shades[1:]) == 1.0 and all(a == 0.0 for a in shades[position + 1 :])
    assert "rgba(255,110,30," in panel.attention_text.toHtml()


def test_logit_lens_for_the_selected_token(qtbot, inspected):
    panel = inspected.inspector_panel
    position = inspected.inspector.reply_start + 2
    panel.select(position)
    qtbot.waitUntil(lambda: panel.lens.rowCount() == inspected.worker.model.config.n_layer, timeout=10_000)
    last = panel.lens.item(panel.lens.rowCount() - 1, 0).text()
    best = panel.result.top_raw[position][0]  # the lens's last layer is the model's own prediction
    assert last.startswith(best.text.replace(" ", "·"))


def test_input_token_count_updates_while_typing(qtbot, window):
    panel = window.inspector_panel
    qtbot.keyClicks(window.chat.input, "Hello there, world")
    n = len(window.worker.model.tokenizer.encode("Hello there, world", add_bos=False))
    qtbot.waitUntil(lambda: panel.input_count.text() == f"Your message: {n} tokens", timeout=5_000)
    panel.inputTokensRequested.emit()
    assert chip_positions(panel.tokens.toHtml()) == set(range(n))


def test_cancel_inspection(qtbot, window):
    greedy(window, max_tokens=8)
    send_and_wait(qtbot, window, "Hi")
    window.inspector.inspect_last()
    window.inspector_panel.cancelRequested.emit()
    qtbot.waitUntil(lambda: not window.inspector.busy, timeout=INSPECT_TIMEOUT_MS)
    # Either it finished before the cancel arrived or it says it was cancelled; the window works on.
    assert window.inspector_panel.result is not None or "cancelled" in window.inspector_panel.summary.text()
    assert window.inspector_panel.inspect_button.isEnabled()
