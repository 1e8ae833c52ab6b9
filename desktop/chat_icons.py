"""Small line icons for a message's actions, drawn in the palette's text colour (light and dark themes)."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap, QPolygonF

SIZE = 16  # logical pixels; drawn at twice that for sharp edges on high-density screens


def _copy(p: QPainter) -> None:
    p.drawRoundedRect(QRectF(5.5, 5.5, 8, 9), 1.5, 1.5)
    p.drawPolyline(QPolygonF([QPointF(2.5, 11), QPointF(2.5, 2.5), QPointF(10.5, 2.5)]))


def _edit(p: QPainter) -> None:
    p.drawPolygon(QPolygonF([QPointF(3, 13), QPointF(3.5, 10.5), QPointF(11, 3), QPointF(13, 5), QPointF(5.5, 12.5)]))
    p.drawLine(QPointF(9.5, 4.5), QPointF(11.5, 6.5))


def _regenerate(p: QPainter) -> None:
    p.drawArc(QRectF(3, 3, 10, 10), 60 * 16, 290 * 16)
    p.drawPolyline(QPolygonF([QPointF(9, 1.5), QPointF(11.5, 3.8), QPointF(9, 6)]))


def _continue(p: QPainter) -> None:
    p.drawPolyline(QPolygonF([QPointF(4, 3.5), QPointF(8.5, 8), QPointF(4, 12.5)]))
    p.drawPolyline(QPolygonF([QPointF(8.5, 3.5), QPointF(13, 8), QPointF(8.5, 12.5)]))


def _inspect(p: QPainter) -> None:
    p.drawEllipse(QRectF(2.5, 2.5, 8, 8))
    p.drawLine(QPointF(9.5, 9.5), QPointF(13.5, 13.5))


def _delete(p: QPainter) -> None:
    p.drawLine(QPointF(2.5, 4.5), QPointF(13.5, 4.5))
    p.drawPolyline(QPolygonF([QPointF(6, 4.5), QPointF(6, 2.5), QPointF(10, 2.5), QPointF(10, 4.5)]))
    path = QPainterPath(QPointF(4, 4.5))
    for x, y in ((4.8, 13.5), (11.2, 13.5), (12, 4.5)):
        path.lineTo(x, y)
    p.drawPath(path)


ICONS: dict[str, Callable[[QPainter], None]] = {
    "copy": _copy,
    "edit": _edit,
    "regenerate": _regenerate,
    "continue": _continue,
    "inspect": _inspect,
    "delete": _delete,
}


def icon(name: str, color: str) -> QIcon:
    """The icon ``name`` drawn in ``color`` (a colour name, such as "#1f1f1f")."""
    pixmap = QPixmap(SIZE * 2, SIZE * 2)
    pixmap.setDevicePixelRatio(2)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(QPen(QColor(color), 1.3, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin))
    ICONS[name](painter)
    painter.end()
    return QIcon(pixmap)
