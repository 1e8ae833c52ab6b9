"""Suite-wide hooks."""

from __future__ import annotations

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
