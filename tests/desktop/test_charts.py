"""Charts pan and zoom only once they show data (desktop.panels.charts): the Fine-tune panel's empty loss
chart keeps its view under the wheel and a drag, and follows the mouse once losses are drawn."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from desktop.panels.finetune import FinetunePanel

pytestmark = pytest.mark.gui


def wheel_and_drag(plot) -> None:
    """Zoom one notch, then drag 60 px left and 40 px down, over the middle of the chart."""
    view = plot.viewport()
    centre = QPointF(view.rect().center())
    QApplication.sendEvent(
        view,
        QWheelEvent(
            centre,
            QPointF(view.mapToGlobal(centre)),
            QPoint(0, 0),
            QPoint(0, -120),
            Qt.MouseButton.NoButton,
            Qt.KeyboardModifier.NoModifier,
            Qt.ScrollPhase.NoScrollPhase,
            False,
        ),
    )
    left = Qt.MouseButton.LeftButton
    points = [centre + QPointF(-6 * i, 4 * i) for i in range(11)]

    def send(kind, at, buttons):
        QApplication.sendEvent(
            view, QMouseEvent(kind, at, QPointF(view.mapToGlobal(at)), left, buttons, Qt.KeyboardModifier.NoModifier)
        )

    send(QMouseEvent.Type.MouseButtonPress, points[0], left)
    for p in points[1:]:
        send(QMouseEvent.Type.MouseMove, p, left)
    send(QMouseEvent.Type.MouseButtonRelease, points[-1], Qt.MouseButton.NoButton)


def view_range(plot) -> list[list[float]]:
    QApplication.processEvents()
    return [list(r) for r in plot.getViewBox().viewRange()]


def test_an_empty_chart_ignores_the_mouse_and_one_with_data_follows_it(qtbot):
    panel = FinetunePanel()
    qtbot.addWidget(panel)
    panel.resize(500, 900)
    panel.show()
    qtbot.waitExposed(panel)
    plot = panel.plot
    plot.grab()  # painted once, as on screen
    before = view_range(plot)
    wheel_and_drag(plot)
    assert view_range(plot) == before

    panel.show_history([{"step": s, "train_loss": 3.0 - s / 10} for s in range(1, 11)], val_before=3.1)
    plot.grab()
    before = view_range(plot)
    wheel_and_drag(plot)
    after = view_range(plot)
    assert after != before
    assert after[0][0] != pytest.approx(before[0][0])  # panned or zoomed along the steps

    panel.show_history([])  # a new run: empty again
    plot.grab()
    before = view_range(plot)
    wheel_and_drag(plot)
    assert view_range(plot) == before
