"""Markdown to the HTML subset Qt's rich text shows, split into prose and top-level code blocks.

A top-level code block becomes its own part (`Code`), shown by `desktop.code_block.CodeBlock` with its own
horizontal scroll bar and Copy button; a fence nested in a list or quote stays in the prose, highlighted and
wrapped. Raw HTML in the text is escaped and images become links: model output is untrusted, and nothing it
writes is ever fetched or interpreted.
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass

from markdown_it import MarkdownIt

from desktop.code_highlight import highlight


@dataclass(frozen=True)
class Code:
    text: str
    language: str  # "" when the fence names none


def _language(info: str) -> str:
    return info.strip().split(" ")[0] if info else ""


@functools.lru_cache(maxsize=4)
def _parser(code_background: str) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table").enable("strikethrough")

    def nested_code(renderer, tokens, idx, options, env):
        token = tokens[idx]
        spans = highlight(token.content, _language(token.info), code_background)
        return f'<pre style="white-space: pre-wrap; background-color: {code_background}">{spans}</pre>'

    def image(renderer, tokens, idx, options, env):
        token = tokens[idx]
        src = html.escape(token.attrGet("src") or "")
        alt = html.escape(token.content or src)
        return f'<a href="{src}">[image: {alt}]</a>'

    md.add_render_rule("fence", nested_code)
    md.add_render_rule("code_block", nested_code)
    md.add_render_rule("image", image)
    return md


def render(text: str, code_background: str = "#efeee9") -> list[str | Code]:
    """The message as parts in order: HTML strings for prose, `Code` for each top-level code block. Single
    newlines are kept as line breaks, as chat users expect (a poem, a list without blank lines)."""
    md = _parser(code_background)
    env: dict = {}
    tokens = md.parse(text, env)
    parts: list[str | Code] = []
    start = 0
    for i, token in enumerate(tokens):
        if token.type in ("fence", "code_block") and token.level == 0:
            if i > start:
                parts.append(md.renderer.render(tokens[start:i], md.options, env).strip())
            parts.append(Code(token.content, _language(token.info)))
            start = i + 1
    if start < len(tokens):
        parts.append(md.renderer.render(tokens[start:], md.options, env).strip())
    return parts
