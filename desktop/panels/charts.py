"""The charts' colours and their style (pyqtgraph), shared by the panels that draw curves."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication

ORANGE, GREY, BLUE = "#e8703a", "#9aa0a6", "#3a7be8"


def styled(plot: pg.PlotWidget) -> None:
    """Chart colours from the application palette, so charts follow the light or dark theme."""
    pal = QApplication.palette()
    plot.setBackground(pal.color(QPalette.ColorRole.Base))
    text = pal.color(QPalette.ColorRole.Text)
    for side in ("left", "bottom"):
        axis = plot.getAxis(side)
        axis.setPen(pg.mkPen(text))
        axis.setTextPen(pg.mkPen(text))
