"""How a token and its probability are shown in the panels: whitespace made visible, a percentage, a
tint from likely (green) to surprising (red) that the theme's text stays readable on, a probability bar,
and attention as opacities."""

from __future__ import annotations

import math

import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QLinearGradient, QPalette
from PySide6.QtWidgets import QApplication


def visible(piece: str) -> str:
    """Show whitespace in a token: spaces as ·, newlines as ↵, tabs as →."""
    return piece.replace(" ", "·").replace("\n", "↵").replace("\t", "→") or "∅"


def dark_theme() -> bool:
    """Whether the application's palette is dark (`desktop.theme` sets it for the light or dark theme)."""
    return QApplication.palette().color(QPalette.ColorRole.Base).lightness() < 128


def probability_color(logprob: float | None, dark: bool | None = None) -> str:
    """A tint from green (likely) through yellow to red (surprising), grey when unknown: pale in the light
    theme and deep in the dark one, so the theme's own text colour reads on it. ``dark`` None: the
    application's palette says."""
    dark = dark_theme() if dark is None else dark
    if logprob is None:
        return "#4a4b4f" if dark else "#e6e6e6"
    hue = int(120 * math.exp(logprob))  # 0 red .. 120 green
    return QColor.fromHsv(hue, 130, 85).name() if dark else QColor.fromHsv(hue, 55, 252).name()


def probability_bar(logprob: float, dark: bool | None = None) -> QBrush:
    """A list row's background: its tint filled from the left as far as the probability goes, the base
    colour after it (a bar the length of the probability under the row's text)."""
    p = math.exp(logprob)
    tint = QColor(probability_color(logprob, dark))
    if p >= 0.999:
        return QBrush(tint)
    base = QApplication.palette().color(QPalette.ColorRole.Base)
    bar = QLinearGradient(0, 0, 1, 0)
    bar.setCoordinateMode(QLinearGradient.CoordinateMode.ObjectBoundingMode)  # 0..1 across the row
    bar.setStops([(0.0, tint), (p, tint), (p + 0.001, base), (1.0, base)])
    brush = QBrush(bar)
    brush.setStyle(Qt.BrushStyle.LinearGradientPattern)
    return brush


def percent(logprob: float) -> str:
    p = math.exp(logprob) * 100
    return f"{p:.1f}%" if p >= 0.1 else "<0.1%"


def attention_shades(row: torch.Tensor, position: int) -> list[float]:
    """Opacity in [0, 1] for each token, from the attention ``row`` of the token at ``position``.

    Scaled to the strongest target other than the first token, which most heads use as a resting place
    ("attention sink") and would otherwise wash everything else out; tokens after ``position`` get 0.
    """
    row = row.float()
    peak = float(row[1 : position + 1].max()) if position > 0 else float(row[0])
    return [min(1.0, float(row[p]) / max(peak, 1e-6)) if p <= position else 0.0 for p in range(row.shape[0])]
