"""Compiled decoding (engine.compiled.step, engine.compiled.library): the AOTInductor step gives the eager
model's logits within bf16 tolerance and the same greedy reply on a packed tiny model, writes the KV
cache as eager does, is built once per model shape in a child process and loaded from the cache after,
leaves every other pass eager, and a missing compiler or a stop request is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.compiled.library import compile_decoding, package_path
from engine.compiled.step import structure_key, unavailable_reason
from engine.errors import CompileUnavailableError
from engine.finetune.lora import add_lora
from engine.generation.generate import Generation
from engine.generation.sampling import SamplerSettings
from engine.loading.loader import load_model
from engine.model.decode_attention import DecodeAttention
from tests.engine.tiny_models import ARCHS, VOCAB
from tests.engine.weights.test_gguf_architectures import write_gguf

gguf = pytest.importorskip("gguf")
needs_compiler = pytest.mark.skipif(
    unavailable_reason(torch.device("cpu")) is not None, reason=str(unavailable_reason(torch.device("cpu")))
)


@pytest.fixture(scope="module")
def tiny_q4(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("compiled") / "tiny.gguf"
    write_gguf("llama", tiny_models("llama")[1], path, qtype=gguf.GGMLQuantizationType.Q4_1)
    return path


@pytest.fixture(scope="module")
def packed_pair(tiny_q4, tmp_path_factory):
    """The same packed tiny llama twice: one left eager, one compiled (built into a fresh cache)."""
    cache = tmp_path_factory.mktemp("compile-cache")
    eager = load_model(tiny_q4, device="cpu", cache_dir=cache)
    compiled = load_model(tiny_q4, device="cpu", cache_dir=cache)
    stages: list[str] = []
    compile_decoding(compiled, stages.append, cache_dir=cache)
    assert len(stages) == 1 and "Compiling" in stages[0]  # built, the first time
    return eager, compiled, cache


def _counting(model) -> tuple[list[int], object]:
    """The positions of the steps that reach the compiled step from now on, and that step."""
    calls: list[int] = []
    step = model.compiled_step
    model.compiled_step = lambda m, tokens, start: calls.append(start) or step(m, tokens, start)
    return calls, step


def _reply(lm, prompt, n=20) -> list[int]:
    gen = Generation(lm.model, lm.tokenizer, prompt, SamplerSettings.greedy(), max_tokens=n, ignore_eos=True)
    return [e.id for e in gen]


@needs_compiler
def test_compiled_steps_give_the_eager_logits_cache_and_reply(packed_pair):
    eager, compiled, _ = packed_pair
    calls, step = _counting(compiled.model)
    prompt = torch.randint(3, VOCAB, (24,), generator=torch.Generator().manual_seed(2)).tolist()
    replies = [_reply(lm, prompt) for lm in (eager, compiled)]
    assert replies[0] == replies[1]
    assert calls == list(range(24, 24 + 19))  # every decode step went through the compiled step
    with torch.inference_mode():  # the next position's logits and the cache rows it wrote, against eager
        a, b = (lm.model(torch.tensor([[replies[0][-1]]]), 24 + 19)[0, -1] for lm in (eager, compiled))
        for ce, cc in zip(eager.model.caches, compiled.model.caches, strict=True):
            assert torch.allclose(ce.k[:, :, : 24 + 20].float(), cc.k[:, :, : 24 + 20].float(), atol=0.02)
            assert torch.allclose(ce.v[:, :, : 24 + 20].float(), cc.v[:, :, : 24 + 20].float(), atol=0.02)
    assert (a - b).abs().max() <= 0.02 * a.abs().max()
    calls.clear()
    with torch.no_grad():  # other one-token passes (comparisons, explanations) stay eager
        compiled.model(torch.tensor([[5]]), 30)
    with torch.inference_mode():
        compiled.model(torch.tensor([[5]]), 0)
    assert calls == []
    compiled.model.compiled_step = step


@needs_compiler
def test_one_library_serves_every_cache_size_and_a_batch_falls_back_to_eager(packed_pair):
    eager, compiled, _ = packed_pair
    calls, step = _counting(compiled.model)
    prompt = torch.randint(3, VOCAB, (5,), generator=torch.Generator().manual_seed(3)).tolist()
    for capacity in (8, 64, eager.config.max_seq_len):
        outs = []
        for lm in (eager, compiled):
            lm.model.setup_cache(capacity)
            with torch.inference_mode():
                lm.model(torch.tensor([prompt]), 0)
                outs.append(lm.model(torch.tensor([[7]]), 5)[0, -1])
        assert (outs[0] - outs[1]).abs().max() <= 0.02 * outs[0].abs().max()
    assert calls == [5, 5, 5] and compiled.model.compiled_step is not None
    for lm in (eager, compiled):  # a batch of two is not what was compiled: eager answers it
        lm.model.setup_cache(16, batch=2)
        with torch.inference_mode():
            lm.model(torch.tensor([prompt, prompt]), 0)
            outs.append(lm.model(torch.tensor([[7], [8]]), 5))
    assert torch.equal(outs[-2], outs[-1])
    compiled.model.compiled_step = step


@needs_compiler
def test_a_model_changed_after_compiling_decodes_eagerly_not_from_stale_inputs(tiny_q4, packed_pair):
    """The library checks none of its inputs: a model whose weights changed type or number since (here
    the final norm's weight made bf16) must not reach it. The check runs once a cache: the next reply is
    eager."""
    _, _, cache = packed_pair
    lm = load_model(tiny_q4, device="cpu", cache_dir=cache)
    compile_decoding(lm, cache_dir=cache)
    lm.model.norm.weight.data = lm.model.norm.weight.data.to(torch.bfloat16)
    prompt = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    lm.model.setup_cache(16)
    with torch.inference_mode():
        lm.model(prompt, 0)
        out = lm.model(torch.tensor([[7]]), 5)
        assert lm.model.compiled_step is None
        assert torch.equal(out, lm.model.run(torch.tensor([[7]]), 5))  # the eager step, rerun


@needs_compiler
def test_a_layer_swapped_in_mid_conversation_is_not_skipped_by_the_compiled_step(tiny_q4, packed_pair):
    """Replies reuse the KV cache; a layer put in between two (the fine-tune panel's tuned layers, say)
    must take effect at the next step, not be bypassed by the library compiled without it."""
    _, _, cache = packed_pair
    lm = load_model(tiny_q4, device="cpu", cache_dir=cache)
    compile_decoding(lm, cache_dir=cache)
    model = lm.model
    model.setup_cache(16)
    with torch.inference_mode():
        model(torch.tensor([[3, 4, 5]]), 0)
        model(torch.tensor([[6]]), 3)
        assert model.compiled_step is not None

        class Doubled(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return 2 * self.inner(x)

        model.layers[0].mlp.w_down = Doubled(model.layers[0].mlp.w_down)
        out = model(torch.tensor([[7]]), 4)
        assert model.compiled_step is None
        assert torch.equal(out, model.run(torch.tensor([[7]]), 4))


@needs_compiler
def test_a_damaged_library_in_the_cache_is_built_again(tiny_q4, packed_pair):
    _, compiled, cache = packed_pair
    path = package_path(compiled.model, cache)
    good = path.read_bytes()
    try:
        path.write_bytes(good[: len(good) // 3])  # a write cut short
        lm = load_model(tiny_q4, device="cpu", cache_dir=cache)
        stages: list[str] = []
        compile_decoding(lm, stages.append, cache_dir=cache)
        assert stages and lm.model.compiled_step is not None and path.stat().st_size > len(good) // 3
    finally:
        path.write_bytes(good)


@needs_compiler
def test_the_library_is_built_once_and_loaded_from_the_cache(packed_pair, tiny_q4, monkeypatch):
    _, compiled, cache = packed_pair
    assert package_path(compiled.model, cache).is_file()
    again = load_model(tiny_q4, device="cpu", cache_dir=cache)

    def no_child(*args, **kwargs):
        raise AssertionError("a cached library was built again")

    monkeypatch.setattr(subprocess, "Popen", no_child)
    stages: list[str] = []
    seconds = compile_decoding(again, stages.append, cache_dir=cache)
    assert stages == [] and seconds < 2 and again.model.compiled_step is not None
    assert "decoding compiled" in again.precision
    add_lora(again.model, rank=2)  # LoRA layers change the module tree: back to eager decoding
    assert again.model.compiled_step is None and "decoding compiled" not in again.precision


def test_the_key_follows_shapes_and_types_not_weight_values(tiny_models, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf("llama", tiny_models("llama")[1], path)
    a = load_model(path, device="cpu", dtype="float32").model
    b = load_model(path, device="cpu", dtype="float32").model
    with torch.no_grad():
        b.tok_emb.weight.add_(1.0)
    assert structure_key(a) == structure_key(b)
    assert structure_key(a) != structure_key(load_model(path, device="cpu", dtype="bfloat16").model)
    other = tmp_path / "qwen2.gguf"
    write_gguf("qwen2", tiny_models("qwen2")[1], other)
    assert structure_key(a) != structure_key(load_model(other, device="cpu", dtype="float32").model)
    c, d = (load_model(path, device="cpu", dtype="bfloat16").model for _ in range(2))
    for model, kernel in ((c, "sdpa"), (d, "sdpa_f32")):
        model.set_decode_attention(DecodeAttention(kernel))
    assert structure_key(c) != structure_key(d)  # a library is built for the decode kernel it runs


@needs_compiler
def test_the_compiled_step_decodes_over_a_float32_cache_as_eager(tiny_q4, tmp_path):
    """Where this machine chose float32 decode attention (engine.model.decode_attention) the cache is float32,
    and the step is built for it: the same reply, logits and cache rows as the eager model with that choice."""
    pair = [load_model(tiny_q4, device="cpu", cache_dir=tmp_path) for _ in range(2)]
    for lm in pair:
        lm.model.set_decode_attention(DecodeAttention("sdpa_f32"))
    eager, compiled = pair
    compile_decoding(compiled, cache_dir=tmp_path)
    calls, _ = _counting(compiled.model)
    prompt = torch.randint(3, VOCAB, (24,), generator=torch.Generator().manual_seed(5)).tolist()
    replies = [_reply(lm, prompt) for lm in pair]
    assert replies[0] == replies[1] and calls == list(range(24, 24 + 19))
    assert {c.k.dtype for lm in pair for c in lm.model.caches} == {torch.float32}
    with torch.inference_mode():
        a, b = (lm.model(torch.tensor([[replies[0][-1]]]), 24 + 19)[0, -1] for lm in pair)
    for ce, cc in zip(eager.model.caches, compiled.model.caches, strict=True):
        assert torch.allclose(ce.k[:, :, :44], cc.k[:, :, :44], atol=0.02)
        assert torch.allclose(ce.v[:, :, :44], cc.v[:, :, :44], atol=0.02)
    assert (a - b).abs().max() <= 0.02 * a.abs().max()


def _running_in_session(sid: int) -> list[int]:
    """Processes of session ``sid`` that are not zombies (which a container's first process may never reap)."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            running.append(int(stat.parent.name))
    return running


@needs_compiler
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_stop_request_kills_the_build_and_its_compiler_and_leaves_no_files(tiny_q4, tmp_path, monkeypatch):
    children: list[subprocess.Popen] = []
    real = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: children.append(real(*a, **k)) or children[-1])
    lm = load_model(tiny_q4, device="cpu", cache_dir=tmp_path)
    t0 = time.monotonic()
    with pytest.raises(CompileUnavailableError, match="stopped"):  # mid-build: after 5 s of it
        compile_decoding(lm, cache_dir=tmp_path, should_stop=lambda: time.monotonic() - t0 > 5)
    assert time.monotonic() - t0 < 7
    assert lm.model.compiled_step is None
    assert _running_in_session(children[0].pid) == []  # no process of the child's is left, g++ included
    assert list((tmp_path / "compiled").iterdir()) == []  # no library, no half-written one, no spec


@needs_compiler
def test_a_build_removes_what_a_killed_build_left_and_keeps_a_running_ones(tiny_q4, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "compiled"
    folder.mkdir()
    left = [folder / f"0123abcd.{gone.pid}.spec.json", folder / f"0123abcd.{gone.pid}.tmp.pt2"]
    running = [folder / f"4567ef00.{os.getpid()}.spec.json", folder / "4567ef00.pt2"]  # another build's, a library
    for f in left + running:
        f.write_text("x")
    lm = load_model(tiny_q4, device="cpu", cache_dir=tmp_path)
    with pytest.raises(CompileUnavailableError, match="stopped"):
        compile_decoding(lm, cache_dir=tmp_path, should_stop=lambda: True)
    assert sorted(folder.iterdir()) == sorted(running)


def test_a_missing_compiler_is_a_clear_error(tiny_q4, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    reason = unavailable_reason(torch.device("cpu"))
    assert reason and "no-such-compiler-here" in reason
    lm = load_model(tiny_q4, device="cpu", cache_dir=tmp_path)
    with pytest.raises(CompileUnavailableError, match="C\\+\\+ compiler"):
        compile_decoding(lm, cache_dir=tmp_path)
    assert lm.model.compiled_step is None


@needs_compiler
def test_loading_a_built_library_does_not_import_the_compiler(packed_pair, tiny_q4):
    """What keeps compiled decoding's memory near eager's: only the library is loaded, not Inductor."""
    _, _, cache = packed_pair
    script = (
        "import sys\n"
        "from engine.compiled.library import compile_decoding\n"
        "from engine.loading.loader import load_model\n"
        f"lm = load_model({str(tiny_q4)!r}, device='cpu', cache_dir={str(cache)!r})\n"
        f"compile_decoding(lm, cache_dir={str(cache)!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch._inductor', 'torch._dynamo', 'sympy')))[:3])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@needs_compiler
def test_the_cli_compiles_on_request_and_replies_as_eager(capsys, tiny_q4, tmp_path, monkeypatch):
    """``--compile`` builds; without the flag a step already built is used (here, the one just built), and
    none is built when there is none; ``--no-compile`` never uses one."""
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    argv = ("generate", str(tiny_q4), "--prompt", "a b c", "--temperature", "0", "--max-tokens", "8", "--stats")
    code, eager_out, err = _cli(capsys, *argv)
    assert code == 0 and "(eager)" in err and not (tmp_path / "compiled").exists()  # nothing built unasked
    code, out, err = _cli(capsys, *argv, "--compile")
    assert code == 0 and out == eager_out
    assert "compiled decoding ready in" in err and "(compiled)" in err
    code, out, err = _cli(capsys, *argv)
    assert code == 0 and out == eager_out and "(compiled)" in err and "ready in" not in err
    code, out, err = _cli(capsys, *argv, "--no-compile")
    assert code == 0 and out == eager_out and "(eager)" in err


@needs_compiler
def test_ember_cli_compile_builds_the_step_that_generate_then_uses(capsys, tiny_q4, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    code, out, err = _cli(capsys, "compile", str(tiny_q4))
    library = Path(out.strip())
    assert code == 0 and library.is_file() and library.parent == tmp_path / "compiled"
    assert "compiled decoding ready in" in err
    code, out, err = _cli(capsys, "compile", str(tiny_q4))  # built: loaded, not built again
    assert code == 0 and Path(out.strip()) == library and "Compiling" not in err
    argv = ("generate", str(tiny_q4), "--prompt", "a b c", "--temperature", "0", "--max-tokens", "4", "--stats")
    code, out, err = _cli(capsys, *argv)
    assert code == 0 and "(compiled)" in err


def test_the_cli_says_why_it_cannot_compile(capsys, tiny_q4, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    code, out, err = _cli(capsys, "generate", str(tiny_q4), "--prompt", "a b", "--compile")
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "no-such-compiler-here" in err and "Traceback" not in err


@needs_compiler
@pytest.mark.parametrize("arch", [*ARCHS, "smollm3", "gemma2"])
def test_every_architecture_decodes_compiled_as_eager(arch, tiny_models, tmp_path):
    """Rotary variants, q/k norms, biases, tied heads, GPT-2's learned positions, and a sliding window
    (steps past it decode eagerly); of the later families SmolLM3's rope-less layer and Gemma 2's post-norms,
    soft-caps and window on alternate layers (Granite's and OLMo 2's parts are scalars and norms of kinds
    these cover): one-token logits and cache rows against the eager model's."""
    folder = tiny_models(arch)[0]
    eager, compiled = (load_model(folder, device="cpu", dtype="bfloat16") for _ in range(2))
    compile_decoding(compiled, cache_dir=tmp_path)
    calls, _ = _counting(compiled.model)
    prompt = torch.randint(3, VOCAB, (1, 4), generator=torch.Generator().manual_seed(5))
    steps = torch.randint(3, VOCAB, (1, 16), generator=torch.Generator().manual_seed(6))
    outs = []
    for lm in (eager, compiled):
        lm.model.setup_cache(32)
        with torch.inference_mode():
            lm.model(prompt, 0)
            outs.append(torch.stack([lm.model(steps[:, i : i + 1], 4 + i)[0, -1] for i in range(16)]))
    assert (outs[0] - outs[1]).abs().max() <= 0.02 * outs[0].abs().max()
    for ce, cc in zip(eager.model.caches, compiled.model.caches, strict=True):
        # bf16 rounds to 2^-8 of a value: Gemma's keys reach 6 (its scaled embeddings), one unit there is 0.03
        assert torch.allclose(ce.k[:, :, :20].float(), cc.k[:, :, :20].float(), atol=0.02, rtol=2**-7)
    window = compiled.config.sliding_window
    assert calls == list(range(4, min(20, window or 20)))  # compiled until a window would mask


@needs_compiler
def test_the_registration_hooks_exist_only_while_a_compiled_step_does(packed_pair, tiny_q4):
    """Importing the compiled step registers none of torch's process-wide hooks; the first step loaded
    registers them, and the last one dropped (set to None, or its model freed) removes them. In a fresh
    process: this one's fixtures hold steps."""
    _, _, cache = packed_pair
    script = (
        "import gc\n"
        "from torch.nn.modules import module as m\n"
        "from engine.compiled import step\n"
        "from engine.compiled.library import compile_decoding\n"
        "from engine.loading.loader import load_model\n"
        "kinds = (m._global_module_registration_hooks, m._global_parameter_registration_hooks,\n"
        "         m._global_buffer_registration_hooks)\n"
        "def ours():\n"
        "    return sum(any(h is step._count_registration for h in d.values()) for d in kinds)\n"
        "counts = [ours()]\n"
        f"a, b = (load_model({str(tiny_q4)!r}, device='cpu', cache_dir={str(cache)!r}) for _ in range(2))\n"
        f"compile_decoding(a, cache_dir={str(cache)!r})\n"
        "counts.append(ours())\n"
        f"compile_decoding(b, cache_dir={str(cache)!r})\n"
        "a.model.compiled_step = None\n"
        "counts.append(ours())\n"
        "del b\n"
        "gc.collect()\n"
        "counts.append(ours())\n"
        f"compile_decoding(a, cache_dir={str(cache)!r})\n"
        "counts.append(ours())\n"
        "print(counts)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[0, 3, 3, 0, 3]"


@pytest.mark.parametrize("arch", ["gemma3", "qwen3moe"])
def test_families_the_step_cannot_take_are_refused_by_name(arch, tiny_models, tmp_path):
    """Gemma 3's local layers rotate by a second rope table, which the compiled step does not take; a mixture
    of experts runs the experts its tokens chose, which export cannot keep symbolic."""
    lm = load_model(tiny_models(arch)[0], device="cpu", dtype="bfloat16")
    with pytest.raises(CompileUnavailableError, match=f"does not support {arch}"):
        compile_decoding(lm, cache_dir=tmp_path)
    assert lm.model.compiled_step is None
