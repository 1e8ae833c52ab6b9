"""Suite-wide hooks."""

from __future__ import annotations

import pytest

from tests.hardening import COUNTS, FIGURES


def pytest_terminal_summary(terminalreporter) -> None:
    if COUNTS:
        terminalreporter.section("hardening: cases tried (each a passing check unless a failure is listed above)")
        for kind, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{n:6d}  {kind}")
    if FIGURES:
        terminalreporter.section("hardening: figures measured")
        for name, value in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch) -> None:
    """Kernel timings taken during the suite count as taken on a quiet machine: whether the machine is busy
    (`engine.model.timed_choice.busy`, the load average, which the suite itself raises) would otherwise decide
    from test to test whether a kept timing is used or timed again. tests/engine/model/test_timed_choice.py
    sets it itself."""
    from engine.model import timed_choice

    monkeypatch.setattr(timed_choice, "busy", lambda: False)
