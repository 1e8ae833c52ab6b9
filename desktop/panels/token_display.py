"""How a token and its probability are shown in the panels: whitespace made visible, a percentage, a
colour from likely (green) to surprising (red), and attention as opacities."""

from __future__ import annotations

import math

import torch
from PySide6.QtGui import QColor


def visible(piece: str) -> str:
    """Show whitespace in a token: spaces as ·, newlines as ↵, tabs as →."""
    return piece.replace(" ", "·").replace("\n", "↵").replace("\t", "→") or "∅"


def probability_color(logprob: float | None) -> str:
    """Green for likely tokens through yellow to red for surprising ones; grey when unknown."""
    if logprob is None:
        return "#9e9e9e"
    p = math.exp(logprob)
    hue = int(120 * p)  # 0 red .. 120 green
    return QColor.fromHsv(hue, 150, 235).name()


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
