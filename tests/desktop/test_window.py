"""The window itself: accessible names, keyboard shortcuts, themes and font size, panels."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QStyle,
    QStyleOptionButton,
    QToolButton,
    QWidget,
)

from tests.desktop.helpers import greedy, send_and_wait

pytestmark = pytest.mark.gui

CONTROLS = (
    QPushButton,
    QToolButton,
    QCheckBox,
    QComboBox,
    QSpinBox,
    QDoubleSpinBox,
    QLineEdit,
    QPlainTextEdit,
    QListWidget,
    QProgressBar,
)


def test_every_control_has_an_accessible_name(qtbot, window):
    greedy(window, 8)
    send_and_wait(qtbot, window, "Hi")  # message widgets and their buttons too
    unnamed = [
        f"{type(w).__name__} {w.objectName()!r} in {type(w.parent()).__name__}"
        for w in window.findChildren(QWidget)
        if type(w) in CONTROLS
        and not w.objectName().startswith("qt_")  # the menu bar extension button
        and not isinstance(w.parent(), (QAbstractSpinBox, QComboBox, QLineEdit))  # their inner parts
        and not w.accessibleName()
    ]
    assert unnamed == []


def test_keyboard_shortcuts(qtbot, window):
    window.activateWindow()
    qtbot.waitActive(window)
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.cid is not None and window.chat.input.hasFocus()
    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert window.search.hasFocus()
    qtbot.keyClick(window, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert window.chat.input.hasFocus()
    size = window.settings.get("ui/font_size")
    assert window.chat.input.font().pointSize() == size  # the setting reaches every widget from the start
    qtbot.keyClick(window, Qt.Key.Key_Plus, Qt.KeyboardModifier.ControlModifier)
    assert window.settings.get("ui/font_size") == size + 1
    assert window.chat.input.font().pointSize() == window.search.font().pointSize() == size + 1
    qtbot.keyClick(window, Qt.Key.Key_Minus, Qt.KeyboardModifier.ControlModifier)
    assert window.settings.get("ui/font_size") == size


def test_themes_switch_the_palette_and_the_code_background(qtbot, window):
    cid = window.store.create_conversation("Code")
    window.store.add_message(cid, "assistant", "```\nx = 1\n```")
    window.open_conversation(cid)
    window.set_theme("dark")
    dark = window.palette()
    assert dark.color(QPalette.ColorRole.Window).lightness() < 80
    assert dark.color(QPalette.ColorRole.Text).lightness() > 180
    disabled = dark.color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText)
    assert disabled != dark.color(QPalette.ColorRole.ButtonText)  # a disabled Send button looks disabled
    assert window.chat.widgets[0].body.parts[0].background == "#111214"
    window.set_theme("light")
    assert window.palette().color(QPalette.ColorRole.Window).lightness() > 200
    assert window.chat.widgets[0].body.parts[0].background == "#efeee9"


@pytest.mark.parametrize("kind", [QCheckBox, QRadioButton])
def test_unchecked_boxes_and_radio_buttons_show_their_edge_in_both_themes(qtbot, window, kind):
    """Fusion outlines them a shade darker than the window: on the dark theme they were invisible."""
    element = QStyle.SubElement.SE_CheckBoxIndicator if kind is QCheckBox else QStyle.SubElement.SE_RadioButtonIndicator
    for theme in ("dark", "light"):
        window.set_theme(theme)
        box = kind("Option", accessibleName="Option")
        qtbot.addWidget(box)
        box.show()
        option = QStyleOptionButton()
        box.initStyleOption(option)
        rect = box.style().subElementRect(element, option, box)
        image = box.grab().toImage()
        pixels = [
            QColor(image.pixel(x, y))
            for x in range(rect.left(), rect.right())
            for y in range(rect.top(), rect.bottom())
        ]
        background = box.palette().color(QPalette.ColorRole.Window).lightness()
        assert max(abs(c.lightness() - background) for c in pixels) > 70, theme


def test_panels_can_be_hidden_and_shown_from_the_view_menu(qtbot, window):
    for dock in window.docks.values():
        toggle = dock.toggleViewAction()
        hidden = dock.isHidden()
        toggle.trigger()
        assert dock.isHidden() is not hidden
        toggle.trigger()
        assert dock.isHidden() is hidden


def test_one_right_hand_panel_at_a_time_chosen_in_the_rail(qtbot, window):
    """The rail's buttons are the View menu's actions: a panel shown from either takes the place of the one
    shown on the right; the conversations stay."""
    window.resize(1600, 760)  # room for the widest panel beside the conversations (narrower, they fold)
    qtbot.waitUntil(lambda: window.width() == 1600)
    right = [key for key in window.docks if key != "conversations"]
    assert list(window.rail.buttons) == right
    for key in right:
        if window.docks[key].isHidden():  # Prompts is open at first
            window.docks[key].toggleViewAction().trigger()
        assert [k for k in right if not window.docks[k].isHidden()] == [key]
        button = window.rail.buttons[key]
        assert button.isChecked() and button.text() == window.docks[key].windowTitle()
        assert not window.docks["conversations"].isHidden()
    qtbot.mouseClick(window.rail.buttons[right[-1]], Qt.MouseButton.LeftButton)  # the open one: closed
    assert all(window.docks[k].isHidden() for k in right)


def test_new_chat_button_and_rename_and_delete(qtbot, window, dialogs):
    qtbot.mouseClick(window.new_chat, Qt.MouseButton.LeftButton)
    cid = window.cid
    assert window.conversation_list.count() == 1
    dialogs.text = ("Groceries", True)
    window.rename_conversation(cid)
    assert window.conversation_list.item(0).text() == "Groceries"
    dialogs.question = dialogs.question.No
    window.delete_conversation(cid)
    assert window.conversation_list.count() == 1
    dialogs.question = dialogs.question.Yes
    window.delete_conversation(cid)
    assert window.conversation_list.count() == 0 and window.cid is None and window.chat.widgets == []


def test_sampling_presets_built_in_and_saved(qtbot, window, dialogs, dirs):
    sampling = window.sampling
    assert sampling.preset_box.currentText() == "Balanced"
    assert not sampling.delete_button.isEnabled() and not window.prompts.delete_button.isEnabled()
    window.new_conversation()
    sampling.preset_box.setCurrentText("Precise")
    assert sampling.inputs["temperature"].value() == pytest.approx(0.2)
    assert window.store.conversation(window.cid).settings["temperature"] == pytest.approx(0.2)
    assert window.settings.get("sampling/preset") == "Precise"

    sampling.inputs["top_k"].setValue(7)
    dialogs.text = ("Mine", True)
    qtbot.mouseClick(
        [b for b in sampling.findChildren(QPushButton) if b.text() == "Save as…"][0], Qt.MouseButton.LeftButton
    )
    assert sampling.preset_box.currentText() == "Mine" and sampling.delete_button.isEnabled()
    assert '"top_k": 7' in dirs.sampling_presets.read_text(encoding="utf-8")
    qtbot.mouseClick(sampling.delete_button, Qt.MouseButton.LeftButton)
    assert dialogs.titles("question") == ["Delete preset"]
    assert "Mine" not in sampling.presets.names()
