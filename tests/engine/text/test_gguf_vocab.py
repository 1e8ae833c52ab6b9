"""engine.text.gguf_vocab: tokenizers built from GGUF metadata, checked against independent references.

Oracles:
* byte-level BPE (SmolLM2 GGUF): the tokenizer SmolLM2's tokenizer.json describes (transformers'
  vocabulary/merges for the file with SmolLM2's Digits + ByteLevel pre-tokenizer), and transformers'
  own GGUF tokenizer on text where its converter's missing "smollm" support cannot show (no digits);
* SentencePiece-style BPE: the ``sentencepiece`` library running the model the vocabulary was made from;
* pre-tokenizer regexes: splits worked out by hand from llama.cpp's regexes.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ModelFileError
from engine.text.gguf_vocab import PRE_TOKENIZER_REGEXES
from engine.text.tokenizer import Tokenizer
from tests.engine.text.tokenizer_fixtures import (
    CORPUS,
    SPM_CORPUS,
    sentencepiece_processor,
    smollm_reference,
    smollm_tokenizer,
    spm_metadata,
    spm_tokenizer,
    transformers_smollm,
)


def byte_level_metadata(**overrides):
    """A tiny byte-level vocabulary: three control tokens, the 256 byte characters and two merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(), "he", "Ġhe"]
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array([3, 3, 3] + [1] * (len(tokens) - 3), dtype=np.int32),
        "tokenizer.ggml.merges": ["h e", "Ġ he"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    metadata.update(overrides)
    return metadata


# ---- byte-level BPE: the real SmolLM2 GGUF ---------------------------------------------------------


@pytest.mark.parametrize("text", CORPUS)
def test_smollm_ids_match_smollm2_tokenizer_json(text):
    assert smollm_tokenizer().encode(text) == smollm_reference().encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", [t for t in CORPUS if not any(c.isnumeric() for c in t)])
def test_smollm_ids_match_transformers_gguf_tokenizer_on_text_without_digits(text):
    assert smollm_tokenizer().encode(text) == transformers_smollm().encode(text, add_special_tokens=False)


def test_smollm_splits_each_digit_off_like_its_tokenizer_json():
    # transformers' GGUF converter ignores tokenizer.ggml.pre = "smollm" and yields "a", " ", " ", "1";
    # SmolLM2's own tokenizer (and llama.cpp) split the digit off first and keep the two spaces whole.
    tokenizer = smollm_tokenizer()
    assert [tokenizer.piece(i) for i in tokenizer.encode("a  1 234")] == ["a", "  ", "1", " ", "2", "3", "4"]


@pytest.mark.parametrize("text", CORPUS)
def test_smollm_decode_matches_transformers(text):
    ids = smollm_reference().encode(text, add_special_tokens=False).ids
    for skip in (False, True):
        expected = transformers_smollm().decode(ids, skip_special_tokens=skip)
        assert smollm_tokenizer().decode(ids, skip_special=skip) == expected


def test_smollm_special_tokens_in_text_encode_to_their_ids():
    tokenizer = smollm_tokenizer()
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tokenizer.decode(ids, skip_special=True) == "user\nhi"


# ---- SentencePiece-style BPE: a trained model written to a GGUF ------------------------------------


@pytest.mark.parametrize("text", SPM_CORPUS)
def test_spm_ids_and_text_match_sentencepiece(text):
    tokenizer, processor = spm_tokenizer(), sentencepiece_processor()
    ids = tokenizer.encode(text, add_bos=False)
    assert ids == processor.encode(text)
    assert tokenizer.decode(ids) == processor.decode(ids)


def test_spm_corpus_exercises_byte_fallback():
    metadata, tokenizer = spm_metadata(), spm_tokenizer()
    byte_ids = {i for i, t in enumerate(metadata["tokenizer.ggml.token_type"]) if t == 6}
    ids = tokenizer.encode("rare: 龘 ꙮ 𓀀", add_bos=False)
    assert len(byte_ids & set(ids)) >= 4


_SPM_ALPHABET = list("abcdefghijklmnopqrstuvwxyz THEQ.,!'\n\t0123456789éàñ中文本日語龘ꙮ😀\u200d")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(st.sampled_from(_SPM_ALPHABET), max_size=30), st.text(max_size=20)))
def test_spm_matches_sentencepiece_on_random_text(text):
    tokenizer, processor = spm_tokenizer(), sentencepiece_processor()
    ids = tokenizer.encode(text, add_bos=False)
    assert ids == processor.encode(text)
    assert tokenizer.decode(ids) == processor.decode(ids)


