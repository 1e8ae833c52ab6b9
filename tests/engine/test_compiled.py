"""Compiled decoding (engine.model.compiled): one-token steps through torch.compile give the eager
model's logits within bf16 tolerance and the same greedy reply, on a packed tiny model; LoRA layers send
the model back to eager decoding; a missing compiler is a clear error."""

from __future__ import annotations

import pytest
import torch

from engine.cli import main
from engine.errors import CompileUnavailableError
from engine.finetune.lora import add_lora
from engine.generate import Generation
from engine.loader import load_model
from engine.model.compiled import compile_decoding, unavailable_reason, warm_up
from engine.sampling import SamplerSettings
from tests.engine.test_gguf_architectures import write_gguf
from tests.engine.tiny_models import VOCAB

gguf = pytest.importorskip("gguf")
needs_compiler = pytest.mark.skipif(
    unavailable_reason(torch.device("cpu")) is not None, reason=str(unavailable_reason(torch.device("cpu")))
)


@pytest.fixture(scope="module")
def packed_pair(tiny_models, tmp_path_factory):
    """The same packed tiny llama twice: one left eager, one compiled."""
    folder = tmp_path_factory.mktemp("compiled")
    path = folder / "tiny.gguf"
    write_gguf("llama", tiny_models("llama")[1], path, qtype=gguf.GGMLQuantizationType.Q4_1)
    eager = load_model(path, device="cpu", cache_dir=folder / "cache")
    compiled = load_model(path, device="cpu", cache_dir=folder / "cache")
    compile_decoding(compiled.model)
    return eager, compiled


@needs_compiler
def test_compiled_steps_give_the_eager_logits_and_reply(packed_pair):
    eager, compiled = packed_pair
    seconds = warm_up(compiled.model)
    assert seconds > 0 and compiled.model.caches is None  # the scratch cache is not left behind
    calls = []
    step = compiled.model.compiled_step
    compiled.model.compiled_step = lambda model, tokens, start: calls.append(start) or step(model, tokens, start)
    prompt = torch.randint(3, VOCAB, (24,), generator=torch.Generator().manual_seed(2)).tolist()
    replies = []
    for lm in (eager, compiled):
        gen = Generation(lm.model, lm.tokenizer, prompt, SamplerSettings.greedy(), max_tokens=20, ignore_eos=True)
        with torch._dynamo.config.patch(error_on_recompile=True):  # the warm-up compiled all a reply needs
            replies.append([e.id for e in gen])
    assert replies[0] == replies[1]
    assert calls == list(range(24, 24 + 19))  # every decode step went through the compiled graph
    with torch.inference_mode():  # the last position's logits, compiled against eager
        a, b = (lm.model(torch.tensor([[replies[0][-1]]]), 24 + 19)[0, -1] for lm in (eager, compiled))
    assert (a - b).abs().max() <= 0.02 * a.abs().max()
    calls.clear()
    with torch.no_grad():  # other one-token passes (comparisons, explanations) stay eager
        compiled.model(torch.tensor([[5]]), 30)
    with torch.inference_mode():
        compiled.model(torch.tensor([[5]]), 0)
    assert calls == []


@needs_compiler
def test_a_model_whose_kv_heads_match_the_warm_up_cache_does_not_recompile(tmp_path):
    """torch.compile gives equal sizes one symbol: a scratch cache as long as some model dimension
    would tie the two, and the first reply would recompile for the real cache's length."""
    from engine.config import ModelConfig
    from engine.model import Transformer

    cfg = ModelConfig(
        arch="llama",
        vocab_size=64,
        n_embd=64,
        n_layer=1,
        n_head=8,
        n_kv_head=8,
        head_dim=8,
        intermediate_size=64,
        max_seq_len=512,
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    compile_decoding(model)
    warm_up(model)
    model.setup_cache(256)
    with torch.inference_mode(), torch._dynamo.config.patch(error_on_recompile=True):
        model(torch.tensor([[1, 2, 3]]), 0)
        for pos in (3, 4, 100, 255):
            model(torch.tensor([[4]]), pos)


@needs_compiler
def test_lora_layers_send_the_model_back_to_eager_decoding(tiny_models, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf("llama", tiny_models("llama")[1], path)
    lm = load_model(path, device="cpu", dtype="float32")
    compile_decoding(lm.model)
    assert lm.model.compiled_step is not None
    add_lora(lm.model, rank=2)
    assert lm.model.compiled_step is None


def test_a_missing_compiler_is_a_clear_error(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    reason = unavailable_reason(torch.device("cpu"))
    assert reason and "no-such-compiler-here" in reason
    path = tmp_path / "tiny.gguf"
    write_gguf("llama", tiny_models("llama")[1], path)
    lm = load_model(path, device="cpu", dtype="float32")
    with pytest.raises(CompileUnavailableError, match="C\\+\\+ compiler"):
        compile_decoding(lm.model)
    assert lm.model.compiled_step is None


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@needs_compiler
def test_the_cli_compiles_on_request_and_replies_as_eager(capsys, tiny_models, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf("llama", tiny_models("llama")[1], path, qtype=gguf.GGMLQuantizationType.Q4_1)
    argv = ("generate", str(path), "--prompt", "a b c", "--temperature", "0", "--max-tokens", "8")
    code, eager_out, _ = _cli(capsys, *argv)
    assert code == 0
    code, out, err = _cli(capsys, *argv, "--compile")
    assert code == 0 and out == eager_out
    assert "compiled the decoding step in" in err


def test_the_cli_says_why_it_cannot_compile(capsys, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    path = tmp_path / "tiny.gguf"
    write_gguf("llama", tiny_models("llama")[1], path)
    code, out, err = _cli(capsys, "generate", str(path), "--prompt", "a b", "--compile")
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "no-such-compiler-here" in err and "Traceback" not in err
