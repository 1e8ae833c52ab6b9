"""Crafted bad safetensors folders: each refused with a ModelFileError naming the file, quickly."""

from __future__ import annotations

import json
import shutil
import struct
import time

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import ModelFileError
from engine.loading.loader import load_model
from tests.hardening import count


def raw_safetensors(header: bytes | dict, data: bytes = b"", length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory, tiny_models):
    folder, _ = tiny_models("llama")
    return folder


def clone(good, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(good, target)
    return target


def one_tensor_header(**override):
    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    entry.update(override)
    return {"model.norm.weight": entry}


CASES = {
    "header length 0": lambda: raw_safetensors(b"", length=0),
    "header length enormous": lambda: raw_safetensors(b"{}", length=2**62),
    "header past the end": lambda: raw_safetensors(b"{}", length=1000),
    "not JSON": lambda: raw_safetensors(b"\xff\xfe not json at all"),
    "JSON but not an object": lambda: raw_safetensors(b"[1, 2, 3]"),
    "offsets past the end": lambda: raw_safetensors(one_tensor_header(data_offsets=[0, 4096]), bytes(16)),
    "offsets reversed": lambda: raw_safetensors(one_tensor_header(data_offsets=[16, 0]), bytes(16)),
    "shape x dtype not the span": lambda: raw_safetensors(one_tensor_header(shape=[3, 3]), bytes(16)),
    "gap before the data": lambda: raw_safetensors(one_tensor_header(data_offsets=[8, 24]), bytes(24)),
    "overlapping tensors": lambda: raw_safetensors(
        {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
        },
        bytes(24),
    ),
    "unknown dtype": lambda: raw_safetensors(one_tensor_header(dtype="F128"), bytes(16)),
    "negative shape": lambda: raw_safetensors(one_tensor_header(shape=[-2, -2]), bytes(16)),
    "truncated file": lambda: raw_safetensors(one_tensor_header(), bytes(16))[:-5],
    "random bytes": lambda: bytes(range(256)) * 4,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_weight_file_is_refused(case, good_folder, tmp_path):
    folder = clone(good_folder, tmp_path)
    (folder / "model.safetensors").write_bytes(CASES[case]())
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError) as err:
        load_model(folder, device="cpu")
    assert time.perf_counter() - t0 < 2.0
    assert str(folder) in str(err.value)
    count("safetensors: crafted bad weight files refused")


def test_trailing_bytes_are_refused(good_folder, tmp_path):
    """Bytes after the last tensor: the file is not what its header says (safetensors rejects it)."""
    folder = clone(good_folder, tmp_path)
    with open(folder / "model.safetensors", "ab") as f:
        f.write(b"\x00garbage" * 100)
    with pytest.raises(ModelFileError, match="not fully covered"):
        load_model(folder, device="cpu")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "missing.safetensors", 7])
def test_shard_index_pointing_outside_or_missing(shard, good_folder, tmp_path):
    folder = clone(good_folder, tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.norm.weight": shard}}))
    with pytest.raises(ModelFileError, match="missing or outside the folder"):
        load_model(folder, device="cpu")


def test_remote_code_is_refused(good_folder, tmp_path):
    folder = clone(good_folder, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text("open('pwned', 'w')")
    with pytest.raises(ModelFileError, match="never runs code"):
        load_model(folder, device="cpu")
    assert not (tmp_path / "pwned").exists()


def test_tensor_missing_from_the_file(good_folder, tmp_path):
    folder = clone(good_folder, tmp_path)
    save_file({"model.norm.weight": torch.ones(64)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelFileError, match="num_hidden_layers 2 does not match the file, which has no layer"):
        load_model(folder, device="cpu")