def test_spm_control_tokens_parse_from_text_with_llama_cpp_space_prefix():
    tokenizer = spm_tokenizer()
    start, end = tokenizer.inner.token_to_id("<|im_start|>"), tokenizer.inner.token_to_id("<|im_end|>")
    hi = tokenizer.encode("hi", add_bos=False)
    # llama.cpp prefixes a space to the text after every special token, as at the start of the text.
    assert tokenizer.encode("<|im_start|>hi<|im_end|>", add_bos=False) == [start, *hi, end]
    assert tokenizer.is_special(start) and end in tokenizer.eos_ids


def test_spm_user_defined_token_is_matched_whole_but_not_special():
    tokenizer = spm_tokenizer()
    tool = tokenizer.inner.token_to_id("<tool>")
    ids = tokenizer.encode("call <tool> now", add_bos=False)
    assert tool in ids and not tokenizer.is_special(tool)
    assert "<tool>" in tokenizer.decode(ids, skip_special=True)


def test_spm_without_space_prefix():
    tokenizer = Tokenizer.from_gguf_metadata({**spm_metadata(), "tokenizer.ggml.add_space_prefix": False})
    # Without the prefix, " hello world" is what SentencePiece makes of "hello world" with it.
    ids = tokenizer.encode(" hello world", add_bos=False)
    assert ids == sentencepiece_processor().encode("hello world")
    assert tokenizer.decode(ids) == " hello world"
    assert tokenizer.piece(tokenizer.encode("hello", add_bos=False)[0]) == "h"


def test_spm_merges_in_metadata_are_used_instead_of_scores():
    # With only the merges that build "▁th", "▁the" is out of reach and "the" splits after "▁th".
    metadata = {**spm_metadata(), "tokenizer.ggml.merges": ["▁ t", "▁t h"]}
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    assert [tokenizer.piece(i) for i in tokenizer.encode("the", add_bos=False)] == [" th", "e"]
    assert sentencepiece_processor().encode("the", out_type=str) == ["▁the"]


# ---- pre-tokenizer table ---------------------------------------------------------------------------


