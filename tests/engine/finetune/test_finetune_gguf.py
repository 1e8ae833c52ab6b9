"""The merged GGUF a fine-tuning run writes: Ember loads it back with the tuned model's logits (exactly in
f32, within rounding in f16 / q8_0), and transformers' GGUF loader reads it as the same model (so it
follows llama.cpp's conventions: names, q/k permutation, metadata)."""

from __future__ import annotations

import pytest
import torch

from engine.finetune import FinetuneConfig, finetune
from engine.finetune.gguf_export import GGUFExportUnsupported, save_merged_gguf
from engine.loading.loader import load_model
from tests.engine.finetune.test_finetune import IDS, _word_corpus

gguf = pytest.importorskip("gguf")


@pytest.fixture
def gguf_base(tiny_models, tmp_path):
    """arch -> a tiny random model written as GGUF the llama.cpp way."""
    from tests.engine.weights.test_gguf_architectures import write_gguf

    def make(arch: str):
        _, reference = tiny_models(arch)
        path = tmp_path / f"{arch}-base.gguf"
        write_gguf(arch, reference, path)
        return path

    return make


def _tune(path, tmp_path, **cfg):
    lm = load_model(path, device="cpu", dtype="float32")
    with torch.no_grad():
        base = lm.model(IDS)
    config = FinetuneConfig(seq_len=24, steps=4, lr=2e-2, batch_size=2, dropout=0.0, **cfg)
    result = finetune(lm, [_word_corpus(tmp_path / "data")], tmp_path / "out", config)
    with torch.no_grad():
        tuned = lm.model(IDS)
    assert (tuned - base).abs().max() > 1e-2  # training moved the logits well past the tolerances below
    return lm, result, tuned


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gpt2"])
def test_lora_run_writes_a_gguf_ember_loads_with_the_tuned_logits(arch, gguf_base, tmp_path):
    lm, result, tuned = _tune(gguf_base(arch), tmp_path, gguf="f32")
    assert result.gguf_path == tmp_path / "out" / "model.gguf" and result.gguf_skipped is None
    back = load_model(result.gguf_path, device="cpu", dtype="float32")
    assert back.config == lm.config and back.weight_types == {
        "F32": len(gguf.GGUFReader(str(result.gguf_path)).tensors)
    }
    assert back.tokenizer.encode("w5 w9") == lm.tokenizer.encode("w5 w9")
    with torch.no_grad():
        torch.testing.assert_close(back.model(IDS), tuned, atol=1e-5, rtol=1e-5)


def test_full_run_gguf_matches_too(gguf_base, tmp_path):
    _, result, tuned = _tune(gguf_base("llama"), tmp_path, method="full", gguf="f32")
    back = load_model(result.gguf_path, device="cpu", dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(back.model(IDS), tuned, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("outtype", "ggml", "atol"), [("f16", "F16", 5e-3), ("q8_0", "Q8_0", 6e-2)])
def test_smaller_types_stay_within_rounding(outtype, ggml, atol, gguf_base, tmp_path):
    lm, _, tuned = _tune(gguf_base("llama"), tmp_path, gguf="none")
    assert not (tmp_path / "out" / "model.gguf").exists()
    path = save_merged_gguf(lm, tmp_path / f"m-{outtype}.gguf", outtype)
    back = load_model(path, device="cpu", dtype="float32")
    assert back.weight_types[ggml] == 2 * 7 + 2  # every matrix (7 a layer, embedding, output); norms F32
    with torch.no_grad():
        err = (back.model(IDS) - tuned).abs().max().item()
    print(f"{outtype}: max logit error {err:.2e}")
    assert err <= atol


def test_transformers_reads_the_gguf_as_the_same_model(gguf_base, tmp_path):
    from transformers import AutoModelForCausalLM

    _, result, tuned = _tune(gguf_base("llama"), tmp_path, gguf="f32")
    theirs = AutoModelForCausalLM.from_pretrained(
        result.gguf_path.parent, gguf_file=result.gguf_path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(IDS).logits, tuned, atol=1e-4, rtol=1e-4)


def test_a_base_model_from_a_hf_folder_skips_the_gguf_with_a_reason(tiny_models, tmp_path):
    folder, _ = tiny_models("llama")
    lm = load_model(folder, device="cpu", dtype="float32")
    result = finetune(lm, [_word_corpus(tmp_path / "data")], tmp_path / "out", FinetuneConfig(seq_len=24, steps=1))
    assert result.gguf_path is None and "convert_hf_to_gguf" in result.gguf_skipped
    assert (result.merged_dir / "model.safetensors").is_file()
    with pytest.raises(GGUFExportUnsupported):
        save_merged_gguf(lm, tmp_path / "x.gguf")


def test_cli_writes_model_gguf_that_generates_like_the_adapter(gguf_base, tmp_path, capsys):
    import json

    from engine.cli import main

    base = gguf_base("llama")
    out = tmp_path / "run"
    argv = ["finetune", str(_word_corpus(tmp_path / "data")), "--out", str(out), "--model", str(base)]
    assert main([*argv, "--steps", "3", "--seq-len", "24", "--lr", "2e-2", "--batch-size", "2", "--gguf", "f32"]) == 0
    assert f"merged GGUF: {out / 'model.gguf'}" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["outputs"]["gguf"] == str(out / "model.gguf")
    prompt = ["--prompt", "w5 w9 w20", "--max-tokens", "6", "--temperature", "0", "--json", "--dtype", "float32"]
    assert main(["generate", str(base), *prompt, "--adapter", str(out / "adapter")]) == 0
    tuned = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert main(["generate", str(out / "model.gguf"), *prompt]) == 0
    from_gguf = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert from_gguf == tuned and len(tuned) == 6
