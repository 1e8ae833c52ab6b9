"""Tokenizers whose regexes backtrack catastrophically: refused at load, quickly, naming the file.

Each hostile ``tokenizer.json`` is written by the test into a copy of a tiny model folder; each must be
refused by ``load_model`` with a ModelFileError naming the tokenizer file, in under 2 s (without the
guard, ``(a|aa)+$`` alone takes 1.5 s on 330 characters, with the GIL held, and grows with the text).
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from tokenizers import Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from engine.errors import ModelFileError, TokenizerError
from engine.loading.loader import load_model
from engine.text.gguf_vocab import PRE_TOKENIZER_REGEXES, build_gguf_vocab
from engine.text.tokenizer import Tokenizer
from engine.text.tokenizer_guard import check_tokenizer, static_problem
from tests.engine.text.tokenizer_fixtures import smollm_metadata, transformers_smollm
from tests.hardening import count

REFUSE_WITHIN_S = 2.0


def split(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


# name -> (part of the tokenizer, the component holding the pattern, words expected in the message)
CASES = {
    "nested quantifier (a+)+$": ("pre_tokenizer", split(r"(a+)+$"), "unbounded repeat"),
    "nested quantifier (\\w+\\s?)*$": ("pre_tokenizer", split(r"(\w+\s?)*$"), "unbounded repeat"),
    "nested inside a Sequence": (
        "pre_tokenizer",
        pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), split(r"(?:x|(?:[a-z]+\d?)+)$")]),
        "/pre_tokenizer/pretokenizers/1/pattern",
    ),
    "backreference": ("pre_tokenizer", split(r"(\w+)\s+\1"), "backreference"),
    "named backreference": ("pre_tokenizer", split(r"(?<w>\w+)\k<w>"), "backreference"),
    "subexpression call": ("pre_tokenizer", split(r"(?<p>a|\(\g<p>\))"), "subexpression call"),
    "overlapping alternatives (a|aa)+$": ("pre_tokenizer", split(r"(a|aa)+$"), "backtracks catastrophically"),
    "overlapping alternatives (a|a)*$": ("pre_tokenizer", split(r"(a|a)*$"), "backtracks catastrophically"),
    "polynomial \\s*\\s*\\s*$": ("pre_tokenizer", split(r"\s*\s*\s*$"), "would take"),
    "quadratic (x|.)*y$": ("pre_tokenizer", split(r"(x|.)*y$"), "would take"),
    "normalizer Replace (a|aa)+$": (
        "normalizer",
        normalizers.Replace(Regex(r"(a|aa)+$"), ""),
        "normalizer",
    ),
    "decoder Replace (\\s+)+x": ("decoder", decoders.Replace(Regex(r"(\s+)+x"), ""), "/decoder/pattern"),
}


@pytest.fixture(scope="module")
def good_folder(tiny_models):
    folder, _ = tiny_models("llama")
    return folder


def with_tokenizer(good, tmp_path, part: str, component) -> tuple:
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    setattr(tok, part, component)
    tok.save(str(folder / "tokenizer.json"))
    return folder, folder / "tokenizer.json"


@pytest.mark.parametrize("case", list(CASES))
def test_a_tokenizer_with_a_catastrophic_regex_is_refused_quickly(case, good_folder, tmp_path):
    part, component, expected = CASES[case]
    folder, tokenizer_json = with_tokenizer(good_folder, tmp_path, part, component)
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError) as err:
        load_model(folder, device="cpu")
    took = time.perf_counter() - t0
    assert took < REFUSE_WITHIN_S, f"{case}: refused after {took:.2f} s"
    assert err.value.path == str(tokenizer_json) and "Ember refuses it" in str(err.value)
    assert expected in str(err.value)
    count("tokenizer: catastrophic regexes refused")


def test_a_folder_with_a_safe_regex_still_loads(good_folder, tmp_path):
    """The tiny model with GPT-2's pre-tokenizer regex passes the guard and loads."""
    folder, _ = with_tokenizer(good_folder, tmp_path, "pre_tokenizer", split(PRE_TOKENIZER_REGEXES["gpt-2"][0]))
    loaded = load_model(folder, device="cpu")
    assert loaded.tokenizer.encode("w1 w2")


def test_a_real_tokenizer_json_passes_quickly(tmp_path):
    """SmolLM2's own tokenizer.json (saved by transformers) loads, and its probe costs little."""
    transformers_smollm().save_pretrained(str(tmp_path))
    t0 = time.perf_counter()
    tokenizer = Tokenizer.from_hf_folder(tmp_path)
    assert time.perf_counter() - t0 < 1.0
    assert tokenizer.decode(tokenizer.encode("Hello, world! 12345")) == "Hello, world! 12345"


BUILT_IN = {regexes: name for name, regexes in reversed(PRE_TOKENIZER_REGEXES.items())}  # one name each


@pytest.mark.parametrize("name", sorted(BUILT_IN.values()))
def test_every_llama_cpp_pre_tokenizer_passes_the_guard(name):
    """No false alarm on the regexes real models use (each of llama.cpp's pre-tokenizer types)."""
    regexes = PRE_TOKENIZER_REGEXES[name]
    for pattern in regexes:
        assert static_problem(pattern) is None, pattern
    inner = HFTokenizer(build_gguf_vocab(smollm_metadata()).tokenizer.model)
    inner.pre_tokenizer = pre_tokenizers.Sequence([split(p) for p in regexes])
    check_tokenizer(inner, "<built-in>")


@pytest.mark.parametrize(
    "pattern",
    [r"(\d{3})+(?!\d)", r"(?i:'s|'t|'re)?", r"(?>a+)+", r"a++b", r"(a+)?", r"[(a+)+]", r"\(a+\)+", r"x{2,}y"],
)
def test_patterns_that_only_look_nested_are_not_refused(pattern):
    assert static_problem(pattern) is None


def test_a_gguf_cannot_bring_its_own_regex():
    """GGUF names its pre-tokenizer (tokenizer.ggml.pre) from a fixed table; a pattern there is an unknown
    name, so GPT-2's regex is used and a long hostile text stays fast."""
    metadata = dict(smollm_metadata(), **{"tokenizer.ggml.pre": r"(a|aa)+$"})
    tokenizer = Tokenizer.from_gguf_metadata(metadata, "hostile.gguf")
    t0 = time.perf_counter()
    ids = tokenizer.encode(("a" * 30 + "!\n") * 1000)
    assert ids and time.perf_counter() - t0 < 1.0
    count("tokenizer: catastrophic regexes refused")


def test_a_regex_that_gives_up_while_encoding_is_a_typed_error():
    """Were a bad pattern to get past the load checks, the Rust panic becomes a TokenizerError the chat
    shows, not a BaseException that ends the engine thread."""
    inner = HFTokenizer(build_gguf_vocab(smollm_metadata()).tokenizer.model)
    inner.pre_tokenizer = split(r"(a+)+$")
    tokenizer = Tokenizer(inner, bos_token=None, eos_token=None, add_bos=False)
    with pytest.raises(TokenizerError, match="could not split"):
        tokenizer.encode("a" * 64 + "!")


def test_the_refusal_names_the_place_of_the_pattern(good_folder, tmp_path):
    folder, path = with_tokenizer(good_folder, tmp_path, "pre_tokenizer", split(r"(a+)+$"))
    with pytest.raises(ModelFileError) as err:
        Tokenizer.from_hf_folder(folder)
    assert "/pre_tokenizer/pattern" in str(err.value) and "'(a+)+$'" in str(err.value)
    assert json.loads(path.read_text())["pre_tokenizer"]["pattern"] == {"Regex": "(a+)+$"}
