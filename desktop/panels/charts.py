"""The charts' colours and their style (pyqtgraph), shared by the panels that draw curves."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication

ORANGE, GREY, BLUE = "#e8703a", "#9aa0a6", "#3a7be8"
DATA_ITEMS = (pg.PlotDataItem, pg.PlotCurveItem, pg.ScatterPlotItem, pg.BarGraphItem)


def styled(plot: pg.PlotWidget) -> None:
    """Chart colours from the application palette, so charts follow the light or dark theme; the chart
    pans and zooms only while it shows data (`follow_data`)."""
    pal = QApplication.palette()
    plot.setBackground(pal.color(QPalette.ColorRole.Base))
    text = pal.color(QPalette.ColorRole.Text)
    for side in ("left", "bottom"):
        axis = plot.getAxis(side)
        axis.setPen(pg.mkPen(text))
        axis.setTextPen(pg.mkPen(text))
    follow_data(plot)


def has_data(plot: pg.PlotWidget) -> bool:
    for item in plot.getViewBox().addedItems:
        if isinstance(item, pg.ImageItem):
            if item.image is not None:
                return True
        elif isinstance(item, DATA_ITEMS) and item.dataBounds(0)[0] is not None:
            return True
    return False


def follow_data(plot: pg.PlotWidget) -> None:
    """An empty chart ignores the mouse: a wheel over it scrolls the panel (pyqtgraph leaves the wheel
    to the parents when the mouse is off) and a drag cannot pan it to nowhere. Checked before every
    paint, so a chart that gets data (or loses it) follows without its panel saying so."""
    vb = plot.getViewBox()

    def sync() -> None:
        on = has_data(plot)
        if vb.state["mouseEnabled"] != [on, on]:
            vb.setMouseEnabled(on, on)

    if not plot.property("followsData"):  # styled() runs again on every theme change: connect once
        plot.setProperty("followsData", True)
        plot.scene().sigPrepareForPaint.connect(sync)
    sync()
