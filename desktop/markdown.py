"""Markdown to the HTML subset QTextBrowser shows, with a "Copy" link under every code block."""

from __future__ import annotations

import html

from markdown_it import MarkdownIt

COPY_SCHEME = "copy"


def render(text: str, code_background: str = "#efeee9") -> tuple[str, list[str]]:
    """Returns the HTML and the code blocks; the link ``copy:N`` stands for block N. Single newlines
    are kept as line breaks, as chat users expect (a poem, a list without blank lines).

    Raw HTML in the text is escaped, never interpreted (model output is untrusted).
    """
    md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table").enable("strikethrough")
    blocks: list[str] = []

    def fence(renderer, tokens, idx, options, env):
        token = tokens[idx]
        blocks.append(token.content)
        lang = html.escape(token.info.strip().split(" ")[0]) if token.info else ""
        label = f"{lang} · " if lang else ""
        return (
            f'<table width="100%" cellpadding="6" bgcolor="{code_background}"><tr><td>'
            f"<pre>{html.escape(token.content.rstrip(chr(10)))}</pre></td></tr>"
            f'<tr><td align="right">{label}<a href="{COPY_SCHEME}:{len(blocks) - 1}">Copy</a>'
            "</td></tr></table>"
        )

    md.add_render_rule("fence", fence)
    md.add_render_rule("code_block", fence)
    return md.render(text), blocks
