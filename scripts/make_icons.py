"""Draw Ember's icon (a flame on a dark rounded square) and write it at every size the platforms want.

    .venv/bin/python scripts/make_icons.py            # PNGs with Qt (QPainter)
    python scripts/make_icons.py --ico-icns-only       # .ico and .icns from those PNGs, with Pillow

The PNGs are drawn with Qt; the Windows ``.ico`` and macOS ``.icns`` need Pillow (not a project
dependency: ``pip install pillow`` in any environment). The results are committed in ``resources/icons``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def draw_pngs() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import QColor, QGuiApplication, QImage, QLinearGradient, QPainter, QPainterPath, QRadialGradient

    _app = QGuiApplication.instance() or QGuiApplication([])

    def flame(points: list[tuple[float, ...]]) -> QPainterPath:
        path = QPainterPath(QPointF(*points[0]))
        for c1x, c1y, c2x, c2y, x, y in points[1:]:
            path.cubicTo(c1x, c1y, c2x, c2y, x, y)
        path.closeSubpath()
        return path

    outer = flame(
        [
            (50, 90),
            (30, 90, 19, 76, 22, 61),
            (25, 47, 37, 42, 39, 27),
            (40, 21, 38, 15, 35, 10),
            (52, 15, 60, 27, 61, 38),
            (64, 34, 65, 30, 64, 25),
            (75, 35, 82, 49, 79, 64),
            (76, 80, 66, 90, 50, 90),
        ]
    )
    inner = flame(
        [
            (50, 87),
            (40, 87, 34, 79, 36, 70),
            (38, 62, 45, 58, 47, 47),
            (56, 54, 65, 63, 64, 72),
            (63, 81, 58, 87, 50, 87),
        ]
    )
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        p = QPainter(image)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.scale(size / 100, size / 100)
        back = QRadialGradient(QPointF(50, 78), 70)
        back.setColorAt(0.0, QColor("#4a2618"))
        back.setColorAt(0.55, QColor("#24140f"))
        back.setColorAt(1.0, QColor("#140b09"))
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(back)
        p.drawRoundedRect(QRectF(3, 3, 94, 94), 21, 21)
        glow = QRadialGradient(QPointF(50, 84), 34)
        glow.setColorAt(0.0, QColor(255, 120, 30, 150))
        glow.setColorAt(1.0, QColor(255, 80, 0, 0))
        p.setBrush(glow)
        p.drawEllipse(QPointF(50, 84), 40, 16)
        fire = QLinearGradient(QPointF(50, 92), QPointF(50, 8))
        fire.setColorAt(0.0, QColor("#ff9d1c"))
        fire.setColorAt(0.45, QColor("#ff5a14"))
        fire.setColorAt(1.0, QColor("#c4170c"))
        p.setBrush(fire)
        p.drawPath(outer)
        core = QLinearGradient(QPointF(50, 88), QPointF(50, 46))
        core.setColorAt(0.0, QColor("#fff3b0"))
        core.setColorAt(0.5, QColor("#ffd447"))
        core.setColorAt(1.0, QColor("#ffa726"))
        p.setBrush(core)
        p.drawPath(inner)
        p.end()
        out = ICONS / f"ember-{size}.png"
        if not image.save(str(out)):
            raise SystemExit(f"could not write {out}")
    print(f"wrote {len(SIZES)} PNGs to {ICONS}")


def write_ico_icns() -> None:
    from PIL import Image

    big = Image.open(ICONS / "ember-512.png").convert("RGBA")
    big.save(ICONS / "ember.ico", sizes=[(s, s) for s in (16, 24, 32, 48, 64, 128, 256)])
    big.save(ICONS / "ember.icns")
    print(f"wrote ember.ico and ember.icns to {ICONS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ico-icns-only", action="store_true", help="only convert the PNGs (needs Pillow)")
    args = parser.parse_args()
    ICONS.mkdir(parents=True, exist_ok=True)
    if not args.ico_icns_only:
        draw_pngs()
    try:
        write_ico_icns()
    except ImportError:
        print("Pillow is not installed here: run again with --ico-icns-only where it is, for .ico and .icns")


if __name__ == "__main__":
    main()
