"""The rail: the right-hand panels' names in full, one under the other, at the window's right edge.

Six panels tabbed in one dock left each tab a few letters ("P…", "In…", "How…") at a readable dock width;
a vertical list keeps every name whole at any width, costs one narrow column, and shows which panel is
open. A click opens that panel in place of the one shown (`desktop.dock_layout`), a click on the open one
closes it and leaves the chat the room. The buttons are the docks' own toggle actions, so the rail, the
View menu and the saved layout always agree.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDockWidget, QSizePolicy, QToolBar, QToolButton


class PanelRail(QToolBar):
    def __init__(self, docks: dict[str, QDockWidget]) -> None:
        super().__init__("Panels", objectName="panel_rail", accessibleName="Panels")
        self.setOrientation(Qt.Orientation.Vertical)
        self.setMovable(False)
        self.setFloatable(False)
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.toggleViewAction().setVisible(False)  # the rail is always there; it hides by itself when narrow
        self.buttons: dict[str, QToolButton] = {}
        for key, dock in docks.items():
            action = dock.toggleViewAction()
            self.addAction(action)
            button = self.widgetForAction(action)
            button.setAccessibleName(f"{dock.windowTitle()} panel")
            button.setToolTip(f"Show or hide the {dock.windowTitle()} panel")
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            self.buttons[key] = button
