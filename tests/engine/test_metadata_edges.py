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
from engine.loader import load_model
from tests.engine.tiny_gguf import DELETE, base_metadata, write_tiny_gguf
from tests.hardening import count, figure

gguf = pytest.importorskip("gguf")
V = gguf.GGUFValueType

LIMIT_S = 1.0  # a refusal (or a load of these tiny files) from the call
SLOWEST = {"GGUF": 0.0, "safetensors": 0.0}
HYPOTHESIS = settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_names = itertools.count()


def outcome(path: Path, fmt: str) -> str:
    """ "refused" or "loaded" (and ran); anything else fails the test."""
    t0 = time.perf_counter()
    try:
        lm = load_model(path, device="cpu", dtype="float32", check_memory=False)
    except ModelFileError:
        result = "refused"
    else:
        result = "loaded"
    elapsed = time.perf_counter() - t0
    SLOWEST[fmt] = max(SLOWEST[fmt], elapsed)
    assert elapsed < LIMIT_S, f"{path.name}: {result} after {elapsed:.2f} s"
    if result == "loaded":
        with torch.no_grad():
            logits = lm.model(torch.tensor([[1, 3, 4, 5][: lm.context_length]]))
        assert torch.isfinite(logits).all(), f"{path.name}: loaded, but the logits are not finite"
    return result


# --- GGUF ------------------------------------------------------------------------------------------

REQUIRED_GGUF = {
    "general.architecture",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.layer_norm_rms_epsilon",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
}
FIELDS = base_metadata(gguf)
INT_KEYS = [k for k, (_, t) in FIELDS.items() if t == V.UINT32 and not k.startswith("tokenizer.")]
FLOAT_KEYS = [k for k, (_, t) in FIELDS.items() if t == V.FLOAT32]
STRING_KEYS = [k for k, (_, t) in FIELDS.items() if t == V.STRING]
TOKEN_ID_KEYS = ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]


def int_edges(base: int):
    """(label, (value, type[, element type]), must be refused) for an integer key."""
    yield from [
        ("0", (0, V.UINT32), True),
        ("1", (1, V.UINT32), False),
        ("base + 1", (base + 1, V.UINT32), False),
        ("base - 1", (base - 1, V.UINT32), False),
        ("twice", (2 * base, V.UINT32), False),
        ("the same as int64", (base, V.INT64), False),
        ("2**31", (2**31, V.UINT32), True),
        ("2**32 - 1", (2**32 - 1, V.UINT32), True),
        ("-1", (-1, V.INT32), True),
        ("-2**31", (-(2**31), V.INT32), True),
        ("2**63 - 1", (2**63 - 1, V.UINT64), True),
        ("2**64 - 1", (2**64 - 1, V.UINT64), True),
        ("-2**63", (-(2**63), V.INT64), True),
        ("a float", (float(base), V.FLOAT32), True),
        ("NaN", (math.nan, V.FLOAT32), True),
        ("a bool", (True, V.BOOL), True),
        ("a string", (str(base), V.STRING), True),
        ("an array", ([base, base], V.ARRAY, V.UINT32), True),
    ]


def float_edges(base: float):
    yield from [
        ("0", (0.0, V.FLOAT32), True),
        ("-1", (-1.0, V.FLOAT32), True),
        ("NaN", (math.nan, V.FLOAT32), True),
        ("inf", (math.inf, V.FLOAT32), True),
        ("-inf", (-math.inf, V.FLOAT32), True),
        ("1e38", (1e38, V.FLOAT32), True),
        ("1e308 as float64", (1e308, V.FLOAT64), True),
        ("the smallest float32", (1e-45, V.FLOAT32), False),
        ("1 as an integer", (1, V.UINT32), False),
        ("the same as float64", (base, V.FLOAT64), False),
        ("a bool", (False, V.BOOL), True),
        ("a string", (str(base), V.STRING), True),
        ("an array", ([base], V.ARRAY, V.FLOAT32), True),
    ]


def string_edges(must: bool):
    yield from [
        ("empty", ("", V.STRING), must),
        ("unknown", ("unknown", V.STRING), must),
        ("an integer", (1, V.UINT32), True),
        ("a bool", (True, V.BOOL), True),
        ("an array", (["llama"], V.ARRAY, V.STRING), True),
    ]


def gguf_cases():
    """(key, label, metadata edit, drop, must be refused)."""
    for key in INT_KEYS:
        for label, value, must in int_edges(FIELDS[key][0]):
            yield key, label, {key: value}, (), must
    for key in FLOAT_KEYS:
        for label, value, must in float_edges(FIELDS[key][0]):
            yield key, label, {key: value}, (), must
    for key in STRING_KEYS:
        for label, value, must in string_edges(key in ("general.architecture", "tokenizer.ggml.model")):
            yield key, label, {key: value}, (), must
    for key in TOKEN_ID_KEYS:
        for label, value, must in [("past the vocabulary", (2**32 - 1, V.UINT32), False), ("-1", (-1, V.INT32), False)]:
            yield key, label, {key: value}, (), must
        yield key, "a string", {key: ("1", V.STRING)}, (), True
    flag = "tokenizer.ggml.add_bos_token"
    yield flag, "an integer", {flag: (1, V.UINT8)}, (), True
    yield flag, "a string", {flag: ("true", V.STRING)}, (), True
    tokens = FIELDS["tokenizer.ggml.tokens"][0]
    more = {"tokenizer.ggml.tokens": (tokens + ["x", "y"], V.ARRAY), "tokenizer.ggml.token_type": DELETE}
    yield "tokenizer.ggml.tokens", "more tokens than embedding rows", more, (), True
    for key in FIELDS:
        yield key, "missing", {key: DELETE}, (), key in REQUIRED_GGUF
    yield "tensors", "a layer missing", {}, tuple(n for n in _layer_names(1)), True
    yield "tensors", "no token embeddings", {}, ("token_embd.weight",), True
    yield "tensors", "one projection missing", {}, ("blk.1.attn_k.weight",), True


