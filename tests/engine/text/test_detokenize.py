"""engine.text.detokenize.StreamingDetokenizer on both vocabulary kinds.

Oracle: ``Tokenizer.decode`` of all ids at once (itself checked against transformers and sentencepiece
in test_gguf_vocab.py): the pushes plus the flush must add up to it, and no push may show half a
character.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.text.detokenize import StreamingDetokenizer
from engine.text.tokenizer import Tokenizer
from tests.engine.text.tokenizer_fixtures import smollm_tokenizer, spm_tokenizer

TOKENIZERS = {"byte-level": smollm_tokenizer, "sentencepiece": spm_tokenizer}

# Characters that stress streaming: multi-byte UTF-8 split over tokens (emoji, ZWJ sequences, flags,
# rare CJK that SentencePiece spells in byte tokens), spaces carried by "▁", and special tokens.
_PIECES = st.sampled_from(
    [*"abc XYZ.,'\n\t 0123éàñ中文龘ꙮ😀👍🏽\u200d🇫🇷\u00a0", "<|im_start|>", "<|im_end|>", "<s>", "  ", "Hello"]
)
TEXT = st.one_of(st.lists(_PIECES, max_size=25).map("".join), st.text(max_size=25))


def stream(tokenizer: Tokenizer, ids: list[int], *, skip_special: bool = False) -> list[str]:
    detokenizer = StreamingDetokenizer(tokenizer, skip_special=skip_special)
    return [detokenizer.push(i) for i in ids] + [detokenizer.flush()]


@pytest.mark.parametrize("kind", TOKENIZERS)
@settings(max_examples=300, deadline=None)
@given(text=TEXT, skip_special=st.booleans())
def test_pushes_add_up_to_decode_and_never_split_a_character(kind, text, skip_special):
    tokenizer = TOKENIZERS[kind]()
    ids = tokenizer.encode(text)
    pieces = stream(tokenizer, ids, skip_special=skip_special)
    full = tokenizer.decode(ids, skip_special=skip_special)
    assert "".join(pieces) == full
    if "\ufffd" not in full:
        assert not any("\ufffd" in piece for piece in pieces)


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.integers(0, 49151), max_size=25))
def test_any_byte_level_ids_add_up_to_decode(ids):
    # Even ids that spell invalid UTF-8: byte-level decoding is lossless up to each \ufffd.
    tokenizer = smollm_tokenizer()
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.integers(0, 419), max_size=25))
def test_any_sentencepiece_ids_stream_without_error(ids):
    tokenizer = spm_tokenizer()
    text, full = "".join(stream(tokenizer, ids)), tokenizer.decode(ids)
    # A run of byte tokens that is not valid UTF-8 decodes to one \ufffd per byte, retroactively;
    # text already shown cannot be taken back, so only valid sequences must match exactly.
    if "\ufffd" not in full:
        assert text == full


def test_emoji_come_out_whole():
    tokenizer = smollm_tokenizer()
    text = "Family: 👨‍👩‍👧 and 🇫🇷!"
    pieces = [piece for piece in stream(tokenizer, tokenizer.encode(text)) if piece]
    assert "".join(pieces) == text
    assert len(pieces) < len(tokenizer.encode(text))
    assert all("\ufffd" not in piece and piece.encode() for piece in pieces)


def test_sentencepiece_spaces():
    tokenizer = spm_tokenizer()
    ids = tokenizer.encode("The quick  brown fox\nis better", add_bos=False)
    # Each token shows as soon as it arrives, with the space its "▁" stands for; only the space
    # SentencePiece prefixes to the text is dropped.
    expected = [tokenizer.piece(ids[0]).removeprefix(" ")] + [tokenizer.piece(i) for i in ids[1:]] + [""]
    assert stream(tokenizer, ids) == expected
    assert "".join(expected) == "The quick  brown fox\nis better"


def test_sentencepiece_byte_fallback_character_waits_for_its_last_byte():
    tokenizer = spm_tokenizer()
    ids = tokenizer.encode("a龘", add_bos=False)
    assert [tokenizer.inner.id_to_token(i) for i in ids[-3:]] == ["<0xE9>", "<0xBE>", "<0x98>"]
    assert stream(tokenizer, ids) == ["a", "", "", "龘", ""]


def test_flush_returns_an_unfinished_character_and_resets():
    tokenizer = smollm_tokenizer()
    first_byte = tokenizer.encode("😀")[:1]
    detokenizer = StreamingDetokenizer(tokenizer)
    assert detokenizer.push(first_byte[0]) == ""
    assert detokenizer.flush() == tokenizer.decode(first_byte)
    assert detokenizer.push(tokenizer.encode("hi")[0]) == "hi"


def test_skip_special_drops_special_tokens():
    tokenizer = smollm_tokenizer()
    ids = tokenizer.encode("<|im_start|>assistant\nParis<|im_end|>")
    assert "".join(stream(tokenizer, ids, skip_special=True)) == "assistant\nParis"
    assert "".join(stream(tokenizer, ids)) == "<|im_start|>assistant\nParis<|im_end|>"


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_each_push_decodes_a_short_window(kind, monkeypatch):
    tokenizer = TOKENIZERS[kind]()
    lengths: list[int] = []
    decode = tokenizer.decode

    def spy(ids, *, skip_special=False):
        lengths.append(len(ids))
        return decode(ids, skip_special=skip_special)

    monkeypatch.setattr(tokenizer, "decode", spy)
    ids = tokenizer.encode("Streaming text, 中文 and 😀 emoji. " * 60, add_bos=False)
    text = "".join(stream(tokenizer, ids))
    monkeypatch.undo()
    assert text == tokenizer.decode(ids)
    assert len(ids) > 500 and max(lengths) <= 8
