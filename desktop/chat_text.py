"""Rich text that wraps to its width and is exactly as tall as its text: one stretch of a chat message."""

from __future__ import annotations

import math

from PySide6.QtCore import QSize, QSizeF, Qt, Slot
from PySide6.QtGui import QPalette, QTextOption
from PySide6.QtWidgets import QFrame, QSizePolicy, QTextBrowser


def transparent(text: QTextBrowser) -> None:
    """Shows what is behind it (a message's bubble, a code block's background). Through the palette: a
    style sheet on it would draw its scroll bars in the style sheet's plain look instead of the app's."""
    palette = text.palette()
    palette.setColor(QPalette.ColorRole.Base, Qt.GlobalColor.transparent)
    text.setPalette(palette)
    text.viewport().setAutoFillBackground(False)


class ChatText(QTextBrowser):
    """Read-only HTML that wraps at word boundaries, and anywhere inside a word longer than the line (a URL),
    so it is never wider than it is given. Its height follows its text; it never scrolls itself, so the wheel
    scrolls the chat. ``hug``: its preferred width is the text's own (a short message in a narrow bubble).
    Links are inert: nothing the model writes is opened or fetched."""

    def __init__(self, accessible_name: str, *, hug: bool = False) -> None:
        super().__init__(accessibleName=accessible_name, openLinks=False, openExternalLinks=False)
        self.hug = hug
        self._html = ""
        self._natural = 0
        self.setFrameShape(QFrame.Shape.NoFrame)
        transparent(self)
        self.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.document().setDocumentMargin(0)
        horizontal = QSizePolicy.Policy.Preferred if hug else QSizePolicy.Policy.Expanding
        self.setSizePolicy(horizontal, QSizePolicy.Policy.Fixed)
        self.document().documentLayout().documentSizeChanged.connect(self._fit_height)

    def set_html(self, text: str) -> None:
        if text == self._html:  # a streaming reply re-renders its earlier parts unchanged
            return
        self._html = text
        self.setHtml(text)
        if self.hug:
            unwrapped = self.document().clone(self)
            unwrapped.setTextWidth(-1)
            self._natural = math.ceil(unwrapped.idealWidth()) + 2  # a pixel each side: no wrap from rounding
            unwrapped.deleteLater()
            self.updateGeometry()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(self._natural if self.hug else super().sizeHint().width(), self.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt override)
        return QSize(40, self.height())

    @Slot(QSizeF)
    def _fit_height(self, size: QSizeF) -> None:
        height = math.ceil(size.height())
        if height != self.minimumHeight() or height != self.maximumHeight():
            self.setFixedHeight(height)
