"""Ember's tokenizer: a thin wrapper over ``tokenizers.Tokenizer`` with the special tokens a chat needs.

Build one from a Hugging Face model folder (``tokenizer.json`` and its configs) or from GGUF metadata
(see ``engine.text.gguf_vocab``). ``encode`` parses special tokens written in the text, so a rendered chat
template encodes ``<|im_start|>`` to its id, and adds BOS when the model wants it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from engine.errors import ModelFileError, TokenizerError
from engine.text.gguf_vocab import build_gguf_vocab
from engine.text.tokenizer_guard import check_tokenizer

log = logging.getLogger(__name__)

# Texts of tokens that end a turn, after llama.cpp's end-of-generation list: a reply stops at any of
# these that the vocabulary has, besides the declared EOS.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<｜end▁of▁sentence｜>",  # DeepSeek, spelled with fullwidth bars
    "<EOT>",
)

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character byte-level BPE spells it with."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    spelled = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in spelled:
            spelled[b] = chr(256 + extra)
            extra += 1
    return spelled


_BYTE_LEVEL_DECODE = {char: byte for byte, char in _bytes_to_unicode().items()}


class Tokenizer:
    """Text to token ids and back, plus the model's BOS/EOS and the ids that end a reply.

    Attributes:
        inner: the wrapped ``tokenizers.Tokenizer``.
        vocab_size: number of ids, added tokens included.
        bos_id, bos_token: the beginning-of-sequence token, or None.
        eos_token: the declared end-of-sequence token, or None.
        eos_ids: every id that ends a reply: EOS, the end-of-turn tokens the vocabulary has
            (``<|im_end|>``, ``<|eot_id|>`` ...) and any extra ids the model's config names.
        add_bos: whether ``encode`` prepends BOS by default.
    """

    def __init__(
        self,
        inner: HFTokenizer,
        *,
        bos_token: str | None,
        eos_token: str | None,
        add_bos: bool,
        extra_eos_ids: Iterable[int] = (),
    ) -> None:
        self.inner = inner
        self.vocab_size: int = inner.get_vocab_size(with_added_tokens=True)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_id: int | None = inner.token_to_id(bos_token) if bos_token is not None else None
        self.add_bos = add_bos and self.bos_id is not None
        eos = [inner.token_to_id(text) for text in (eos_token, *END_OF_TURN_TOKENS) if text is not None]
        eos += [i for i in extra_eos_ids if 0 <= i < self.vocab_size]
        self.eos_ids: frozenset[int] = frozenset(i for i in eos if i is not None)
        added = inner.get_added_tokens_decoder()
        self._added: dict[int, str] = {i: token.content for i, token in added.items()}
        self._special_ids = frozenset(i for i, token in added.items() if token.special)
        self._decoder_kind = _decoder_kind(inner)

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; special tokens written in it are parsed as specials.

        BOS is prepended when ``add_bos`` (default: ``self.add_bos``) unless the text already starts
        with it, e.g. a chat template that writes ``<s>`` itself.
        """
        try:
            ids: list[int] = self.inner.encode(text, add_special_tokens=False).ids
        except BaseException as exc:
            # A regex that gives up (Oniguruma's backtracking limit) panics in Rust: a BaseException that
            # would get past every `except Exception` and end the thread. Load-time checks
            # (engine.text.tokenizer_guard) should make this unreachable.
            if type(exc).__name__ != "PanicException":
                raise
            raise TokenizerError(f"The tokenizer could not split this text: {exc}") from None
        want_bos = self.add_bos if add_bos is None else add_bos
        if want_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """The text of ``ids``; with ``skip_special``, special tokens are left out."""
        return self.inner.decode(list(ids), skip_special_tokens=skip_special)

    def piece(self, token_id: int) -> str:
        """The text one token stands for, e.g. ``" Paris"``, for showing tokens one by one.

        A token holding only part of a UTF-8 character shows its bytes escaped, e.g. ``"\\xe4\\xb8"``.
        Ids past the vocabulary (padding rows of a model's embedding) have no text: ``""``, as in decode.
        """
        if token_id in self._added:
            return self._added[token_id]
        token = self.inner.id_to_token(token_id)
        if token is None:
            return ""
        return _token_bytes(token, self._decoder_kind).decode("utf-8", errors="backslashreplace")

    def is_special(self, token_id: int) -> bool:
        """Whether the id is a special (control) token such as ``<|im_start|>`` or BOS."""
        return token_id in self._special_ids

    @classmethod
    def from_hf_folder(cls, folder: Path) -> Tokenizer:
        """Load ``tokenizer.json`` from a model folder, with ``tokenizer_config.json`` (BOS/EOS,
        ``add_bos_token``, added tokens) and ``generation_config.json`` (``eos_token_id``) if present."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelFileError(
                folder,
                "has no tokenizer.json; Ember needs the fast-tokenizer file that Hugging Face models ship",
            )
        try:
            inner = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
            raise ModelFileError(path, f"cannot be read as a tokenizer: {exc}") from exc
        check_tokenizer(inner, path)  # a regex that backtracks catastrophically would freeze the app
        config = _read_json(folder / "tokenizer_config.json")
        _add_config_tokens(inner, config.get("added_tokens_decoder", {}), folder / "tokenizer_config.json")
        bos_token = _token_text(config.get("bos_token"))
        eos_token = _token_text(config.get("eos_token"))
        if "add_bos_token" in config:
            add_bos = bool(config["add_bos_token"])
        else:  # llama-3 style: BOS comes from the tokenizer.json post-processor
            bos_id = inner.token_to_id(bos_token) if bos_token is not None else None
            add_bos = bos_id is not None and inner.encode("", add_special_tokens=True).ids[:1] == [bos_id]
        generation = _read_json(folder / "generation_config.json").get("eos_token_id")
        extra = [i for i in (generation if isinstance(generation, list) else [generation]) if isinstance(i, int)]
        return cls(inner, bos_token=bos_token, eos_token=eos_token, add_bos=add_bos, extra_eos_ids=extra)

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], path: str = "<gguf>") -> Tokenizer:
        """Build the tokenizer a GGUF file describes in its ``tokenizer.ggml.*`` metadata."""
        vocab = build_gguf_vocab(metadata, path)
        token = vocab.tokenizer.id_to_token
        return cls(
            vocab.tokenizer,
            bos_token=token(vocab.bos_id) if vocab.bos_id is not None else None,
            eos_token=token(vocab.eos_id) if vocab.eos_id is not None else None,
            add_bos=vocab.add_bos,
            extra_eos_ids=vocab.end_of_turn_ids,
        )


def _decoder_kind(inner: HFTokenizer) -> str:
    """How tokens spell text: "byte_level" (GPT-2's byte alphabet), "metaspace" (``▁`` for spaces,
    ``<0xXX>`` bytes) or "plain"."""
    if inner.decoder is None:
        return "plain"
    spec = inner.decoder.__getstate__().decode()
    if '"ByteLevel"' in spec:
        return "byte_level"
    if "\u2581" in spec or '"Metaspace"' in spec:
        return "metaspace"
    return "plain"


def _token_bytes(token: str, kind: str) -> bytes:
    if kind == "byte_level" and all(char in _BYTE_LEVEL_DECODE for char in token):
        return bytes(_BYTE_LEVEL_DECODE[char] for char in token)
    if kind == "metaspace":
        byte = _BYTE_TOKEN.fullmatch(token)
        return bytes([int(byte.group(1), 16)]) if byte else token.replace("\u2581", " ").encode()
    return token.encode()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFileError(path, f"should hold a JSON object, not {type(data).__name__}")
    return data


def _token_text(value: Any) -> str | None:
    """A token as tokenizer_config.json writes it: a string, or an object with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _add_config_tokens(inner: HFTokenizer, decoder: Any, path: Path) -> None:
    """Add the tokens of ``added_tokens_decoder`` that tokenizer.json does not list as added tokens
    (a token already in the vocabulary keeps its id and becomes matched whole in text)."""
    if not isinstance(decoder, dict):
        raise ModelFileError(path, "added_tokens_decoder should map ids to token objects")
    known = {token.content for token in inner.get_added_tokens_decoder().values()}
    for key, spec in decoder.items():
        if not isinstance(spec, dict):
            raise ModelFileError(path, f"added_tokens_decoder[{key!r}] should be a token object")
        content = _token_text(spec)
        if content is None or content in known:
            continue
        options = {k: bool(spec[k]) for k in ("single_word", "lstrip", "rstrip", "normalized") if k in spec}
        token = AddedToken(content, special=bool(spec.get("special", False)), **options)
        if spec.get("special", False):
            inner.add_special_tokens([token])
        else:
            inner.add_tokens([token])
        if str(inner.token_to_id(content)) != str(key):
            log.warning("%s: added token %r got id %s, not %s", path, content, inner.token_to_id(content), key)
