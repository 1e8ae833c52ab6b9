"""Holding back streamed text that might be the start of a stop string."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feed text pieces; get back the text that is safe to show and whether a stop string was hit.

    Text that could still grow into a stop string is held back until it cannot; the stop string itself
    and anything after it are never released.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """Returns ``(text to release, stopped)``."""
        text = self._held + piece
        if not self.stops:
            return text, False
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        keep = 0
        for n in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                keep = n
                break
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """Release what was held back (the stream ended without a stop string)."""
        text, self._held = self._held, ""
        return text
