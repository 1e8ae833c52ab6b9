""" "How it works" on the real default model: open the view on a prompt, step through all six steps,
compare word orders, and generate one token, which extends the text and walks again."""

from __future__ import annotations

import re

import pytest
from PySide6.QtCore import QPoint
from PySide6.QtWidgets import QAbstractButton, QLabel, QWidget

from desktop.how_it_works_controller import WALK_TOKENS
from desktop.panels.how_it_works import HowItWorksPanel
from desktop.panels.token_display import visible
from engine.inspection.explain import next_token_distribution
from tests.desktop.helpers import click

pytestmark = pytest.mark.gui
EXPLAIN_TIMEOUT_MS = 60_000


@pytest.fixture
def walked(qtbot, window):
    window.sampling.inputs["temperature"].setValue(0)  # greedy: the sampled token is the top one
    window.chat.input.setPlainText("The cat chased the mouse because it was")
    window.how_it_works.open_from_chat()
    panel = window.how_panel
    qtbot.waitUntil(lambda: panel.explanation is not None, timeout=EXPLAIN_TIMEOUT_MS)
    return window


def test_open_on_a_prompt_and_step_through_all_six_steps(qtbot, walked):
    panel = walked.how_panel
    e = panel.explanation
    lm = walked.worker.model
    assert e.ids == lm.tokenizer.encode("The cat chased the mouse because it was")
    assert walked.docks["how_it_works"].isVisible()
    titles = []
    panel.go_to(0)
    for step in range(6):
        assert panel.step == step and panel.where.text() == f"Step {step + 1} of 6"
        assert panel.caption.text().startswith(f"<b>Step {step + 1} of 6")
        titles.append(panel.pages[step].title)
        if step < 5:
            click(qtbot, panel.next)
    assert titles == ["Tokens", "Embeddings", "Positions", "Attention", "Layers", "Next token"]
    assert not panel.next.isEnabled() and panel.back.isEnabled()
    tokens, embeddings, positions, attention, layers, next_token = panel.pages
    # 1: every token with its id, in tiles of whole words
    cells = [cell for tile in tokens.word_tiles() for cell in tile.findChildren(QLabel)]
    assert [c.property("piece") for c in cells] == [visible(t.piece) for t in e.tokens]
    assert all(str(t) in c.text() for c, t in zip(cells, e.ids, strict=True))
    assert "·chased" in [tile.property("word") for tile in tokens.word_tiles()]
    # 2: neighbours of the chosen token, most similar first, and a map
    rows = [float(embeddings.table.item(r, 1).text().split()[0]) for r in range(embeddings.table.rowCount())]
    assert rows and rows == sorted(rows, reverse=True)
    assert len(e.map_points) > len(set(e.ids))
    # 3: rotary angles for this RoPE model and the word-order demonstration
    assert e.positions["kind"] == "rotary" and positions.image.image.shape[0] == len(e.ids)
    assert positions.swapped.text() != positions.original.text() and positions.result.rowCount() == 5
    # 4: attention of the last token on a suggested head: the text shaded, the top tokens with their shares
    html = attention.view.toHtml()
    assert attention.suggestions.count() == 5 and "rgba(255,110,30," in html
    assert "chased the mouse" in attention.view.toPlainText()  # the text as written, not cut into tokens
    shares = re.findall(r"(\d+\.\d|<0\.1)%", attention.view.toPlainText().split("In the text")[0])
    assert len(shares) == 5 + 1  # five tokens with bars, then the others together
    assert f"{len(e.ids) - 5} other tokens" in attention.view.toPlainText()
    attention.suggestions.setCurrentRow(2)
    layer, head = attention.suggestions.currentItem().data(0x0100)
    assert (attention.layer.value(), attention.head.value()) == (layer, head)
    # 5: the logit lens at the last position, one row per layer
    assert layers.table.rowCount() == lm.config.n_layer
    # 6: before/after for each sampler step
    assert next_token.steps.count() == 1 + len(e.steps)
    for row in range(next_token.steps.count()):
        next_token.steps.setCurrentRow(row)
        assert next_token.note.text()
    click(qtbot, panel.back)
    assert panel.step == 4


def test_generate_one_token_extends_the_text(qtbot, walked):
    panel = walked.how_panel
    before = panel.explanation
    assert before.sampled_id == before.inspection.top_raw[-1][0].id  # greedy
    click(qtbot, panel.pages[5].generate)
    qtbot.waitUntil(lambda: panel.explanation is not before, timeout=EXPLAIN_TIMEOUT_MS)
    after = panel.explanation
    assert after.ids == before.ids + [before.sampled_id]
    lm = walked.worker.model
    assert panel.text.text() == lm.tokenizer.decode(after.ids, skip_special=True)
    assert panel.text.text().startswith("The cat chased the mouse because it was")
    assert len(panel.text.text()) > len("The cat chased the mouse because it was")


