"""The compiled decoding steps a bundle ships (engine.compiled.prebuilt): built for an instruction-set level
rather than this CPU (no instruction of a wider level in the code), found by this CPU's level and the
chosen attention kernel, loaded where nothing can be compiled, decoding as the eager model does; looked
for only in a bundle."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from engine.compiled import prebuilt
from engine.compiled.library import build_in_child, compile_decoding
from engine.compiled.step import unavailable_reason
from engine.errors import CompileUnavailableError
from engine.generation.generate import Generation
from engine.generation.sampling import SamplerSettings
from engine.loading.loader import load_model
from engine.model.decode_attention import DecodeAttention
from tests.engine.tiny_models import VOCAB
from tests.engine.weights.test_gguf_architectures import write_gguf

gguf = pytest.importorskip("gguf")
needs_avx2_compiler = pytest.mark.skipif(
    unavailable_reason(torch.device("cpu")) is not None or not prebuilt.levels_buildable(),
    reason="needs a C++ compiler and an x86 CPU with AVX2",
)
# Instructions of AVX-512 (any zmm register), its bf16 conversions and dot products, and VNNI's.
BEYOND_AVX512 = ("vcvtne2ps2bf16", "vdpbf16ps", "vpdpbusd")
WIDER = {"AVX2": ("zmm", *BEYOND_AVX512), "AVX512": BEYOND_AVX512}
VECTORS = {"AVX2": "ymm", "AVX512": "zmm"}


@pytest.fixture(scope="module")
def shipped(tiny_models, tmp_path_factory):
    """A packed tiny llama and a folder holding its AVX2 step for the float32 attention kernel, built as
    `make package` builds the default model's."""
    root = tmp_path_factory.mktemp("prebuilt")
    path = root / "tiny.gguf"
    write_gguf("llama", tiny_models("llama")[1], path, qtype=gguf.GGMLQuantizationType.Q4_1)
    lm = load_model(path, device="cpu", cache_dir=root)
    lm.model.set_decode_attention(DecodeAttention("sdpa_f32"))
    folder = root / "compiled"
    library = folder / f"{prebuilt.key(lm.model, 'AVX2')}.pt2"
    build_in_child(lm.model, library, root, lambda: False, level="AVX2", code=prebuilt.CODE)
    return path, folder, library, root


def _reply(lm, prompt) -> list[int]:
    gen = Generation(lm.model, lm.tokenizer, prompt, SamplerSettings.greedy(), max_tokens=16, ignore_eos=True)
    return [e.id for e in gen]


@needs_avx2_compiler
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
@pytest.mark.parametrize("level", ["AVX2", "AVX512"])
def test_a_level_build_holds_no_wider_instruction(level, shipped, tmp_path):
    """On this CPU (AVX-512 with bf16 and VNNI, here) Inductor would use all it has; a level's build may not."""
    path, _, library, root = shipped
    if level not in prebuilt.levels_buildable():
        pytest.skip(f"this CPU cannot run {level} code")
    if level != "AVX2":
        lm = load_model(path, device="cpu", cache_dir=root)
        lm.model.set_decode_attention(DecodeAttention("sdpa_f32"))
        library = tmp_path / f"{prebuilt.key(lm.model, level)}.pt2"
        build_in_child(lm.model, library, root, lambda: False, level=level, code=prebuilt.CODE)
    with zipfile.ZipFile(library) as z:
        objects = [n for n in z.namelist() if n.endswith(".so")]
        assert objects
        z.extractall(tmp_path, objects)
    code = "\n".join(
        subprocess.run(["objdump", "-d", str(tmp_path / n)], capture_output=True, text=True, check=True).stdout
        for n in objects
    )
    assert VECTORS[level] in code  # vectorised at its width
    assert not [word for word in WIDER[level] if word in code]


@needs_avx2_compiler
def test_the_shipped_step_loads_without_a_compiler_and_decodes_as_eager(shipped, monkeypatch):
    path, folder, library, root = shipped
    monkeypatch.setattr(prebuilt, "level", lambda: "AVX2")  # this CPU taken for an AVX2 one
    monkeypatch.setenv("CXX", "no-such-compiler-here")  # as in a bundle: nothing can be compiled
    eager, lm = (load_model(path, device="cpu", cache_dir=root) for _ in range(2))
    for m in (eager, lm):
        m.model.set_decode_attention(DecodeAttention("sdpa_f32"))
    assert prebuilt.find(lm.model, folder) == library
    compile_decoding(lm, cache_dir=root, prebuilt_dir=folder)
    assert lm.model.compiled_step is not None
    calls = []
    step = lm.model.compiled_step
    lm.model.compiled_step = lambda m, tokens, start: calls.append(start) or step(m, tokens, start)
    prompt = torch.randint(3, VOCAB, (20,), generator=torch.Generator().manual_seed(8)).tolist()
    assert _reply(lm, prompt) == _reply(eager, prompt)
    assert calls == list(range(20, 20 + 15))  # every step after the prompt through the shipped library


@needs_avx2_compiler
def test_no_shipped_step_for_another_kernel_or_level_and_none_outside_a_bundle(shipped, monkeypatch):
    path, folder, _, root = shipped
    lm = load_model(path, device="cpu", cache_dir=root)
    lm.model.set_decode_attention(DecodeAttention("sdpa"))  # the kernel this machine might choose instead
    monkeypatch.setattr(prebuilt, "level", lambda: "AVX2")
    assert prebuilt.find(lm.model, folder) is None
    lm.model.set_decode_attention(DecodeAttention("sdpa_f32"))
    monkeypatch.setattr(prebuilt, "level", lambda: "AVX512")
    assert prebuilt.find(lm.model, folder) is None
    monkeypatch.setattr(prebuilt, "level", lambda: None)  # a CPU of neither level (an ARM one, say)
    assert prebuilt.find(lm.model, folder) is None
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(CompileUnavailableError, match="C\\+\\+ compiler"):
        compile_decoding(lm, cache_dir=root)  # from source: the bundle's folder is not looked in
    assert prebuilt.bundled_dir() is None and not prebuilt.shipped_here()
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(folder.parent), raising=False)
    monkeypatch.setattr(prebuilt, "level", lambda: "AVX2")
    assert prebuilt.bundled_dir() == folder and prebuilt.shipped_here()


@needs_avx2_compiler
def test_without_build_a_missing_step_is_an_error_not_a_build(shipped, tmp_path):
    path, _, _, root = shipped
    lm = load_model(path, device="cpu", cache_dir=root)
    with pytest.raises(CompileUnavailableError, match="no compiled decoding step is built"):
        compile_decoding(lm, cache_dir=tmp_path, build=False)
    assert not (tmp_path / "compiled").exists() and lm.model.compiled_step is None
