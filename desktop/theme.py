"""Light and dark themes (Fusion palettes) that follow the system unless the user picks one."""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QGuiApplication, QPainter, QPalette, QPen
from PySide6.QtWidgets import QApplication, QProxyStyle, QStyle

THEMES = ("system", "light", "dark")

_DARK = {
    QPalette.ColorRole.Window: "#202124",
    QPalette.ColorRole.WindowText: "#e8eaed",
    QPalette.ColorRole.Base: "#171717",
    QPalette.ColorRole.AlternateBase: "#2a2b2e",
    QPalette.ColorRole.Text: "#e8eaed",
    QPalette.ColorRole.Button: "#2d2e31",
    QPalette.ColorRole.ButtonText: "#e8eaed",
    QPalette.ColorRole.Highlight: "#e8703a",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.ToolTipBase: "#2d2e31",
    QPalette.ColorRole.ToolTipText: "#e8eaed",
    QPalette.ColorRole.PlaceholderText: "#9aa0a6",
    QPalette.ColorRole.Link: "#f29b6b",
}
_LIGHT = {
    QPalette.ColorRole.Window: "#f6f6f4",
    QPalette.ColorRole.WindowText: "#1f1f1f",
    QPalette.ColorRole.Base: "#ffffff",
    QPalette.ColorRole.AlternateBase: "#f0efeb",
    QPalette.ColorRole.Text: "#1f1f1f",
    QPalette.ColorRole.Button: "#ecebe7",
    QPalette.ColorRole.ButtonText: "#1f1f1f",
    QPalette.ColorRole.Highlight: "#d9622b",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.ToolTipBase: "#ffffe8",
    QPalette.ColorRole.ToolTipText: "#1f1f1f",
    QPalette.ColorRole.PlaceholderText: "#80868b",
    QPalette.ColorRole.Link: "#b4491a",
}
# The edge of check boxes and radio buttons: Fusion draws it a shade darker than the window, which on the dark
# window is black on near-black, so an unchecked box could not be seen.
_INDICATOR_EDGE = {True: "#9aa0a6", False: "#8a8a86"}
# Text on disabled controls (a Send button while a reply is written), which must look disabled.
_DISABLED_TEXT = {True: "#6f7379", False: "#a2a29e"}
_DISABLED_ROLES = (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText)
# The size is in the style sheet too: with a style sheet set, QApplication.setFont alone does not reach
# the widgets that already exist (the whole window, at start-up).
_STYLE = """
QWidget {{ font-size: {size}pt; }}
QFrame#userMessage {{ background: {user}; border-radius: 8px; }}
QFrame#assistantMessage {{ background: {assistant}; border-radius: 8px; }}
QLabel#contextNote {{ color: {note}; }}
QFrame#thought {{ border: none; border-left: 2px solid {thought_edge}; }}
QFrame#thought QToolButton, QFrame#thought QTextBrowser {{ color: {thought}; }}
QToolButton#thoughtHeader {{ border: none; border-radius: 4px; padding: 1px 4px; }}
QToolButton#thoughtHeader:hover, QToolButton#thoughtHeader:focus {{ background: {chip_hover}; }}
QToolButton#modelChip {{ border: 1px solid {chip_edge}; border-radius: 11px; padding: 2px 10px; }}
QToolButton#modelChip:hover {{ background: {chip_hover}; }}
QToolButton#modelChip::menu-indicator {{ image: none; width: 0px; }}
"""


class IndicatorStyle(QProxyStyle):
    """Fusion, with check box and radio button indicators outlined in a colour that shows on the theme."""

    def __init__(self, dark: bool) -> None:
        super().__init__("Fusion")
        self.edge = QColor(_INDICATOR_EDGE[dark])

    def drawPrimitive(self, element, option, painter, widget=None) -> None:  # noqa: N802 (Qt override)
        super().drawPrimitive(element, option, painter, widget)
        box = element == QStyle.PrimitiveElement.PE_IndicatorCheckBox
        if not box and element != QStyle.PrimitiveElement.PE_IndicatorRadioButton:
            return
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(QPen(self.edge, 1))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        rect = QRectF(option.rect).adjusted(0.5, 0.5, -0.5, -0.5)
        if box:
            painter.drawRoundedRect(rect, 2, 2)
        else:
            painter.drawEllipse(rect)
        painter.restore()


def is_dark(choice: str) -> bool:
    if choice == "system":
        return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark
    return choice == "dark"


def apply_theme(app: QApplication, choice: str, font_size: int) -> None:
    dark = is_dark(choice)
    app.setStyle(IndicatorStyle(dark))
    palette = QPalette()
    for role, color in (_DARK if dark else _LIGHT).items():
        palette.setColor(role, QColor(color))
    for role in _DISABLED_ROLES:
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(_DISABLED_TEXT[dark]))
    app.setPalette(palette)
    font = QFont(app.font())
    font.setPointSize(font_size)
    app.setFont(font)
    app.setStyleSheet(
        _STYLE.format(
            size=font_size,
            user="#2b3a4a" if dark else "#e6eef7",
            assistant="#26272a" if dark else "#ffffff",
            note="#f2b36b" if dark else "#a15c00",
            thought="#a8adb3" if dark else "#5f6368",
            thought_edge="#4a4c50" if dark else "#d6d4cd",
            chip_edge=_INDICATOR_EDGE[dark],
            chip_hover="#2d2e31" if dark else "#ecebe7",
        )
    )


def code_background(dark: bool) -> str:
    return "#111214" if dark else "#efeee9"
