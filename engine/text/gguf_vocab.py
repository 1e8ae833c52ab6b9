"""Build a ``tokenizers.Tokenizer`` from the tokenizer a GGUF file describes in its metadata.

A GGUF carries no ``tokenizer.json``: it stores the vocabulary, token types, scores and merges under
llama.cpp's ``tokenizer.ggml.*`` keys. Two kinds are supported, following llama.cpp
(``src/llama-vocab.cpp``):

* ``gpt2``: byte-level BPE. The text is first split by the regexes llama.cpp picks from
  ``tokenizer.ggml.pre`` (each regex splits the pieces the previous one left), then mapped to
  GPT-2's byte alphabet and merged.
* ``llama``: SentencePiece-style BPE. Spaces become ``▁``, a ``▁`` is prepended to every run of plain
  text when ``tokenizer.ggml.add_space_prefix`` (default true), the pair whose merged token scores
  highest is merged first, and characters missing from the vocabulary fall back to ``<0xXX>`` byte
  tokens.

In both, control tokens (type 3) and the unknown token (type 2) become special added tokens and
user-defined tokens (type 4) plain added tokens, so that their text, e.g. ``<|im_start|>``, encodes to
their id as llama.cpp does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from engine.errors import ModelFileError

log = logging.getLogger(__name__)

# llama.cpp's token types (gguf.TokenType) that matter here; 5 is unused, 6 a <0xXX> byte token.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4

SUPPORTED_MODELS = ("gpt2", "llama")

# Pre-tokenizer regexes, from llama.cpp's LLAMA_VOCAB_PRE_TYPE_* table. Where llama.cpp rewrote a
# regex for its own engine (no \p{Lu} etc.), the original from the model's tokenizer.json is used,
# which Oniguruma (the engine `tokenizers` uses) understands.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# DeepSeek-LLM's letter class (the cased letters of a Unicode snapshot) as hex code point ranges, and
# the other non-ASCII classes as escapes: Unicode normalization by an editor would silently change
# literal characters (NFC turns U+212A KELVIN SIGN into "K", widening "K-ℭ" to most of the BMP).
_DEEPSEEK_LETTERS = (
    "0041-005A 0061-007A 00B5 00C0-00D6 00D8-00F6 00F8-01BA 01BC-01BF 01C4-0293 0295-02AF 0370-0373 0376 "
    "0377 037B-037D 037F 0386 0388-038A 038C 038E-03A1 03A3-03F5 03F7-0481 048A-052F 0531-0556 10A0-10C5 "
    "13A0-13F5 13F8-13FD 1C90-1CBA 1CBD-1CBF 1D00-1D2B 1D6B-1D77 1D79-1D9A 1E00-1F15 1F18-1F1D 1F20-1F45 "
    "1F48-1F4D 1F50-1F57 1F59 1F5B 1F5D 1F5F-1F7D 1F80-1FB4 1FB6-1FBC 1FBE 1FC2-1FC4 1FC6-1FCC 1FD0-1FD3 "
    "1FD6-1FDB 1FE0-1FEC 1FF2-1FF4 1FF6-1FFC 2102 2107 210A-2113 2115 2119-211D 2124 2126 2128 212A-212D "
    "212F-2134 2139 213C-213F 2145-2149 214E 2183 2184 2C00-2C7B 2C7E-2CE4 2CEB-2CEE 2CF2 2CF3 A640-A66D "
    "A680-A69B A722-A76F A771-A787 A78B-A78E AB70-ABBF FB00-FB06 FB13-FB17 FF21-FF3A FF41-FF5A 10400-1044F "
    "104B0-104D3 104D8-104FB 10C80-10CB2 10CC0-10CF2 118A0-118DF 1E900-1E943"
)


def _char_class(ranges: str) -> str:
    """The body of a regex character class from space-separated hex code points and ``A-B`` ranges."""
    return "".join("-".join(chr(int(bound, 16)) for bound in item.split("-")) for item in ranges.split())


_CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LLM = (
    r"[\r\n]",
    r"\s?[" + _char_class(_DEEPSEEK_LETTERS) + "]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    r"\s+$",
    _CJK_HANGUL,
    r"\p{N}+",
)
_DEEPSEEK_CODER = (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK_HANGUL, r"\p{N}")
_DEEPSEEK_V3 = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
_FALCON = (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")
_BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"

# llama.cpp's tokenizer.ggml.pre names, grouped by the regexes they share.
_PRE_TOKENIZER_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("default gpt-2 phi-2 mpt olmo jais trillion exaone4 mellum", (_GPT2,)),
    ("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral lfm2 dbrx smaug-bpe chatglm-bpe glm4", (_LLAMA3,)),
    ("starcoder refact command-r smollm codeshell exaone minerva-7b", (r"\p{N}", _GPT2)),
    ("qwen2 deepseek-r1-qwen megrez stablelm2 hunyuan", (_QWEN2,)),
    ("qwen35", (_QWEN35,)),
    ("tekken", (_TEKKEN,)),
    ("gpt-4o llama4 minimax-m2", (_GPT4O,)),
    ("deepseek-llm", _DEEPSEEK_LLM),
    ("deepseek-coder", _DEEPSEEK_CODER),
    ("deepseek-v3", _DEEPSEEK_V3),
    ("falcon", _FALCON),
    ("poro-chat bloom gpt3-finnish", (_BLOOM,)),
    ("viking", (_BLOOM, r"\p{N}")),
)
PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    name: regexes for names, regexes in _PRE_TOKENIZER_GROUPS for name in names.split()
}
# Pre-tokenizer types for which llama.cpp looks a whole piece up in the vocabulary before merging,
# and the ones whose models want BOS unless the file says otherwise.
_IGNORE_MERGES = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "lfm2", "tekken"})
_ADD_BOS = _IGNORE_MERGES


@dataclass(frozen=True)
class GgufVocab:
    """A tokenizer built from GGUF metadata, with the special ids the metadata names.

    ``end_of_turn_ids`` holds ``tokenizer.ggml.eot_token_id`` and ``eom_token_id`` where present.
    """

    tokenizer: HFTokenizer
    bos_id: int | None
    eos_id: int | None
    end_of_turn_ids: frozenset[int]
    add_bos: bool


def build_gguf_vocab(metadata: Mapping[str, Any], path: str = "<gguf>") -> GgufVocab:
    """Build the tokenizer of a GGUF file from its metadata; ModelFileError names what is malformed."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind is None:
        raise ModelFileError(path, "has no tokenizer (no tokenizer.ggml.model key); use a GGUF that embeds one")
    if kind not in SUPPORTED_MODELS:
        raise ModelFileError(
            path,
            f"tokenizer.ggml.model is {kind!r}; Ember supports {', '.join(SUPPORTED_MODELS)} "
            "(byte-level BPE and SentencePiece-style vocabularies)",
        )
    tokens = _tokens(metadata, path)
    n = len(tokens)
    types = _numbers(metadata, "tokenizer.ggml.token_type", n, path, "iu")
    types = [int(t) for t in types] if types is not None else [NORMAL] * n

    if kind == "gpt2":
        tokenizer = _byte_level_tokenizer(metadata, tokens, path)
        defaults: dict[str, int | None] = {"bos": None, "eos": None}
        add_bos_default = metadata.get("tokenizer.ggml.pre") in _ADD_BOS
    else:
        tokenizer = _sentencepiece_tokenizer(metadata, tokens, types, path)
        defaults = {"bos": 1, "eos": 2}  # llama.cpp's defaults for SentencePiece vocabularies
        add_bos_default = True
    _add_special_tokens(tokenizer, tokens, types)

    bos_id = _token_id(metadata, "bos", n, path, defaults["bos"])
    eos_id = _token_id(metadata, "eos", n, path, defaults["eos"])
    end_of_turn = [_token_id(metadata, key, n, path, None) for key in ("eot", "eom")]
    add_bos = _flag(metadata, "tokenizer.ggml.add_bos_token", add_bos_default, path)
    if add_bos and bos_id is None:
        raise ModelFileError(path, "tokenizer.ggml.add_bos_token is true but no tokenizer.ggml.bos_token_id is set")
    return GgufVocab(tokenizer, bos_id, eos_id, frozenset(i for i in end_of_turn if i is not None), add_bos)


