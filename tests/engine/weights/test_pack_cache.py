"""The weight cache: the second load of a file comes from it with identical logits; a changed file, a
damaged cache entry or an unwritable cache directory each fall back to repacking from the file."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch

from engine.loading.loader import load_model
from engine.weights import pack_cache
from engine.weights.pack_cache import KEEP_ENTRIES, PackCache
from tests.engine.tiny_models import VOCAB
from tests.engine.weights.test_gguf_architectures import write_gguf

gguf = pytest.importorskip("gguf")
TOKENS = torch.randint(3, VOCAB, (1, 16), generator=torch.Generator().manual_seed(7))


def _logits(lm) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model(TOKENS)


@pytest.fixture
def q4_file(tiny_models, tmp_path):
    path = tmp_path / "model.gguf"
    write_gguf("llama", tiny_models("llama")[1], path, qtype=gguf.GGMLQuantizationType.Q4_1)
    return path


def test_the_second_load_comes_from_the_cache_with_identical_logits(q4_file, tmp_path):
    first = load_model(q4_file, device="cpu", cache_dir=tmp_path / "c")
    assert not first.from_cache and PackCache(tmp_path / "c").entry(q4_file).is_file()
    second = load_model(q4_file, device="cpu", cache_dir=tmp_path / "c")
    assert second.from_cache
    assert torch.equal(_logits(first), _logits(second))


def test_the_exact_mode_neither_reads_nor_writes_the_cache(q4_file, tmp_path):
    lm = load_model(q4_file, device="cpu", dtype="float32", cache_dir=tmp_path / "c")
    assert not lm.from_cache and not (tmp_path / "c").exists()


def test_a_same_size_rewrite_with_the_old_mtime_is_repacked_not_served_stale(tiny_models, tmp_path, monkeypatch):
    # Edges far smaller than the file, so only the samples between them can see the new weights.
    monkeypatch.setattr(pack_cache, "EDGE_BYTES", 256)
    _, reference = tiny_models("llama")
    path, cache = tmp_path / "model.gguf", tmp_path / "c"
    write_gguf("llama", reference, path, qtype=gguf.GGMLQuantizationType.Q4_1)
    load_model(path, device="cpu", cache_dir=cache)
    stat = path.stat()
    changed = copy.deepcopy(reference)
    with torch.no_grad():  # one tensor in the middle of the file: the edges stay as they were
        changed.model.layers[0].mlp.down_proj.weight.mul_(-1.5)
    write_gguf("llama", changed, path, qtype=gguf.GGMLQuantizationType.Q4_1)
    assert path.stat().st_size == stat.st_size  # same metadata, same shapes: same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reloaded = load_model(path, device="cpu", cache_dir=cache)
    # the same attention kernel as the cache's (timed once per cache directory: on a busy CPU the timing of a
    # tiny shape can choose the other one, which rounds differently)
    (tmp_path / "other").mkdir()
    shutil.copy(cache / "decode_attention.json", tmp_path / "other")
    fresh = load_model(path, device="cpu", cache_dir=tmp_path / "other")
    assert not reloaded.from_cache
    assert torch.equal(_logits(reloaded), _logits(fresh))
    assert load_model(path, device="cpu", cache_dir=cache).from_cache  # the entry was rewritten


def test_an_entry_from_another_cpu_instruction_set_is_not_used(q4_file, tmp_path, monkeypatch):
    load_model(q4_file, device="cpu", cache_dir=tmp_path / "c")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "OTHER")
    assert not load_model(q4_file, device="cpu", cache_dir=tmp_path / "c").from_cache


def test_a_change_to_the_packing_code_invalidates_the_entry(q4_file, tmp_path, monkeypatch):
    """No version number to remember to bump: the key covers the code that packs."""
    from engine.weights import pack_cache

    load_model(q4_file, device="cpu", cache_dir=tmp_path / "c")
    assert load_model(q4_file, device="cpu", cache_dir=tmp_path / "c").from_cache
    sources = tmp_path / "engine"
    for pattern in pack_cache.PACKING_SOURCES:
        for source in pack_cache.ENGINE.glob(pattern):
            copy = sources / source.relative_to(pack_cache.ENGINE)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(source.read_bytes())
    (sources / "gguf" / "int4_groups.py").write_text((sources / "gguf" / "int4_groups.py").read_text() + "\n# edit\n")
    monkeypatch.setattr(pack_cache, "ENGINE", sources)
    pack_cache.packing_code_digest.cache_clear()
    try:
        assert not load_model(q4_file, device="cpu", cache_dir=tmp_path / "c").from_cache
    finally:
        pack_cache.packing_code_digest.cache_clear()


def test_a_touched_model_file_invalidates_the_entry(q4_file, tmp_path):
    load_model(q4_file, device="cpu", cache_dir=tmp_path / "c")
    os.utime(q4_file, ns=(q4_file.stat().st_atime_ns, q4_file.stat().st_mtime_ns + 10**9))
    assert not load_model(q4_file, device="cpu", cache_dir=tmp_path / "c").from_cache


def test_a_damaged_cache_entry_is_ignored_and_replaced(q4_file, tmp_path, caplog):
    cache = tmp_path / "c"
    expected = _logits(load_model(q4_file, device="cpu", cache_dir=cache))
    entry = PackCache(cache).entry(q4_file)
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    lm = load_model(q4_file, device="cpu", cache_dir=cache)
    assert not lm.from_cache and torch.equal(_logits(lm), expected)
    assert "unreadable weight cache" in caplog.text
    assert load_model(q4_file, device="cpu", cache_dir=cache).from_cache


def test_an_unwritable_cache_directory_only_costs_the_cache(q4_file, tmp_path, caplog):
    blocker = tmp_path / "c"
    blocker.write_text("a file where the cache directory would go")
    lm = load_model(q4_file, device="cpu", cache_dir=blocker)
    assert not lm.from_cache and torch.isfinite(_logits(lm)).all()
    assert "could not write the weight cache" in caplog.text


def test_only_the_most_recent_entries_are_kept(q4_file, tmp_path):
    cache = PackCache(tmp_path / "c")
    files = []
    for i in range(KEEP_ENTRIES + 2):
        copy = tmp_path / f"m{i}.gguf"
        copy.write_bytes(q4_file.read_bytes())
        load_model(copy, device="cpu", cache_dir=tmp_path / "c")
        files.append(copy)
    kept = {p.name for p in cache.directory.glob("*.safetensors")}
    assert kept == {cache.entry(f).name for f in files[-KEEP_ENTRIES:]}
