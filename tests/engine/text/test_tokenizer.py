"""engine.text.tokenizer.Tokenizer: the API the generation loop uses, and loading Hugging Face folders.

Oracles: transformers (its GGUF tokenizer for SmolLM2, and ``PreTrainedTokenizerFast`` reading the same
folder we load), and the ``sentencepiece`` library for the SentencePiece vocabulary.
"""

from __future__ import annotations

import json

import pytest
from tokenizers import processors

from engine.errors import ModelFileError
from engine.text.tokenizer import Tokenizer
from tests.engine.text.tokenizer_fixtures import (
    CORPUS,
    SPM_CORPUS,
    sentencepiece_processor,
    smollm_tokenizer,
    spm_metadata,
    spm_tokenizer,
    transformers_smollm,
)

# ---- the SmolLM2 GGUF ----------------------------------------------------------------------------


def test_smollm_special_tokens_match_transformers():
    tokenizer, reference = smollm_tokenizer(), transformers_smollm()
    assert tokenizer.vocab_size == len(reference) == 49152
    assert (tokenizer.bos_token, tokenizer.eos_token) == (reference.bos_token, reference.eos_token)
    assert (tokenizer.bos_id, tokenizer.add_bos) == (1, False)
    # <|im_end|> (EOS) and <|endoftext|> both end a reply.
    assert tokenizer.eos_ids == {2, 0}
    specials = {i for i, token in reference.added_tokens_decoder.items() if token.special}
    assert {i for i in range(tokenizer.vocab_size) if tokenizer.is_special(i)} == specials == set(range(17))


def test_smollm_pieces_match_transformers_token_strings():
    tokenizer, reference = smollm_tokenizer(), transformers_smollm()
    ids = tokenizer.encode(" ".join(CORPUS))
    for i in ids:
        expected = reference.convert_tokens_to_string([reference.convert_ids_to_tokens(i)])
        if "\ufffd" not in expected:
            assert tokenizer.piece(i) == expected


def test_piece_shows_a_space_and_escapes_partial_characters():
    tokenizer = smollm_tokenizer()
    assert [tokenizer.piece(i) for i in tokenizer.encode("The capital is Paris")][-1] == " Paris"
    emoji = [tokenizer.piece(i) for i in tokenizer.encode("😀")]
    assert "".join(emoji) == "\\xf0\\x9f\\x98\\x80"
    assert tokenizer.piece(1) == "<|im_start|>"
    assert tokenizer.piece(tokenizer.vocab_size) == "" == tokenizer.decode([tokenizer.vocab_size])


def test_encode_adds_bos_once_when_asked():
    tokenizer = smollm_tokenizer()
    assert tokenizer.encode("hi", add_bos=True)[0] == tokenizer.bos_id
    assert tokenizer.encode("<|im_start|>hi", add_bos=True).count(tokenizer.bos_id) == 1
    assert tokenizer.bos_id not in tokenizer.encode("hi")


# ---- the SentencePiece vocabulary ----------------------------------------------------------------


def test_spm_encode_adds_bos_by_default_and_matches_sentencepiece():
    tokenizer, processor = spm_tokenizer(), sentencepiece_processor()
    for text in SPM_CORPUS:
        assert tokenizer.encode(text) == [1, *processor.encode(text)]
    assert tokenizer.encode("<s>hi") == tokenizer.encode("hi")


def test_spm_pieces():
    tokenizer, processor = spm_tokenizer(), sentencepiece_processor()
    assert tokenizer.piece(processor.piece_to_id("▁the")) == " the"
    assert tokenizer.piece(processor.piece_to_id("<0x0A>")) == "\n"
    assert tokenizer.piece(processor.piece_to_id("<0xE4>")) == "\\xe4"
    assert tokenizer.piece(1) == "<s>" and tokenizer.is_special(1)
    assert not tokenizer.is_special(processor.piece_to_id("▁the"))


# ---- Hugging Face folders ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm_folder(tmp_path_factory):
    """SmolLM2's tokenizer saved by transformers as tokenizer.json + tokenizer_config.json."""
    folder = tmp_path_factory.mktemp("smollm-hf")
    transformers_smollm().save_pretrained(str(folder))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    return folder


def test_hf_folder_matches_pretrained_tokenizer_fast(smollm_folder):
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.from_hf_folder(smollm_folder)
    reference = PreTrainedTokenizerFast.from_pretrained(str(smollm_folder))
    assert (tokenizer.bos_token, tokenizer.eos_token) == (reference.bos_token, reference.eos_token)
    assert tokenizer.vocab_size == len(reference)
    assert not tokenizer.add_bos
    for text in CORPUS:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text)
        for skip in (False, True):
            assert tokenizer.decode(ids, skip_special=skip) == reference.decode(ids, skip_special_tokens=skip)


def test_hf_folder_eos_ids_include_generation_config(smollm_folder):
    assert Tokenizer.from_hf_folder(smollm_folder).eos_ids == {0, 2, 7}


@pytest.fixture(scope="module")
def llama3_style_folder(tmp_path_factory):
    """The SentencePiece vocabulary as a tokenizer.json whose post-processor adds BOS, Llama-3 style,
    with no add_bos_token in tokenizer_config.json."""
    folder = tmp_path_factory.mktemp("spm-hf")
    inner = Tokenizer.from_gguf_metadata(spm_metadata()).inner
    inner.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    inner.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 4}))
    return folder


def test_hf_folder_with_bos_from_post_processor(llama3_style_folder):
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.from_hf_folder(llama3_style_folder)
    reference = PreTrainedTokenizerFast.from_pretrained(str(llama3_style_folder))
    assert tokenizer.add_bos and tokenizer.bos_id == 1
    assert tokenizer.eos_ids == {2, 4}
    for text in SPM_CORPUS:
        assert tokenizer.encode(text) == reference.encode(text)
        assert tokenizer.encode(text, add_bos=False) == reference.encode(text, add_special_tokens=False)


def test_hf_folder_add_bos_token_setting_wins(llama3_style_folder, tmp_path):
    for name in ("tokenizer.json", "generation_config.json"):
        (tmp_path / name).write_bytes((llama3_style_folder / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"__type": "AddedToken", "content": "<s>"}, "add_bos_token": False})
    )
    assert not Tokenizer.from_hf_folder(tmp_path).add_bos


def test_hf_folder_adds_tokens_listed_only_in_tokenizer_config(llama3_style_folder, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((llama3_style_folder / "tokenizer.json").read_bytes())
    size = spm_tokenizer().vocab_size
    added = {str(size): {"content": "<|tool_call|>", "special": True}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    tokenizer = Tokenizer.from_hf_folder(tmp_path)
    assert tokenizer.encode("<|tool_call|>") == [size] and tokenizer.is_special(size)


def test_hf_folder_without_tokenizer_json(tmp_path):
    with pytest.raises(ModelFileError, match="no tokenizer.json"):
        Tokenizer.from_hf_folder(tmp_path)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_hf_folder_with_broken_config(llama3_style_folder, tmp_path, content):
    (tmp_path / "tokenizer.json").write_bytes((llama3_style_folder / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(content)
    with pytest.raises(ModelFileError, match="tokenizer_config.json"):
        Tokenizer.from_hf_folder(tmp_path)


def test_hf_folder_with_broken_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ModelFileError, match="cannot be read as a tokenizer"):
        Tokenizer.from_hf_folder(tmp_path)
