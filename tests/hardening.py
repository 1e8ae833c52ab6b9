"""Counts of the hostile-input and fault cases the suite ran, printed at the end of the run
(`pytest_terminal_summary` in tests/conftest.py): CI's log says how much was tried, not only that it passed."""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()


def count(kind: str, n: int = 1) -> None:
    COUNTS[kind] += n
