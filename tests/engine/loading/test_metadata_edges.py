"""Well-formed model files whose declared values are wrong: every GGUF metadata key and config.json value the
loader reads, in turn, at its edges (0, 1, negative, huge, NaN/inf, the wrong type, missing, disagreeing
with the tensors), then at random (hypothesis). Each must end in a `ModelFileError` or, for a legal value,
in a model that runs; never another exception, never a hang, and quickly.

The subprocess checks of time and memory from start-up are in test_cli.py (`ember-cli info`)."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ModelFileError
from engine.loading.loader import load_model
from tests.engine.tiny_gguf import DELETE, SIZES, VOCAB, base_metadata, write_tiny_gguf
from tests.engine.tiny_models import COMMON
from tests.hardening import count, figure

gguf = pytest.importorskip("gguf")
V = gguf.GGUFValueType

LIMIT_S = 1.0  # a refusal (or a load of these tiny files) from the call
SLOWEST = {"GGUF": 0.0, "safetensors": 0.0}
HYPOTHESIS = settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_names = itertools.count()


REFUSED, LOADED, EITHER = "refused", "loaded", "either"  # what a case must end in


def outcome(path: Path, fmt: str) -> tuple[str, str]:
    """("refused", the message) or ("loaded", "") once the model has run; anything else fails the test."""
    t0 = time.perf_counter()
    try:
        lm = load_model(path, device="cpu", dtype="float32", check_memory=False)
    except ModelFileError as e:
        result, message = REFUSED, str(e)
    else:
        result, message = LOADED, ""
    elapsed = time.perf_counter() - t0
    SLOWEST[fmt] = max(SLOWEST[fmt], elapsed)
    assert elapsed < LIMIT_S, f"{path.name}: {result} after {elapsed:.2f} s"
    if result == LOADED:
        with torch.no_grad():
            logits = lm.model(torch.tensor([[1, 3, 4, 5][: lm.context_length]]))
        assert torch.isfinite(logits).all(), f"{path.name}: loaded, but the logits are not finite"
    return result, message


def check(path: Path, fmt: str, expect: str, named: str) -> None:
    """The file ends as ``expect`` says; a refusal names ``named`` (the key, or the tensor, at fault)."""
    result, message = outcome(path, fmt)
    if expect != EITHER:
        assert result == expect, f"{result}, expected {expect}" + (f": {message}" if message else "")
    if result == REFUSED:
        assert named in message, f"the refusal does not name {named}: {message}"


# --- GGUF ------------------------------------------------------------------------------------------

REQUIRED_GGUF = {
    "general.architecture",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.scaling.factor",  # the base file's rope.scaling.type is linear
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",  # a gpt2 (byte-level BPE) vocabulary
    "tokenizer.ggml.bos_token_id",  # tokenizer.ggml.add_bos_token is true, and a gpt2 vocabulary has no default
    # head_count_kv defaults to head_count (2), which disagrees with the tensors' one key/value head
    "llama.attention.head_count_kv",
}
FIELDS = base_metadata(gguf)
INT_KEYS = [k for k, (_, t) in FIELDS.items() if t == V.UINT32 and not k.startswith("tokenizer.")]
FLOAT_KEYS = [k for k, (_, t) in FIELDS.items() if t == V.FLOAT32]
STRING_KEYS = [k for k, (_, t) in FIELDS.items() if t == V.STRING]
TOKEN_ID_KEYS = ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]
INT_TYPES = {V.UINT8, V.UINT16, V.UINT32, V.UINT64, V.INT8, V.INT16, V.INT32, V.INT64}
FLOAT_TYPES = {V.FLOAT32, V.FLOAT64}


def _only(base):
    return lambda v: v == base


# The values each numeric key may legally take, written out here rather than read from engine.loading.model_check.
# The sizes the tensors fix have one legal value, the file's own; every other value disagrees with them.
LEGAL_GGUF = {key: _only(FIELDS[key][0]) for key in INT_KEYS}
LEGAL_GGUF |= {
    "llama.context_length": lambda v: 1 <= v <= 2**24,
    "llama.attention.sliding_window": lambda v: 1 <= v <= 2**24,
    "llama.rope.dimension_count": lambda v: v % 2 == 0 and 2 <= v <= SIZES["head_dim"],
    "llama.attention.layer_norm_rms_epsilon": lambda v: 0 < v <= 1,
    "llama.rope.freq_base": lambda v: 1 <= v <= 1e12,
    "llama.rope.scaling.factor": lambda v: 1 <= v <= 1024,
}


def gguf_expect(key: str, value, vtype) -> str:
    """An integer (or, for a real-valued key, any finite number) is legal in its range; nothing else is."""
    numeric = vtype in INT_TYPES or (key in FLOAT_KEYS and vtype in FLOAT_TYPES and math.isfinite(value))
    return LOADED if numeric and LEGAL_GGUF[key](value) else REFUSED


def int_edges(base: int):
    """(label, (value, type[, element type])) for an integer key."""
    yield from [
        ("0", (0, V.UINT32)),
        ("1", (1, V.UINT32)),
        ("2", (2, V.UINT32)),
        ("base + 1", (base + 1, V.UINT32)),
        ("base - 1", (base - 1, V.UINT32)),
        ("half", (base // 2, V.UINT32)),
        ("twice", (2 * base, V.UINT32)),
        ("the same as int64", (base, V.INT64)),
        ("the same as uint8", (base, V.UINT8)),
        ("the same as int16", (base, V.INT16)),
        ("2**31", (2**31, V.UINT32)),
        ("2**32 - 1", (2**32 - 1, V.UINT32)),
        ("-1", (-1, V.INT32)),
        ("-2**31", (-(2**31), V.INT32)),
        ("2**63 - 1", (2**63 - 1, V.UINT64)),
        ("2**64 - 1", (2**64 - 1, V.UINT64)),
        ("-2**63", (-(2**63), V.INT64)),
        ("a float", (float(base), V.FLOAT32)),
        ("NaN", (math.nan, V.FLOAT32)),
        ("a bool", (True, V.BOOL)),
        ("a string", (str(base), V.STRING)),
        ("an array", ([base, base], V.ARRAY, V.UINT32)),
    ]


def float_edges(base: float):
    yield from [
        ("0", (0.0, V.FLOAT32)),
        ("-1", (-1.0, V.FLOAT32)),
        ("NaN", (math.nan, V.FLOAT32)),
        ("inf", (math.inf, V.FLOAT32)),
        ("-inf", (-math.inf, V.FLOAT32)),
        ("1e38", (1e38, V.FLOAT32)),
        ("1e308 as float64", (1e308, V.FLOAT64)),
        ("the smallest float32", (1e-45, V.FLOAT32)),
        ("1 as an integer", (1, V.UINT32)),
        ("1e9 as an integer", (10**9, V.UINT64)),
        ("the same as float64", (base, V.FLOAT64)),
        ("a bool", (False, V.BOOL)),
        ("a string", (str(base), V.STRING)),
        ("an array", ([base], V.ARRAY, V.FLOAT32)),
    ]


# String keys: the legal values tried beside the base one; every other type is refused.
STRING_LEGAL = {
    "general.architecture": (),
    "llama.rope.scaling.type": ("none",),  # the factor is then ignored
    "tokenizer.ggml.model": (),
    "tokenizer.ggml.pre": ("", "unknown", "none"),  # a name not known: GPT-2's regex, with a warning
}


def string_edges(key: str):
    for label, value in [("empty", ""), ("unknown", "unknown"), ("none", "none")]:
        yield label, (value, V.STRING), LOADED if value in STRING_LEGAL[key] else REFUSED
    for label, value in [("an integer", (1, V.UINT32)), ("a bool", (True, V.BOOL))]:
        yield label, value, REFUSED
    yield "an array", ([FIELDS[key][0]], V.ARRAY, V.STRING), REFUSED


def gguf_cases():
    """(key, label, metadata edit, tensors to drop, expected outcome, what a refusal names)."""
    for key in INT_KEYS + FLOAT_KEYS:
        edges = int_edges if key in INT_KEYS else float_edges
        for label, value in edges(FIELDS[key][0]):
            yield key, label, {key: value}, (), gguf_expect(key, value[0], value[1]), key
    for key in STRING_KEYS:
        for label, value, expect in string_edges(key):
            yield key, label, {key: value}, (), expect, key
    for key in TOKEN_ID_KEYS:
        # ignored with a warning (as llama.cpp does); the base file adds a BOS, so it then lacks one
        out_of_range = REFUSED if key == "tokenizer.ggml.bos_token_id" else LOADED
        for label, value in [("past the vocabulary", (2**32 - 1, V.UINT32)), ("-1", (-1, V.INT32))]:
            yield key, label, {key: value}, (), out_of_range, key
        yield key, "the last token", {key: (VOCAB - 1, V.UINT32)}, (), LOADED, key
        yield key, "a string", {key: ("1", V.STRING)}, (), REFUSED, key
    flag = "tokenizer.ggml.add_bos_token"
    yield flag, "false", {flag: (False, V.BOOL)}, (), LOADED, flag
    yield flag, "an integer", {flag: (1, V.UINT8)}, (), REFUSED, flag
    yield flag, "a string", {flag: ("true", V.STRING)}, (), REFUSED, flag
    tokens = FIELDS["tokenizer.ggml.tokens"][0]
    more = {"tokenizer.ggml.tokens": (tokens + ["x", "y"], V.ARRAY), "tokenizer.ggml.token_type": DELETE}
    # engine/loading/loader.py's message names the counts, not the key: "the tokenizer has 34 tokens but the
    # embedding ..."
    yield "tokenizer.ggml.tokens", "more tokens than embedding rows", more, (), REFUSED, "34 tokens"
    for key in FIELDS:
        yield key, "missing", {key: DELETE}, (), REFUSED if key in REQUIRED_GGUF else LOADED, key
    yield "tensors", "a layer missing", {}, tuple(_layer_names(1)), REFUSED, "llama.block_count"
    yield "tensors", "no token embeddings", {}, ("token_embd.weight",), REFUSED, "token_embd.weight"
    yield "tensors", "one projection missing", {}, ("blk.1.attn_k.weight",), REFUSED, "blk.1.attn_k.weight"


def _layer_names(i: int) -> list[str]:
    from tests.engine.tiny_gguf import tensors

    return [n for n in tensors() if n.startswith(f"blk.{i}.")]


CASES = [(*c[:5], c[5] or c[0]) for c in gguf_cases()]


def test_the_base_file_loads(tmp_path):
    assert outcome(write_tiny_gguf(tmp_path / "base.gguf"), "GGUF")[0] == LOADED


@pytest.mark.parametrize(
    ("key", "label", "edit", "drop", "expect", "named"), CASES, ids=[f"{c[0]} {c[1]}" for c in CASES]
)
def test_gguf_edge_value(key, label, edit, drop, expect, named, tmp_path):
    check(write_tiny_gguf(tmp_path / "edge.gguf", edit, drop), "GGUF", expect, named)
    count("GGUF metadata edge values refused or loaded as expected")
    figure("slowest GGUF metadata refusal or load (in process)", f"{SLOWEST['GGUF'] * 1000:.0f} ms")


# (rope.dimension_count, attention.key_length) pairs where rotary / head * head is just under the whole
# number (30 / 44 * 44 == 29.999...): read back with int() they came out odd and a legal file was refused.
ROTARY_PAIRS = [(30, 44), (26, 46), (30, 52), (2, 8), (8, 8)]


@pytest.mark.parametrize(("rotary", "head"), ROTARY_PAIRS, ids=[f"{r} of {h}" for r, h in ROTARY_PAIRS])
def test_a_partial_rotary_gguf_loads_with_its_declared_rotary_size(rotary, head, tmp_path):
    sizes = {"head_dim": head, "rotary_dim": rotary}
    check(write_tiny_gguf(tmp_path / "partial.gguf", sizes=sizes), "GGUF", LOADED, "")
    lm = load_model(tmp_path / "partial.gguf", device="cpu", dtype="float32", check_memory=False)
    assert lm.model.cfg.rotary_dim == rotary
    assert lm.model.rotary.inv_freq.shape == (rotary // 2,)
    # An export's config.json says partial_rotary_factor; transformers reads it back with int(head * factor).
    assert int(head * lm.model.cfg.partial_rotary_factor) == rotary


def test_an_odd_llama_head_is_refused_naming_key_length(tmp_path):
    """llama.cpp interleaves a llama head's q/k rows in pairs, so its GGUF heads are even (49 crashed unpermuting)."""
    sizes = {"head_dim": 49, "rotary_dim": 32}
    check(write_tiny_gguf(tmp_path / "odd.gguf", sizes=sizes), "GGUF", REFUSED, "llama.attention.key_length 49")


