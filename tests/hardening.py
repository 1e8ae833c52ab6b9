"""Counts of the hostile-input and fault cases the suite ran, and the figures some of them measured,
printed at the end of the run (`pytest_terminal_summary` in tests/conftest.py): CI's log says how much
was tried, and what it measured, not only that it passed."""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()
FIGURES: dict[str, str] = {}


def count(kind: str, n: int = 1) -> None:
    COUNTS[kind] += n


def figure(name: str, value: str) -> None:
    """A measured figure to print with the counts, e.g. the bytes a generated token costs on disk."""
    FIGURES[name] = value
