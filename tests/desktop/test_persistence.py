"""What survives: a restart on the same data directory, search across conversations, export and import."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QPalette

from desktop.main_window import MainWindow
from tests.desktop.helpers import greedy, send_and_wait

pytestmark = pytest.mark.gui


def action(window: MainWindow, text: str) -> QAction:
    found = [a for a in window.findChildren(QAction) if a.text().replace("&", "") == text]
    assert len(found) == 1, f"{len(found)} actions called {text!r}"
    return found[0]


def test_restart_restores_conversation_settings_theme_and_panels(qtbot, make_window, dirs):
    first = make_window()
    greedy(first, 16)
    first.prompts.system.setPlainText("You are a geography teacher.")
    send_and_wait(qtbot, first, "What is the capital of France?")
    first.sampling.inputs["temperature"].setValue(0.35)  # changed after the conversation began
    first.sampling.inputs["top_k"].setValue(12)
    first.chat.set_policy("stop")
    action(first, "Dark").trigger()
    action(first, "Larger text").trigger()
    first.docks["conversations"].toggleViewAction().trigger()  # hide the conversations
    qtbot.mouseClick(first.rail.buttons["sampling"], Qt.MouseButton.LeftButton)  # Sampling in place of Prompts
    qtbot.wait(20)  # the layout takes in the larger font
    first.resize(760, 640)  # the offscreen screen is only 800×800: too narrow for the chat and Sampling
    qtbot.waitUntil(lambda: first.docks["sampling"].isHidden())
    assert first.dock_layout.folded == ["sampling"]
    size = first.size()
    cid = first.cid
    messages = [(m.role, m.content, m.status) for m in first.store.messages(cid)]
    first.new_conversation()  # an empty, newer conversation: the last one opened is what comes back
    first.open_conversation(cid)
    first.close()
    assert first.thread.isFinished()

    second = make_window(dirs)
    assert second.cid == cid
    assert [(m.role, m.content, m.status) for m in second.store.messages(cid)] == messages
    assert [(w.message.role, w.message.content) for w in second.chat.widgets] == [(r, c) for r, c, _ in messages]
    assert second.sampling.inputs["temperature"].value() == pytest.approx(0.35)
    assert second.sampling.inputs["top_k"].value() == 12
    assert second.prompts.system_prompt() == "You are a geography teacher."
    assert second.chat.policy_key() == "stop"
    assert second.chat.max_tokens.value() == 16
    assert second.settings.get("ui/theme") == "dark"
    assert action(second, "Dark").isChecked()
    assert second.palette().color(QPalette.ColorRole.Window).lightness() < 80
    assert second.settings.get("ui/font_size") == 12
    assert second.chat.input.font().pointSize() == second.prompts.preview.font().pointSize() == 12
    assert second.size() == size
    assert all(dock.isHidden() for dock in second.docks.values())
    second.resize(1280, 640)  # room again: the folded Sampling panel comes back, the hidden sidebar does not
    qtbot.waitUntil(lambda: not second.docks["sampling"].isHidden())
    assert [key for key, dock in second.docks.items() if not dock.isHidden()] == ["sampling"]
    assert second.rail.buttons["sampling"].isChecked()
    assert second.conversation_list.count() == 2
    assert second.conversation_list.currentItem().data(Qt.ItemDataRole.UserRole) == cid


def test_opening_a_conversation_does_not_reorder_the_list(qtbot, window):
    a = window.store.create_conversation("A", settings={"temperature": 0.2})
    b = window.store.create_conversation("B", settings={"temperature": 0.9})
    window.open_conversation(None)
    order = [window.conversation_list.item(i).text() for i in range(window.conversation_list.count())]
    assert order == ["B", "A"]
    for cid in (a, b, a):
        window.open_conversation(cid)
        assert [window.conversation_list.item(i).text() for i in range(2)] == order
    assert window.sampling.inputs["temperature"].value() == pytest.approx(0.2)
    window.sampling.inputs["temperature"].setValue(0.5)  # a real edit does count
    assert window.store.conversation(a).settings["temperature"] == pytest.approx(0.5)


def test_search_finds_a_message_and_opens_its_conversation(qtbot, window):
    greedy(window)
    send_and_wait(qtbot, window, "What is the capital of France?")
    paris = window.cid
    action(window, "New chat").trigger()
    other = window.cid
    assert other != paris and window.chat.widgets == []

    action(window, "Search conversations").trigger()
    assert window.search.hasFocus()
    qtbot.keyClicks(window.search, "Pari")
    hits = [window.conversation_list.item(i) for i in range(window.conversation_list.count())]
    assert hits and {item.data(Qt.ItemDataRole.UserRole) for item in hits} == {paris}
    assert "[Paris]" in hits[0].text()

    rect = window.conversation_list.visualItemRect(hits[0])
    qtbot.mouseClick(window.conversation_list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.cid == paris
    assert window.chat.widgets[0].message.content == "What is the capital of France?"
    assert "Paris" in window.chat.widgets[1].message.content

    window.search.clear()
    assert window.conversation_list.count() == 2


def test_export_json_then_import_gives_the_same_conversation(qtbot, window, dialogs, tmp_path):
    greedy(window, 8)
    window.prompts.system.setPlainText("Answer briefly.")
    send_and_wait(qtbot, window, "Name a fruit.")
    window.sampling.inputs["temperature"].setValue(1.0)
    window.session.regenerate_last()
    qtbot.waitUntil(lambda: window.session.reply is None, timeout=60_000)
    window.sampling.inputs["top_p"].setValue(0.8)
    cid = window.cid

    dialogs.save_path = str(tmp_path / "fruit.json")
    action(window, "Export as JSON…").trigger()
    data = json.loads((tmp_path / "fruit.json").read_text(encoding="utf-8"))
    assert data["format"] == "ember-conversation" and len(data["messages"]) == 3

    dialogs.open_path = dialogs.save_path
    action(window, "Import JSON…").trigger()
    assert window.cid != cid
    assert window.store.export_json(window.cid) == window.store.export_json(cid)
    original, imported = window.store.messages(cid), window.store.messages(window.cid)
    assert [(m.role, m.content, m.variant, m.variants, m.meta) for m in imported] == [
        (m.role, m.content, m.variant, m.variants, m.meta) for m in original
    ]
    assert window.sampling.inputs["top_p"].value() == pytest.approx(0.8)
    assert window.prompts.system_prompt() == "Answer briefly."
    assert window.conversation_list.count() == 2

    dialogs.save_path = str(tmp_path / "fruit.md")
    action(window, "Export as Markdown…").trigger()
    md = (tmp_path / "fruit.md").read_text(encoding="utf-8")
    assert md.startswith("# Name a fruit.")
    assert "**System:** Answer briefly." in md
    assert "## User\n\nName a fruit." in md
    assert f"## Assistant\n\n{imported[-1].content}" in md


def test_importing_a_broken_file_warns_and_changes_nothing(qtbot, window, dialogs, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "ember-conversation", "messages": [{"role": "system", "turn": 0}]}')
    dialogs.open_path = str(bad)
    action(window, "Import JSON…").trigger()
    assert dialogs.titles("warning") == ["Import failed"]
    assert window.store.conversations() == [] and window.cid is None