def test_every_even_rotary_size_of_every_head_size_is_kept_whole():
    from engine.loading.config import ModelConfig

    meta = {k: v for k, (v, _) in FIELDS.items()}
    n_head, n_kv, d = SIZES["n_head"], SIZES["n_kv_head"], SIZES["n_embd"]
    for head in range(2, 257, 2):
        for rotary in range(2, head + 1, 2):
            meta |= {"llama.attention.key_length": head, "llama.rope.dimension_count": rotary}
            shapes = {"token_embd.weight": (VOCAB, d), "blk.0.attn_q.weight": (n_head * head, d)}
            cfg = ModelConfig.from_gguf(
                meta | {"llama.block_count": 1}, shapes | {"blk.0.attn_k.weight": (n_kv * head, d)}
            )
            assert (cfg.rotary_dim, int(head * cfg.partial_rotary_factor)) == (rotary, rotary), (rotary, head)


@pytest.mark.parametrize(
    ("edit", "named", "not_named"),
    [
        ({"llama.attention.key_length": (7, V.UINT32)}, "llama.attention.key_length 7", "rope.dimension_count is"),
        (
            {"llama.attention.key_length": DELETE, "llama.embedding_length": (18, V.UINT32)},
            "llama.embedding_length 18 / llama.attention.head_count 2",
            "rope.dimension_count is",
        ),
        ({"llama.rope.dimension_count": (10, V.UINT32)}, "llama.rope.dimension_count is 10", "key_length is"),
    ],
    ids=["an odd key_length", "an odd width per head", "a rotary part wider than the head"],
)
def test_the_rotary_refusal_names_the_key_at_fault(edit, named, not_named, tmp_path):
    for key in ("llama.rope.dimension_count",) if "llama.rope.dimension_count" not in edit else ():
        edit = {**edit, key: DELETE}  # the file says nothing of rotation: all of a head rotates
    result, message = outcome(write_tiny_gguf(tmp_path / "odd.gguf", edit), "GGUF")
    assert result == REFUSED
    assert named in message and not_named not in message, message


