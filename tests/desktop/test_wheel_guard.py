"""The mouse wheel over a spin box, combo box or slider without focus scrolls the panel instead of changing
the value (desktop.wheel_guard); with focus it changes the value as before. On the real Sampling and
Fine-tune panels, inside a scroll area as in their docks."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QScrollArea, QSlider, QSpinBox, QVBoxLayout, QWidget

from desktop import wheel_guard
from desktop.panels.finetune import FinetunePanel
from desktop.panels.sampling import SamplingPanel
from desktop.presets import Presets, resources_dir

pytestmark = pytest.mark.gui


def wheel(widget: QWidget, down: bool = True) -> bool:
    """One notch of the wheel with the pointer in the middle of ``widget``; whether it was accepted.

    A real wheel event that a widget leaves unaccepted goes on to its parents, up to the scroll area;
    Qt does not pass on a synthesized one like this, so the tests check that it was left unaccepted."""
    centre = QPointF(widget.rect().center())
    delta = QPoint(0, -120 if down else 120)
    event = QWheelEvent(
        centre,
        QPointF(widget.mapToGlobal(centre)),
        QPoint(0, 0),
        delta,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)
    return event.isAccepted()


def in_scroll_area(qtbot, panel: QWidget) -> QScrollArea:
    """``panel`` guarded, in a scroll area shorter than it, as in its dock."""
    wheel_guard.guard(panel)
    area = QScrollArea(widgetResizable=True)
    area.setWidget(panel)
    area.resize(420, 160)  # shorter than the panel: the area can scroll
    qtbot.addWidget(area)
    area.show()
    qtbot.waitExposed(area)
    area.activateWindow()
    return area


def focus(qtbot, widget: QWidget) -> None:
    widget.setFocus(Qt.FocusReason.MouseFocusReason)
    qtbot.waitUntil(widget.hasFocus)


def test_one_guard_serves_every_widget_and_guarding_again_is_harmless(qtbot):
    first, second = QSpinBox(), QSpinBox()
    for box in (first, second):
        qtbot.addWidget(box)
        box.setValue(5)
    wheel_guard.guard(first)
    wheel_guard.guard(first)
    wheel_guard.guard(second)
    assert len(QApplication.instance().findChildren(wheel_guard.WheelGuard)) == 1
    assert not wheel(first) and not wheel(second)
    assert first.value() == second.value() == 5


def test_a_real_wheel_does_not_focus_a_guarded_widget_first(qtbot, tmp_path):
    """Qt focuses a widget whose policy takes wheel focus before any filter sees a real wheel event, and
    combo and spin boxes take it by default: guarded, they take focus by click and tab only."""
    panel = SamplingPanel(Presets(resources_dir() / "presets" / "sampling.json", tmp_path))
    qtbot.addWidget(panel)
    boxes = [panel.preset_box, panel.inputs["temperature"], panel.inputs["top_k"]]
    assert all(box.focusPolicy() == Qt.FocusPolicy.WheelFocus for box in boxes)  # Qt's default
    wheel_guard.guard(panel)
    assert all(box.focusPolicy() == Qt.FocusPolicy.StrongFocus for box in boxes)


def test_sampling_panel_spin_boxes_and_preset_box(qtbot, tmp_path):
    panel = SamplingPanel(Presets(resources_dir() / "presets" / "sampling.json", tmp_path))
    area = in_scroll_area(qtbot, panel)  # noqa: F841 (keeps the panel alive)
    temperature, top_k = panel.inputs["temperature"], panel.inputs["top_k"]
    temperature.setValue(0.7)
    top_k.setValue(40)
    preset = panel.preset_box.currentIndex()
    for box in (temperature, top_k, panel.preset_box):
        assert not wheel(box)  # left for the scroll area
    assert temperature.value() == pytest.approx(0.7) and top_k.value() == 40
    assert panel.preset_box.currentIndex() == preset

    focus(qtbot, top_k)
    assert wheel(top_k)
    assert top_k.value() == 40 - top_k.singleStep()
    focus(qtbot, temperature)
    wheel(temperature, down=False)
    assert temperature.value() == pytest.approx(0.7 + temperature.singleStep())


def test_finetune_panel_method_and_batch_size(qtbot):
    panel = FinetunePanel()
    area = in_scroll_area(qtbot, panel)  # noqa: F841 (keeps the panel alive)
    panel.method.setCurrentIndex(0)
    panel.auto.setChecked(False)  # the epochs field takes input
    method, epochs = panel.method.currentText(), panel.epochs.value()
    for _ in range(3):
        assert not any((wheel(panel.method), wheel(panel.batch), wheel(panel.epochs)))
    assert panel.method.currentText() == method and panel.batch.value() == 4 and panel.epochs.value() == epochs

    focus(qtbot, panel.batch)
    wheel(panel.batch)
    assert panel.batch.value() == 3
    focus(qtbot, panel.method)
    wheel(panel.method)
    assert panel.method.currentIndex() == 1


def test_the_scroll_area_still_scrolls(qtbot, tmp_path):
    """Where the wheel goes instead: a scroll area turns it into a wheel on its (unfocused) scroll bar."""
    panel = SamplingPanel(Presets(resources_dir() / "presets" / "sampling.json", tmp_path))
    area = in_scroll_area(qtbot, panel)
    bar = area.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == 0 and not bar.hasFocus()
    wheel(area.viewport())
    assert bar.value() > 0


def test_slider(qtbot):
    host = QWidget()
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setRange(0, 100)
    slider.setValue(50)
    QVBoxLayout(host).addWidget(slider)
    area = in_scroll_area(qtbot, host)  # noqa: F841 (keeps the slider alive)
    assert not wheel(slider)
    assert slider.value() == 50
    focus(qtbot, slider)
    wheel(slider)
    assert slider.value() != 50


def test_the_window_guards_its_panels_and_the_walks_rebuilt_steps(window):
    window.new_conversation()  # How it works rebuilds its steps
    boxes = (
        window.finetune_panel.method,
        window.sampling.inputs["temperature"],
        window.chat.max_tokens,
        window.model_panel.dtype,
        window.how_panel.pages[3].layer,
    )
    values = [b.currentIndex() if hasattr(b, "currentIndex") else b.value() for b in boxes]
    assert not any(wheel(b) for b in boxes)
    assert values == [b.currentIndex() if hasattr(b, "currentIndex") else b.value() for b in boxes]
