"""A code block in a chat message: language and Copy on top, highlighted code that scrolls sideways."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, QTimer, Slot
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QTextBrowser, QToolButton, QVBoxLayout

from desktop.chat_text import transparent
from desktop.code_highlight import highlight


class CodeBlock(QFrame):
    """Long lines scroll inside the block (its own horizontal scroll bar), so the message never grows wider
    than the chat; the block is as tall as its code."""

    def __init__(self, code: str, language: str, background: str) -> None:
        super().__init__(objectName="codeBlock")
        self.code = code
        self.setStyleSheet(f"QFrame#codeBlock {{ background: {background}; border-radius: 6px; }}")
        self.background = background
        self.language = QLabel(accessibleName="Code language", textFormat=Qt.TextFormat.PlainText)
        self.copy = QToolButton(text="Copy", toolTip="Copy this code", accessibleName="Copy this code", autoRaise=True)
        self.copy.clicked.connect(self._on_copy)
        self.view = QTextBrowser(accessibleName="Code", openLinks=False)
        self.view.setFrameShape(QFrame.Shape.NoFrame)
        transparent(self.view)
        self.view.setLineWrapMode(QTextBrowser.LineWrapMode.NoWrap)
        self.view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.view.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.view.document().setDocumentMargin(0)
        self.view.document().documentLayout().documentSizeChanged.connect(self._fit_height)
        self.view.horizontalScrollBar().rangeChanged.connect(self._fit_height)
        header = QHBoxLayout()
        header.addWidget(self.language)
        header.addStretch(1)
        header.addWidget(self.copy)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 2, 6, 8)
        layout.setSpacing(2)
        layout.addLayout(header)
        layout.addWidget(self.view)
        self._show(language)

    def set_code(self, code: str, language: str) -> None:
        """Shows new code; a streaming reply comes here with the same code as often as with more."""
        if code != self.code or (language or "code") != self.language.text():
            self.code = code
            self._show(language)

    def _show(self, language: str) -> None:
        self.language.setText(language or "code")
        family = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont).family()
        spans = highlight(self.code.rstrip("\n"), language, self.background)
        self.view.setHtml(f"<pre style=\"font-family: '{family}'; margin: 0\">{spans}</pre>")

    @Slot()
    def _fit_height(self) -> None:
        bar = self.view.horizontalScrollBar()
        extra = bar.sizeHint().height() if bar.maximum() > 0 else 0
        height = math.ceil(self.view.document().size().height()) + extra
        if height != self.view.minimumHeight() or height != self.view.maximumHeight():
            self.view.setFixedHeight(height)

    @Slot()
    def _on_copy(self) -> None:
        QGuiApplication.clipboard().setText(self.code)
        self.copy.setText("Copied")
        QTimer.singleShot(1500, self.copy, lambda: self.copy.setText("Copy"))