def _layer_names(i: int) -> list[str]:
    from tests.engine.tiny_gguf import tensors

    return [n for n in tensors() if n.startswith(f"blk.{i}.")]


CASES = list(gguf_cases())


def test_the_base_file_loads(tmp_path):
    assert outcome(write_tiny_gguf(tmp_path / "base.gguf"), "GGUF") == "loaded"


@pytest.mark.parametrize(("key", "label", "edit", "drop", "must_refuse"), CASES, ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_gguf_edge_value(key, label, edit, drop, must_refuse, tmp_path):
    path = write_tiny_gguf(tmp_path / "edge.gguf", edit, drop)
    result = outcome(path, "GGUF")
    if must_refuse:
        assert result == "refused"
    count("GGUF metadata edge values refused or loaded")
    figure("slowest GGUF metadata refusal or load (in process)", f"{SLOWEST['GGUF'] * 1000:.0f} ms")


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
HF_REQUIRED = {"vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size"}
NOT_NUMBERS = [("NaN", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("a string", "12"), ("true", True)]
NOT_NUMBERS += [("a list", [4]), ("an object", {"value": 4})]


def hf_numeric_edges(key: str, base):
    edges = [("0", 0, True), ("-1", -1, True), ("1", 1, False), ("2**31", 2**31, key != "rope_theta")]
    edges += [("2**63 - 1", 2**63 - 1, True), ("2**64", 2**64, True), ("10**30", 10**30, True), ("1.5", 1.5, False)]
    edges += [(label, value, True) for label, value in NOT_NUMBERS]
    edges += [("null", None, key in HF_REQUIRED)]
    if isinstance(base, int) and not isinstance(base, bool):
        edges += [("base + 1", base + 1, False), ("twice", 2 * base, False), ("as a float", float(base), True)]
    return edges


LINEAR = {"rope_type": "linear", "factor": 2.0}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
ROPE_OBJECTS = [
    ("a list", [], True),
    ("a string", "linear", True),
    ("linear", LINEAR, False),
    ("linear, old spelling", {"type": "linear", "factor": 2.0}, False),
    ("llama3", LLAMA3, False),
    ("linear without factor", {"rope_type": "linear"}, True),
    ("factor 0", {**LINEAR, "factor": 0}, True),
    ("factor NaN", {**LINEAR, "factor": math.nan}, True),
    ("factor a string", {**LINEAR, "factor": "2"}, True),
    ("llama3 high below low", {**LLAMA3, "high_freq_factor": 0.5}, True),
    ("llama3 original length 0", {**LLAMA3, "original_max_position_embeddings": 0}, True),
    ("yarn", {"rope_type": "yarn", "factor": 2.0}, True),
    ("rope_type a number", {"rope_type": 3}, True),
    ("theta 0", {"rope_type": "default", "rope_theta": 0}, True),
    ("theta NaN", {"rope_type": "default", "rope_theta": math.nan}, True),
]


def hf_cases(config: dict):
    for key in HF_INT_KEYS + HF_FLOAT_KEYS:
        for label, value, must in hf_numeric_edges(key, config.get(key, 1)):
            if key == "sliding_window":
                yield key, label, {key: value, "use_sliding_window": True}, must and label != "null"
            elif key in ("rope_theta", "partial_rotary_factor"):  # read at the top level only without rope_parameters
                yield key, label, {key: value, "rope_parameters": None}, must
            else:
                yield key, label, {key: value}, must
    for key in HF_BOOL_KEYS:
        for label, value in [("0", 0), ("1", 1), ("a string", "true"), ("a list", [True])]:
            yield key, label, {key: value}, True
        yield key, "true", {key: True}, False
    for key in HF_OBJECT_KEYS:
        for label, value, must in ROPE_OBJECTS:
            if key == "rope_scaling" and "rope_theta" in value:  # transformers 4 keeps theta at the top level
                continue
            edit = {key: value} if key == "rope_parameters" else {key: value, "rope_parameters": None}
            yield key, label, edit, must
    for label, value in [("gpt2", "gpt2"), ("unknown", "bert"), ("a number", 1), ("missing", None)]:
        yield "model_type", label, {"model_type": value}, True


@pytest.fixture(scope="module")
def hf_base(tiny_models):
    folder, _ = tiny_models("llama")
    return folder, json.loads((folder / "config.json").read_text())


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


def _hf_case_list():
    from tests.engine.tiny_models import COMMON

    config = {**COMMON, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 500.0}
    return list(hf_cases({**config, "head_dim": 16, "sliding_window": 8, "partial_rotary_factor": 1.0}))


HF_CASES = _hf_case_list()


@pytest.mark.parametrize(("key", "label", "edit", "must_refuse"), HF_CASES, ids=[f"{c[0]} {c[1]}" for c in HF_CASES])
def test_safetensors_config_edge_value(key, label, edit, must_refuse, hf_base, tmp_path):
    folder, config = hf_base
    result = outcome(hf_folder(folder, config, edit, tmp_path / "model"), "safetensors")
    if must_refuse:
        assert result == "refused"
    count("safetensors config.json edge values refused or loaded")
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
