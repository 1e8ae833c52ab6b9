"""Syntax highlighting of code blocks with Pygments, in colours that suit the block's background."""

from __future__ import annotations

from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.lexers.special import TextLexer
from pygments.util import ClassNotFound
from PySide6.QtGui import QColor

# Styles whose text colours read well on our code backgrounds (desktop/theme.py `code_background`).
STYLES = {False: "default", True: "github-dark"}


def is_dark(background: str) -> bool:
    return QColor(background).lightness() < 128


def highlight(code: str, language: str, background: str) -> str:
    """The code as escaped HTML spans with inline colours (no wrapping element); plain text for a language
    Pygments does not know or none."""
    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except ClassNotFound:
        lexer = TextLexer()
    formatter = HtmlFormatter(noclasses=True, nowrap=True, style=STYLES[is_dark(background)])
    return pygments_highlight(code, lexer, formatter).rstrip("\n")