def _byte_level_tokenizer(metadata: Mapping[str, Any], tokens: list[str], path: str) -> HFTokenizer:
    """Byte-level BPE (GPT-2 style) with the pre-tokenizer ``tokenizer.ggml.pre`` names."""
    merges = _merges(metadata, path)
    if merges is None:
        raise ModelFileError(path, "tokenizer.ggml.model is 'gpt2' but tokenizer.ggml.merges is missing")
    pre = metadata.get("tokenizer.ggml.pre")
    if pre is not None and not isinstance(pre, str):
        raise ModelFileError(path, f"tokenizer.ggml.pre must be a string, not {type(pre).__name__}")
    regexes = PRE_TOKENIZER_REGEXES.get(pre) if pre is not None else None
    if regexes is None:
        log.warning(
            "%s: %s; splitting text with GPT-2's regex, tokenization may differ from the model's",
            path,
            "no tokenizer.ggml.pre" if pre is None else f"unknown tokenizer.ggml.pre {pre!r}",
        )
        regexes = (_GPT2,)
    model = _bpe(
        path,
        _vocab(tokens, path),
        merges,
        ignore_merges=pre in _IGNORE_MERGES,
        byte_fallback=False,
        unk_token=None,
    )
    tokenizer = HFTokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_tokenizer(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int], path: str
) -> HFTokenizer:
    """SentencePiece-style BPE over ``▁``-escaped text, with byte fallback, as llama.cpp's SPM tokenizer."""
    merges = _merges(metadata, path)
    if merges is None:
        scores = _numbers(metadata, "tokenizer.ggml.scores", len(tokens), path, "iuf")
        if scores is None:
            raise ModelFileError(
                path,
                "tokenizer.ggml.model is 'llama' but neither tokenizer.ggml.scores nor merges is present",
            )
        merges = _merges_from_scores(tokens, [float(s) for s in scores], types)
    unk_id = _token_id(metadata, "unknown", len(tokens), path, 0)
    model = _bpe(
        path,
        _vocab(tokens, path),
        merges,
        ignore_merges=False,
        byte_fallback=True,
        unk_token=tokens[unk_id] if unk_id is not None else None,
    )
    tokenizer = HFTokenizer(model)
    escape = normalizers.Replace(" ", "\u2581")
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if _flag(metadata, "tokenizer.ggml.add_space_prefix", True, path):
        # Prepend runs on each stretch of text between added tokens, as llama.cpp adds the space
        # at the start and after every special token.
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), escape])
        decode.append(decoders.Strip(" ", 1, 0))
    else:
        tokenizer.normalizer = escape
    tokenizer.decoder = decoders.Sequence(decode)
    return tokenizer


