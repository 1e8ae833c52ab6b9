"""Attention weights as pictures: one layer/head heatmap and a grid of every layer x head."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import torch
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontMetrics, QImage, QMouseEvent, QPixmap
from PySide6.QtWidgets import QLabel

THUMB = 44  # pixels per small map in the grid
CELL = 18  # pixels per token at least in the heatmap: room for a label on every row and column
LABEL_CHARS = 10
GAP = 3
COLORMAP = pg.colormap.get("inferno")


def _to_rgb(values: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] -> (h, w, 3) uint8 through the colormap."""
    lut = COLORMAP.getLookupTable(0.0, 1.0, 256, alpha=False)  # (256, 3) uint8
    return lut[np.clip((values * 255).astype(np.int32), 0, 255)]


def pooled(weights: torch.Tensor, size: int) -> np.ndarray:
    """Downsample a (T, T) map to at most (size, size) by max-pooling, square-root scaled to [0, 1]."""
    w = weights.float().sqrt()[None, None]  # (1, 1, T, T)
    if w.shape[-1] > size:
        w = torch.nn.functional.adaptive_max_pool2d(w, size)
    w = w[0, 0]
    return (w / w.max().clamp(min=1e-6)).numpy()


class AttentionGrid(QLabel):
    """Every layer (rows) x head (columns) as a small map; click one to open it.

    Signals:
        picked(int layer, int head)
    """

    picked = Signal(int, int)

    def __init__(self) -> None:
        super().__init__(accessibleName="Attention maps of every layer and head")
        self.setToolTip("Every layer (rows, top = first) and head (columns). Click a map to open it.")
        self.n_layer = self.n_head = 0

    def show_maps(self, attention: dict[int, torch.Tensor]) -> None:
        layers = sorted(attention)
        if not layers:
            self.clear()
            return
        self.layers = layers
        self.n_layer, self.n_head = len(layers), attention[layers[0]].shape[0]
        cell = THUMB + GAP
        canvas = np.full((self.n_layer * cell, self.n_head * cell, 3), 255, np.uint8)
        for r, layer in enumerate(layers):
            for h in range(self.n_head):
                img = _to_rgb(pooled(attention[layer][h], THUMB))
                y, x = r * cell, h * cell
                canvas[y : y + img.shape[0], x : x + img.shape[1]] = img
        canvas = np.ascontiguousarray(canvas)
        image = QImage(canvas.data, canvas.shape[1], canvas.shape[0], canvas.strides[0], QImage.Format.Format_RGB888)
        self.setPixmap(QPixmap.fromImage(image.copy()))

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt override)
        if not self.n_layer:
            return
        cell = THUMB + GAP
        r, h = int(event.position().y()) // cell, int(event.position().x()) // cell
        if 0 <= r < self.n_layer and 0 <= h < self.n_head:
            self.picked.emit(self.layers[r], h)


class AttentionHeatmap(pg.PlotWidget):
    """One (T, T) map: rows are the tokens attending (queries), columns the tokens attended to. Every row
    is labelled with its token and every column with its number, in cells of `CELL` pixels at least:
    a long text makes the map bigger than its dock, and the scroll area around it scrolls.

    Signals:
        rowPicked(int position) -- a click on a row selects that token
    """

    rowPicked = Signal(int)

    def __init__(self) -> None:
        super().__init__()
        self.setAccessibleName("Attention heatmap")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(COLORMAP)
        self.addItem(self.image)
        self.invertY(True)
        self.setAspectLocked(True)
        self.setMouseEnabled(False, False)  # the scroll area around it moves it; a zoom would lose labels
        self.setMenuEnabled(False)
        self.hideButtons()
        self.hideAxis("bottom")
        self.showAxis("top")  # the first rows are at the top: their column numbers next to them
        self.setLabel("top", "attended token (key), by number")
        self.setLabel("left", "attending token (query)")
        font = QFont(self.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        for side in ("left", "top"):
            self.getAxis(side).setTickFont(font)
        self.marker = pg.InfiniteLine(angle=0, pen=pg.mkPen("#3fa7ff", width=1))
        self.addItem(self.marker)
        self.marker.setVisible(False)
        self.image.mouseClickEvent = self._on_click

    def show_map(self, weights: torch.Tensor, labels: list[str]) -> None:
        """Shown on a square-root scale, so weak links stay visible beside the strong ones."""
        data = weights.float().sqrt().numpy()
        self.image.setImage(data, levels=(0.0, max(float(data.max()), 1e-6)))
        n = len(labels)
        self.getAxis("top").setTicks([[(i + 0.5, str(i)) for i in range(n)]])
        rows = [(i + 0.5, f"{i} {labels[i][:LABEL_CHARS]}") for i in range(n)]
        left = self.getAxis("left")
        left.setTicks([rows])
        metrics = QFontMetrics(left.style["tickFont"])
        left.setWidth(max((metrics.horizontalAdvance(text) for _, text in rows), default=0) + 14)
        self.getViewBox().setRange(xRange=(0, n), yRange=(0, n), padding=0)
        self.setMinimumSize(left.width() + n * CELL + 8, self.getAxis("top").height() + n * CELL + 8)

    def mark_row(self, row: int | None) -> None:
        self.marker.setVisible(row is not None)
        if row is not None:
            self.marker.setValue(row + 0.5)

    def _on_click(self, event) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.rowPicked.emit(int(event.pos().y()))
