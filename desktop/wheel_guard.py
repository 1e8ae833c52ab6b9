"""Inputs that ignore the mouse wheel unless they have focus.

Scrolling down a panel must not change the settings that pass under the pointer (a combo box switching
LoRA to Full, a spin box counting a batch size down). One application-wide event filter, installed once
with `install(app)`, lets a spin box, combo box or slider without focus pass the wheel on to the widget
around it (the scroll area), as if it did not handle wheels. Click or tab into one first to wheel it.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QAbstractSlider, QAbstractSpinBox, QApplication, QComboBox, QScrollBar

GUARDED = (QAbstractSpinBox, QComboBox, QAbstractSlider)


class WheelGuard(QObject):
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if (
            event.type() == QEvent.Type.Wheel
            and isinstance(watched, GUARDED)
            and not isinstance(watched, QScrollBar)  # a scroll area wheels through its bars: they must follow
            and not watched.hasFocus()
        ):
            # Ignored and filtered: the widget never sees it, and Qt offers it to the parents in turn.
            event.ignore()
            return True
        return False


def install(app: QApplication) -> WheelGuard:
    """Install the guard on ``app``; calling it again installs the same guard, not a second one."""
    guard = app.findChild(WheelGuard) or WheelGuard(app)
    app.installEventFilter(guard)  # Qt keeps one entry per filter object
    return guard
