"""The side panels' widths: readable minimums, the first-run layout (View → Reset layout too), folding panels
away when the window is too narrow for them beside the chat, and giving them back their share when it grows.

Left alone, Qt's dock layout takes a narrowing window's width from the docks and gives all the width of a
growing one to the chat, so a panel crushed once stayed crushed, and `saveState` brought it back so. Here a
panel is never narrower than its minimum: when there is no room for it, it is folded (hidden, and
remembered as folded) and comes back at its share of the width once there is room again.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QByteArray, QEvent, QObject, Qt, QTimer
from PySide6.QtWidgets import QDockWidget, QMainWindow, QWidget

LEFT, RIGHT = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea


@dataclass(frozen=True)
class Width:
    minimum: int  # the title and the panel's words are readable
    share: float  # of the window's width, at first run and when the window grows again
    most: int  # a share never makes it wider than this
    content: int  # the minimum grows to what the panel's contents need, up to this; beyond, they scroll


SIDEBAR = Width(200, 0.19, 300, 300)
PANEL = Width(320, 0.34, 560, 460)
FIRST_RUN = ("conversations", "prompts")  # the docks shown at first run; the others wait in the rail


class DockLayout(QObject):
    """Keeps ``docks`` (``"conversations"`` on the left, the others on the right, one shown at a time) readable
    in ``window``, whose central widget is ``central``; ``rail`` is the right-hand panels' navigation."""

    def __init__(self, window: QMainWindow, docks: dict[str, QDockWidget], central: QWidget, rail: QWidget) -> None:
        super().__init__(window)
        self.window, self.docks, self.central, self.rail = window, docks, central, rail
        self.folded: list[str] = []  # hidden for want of room, most recent last
        self.waiting: str | None = None  # a panel asked for that had no room: it opens first when there is
        self._last_width = 0
        for key, dock in docks.items():
            dock.toggleViewAction().triggered.connect(lambda checked, k=key: self._on_user_toggled(k, checked))
        window.installEventFilter(self)

    def width_of(self, key: str) -> Width:
        return SIDEBAR if key == "conversations" else PANEL

    def minimum(self, key: str) -> int:
        """The narrowest ``key`` may be: readable, and as wide as its contents need (within bounds)."""
        w = self.width_of(key)
        scroll = self.docks[key].widget()  # the QScrollArea that `MainWindow._dock` puts a panel in
        need = scroll.widget().minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4
        return max(w.minimum, min(w.content, need))

    def target(self, key: str) -> int:
        """The width ``key`` gets back: its share of the window, within its bounds."""
        w = self.width_of(key)
        return max(self.minimum(key), min(w.most, round(w.share * self.window.width())))

    def area(self, key: str) -> Qt.DockWidgetArea:
        return LEFT if key == "conversations" else RIGHT

    # The whole layout

    def reset(self) -> None:
        """The first-run layout: the conversations on the left, Prompts on the right, each at its share."""
        for key, dock in self.docks.items():
            dock.setFloating(False)
            self.window.addDockWidget(self.area(key), dock)  # docked again, out of any tab group
            dock.setVisible(key in FIRST_RUN)
        self.folded.clear()
        self.waiting = None
        self.fit()
        self._regrow(force=True)

    def restore(self, state: QByteArray | None, folded: list[str]) -> None:
        """A saved layout, made readable; the first-run layout when there is none, it cannot be read, or it
        tabs panels together (as Ember did before the rail)."""
        if state is None or not self.window.restoreState(state) or self._tabified():
            self.reset()
            return
        self.folded = [k for k in folded if k in self.docks and self.docks[k].isHidden()]
        self.waiting = None
        self.fit()
        self._regrow(force=True)

    def open(self, key: str, width: int = 0) -> None:
        """Show ``key`` (on the right: in place of the panel shown there), at least ``width`` wide when that
        leaves the chat its minimum."""
        self._show_alone(key)
        self.fit(keep=key)
        dock = self.docks[key]
        if dock.isHidden():  # folded: not even alone beside the chat is there room for it
            self.waiting = key
            title = dock.windowTitle()
            message = f"{title} needs a window {self.needed([key])} px wide: it opens when the window is widened"
            self.window.statusBar().showMessage(message, 8000)
            return
        room = self.central.width() - self._chat_minimum()
        wanted = min(max(width, self.target(key)), dock.width() + max(0, room))
        if dock.width() < wanted:
            self.window.resizeDocks([dock], [wanted], Qt.Orientation.Horizontal)

    # Folding and growing back

    def fit(self, keep: str | None = None) -> None:
        """Fold the panels the window has no room for (the right-hand ones first, ``keep`` last), unfold those
        that fit again: first the one asked for that had no room (`waiting`), folding the sidebar if it must."""
        # The window may be narrower than all its panels (they fold away instead of raising its minimum),
        # never than the chat. Minimums follow the font size.
        self.window.setMinimumWidth(self._chat_minimum())
        for key, dock in self.docks.items():
            dock.setMinimumWidth(self.minimum(key))
        width = self.window.width()
        shown = [k for k in self.docks if self._docked_and_shown(k)]
        order = sorted(shown, key=lambda k: (k == keep, self.area(k) == LEFT))
        while shown and self.needed(shown) > width:
            key = order.pop(0)
            shown.remove(key)
            self.docks[key].hide()
            self.folded.append(key)
        waiting = self.waiting if self.waiting in self.folded else None
        for key in sorted(reversed(list(self.folded)), key=lambda k: k != waiting):  # the one asked for first
            if key == waiting and self.needed([key]) <= width:  # the others beside it fold for it, as in `open`
                while self.needed([*shown, key]) > width:
                    other = min(shown, key=lambda k: self.area(k) == LEFT)
                    shown.remove(other)
                    self.docks[other].hide()
                    self.folded.append(other)
            if self.needed([*shown, key]) <= width and not self._side_taken(key, shown):
                self.folded.remove(key)
                self.docks[key].show()
                shown.append(key)
                if key == waiting:  # what the status bar said would happen has
                    self.waiting = None
                    self.window.statusBar().clearMessage()
        # The rail where a panel it opens has room: the narrowest of them beside the chat.
        self.rail.setVisible(min(self.needed([k]) for k in self.docks if self.area(k) == RIGHT) <= width)

    def _regrow(self, force: bool = False) -> None:
        """Panels narrower than their share get it back, from the chat's room beyond its minimum."""
        width = self.window.width()
        if not force and width <= self._last_width:
            self._last_width = width
            return
        self._last_width = width
        short = [
            (self.docks[k], self.target(k))
            for k in self.docks
            if self._docked_and_shown(k) and self.docks[k].width() < self.target(k) - 2
        ]
        if not short:
            return
        room = self.central.width() - self._chat_minimum()
        wanted = sum(target - dock.width() for dock, target in short)
        scale = min(1.0, max(0, room) / wanted) if wanted else 1.0
        widths = [dock.width() + round((target - dock.width()) * scale) for dock, target in short]
        self.window.resizeDocks([dock for dock, _ in short], widths, Qt.Orientation.Horizontal)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if watched is self.window and event.type() in (QEvent.Type.Resize, QEvent.Type.Show):
            self.fit()
            QTimer.singleShot(0, self._regrow)  # once the layout has the new width
        return False

    # Helpers

    def _on_user_toggled(self, key: str, checked: bool) -> None:
        """The user showed or hid a panel (View menu, rail): one panel at a time on the right."""
        if key in self.folded:
            self.folded.remove(key)
        self.waiting = None
        if checked:
            self.open(key)

    def _show_alone(self, key: str) -> None:
        for other, dock in self.docks.items():
            if other != key and self.area(other) == self.area(key) and self.area(key) == RIGHT:
                dock.hide()
                if other in self.folded:
                    self.folded.remove(other)
        self.docks[key].show()
        self.docks[key].raise_()
        if key in self.folded:
            self.folded.remove(key)

    def _side_taken(self, key: str, shown: list[str]) -> bool:
        return self.area(key) == RIGHT and any(self.area(k) == RIGHT for k in shown)

    def _docked_and_shown(self, key: str) -> bool:
        dock = self.docks[key]
        return not dock.isHidden() and not dock.isFloating()

    def needed(self, keys: list[str]) -> int:
        """The window's width for the chat, the rail and the panels ``keys`` at their minimums."""
        return self._chat_minimum() + self.rail.sizeHint().width() + sum(self.minimum(k) + 6 for k in keys)

    def _chat_minimum(self) -> int:
        return self.central.minimumSizeHint().width()

    def _tabified(self) -> bool:
        return any(self.window.tabifiedDockWidgets(dock) for dock in self.docks.values())