def _gguf_scalar(vtype):
    bits = {V.UINT8: 8, V.UINT16: 16, V.UINT32: 32, V.UINT64: 64, V.INT8: 8, V.INT16: 16, V.INT32: 32, V.INT64: 64}
    if vtype in (V.UINT8, V.UINT16, V.UINT32, V.UINT64):
        return st.one_of(st.integers(0, 64), st.integers(0, 2 ** bits[vtype] - 1))
    if vtype in bits:
        half = 2 ** (bits[vtype] - 1)
        return st.one_of(st.integers(-4, 64), st.integers(-half, half - 1))
    if vtype == V.FLOAT32:
        return st.floats(width=32)
    if vtype == V.FLOAT64:
        return st.floats()
    if vtype == V.BOOL:
        return st.booleans()
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


SCALAR_TYPES = [t for t in V if t != V.ARRAY]
SCALAR_KEYS = [k for k, (_, t) in FIELDS.items() if t != V.ARRAY]


@st.composite
def random_gguf_value(draw):
    key = draw(st.sampled_from(SCALAR_KEYS))
    vtype = draw(st.sampled_from(SCALAR_TYPES))
    return key, (draw(_gguf_scalar(vtype)), vtype)


@HYPOTHESIS
@given(edit=random_gguf_value())
def test_random_gguf_metadata_value(edit, tmp_path):
    key, value = edit
    outcome(write_tiny_gguf(tmp_path / f"random{next(_names)}.gguf", {key: value}), "GGUF")
    count("GGUF metadata random values (hypothesis) refused or loaded")


