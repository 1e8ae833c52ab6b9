"""Turn a stream of generated token ids into text, a piece at a time.

Decoding each token alone goes wrong twice: a character split over several tokens (byte-fallback
``<0xE4>`` tokens, byte-level BPE pieces of an emoji) would show as ``\\ufffd``, and a SentencePiece
``▁Paris`` alone decodes to ``Paris``, dropping the space it carries after a previous word.

``StreamingDetokenizer`` decodes a short window instead, as vLLM and Hugging Face's TextStreamer do:
the window starts a few tokens back (``_prefix``), and what it decodes to beyond the text of the
tokens already shown (``_read``) is the new text. Text ending in ``\\ufffd`` is held back until the
character completes. The window then slides forward, so each push costs O(window), not O(history).
"""

from __future__ import annotations

from engine.text.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"


class StreamingDetokenizer:
    """Incremental ``tokenizer.decode``: all of ``push``'s results plus ``flush()`` equal the decode of
    every id pushed, for any sequence that decodes without ``\\ufffd``; no push returns half a character.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._window: list[int] = []  # ids from the window start to the newest
        self._read = 0  # ids in the window before this index have been shown
        self._shown = ""  # decode of window[:_read]

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text it completes (possibly "")."""
        self._window.append(token_id)
        text = self._decode(self._window)
        if text.endswith(_REPLACEMENT) or len(text) <= len(self._shown):
            return ""
        new = self._new_text(text)
        # Slide: the tokens shown before this push become the context of the next window.
        self._window = self._window[self._read :]
        self._shown = self._decode(self._window)
        self._read = len(self._window)
        return new

    def flush(self) -> str:
        """Return whatever is left, e.g. an incomplete character at the end, and reset."""
        text = self._decode(self._window)
        new = self._new_text(text) if len(text) > len(self._shown) else ""
        self._window, self._read, self._shown = [], 0, ""
        return new

    def _new_text(self, text: str) -> str:
        if text.startswith(self._shown):
            return text[len(self._shown) :]
        # Only invalid byte sequences change the decode of tokens already shown (a byte-fallback run
        # that turns out not to be UTF-8 decodes to one \ufffd per byte); show the rest on its own.
        return self._decode(self._window[self._read :])

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special=self._skip_special)
