""" "How it works" on the real default model: open the view on a prompt, step through all six steps,
compare word orders, and generate one token, which extends the text and walks again."""

from __future__ import annotations

import pytest

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
    # 1: every token with its id
    html = tokens.view.toHtml()
    assert all(str(t) in html for t in e.ids) and "chased" in html
    # 2: neighbours of the chosen token, most similar first, and a map
    rows = [float(embeddings.table.item(r, 1).text().split()[0]) for r in range(embeddings.table.rowCount())]
    assert rows and rows == sorted(rows, reverse=True)
    assert len(e.map_points) > len(set(e.ids))
    # 3: rotary angles for this RoPE model and the word-order demonstration
    assert e.positions["kind"] == "rotary" and positions.image.image.shape[0] == len(e.ids)
    assert positions.swapped.text() != positions.original.text() and positions.result.rowCount() == 5
    # 4: attention of the last token on a suggested head
    assert attention.suggestions.count() == 5 and "rgba(255,110,30," in attention.view.toHtml()
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
