"""Inputs that ignore the mouse wheel unless they have focus.

Scrolling down a panel must not change the settings that pass under the pointer (a combo box switching
LoRA to Full, a spin box counting a batch size down). `guard(root)` puts one event filter on every spin
box, combo box and slider under ``root``: one without focus passes the wheel on to the widget around it
(the scroll area), as if it did not handle wheels. Click or tab into one first to wheel it.

Their focus policy drops wheel focus too: for a real (spontaneous) wheel event Qt gives focus to a widget
whose policy is `Qt.WheelFocus`, as combo and spin boxes' is by default, before any filter sees the event,
so the filter alone found them focused and let the wheel change them (seen in a real X server: the Model
panel's Precision went from auto to bfloat16 under a scroll). Synthesized test events skip that step.

The filter sits on those widgets only, not on the application: an application-wide Python filter runs
for every event of every widget, and each call needs the GIL, which a generating worker thread holds
between its kernels; the UI thread then waits at each event and stalls for tenths of a second.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractSlider, QAbstractSpinBox, QApplication, QComboBox, QScrollBar, QWidget

GUARDED = (QAbstractSpinBox, QComboBox, QAbstractSlider)


class WheelGuard(QObject):
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if event.type() == QEvent.Type.Wheel and not watched.hasFocus():
            # Ignored and filtered: the widget never sees it, and Qt offers it to the parents in turn.
            event.ignore()
            return True
        return False


def guard(root: QWidget) -> None:
    """Guard ``root`` and every spin box, combo box and slider under it (again: no second filter)."""
    app = QApplication.instance()
    shared = app.findChild(WheelGuard) or WheelGuard(app)
    for widget in (root, *root.findChildren(QWidget)):
        # A scroll area wheels through its bars, which have no focus: they must follow.
        if isinstance(widget, GUARDED) and not isinstance(widget, QScrollBar):
            widget.installEventFilter(shared)  # Qt keeps one entry per filter object
            if widget.focusPolicy() == Qt.FocusPolicy.WheelFocus:
                widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # still by click and tab
