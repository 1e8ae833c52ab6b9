"""Suite-wide hooks."""

from __future__ import annotations

import os
import tempfile

from tests.hardening import COUNTS

# The engine keeps repacked weights in the user's cache directory; the suite uses its own (and so also
# exercises the first, uncached load once per run), never the developer's or CI user's real cache.
os.environ["EMBER_CACHE_DIR"] = tempfile.mkdtemp(prefix="ember-test-cache-")


def pytest_terminal_summary(terminalreporter) -> None:
    if COUNTS:
        terminalreporter.section("hardening: cases tried (each a passing check unless a failure is listed above)")
        for kind, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{n:6d}  {kind}")