# --- Hugging Face safetensors folders ---------------------------------------------------------------

HF_INT_KEYS = [
    "vocab_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "max_position_embeddings",
    "head_dim",
    "sliding_window",
]
HF_FLOAT_KEYS = ["rms_norm_eps", "rope_theta", "partial_rotary_factor"]
HF_BOOL_KEYS = ["tie_word_embeddings", "attention_bias", "use_sliding_window"]
HF_OBJECT_KEYS = ["rope_parameters", "rope_scaling"]
# null (left out): refused when required, or when the default disagrees with the tensors (key/value heads
# default to the attention heads, 4, where the file has 2).
HF_REQUIRED = {"vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"}
HF_REQUIRED |= {"num_key_value_heads"}
# The base folder: tests.engine.tiny_models' "llama" (head_dim 16 as transformers writes it).
HF_BASE = {**COMMON, "num_key_value_heads": 2, "head_dim": 16}
LEGAL_HF = {key: _only(HF_BASE[key]) for key in HF_BASE if key != "max_position_embeddings"}
LEGAL_HF |= {
    "max_position_embeddings": lambda v: 1 <= v <= 2**24,
    "sliding_window": lambda v: 1 <= v <= 2**24,
    "rms_norm_eps": lambda v: 0 < v <= 1,
    "rope_theta": lambda v: 1 <= v <= 1e12,
    # the rotating part of a 16-feature head, int(16 * factor), must be even and at least 2
    "partial_rotary_factor": lambda v: 0 < v <= 1 and int(16 * v) % 2 == 0 and int(16 * v) >= 2,
}
NOT_NUMBERS = [("NaN", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("a string", "12"), ("true", True)]
NOT_NUMBERS += [("a list", [4]), ("an object", {"value": 4})]


def hf_numeric_edges(key: str):
    """(label, value, expected outcome): an integer key takes integers only, a real-valued one any number."""
    base = HF_BASE.get(key, 1)
    numbers = [("0", 0), ("-1", -1), ("1", 1), ("2", 2), ("2**31", 2**31), ("2**63 - 1", 2**63 - 1)]
    numbers += [("2**64", 2**64), ("10**30", 10**30), ("1.5", 1.5), ("0.5", 0.5), ("1e-300", 1e-300)]
    if key in HF_INT_KEYS:
        numbers += [("base + 1", base + 1), ("half", base // 2), ("twice", 2 * base), ("as a float", float(base))]
    for label, value in numbers:
        legal = isinstance(value, int) or key in HF_FLOAT_KEYS
        yield label, value, LOADED if legal and LEGAL_HF[key](value) else REFUSED
    yield from [(label, value, REFUSED) for label, value in NOT_NUMBERS]
    yield "null", None, REFUSED if key in HF_REQUIRED else LOADED


LINEAR = {"rope_type": "linear", "factor": 2.0}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
ROPE_OBJECTS = [
    ("a list", [], REFUSED),
    ("a string", "linear", REFUSED),
    ("linear", LINEAR, LOADED),
    ("linear, old spelling", {"type": "linear", "factor": 2.0}, LOADED),
    ("linear factor 1", {**LINEAR, "factor": 1}, LOADED),
    ("llama3", LLAMA3, LOADED),
    ("default", {"rope_type": "default"}, LOADED),
    ("linear without factor", {"rope_type": "linear"}, REFUSED),
    ("factor 0", {**LINEAR, "factor": 0}, REFUSED),
    ("factor NaN", {**LINEAR, "factor": math.nan}, REFUSED),
    ("factor a string", {**LINEAR, "factor": "2"}, REFUSED),
    ("llama3 high below low", {**LLAMA3, "high_freq_factor": 0.5}, REFUSED),
    ("llama3 original length 0", {**LLAMA3, "original_max_position_embeddings": 0}, REFUSED),
    ("yarn", {"rope_type": "yarn", "factor": 2.0}, REFUSED),
    ("rope_type a number", {"rope_type": 3}, REFUSED),
    ("theta 0", {"rope_type": "default", "rope_theta": 0}, REFUSED),
    ("theta NaN", {"rope_type": "default", "rope_theta": math.nan}, REFUSED),
    ("theta 10000", {"rope_type": "default", "rope_theta": 10000.0}, LOADED),
]


def hf_cases():
    """(key, label, config.json edit, expected outcome[, what a refusal names when not the key])."""
    for key in HF_INT_KEYS + HF_FLOAT_KEYS:
        for label, value, expect in hf_numeric_edges(key):
            if key == "sliding_window":
                yield key, label, {key: value, "use_sliding_window": True}, expect
            elif key in ("rope_theta", "partial_rotary_factor"):  # read at the top level only without rope_parameters
                yield key, label, {key: value, "rope_parameters": None}, expect
            else:
                yield key, label, {key: value}, expect
    for key in HF_BOOL_KEYS:
        for label, value in [("0", 0), ("1", 1), ("a string", "true"), ("a list", [True])]:
            yield key, label, {key: value}, REFUSED
        # attention_bias true asks for bias tensors the folder lacks; the other two are legal either way
        yield key, "true", {key: True}, REFUSED if key == "attention_bias" else LOADED, f"{key} true"
        yield key, "false", {key: False}, LOADED
    for key in HF_OBJECT_KEYS:
        for label, value, expect in ROPE_OBJECTS:
            if key == "rope_scaling" and "rope_theta" in value:  # transformers 4 keeps theta at the top level
                continue
            edit = {key: value} if key == "rope_parameters" else {key: value, "rope_parameters": None}
            yield key, label, edit, expect
    for label, value in [("unknown", "bert"), ("a number", 1), ("missing", None)]:
        yield "model_type", label, {"model_type": value}, REFUSED
    # legal, but the folder has none of GPT-2's keys: the first one read is named
    yield "model_type", "gpt2", {"model_type": "gpt2"}, REFUSED, "n_head is missing"


@pytest.fixture(scope="module")
def hf_base(tiny_models):
    folder, _ = tiny_models("llama")
    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in HF_BASE} == HF_BASE
    return folder, config


def hf_folder(base: Path, config: dict, edit: dict, target: Path) -> Path:
    """A folder of links to the base model's files, with ``config.json`` edited (None removes a key)."""
    target.mkdir()
    for f in base.iterdir():
        if f.name != "config.json":
            (target / f.name).symlink_to(f)
    edited = {**config, **edit}
    edited = {k: v for k, v in edited.items() if v is not None}
    (target / "config.json").write_text(json.dumps(edited))
    return target


HF_CASES = [(*c[:4], c[4] if len(c) > 4 else c[0]) for c in hf_cases()]


@pytest.mark.parametrize(
    ("key", "label", "edit", "expect", "named"), HF_CASES, ids=[f"{c[0]} {c[1]}" for c in HF_CASES]
)
def test_safetensors_config_edge_value(key, label, edit, expect, named, hf_base, tmp_path):
    folder, config = hf_base
    check(hf_folder(folder, config, edit, tmp_path / "model"), "safetensors", expect, named)
    count("safetensors config.json edge values refused or loaded as expected")
    figure("slowest safetensors config refusal or load (in process)", f"{SLOWEST['safetensors'] * 1000:.0f} ms")


JSON_VALUES = st.one_of(
    st.integers(-4, 300),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.sampled_from(["rope_type", "factor", "type", "rope_theta"]), st.integers(-1, 9), max_size=2),
)
HF_KEYS = HF_INT_KEYS + HF_FLOAT_KEYS + HF_BOOL_KEYS + HF_OBJECT_KEYS


@HYPOTHESIS
@given(key=st.sampled_from(HF_KEYS), value=JSON_VALUES)
def test_random_safetensors_config_value(key, value, hf_base, tmp_path):
    folder, config = hf_base
    outcome(hf_folder(folder, config, {key: value}, tmp_path / f"random{next(_names)}"), "safetensors")
    count("safetensors config.json random values (hypothesis) refused or loaded")