def _merges_from_scores(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """The merges a score-ranked vocabulary implies: every split of a normal token into two normal
    tokens, the highest-scoring result first, as SentencePiece merges the best-scoring pair first."""
    ids = {token: i for i, token in enumerate(tokens) if types[i] == NORMAL}
    ranked = []
    for token, i in ids.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[i], i, ids[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _bpe(
    path: str,
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    *,
    ignore_merges: bool,
    byte_fallback: bool,
    unk_token: str | None,
) -> models.BPE:
    try:
        return models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=unk_token,
            fuse_unk=byte_fallback,
            byte_fallback=byte_fallback,
            ignore_merges=ignore_merges,
        )
    except Exception as exc:  # tokenizers raises a bare Exception for merges outside the vocabulary
        raise ModelFileError(path, f"tokenizer.ggml.merges does not fit tokenizer.ggml.tokens: {exc}") from exc


def _add_special_tokens(tokenizer: HFTokenizer, tokens: list[str], types: list[int]) -> None:
    """Make control/unknown tokens special and user-defined tokens added, matched whole in raw text."""
    special = [
        AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t in (CONTROL, UNKNOWN)
    ]
    user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == USER_DEFINED]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)


def _vocab(tokens: list[str], path: str) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        if token in vocab:
            raise ModelFileError(
                path,
                f"tokenizer.ggml.tokens has {token!r} twice (ids {vocab[token]} and {i}); the file is broken",
            )
        vocab[token] = i
    return vocab