def _splits(pre: str, text: str) -> list[str]:
    """How the pre-tokenizer ``pre`` cuts ``text``, with the byte-level spelling undone."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata(**{"tokenizer.ggml.pre": pre}))
    pieces = tokenizer.inner.pre_tokenizer.pre_tokenize_str(text)
    return [bytes(byte_of[char] for char in piece).decode() for piece, _ in pieces]


@pytest.mark.parametrize(
    ("pre", "text", "pieces"),
    [
        ("gpt-2", "a  1 234", ["a", " ", " 1", " 234"]),
        ("default", "a  1 234", ["a", " ", " 1", " 234"]),
        ("smollm", "a  1 234", ["a", "  ", "1", " ", "2", "3", "4"]),
        ("starcoder", "x12", ["x", "1", "2"]),
        ("llama-bpe", "a  1 234567 I'M", ["a", " ", " ", "1", " ", "234", "567", " I", "'M"]),
        ("qwen2", "x 123\n\n", ["x", " ", "1", "2", "3", "\n\n"]),
        ("tekken", "HelloWorld 12", ["Hello", "World", " ", "1", "2"]),
        ("gpt-4o", "HelloWorld 1234 don't", ["Hello", "World", " ", "123", "4", " don't"]),
        ("deepseek-llm", "Hello 世界123\n", ["Hello", " ", "世界", "123", "\n"]),
        ("deepseek-llm", "a€b üö", ["a", "€", "b", " üö"]),
        ("deepseek-coder", "Hi 世界12", ["Hi", " ", "世界", "1", "2"]),
        ("deepseek-v3", "Hi 世界1234", ["Hi", " ", "世界", "123", "4"]),
        ("falcon", "a, 12345", ["a", ",", " ", "123", "45"]),
        ("bloom", "a, b.", ["a", ",", " b", "."]),
    ],
)
def test_pre_tokenizer_splits(pre, text, pieces):
    assert _splits(pre, text) == pieces


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZER_REGEXES))
def test_every_pre_tokenizer_round_trips_text(pre):
    tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata(**{"tokenizer.ggml.pre": pre}))
    for text in CORPUS:
        assert tokenizer.decode(tokenizer.encode(text, add_bos=False)) == text


def test_unknown_pre_tokenizer_falls_back_to_gpt2_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="engine.text.gguf_vocab"):
        assert _splits("no-such-pre", "a  1 234") == ["a", " ", " 1", " 234"]
    assert "no-such-pre" in caplog.text


def test_byte_level_merges_and_specials():
    tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata())
    he = tokenizer.inner.token_to_id("Ġhe")
    assert tokenizer.encode("<|im_start|> he") == [1, he]
    assert tokenizer.piece(he) == " he"


# ---- BOS and EOS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "add_bos"),
    [
        ({}, False),
        ({"tokenizer.ggml.pre": "llama-bpe"}, True),
        ({"tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.add_bos_token": False}, False),
        ({"tokenizer.ggml.add_bos_token": True}, True),
    ],
)
def test_add_bos_follows_llama_cpp_defaults_and_the_file(overrides, add_bos):
    assert Tokenizer.from_gguf_metadata(byte_level_metadata(**overrides)).add_bos is add_bos


def test_spm_defaults_to_bos_and_llama_ids():
    metadata = {k: v for k, v in spm_metadata().items() if not k.endswith(("_token_id", "add_bos_token"))}
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    assert tokenizer.add_bos and tokenizer.bos_id == 1
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<s>", "</s>")


def test_eos_eot_and_end_of_turn_texts_end_a_reply():
    overrides = {"tokenizer.ggml.eos_token_id": 5, "tokenizer.ggml.eot_token_id": 7}
    tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata(**overrides))
    # 0 <|endoftext|> and 2 <|im_end|> end a reply by their text, as in llama.cpp.
    assert tokenizer.eos_ids == {5, 7, 0, 2}


# ---- malformed metadata --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tokenizer.ggml.model": "bert"}, "supports gpt2, llama"),
        ({"tokenizer.ggml.model": None}, "no tokenizer.ggml.model"),
        ({"tokenizer.ggml.tokens": "abc"}, "tokenizer.ggml.tokens must be"),
        ({"tokenizer.ggml.tokens": []}, "tokenizer.ggml.tokens must be"),
        ({"tokenizer.ggml.tokens": ["a", 2, "c"]}, "tokenizer.ggml.tokens[1]"),
        ({"tokenizer.ggml.tokens": ["a", "a"], "tokenizer.ggml.token_type": None}, "twice"),
        ({"tokenizer.ggml.token_type": [1, 1]}, "token_type has 2 entries"),
        ({"tokenizer.ggml.token_type": np.zeros(261, dtype=np.float32)}, "array of integers"),
        ({"tokenizer.ggml.token_type": "1111"}, "array of integers"),
        ({"tokenizer.ggml.merges": "h e"}, "merges must be a list"),
        ({"tokenizer.ggml.merges": ["h e", 7]}, "merges[1]"),
        ({"tokenizer.ggml.merges": ["he"]}, "merges[0]"),
        ({"tokenizer.ggml.merges": ["x yz"]}, "does not fit"),
        ({"tokenizer.ggml.merges": None}, "merges is missing"),
        ({"tokenizer.ggml.pre": 3}, "tokenizer.ggml.pre must be a string"),
        ({"tokenizer.ggml.bos_token_id": "1"}, "bos_token_id must be an integer"),
        ({"tokenizer.ggml.add_bos_token": "yes"}, "add_bos_token must be a boolean"),
        (
            {"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": None},
            "no tokenizer.ggml.bos",
        ),
    ],
)
def test_malformed_byte_level_metadata(overrides, message):
    metadata = {k: v for k, v in byte_level_metadata(**overrides).items() if v is not None}
    with pytest.raises(ModelFileError) as error:
        Tokenizer.from_gguf_metadata(metadata, "model.gguf")
    assert error.value.path == "model.gguf" and message in error.value.reason


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tokenizer.ggml.scores": None}, "neither tokenizer.ggml.scores nor merges"),
        ({"tokenizer.ggml.scores": ["a"] * 420}, "array of numbers"),
        ({"tokenizer.ggml.scores": np.zeros(3, dtype=np.float32)}, "scores has 3 entries"),
        ({"tokenizer.ggml.add_space_prefix": 1}, "add_space_prefix must be a boolean"),
    ],
)
def test_malformed_sentencepiece_metadata(overrides, message):
    metadata = {k: v for k, v in {**spm_metadata(), **overrides}.items() if v is not None}
    with pytest.raises(ModelFileError) as error:
        Tokenizer.from_gguf_metadata(metadata, "model.gguf")
    assert message in error.value.reason


def test_out_of_range_special_id_is_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="engine.text.gguf_vocab"):
        tokenizer = Tokenizer.from_gguf_metadata(byte_level_metadata(**{"tokenizer.ggml.eos_token_id": 10**6}))
    assert tokenizer.eos_token is None and "eos_token_id" in caplog.text
