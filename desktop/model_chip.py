"""The model chip above the chat: which model answers (name, size, quantization, device) and whether it is
loading, ready or failed to load; a click opens a menu of recent models and "Open model file…".

Signals:
    chosen(str path)   -- a recent model picked ("" is the default model)
    openRequested()    -- "Open model file…"
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal, Slot
from PySide6.QtWidgets import QMenu, QSizePolicy, QToolButton

from desktop.messages import ModelInfo

UNQUANTIZED = {"F32", "F16", "BF16", "float32", "float16", "bfloat16"}


def size_text(parameters: int) -> str:
    """494M, 1.5B."""
    return f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.0f}M"


def quantization(info: ModelInfo) -> str:
    """The storage type most of the weights are in (Q4_K, Q8_0…), else the precision it runs in."""
    counts = Counter({kind: n for kind, n in info.weight_types if kind not in UNQUANTIZED})
    return counts.most_common(1)[0][0] if counts else info.dtype


def describe(info: ModelInfo) -> str:
    return f"{info.name.removesuffix('.gguf')} · {size_text(info.parameters)} · {quantization(info)} · {info.device}"


class ModelChip(QToolButton):
    chosen = Signal(str)
    openRequested = Signal()

    def __init__(self, recent) -> None:
        """``recent()``: the recent models' paths, newest first, read when the menu opens."""
        super().__init__(accessibleName="Model", objectName="modelChip")
        self._recent = recent
        self.state = ""
        self._full = ""  # the whole text; a narrow window shows it shortened in the middle
        self.setAutoRaise(True)
        self.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.setMenu(QMenu(self))
        self.menu().aboutToShow.connect(self._fill_menu)
        self.show_no_model()

    def show_no_model(self) -> None:
        self._show("No model", "No model is loaded yet.")

    def show_loading(self, path: str) -> None:
        self._show("Loading…", f"Loading {Path(path).name if path else 'the default model'}…")

    def show_ready(self, info: ModelInfo) -> None:
        self._show("Ready", f"{describe(info)} · Ready", info.path)

    def show_remote(self, model: str, base_url: str) -> None:
        self._show("Ready", f"{model} · remote · Ready", base_url)

    def show_failed(self, message: str, still: ModelInfo | None) -> None:
        """The load failed with ``message``; ``still``, the model loaded before, answers meanwhile."""
        after = f"{still.name.removesuffix('.gguf')} still answers" if still else "no model is loaded"
        self._show("Error", f"Load failed · {after}", message)

    def _show(self, state: str, text: str, tip: str = "") -> None:
        self.state = state
        if len(text) > 90:  # a long file name or error: the whole of it is in the tooltip
            text = text[:89] + "…"
        self._full = f"{text}  ▾"
        self.setToolTip(f"{text}\n{tip}\nClick to switch models" if tip else "Click to choose a model")
        self.updateGeometry()
        self._fit_text()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override): the whole text's
        hint = super().sizeHint()
        fm = self.fontMetrics()
        return QSize(hint.width() + fm.horizontalAdvance(self._full) - fm.horizontalAdvance(self.text()), hint.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override): a narrow window shortens the text
        return QSize(min(self.sizeHint().width(), 180), super().minimumSizeHint().height())

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        super().resizeEvent(event)
        self._fit_text()

    def _fit_text(self) -> None:
        fm = self.fontMetrics()
        short = max(0, self.sizeHint().width() - self.width())
        room = fm.horizontalAdvance(self._full) - short
        self.setText(self._full if short == 0 else fm.elidedText(self._full, Qt.TextElideMode.ElideMiddle, room))

    @Slot()
    def _fill_menu(self) -> None:
        menu = self.menu()
        menu.clear()
        for path in self._recent():
            action = menu.addAction(Path(path).name or path, lambda p=path: self.chosen.emit(p))
            action.setToolTip(path)
        menu.addAction("Default model", lambda: self.chosen.emit(""))
        menu.addSeparator()
        menu.addAction("Open model file…", lambda: self.openRequested.emit())