def _tokens(metadata: Mapping[str, Any], path: str) -> list[str]:
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, (list, tuple)) or not tokens:
        raise ModelFileError(
            path, f"tokenizer.ggml.tokens must be a non-empty list of strings, not {_describe(tokens)}"
        )
    bad = next((i for i, token in enumerate(tokens) if not isinstance(token, str)), None)
    if bad is not None:
        raise ModelFileError(path, f"tokenizer.ggml.tokens[{bad}] is {_describe(tokens[bad])}, not a string")
    # llama.cpp renames empty tokens the same way, so that every id keeps a distinct text.
    return [token or f"[EMPTY_{i}]" for i, token in enumerate(tokens)]


def _numbers(metadata: Mapping[str, Any], key: str, n: int, path: str, kinds: str) -> list[Any] | None:
    """An optional numeric array with one entry per token; ``kinds`` are numpy dtype kinds ("iuf")."""
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        ok = value.ndim == 1 and value.dtype.kind in kinds
        values = value.tolist() if ok else []
    else:
        wanted = (int, float) if "f" in kinds else (int,)
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, wanted) and not isinstance(v, bool) for v in value)
        values = list(value) if ok else []
    if not ok:
        what = "numbers" if "f" in kinds else "integers"
        raise ModelFileError(path, f"{key} must be an array of {what}, not {_describe(value)}")
    if len(values) != n:
        raise ModelFileError(path, f"{key} has {len(values)} entries but tokenizer.ggml.tokens has {n}")
    return values


def _merges(metadata: Mapping[str, Any], path: str) -> list[tuple[str, str]] | None:
    merges = metadata.get("tokenizer.ggml.merges")
    if merges is None:
        return None
    if not isinstance(merges, (list, tuple)):
        raise ModelFileError(path, f"tokenizer.ggml.merges must be a list of strings, not {_describe(merges)}")
    pairs = []
    for i, merge in enumerate(merges):
        # Split at the first space after the first character, as llama.cpp does.
        cut = merge.find(" ", 1) if isinstance(merge, str) else -1
        if cut < 0 or cut == len(merge) - 1:
            raise ModelFileError(path, f"tokenizer.ggml.merges[{i}] is {merge!r}, not two tokens joined by a space")
        pairs.append((merge[:cut], merge[cut + 1 :]))
    return pairs


def _token_id(metadata: Mapping[str, Any], name: str, n: int, path: str, default: int | None) -> int | None:
    key = f"tokenizer.ggml.{name}_token_id"
    value = metadata.get(key)
    if value is None:
        return default if default is not None and default < n else None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ModelFileError(path, f"{key} must be an integer, not {_describe(value)}")
    if not 0 <= value < n:
        log.warning("%s: %s = %d is outside the vocabulary of %d tokens; ignoring it", path, key, value, n)
        return None
    return int(value)


def _flag(metadata: Mapping[str, Any], key: str, default: bool, path: str) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise ModelFileError(path, f"{key} must be a boolean, not {_describe(value)}")
    return bool(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


__all__ = ["GgufVocab", "PRE_TOKENIZER_REGEXES", "SUPPORTED_MODELS", "build_gguf_vocab"]