def test_compare_word_orders(qtbot, walked):
    positions = walked.how_panel.pages[2]
    positions.original.setText("cats chase mice")
    positions.swapped.setText("mice chase cats")
    positions.result.setRowCount(0)
    click(qtbot, positions.compare)
    qtbot.waitUntil(lambda: positions.result.rowCount() == 5, timeout=EXPLAIN_TIMEOUT_MS)
    assert positions.compare.isEnabled() and "differ by" in positions.difference.text()
    lm = walked.worker.model
    top = lm.tokenizer.piece(int(next_token_distribution(lm.model, lm.tokenizer.encode("mice chase cats")).argmax()))
    assert positions.result.item(0, 1).text().startswith(top.replace(" ", "·"))


# A word split into pieces, one glued with punctuation, and one wider than a narrow dock.
SPLIT_TEXT = "The unbelievably tiny cat chased reverse_string(s) as print(reverse_string_with_long_docstring(x)) was"


def visible_x_range(widget: QWidget, top: QWidget) -> tuple[int, int]:
    """The part of ``widget``'s width that its parents up to ``top`` do not clip, in ``top``'s x."""
    left = widget.mapTo(top, QPoint(0, 0)).x()
    lo, hi = left, left + widget.width()
    w = widget.parentWidget()
    while w is not None:
        x = w.mapTo(top, QPoint(0, 0)).x() if w is not top else 0
        lo, hi = max(lo, x), min(hi, x + w.width())
        if w is top:
            break
        w = w.parentWidget()
    return lo, hi


def cut_texts(panel: QWidget) -> list[str]:
    """Every shown label or button whose text does not fit: wider than the part of it that shows, or a
    wrapped label shorter than its text."""
    cut = []
    for w in panel.findChildren(QWidget):
        if not isinstance(w, (QLabel, QAbstractButton)) or not w.isVisible() or not w.text():
            continue
        lo, hi = visible_x_range(w, panel)
        left = w.mapTo(panel, QPoint(0, 0)).x()
        needed = w.width() if isinstance(w, QLabel) and w.wordWrap() else max(w.width(), w.sizeHint().width())
        if lo > left or hi < left + needed:
            cut.append(f"{type(w).__name__} {w.text()[:40]!r}: shows {hi - lo} of {needed} px")
        elif isinstance(w, QLabel) and w.wordWrap() and w.heightForWidth(w.width()) > w.height():
            cut.append(f"QLabel {w.text()[:40]!r}: {w.height()} px high for {w.heightForWidth(w.width())}")
    return cut


@pytest.mark.parametrize("width", [300, 420, 700])
def test_every_step_fits_its_dock_and_tiles_show_whole_words(qtbot, window, width):
    window.sampling.inputs["temperature"].setValue(0)
    window.how_it_works.open(SPLIT_TEXT)
    source = window.how_panel
    qtbot.waitUntil(lambda: source.explanation is not None, timeout=EXPLAIN_TIMEOUT_MS)
    panel = HowItWorksPanel()  # a panel of its own, sized as a dock of that width
    qtbot.addWidget(panel)
    panel.show_explanation(source.explanation)
    panel.resize(width, 560)  # a short dock too: what does not fit scrolls, nothing is squeezed
    panel.show()
    qtbot.waitExposed(panel)
    assert panel.width() == width  # nothing in it needs more
    for step in range(len(panel.pages)):
        panel.go_to(step)
        qtbot.wait(20)  # laid out
        assert cut_texts(panel) == [], f"step {step + 1} at {width} px"

    tokens = panel.pages[0]
    tiles = tokens.word_tiles()
    assert [t.property("word").lstrip("·") for t in tiles] == SPLIT_TEXT.split()
    pieces = {t.property("word"): [c.property("piece") for c in t.findChildren(QLabel)] for t in tiles}
    assert len(pieces["·unbelievably"]) > 1 and "".join(pieces["·unbelievably"]) == "·unbelievably"
    assert len(pieces["·reverse_string(s)"]) > 1
    viewport = tokens.view.viewport()
    for tile in tiles:  # every tile inside the tokens view's width
        x = tile.mapTo(viewport, QPoint(0, 0)).x()
        assert 0 <= x and x + tile.width() <= viewport.width()


def test_a_long_message_is_walked_through_its_end_which_the_box_shows(qtbot, window):
    sentences = [
        "Strings in Python are immutable sequences of characters, so reversing one builds a new string.",
        "The slice notation with a step of minus one walks the string from its last character to its first.",
        "The function returns that reversed copy and leaves the original untouched.",
    ]
    lm = window.worker.model
    assert len(lm.tokenizer.encode(" ".join(sentences))) > WALK_TOKENS
    window.chat.input.setPlainText(" ".join(sentences))
    window.how_it_works.open_from_chat()
    panel = window.how_panel
    qtbot.waitUntil(lambda: panel.explanation is not None, timeout=EXPLAIN_TIMEOUT_MS)
    walked = panel.text.text()
    assert walked == " ".join(sentences[1:])  # whole sentences from the end, as many as fit
    assert panel.explanation.ids == lm.tokenizer.encode(walked) and len(panel.explanation.ids) <= WALK_TOKENS
    assert "walks through its end only" in panel.status.text()
    qtbot.waitUntil(lambda: panel.text.verticalScrollBar().maximum() == 0)  # all of it in sight, no scrolling
