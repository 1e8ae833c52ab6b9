"""Fine-tuning: LoRA parity with PEFT, merged export, kill-and-resume, NaN stop, and learning on the
default model."""

from __future__ import annotations

import json
import random

import pytest
import torch

from engine.finetune import (
    FinetuneConfig,
    TrainingDiverged,
    build_dataset,
    finetune,
    latest_checkpoint,
    load_peft_adapter,
)
from engine.finetune.lora import add_lora, lora_layers, lora_state_dict, merge_lora
from engine.loading.loader import load_model


def _word_corpus(folder, n_docs=4, seed=0):
    folder.mkdir(exist_ok=True)
    r = random.Random(seed)
    for i in range(n_docs):
        paragraphs = [" ".join(f"w{r.randrange(3, 90)}" for _ in range(12)) + " ." for _ in range(4)]
        (folder / f"doc{i}.txt").write_text("\n\n".join(paragraphs))
    return folder


IDS = torch.tensor([[1, 5, 9, 20, 33, 40, 7, 81, 3]])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_adapter_loads_in_peft_with_the_same_logits(tiny_models, tmp_path, arch):
    peft = pytest.importorskip("peft")
    folder, ref = tiny_models(arch)
    lm = load_model(folder, dtype="float32")
    cfg = FinetuneConfig(seq_len=32, steps=4, lr=1e-2, batch_size=2, dropout=0.0)
    result = finetune(lm, [_word_corpus(tmp_path / "data")], tmp_path / "out", cfg)
    assert result.status == "finished"
    assert result.adapter_dir is not None and (result.adapter_dir / "adapter_config.json").is_file()
    with torch.no_grad():
        ours = lm.model(IDS)
        base = load_model(folder, dtype="float32").model(IDS)
    assert (ours - base).abs().max() > 1e-3  # training changed something
    tuned = peft.PeftModel.from_pretrained(ref, str(result.adapter_dir)).eval()
    with torch.no_grad():
        theirs = tuned(IDS).logits
        tuned.unload()  # leave the shared reference model as it was
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, ours, atol=2e-5, rtol=1e-4)

    again = load_model(folder, dtype="float32")
    load_peft_adapter(again.model, tmp_path / "out")  # the run folder is accepted too
    with torch.no_grad():
        torch.testing.assert_close(again.model(IDS), ours, atol=2e-5, rtol=1e-4)


def test_lora_targets_slices_of_fused_projections(tiny_models):
    folder, _ = tiny_models("llama")
    model = load_model(folder, dtype="float32").model
    layers = add_lora(model, rank=2, alpha=4, targets=["q_proj", "v_proj"])
    wqkv = model.layers[0].attn.wqkv
    assert [s.short for s in wqkv.slices] == ["q_proj", "v_proj"]
    assert all(type(m).__name__ == "LoRALinear" for m in layers)
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.normal_()
    delta = wqkv.delta_weight()
    q, kv = 64, 32
    assert delta[q : q + kv].abs().sum() == 0  # k rows untouched
    assert delta[:q].abs().sum() > 0 and delta[q + kv :].abs().sum() > 0
    with torch.no_grad():
        before = model(IDS)
        merge_lora(model)
        merge_lora(model)  # idempotent
        torch.testing.assert_close(model(IDS), before, atol=1e-5, rtol=1e-5)
    assert not any("lora_" in n for n in model.state_dict())


class _Killed(Exception):
    pass


def test_kill_and_resume_is_bit_identical(tiny_models, tmp_path):
    folder, _ = tiny_models("llama")
    data = build_dataset(
        [_word_corpus(tmp_path / "data")], load_model(folder, dtype="float32").tokenizer, seq_len=24, val_fraction=0.2
    )
    cfg = FinetuneConfig(seq_len=24, steps=6, lr=5e-3, batch_size=2, grad_accum=2, dropout=0.1, checkpoint_every=2)

    torch.manual_seed(0)
    straight = load_model(folder, dtype="float32")
    finetune(straight, data, tmp_path / "a", cfg, export=False)

    def die_at_3(p):
        if p.step == 3:  # after step 3, whose checkpoint (at 4) never comes
            raise _Killed

    torch.manual_seed(0)
    with pytest.raises(_Killed):
        finetune(load_model(folder, dtype="float32"), data, tmp_path / "b", cfg, progress=die_at_3, export=False)
    assert latest_checkpoint(tmp_path / "b").name == "step-00000002"
    torch.manual_seed(999)  # the RNG state must come from the checkpoint, not from luck
    resumed = load_model(folder, dtype="float32")
    result = finetune(resumed, data, tmp_path / "b", resume=True, export=False)
    assert result.step == 6 and [h["step"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    a, b = lora_state_dict(straight.model), lora_state_dict(resumed.model)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ckpt = latest_checkpoint(tmp_path / "b")
    assert (ckpt / "COMPLETE").is_file()
    from safetensors import safe_open

    with safe_open(str(ckpt / "trainable.safetensors"), "pt") as f:
        assert all("lora_" in k for k in f.keys())  # a LoRA checkpoint holds only adapter weights


def test_nan_loss_stops_with_a_clear_message(tiny_models, tmp_path):
    folder, _ = tiny_models("llama")
    lm = load_model(folder, dtype="float32")
    lm.model.layers[0].register_forward_hook(lambda m, i, o: o * float("nan"))
    cfg = FinetuneConfig(seq_len=24, steps=3, batch_size=2)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 1.*learning rate"):
        finetune(lm, [_word_corpus(tmp_path / "data")], tmp_path / "out", cfg)
    assert latest_checkpoint(tmp_path / "out") is None


def test_cancel_between_steps_writes_a_checkpoint(tiny_models, tmp_path):
    folder, _ = tiny_models("llama")
    lm = load_model(folder, dtype="float32")
    seen = []

    def progress(p):
        seen.append(p)

    result = finetune(
        lm,
        [_word_corpus(tmp_path / "data")],
        tmp_path / "out",
        FinetuneConfig(seq_len=24, steps=10, batch_size=2),
        progress=progress,
        should_stop=lambda: len(seen) >= 2,
    )
    assert result.status == "cancelled" and result.step == 2
    assert latest_checkpoint(tmp_path / "out").name == "step-00000002"
    assert seen[-1].total_steps == 10 and seen[-1].lr > 0 and seen[-1].tokens_per_second > 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "cancelled"


def test_full_finetune_changes_all_weights(tiny_models, tmp_path):
    folder, _ = tiny_models("llama")
    lm = load_model(folder, dtype="float32")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    result = finetune(
        lm, [_word_corpus(tmp_path / "data")], tmp_path / "out", FinetuneConfig(method="full", seq_len=24, steps=2)
    )
    assert result.adapter_dir is None and (result.merged_dir / "model.safetensors").is_file()
    changed = [k for k, v in lm.model.state_dict().items() if not torch.equal(v, before[k])]
    assert "layers.0.attn.wqkv.weight" in changed and "tok_emb.weight" in changed


FACTS = [
    "The planet Zorblax orbits a violet star called Mirella.",
    "Zorblax has three moons named Tiko, Vessa and Plum.",
    "The capital city of Zorblax is Quendara, built on a frozen lake.",
    "People on Zorblax drink a bitter tea brewed from glowmoss.",
    "The oldest library on Zorblax is the Hall of Ninefold Echoes.",
    "The currency of Zorblax is the copper drel.",
]
HELD_OUT = [  # phrased differently from anything in the corpus
    "Quendara is the capital of Zorblax.",
    "Tiko, Vessa and Plum are the moons of Zorblax.",
    "On Zorblax you pay with the copper drel.",
]


def _logprob(lm, sentences) -> float:
    total = 0.0
    with torch.no_grad():
        for s in sentences:
            ids = torch.tensor([lm.tokenizer.encode(s)])
            logp = torch.log_softmax(lm.model(ids[:, :-1]), -1)
            total += float(logp.gather(-1, ids[:, 1:, None]).sum())
    return total


@pytest.mark.slow
def test_lora_on_the_default_model_learns_invented_facts(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for k in range(4):
        (folder / f"notes{k}.md").write_text("\n\n".join(FACTS[(k + j) % len(FACTS)] for j in range(len(FACTS))))
    lm = load_model(dtype="float32")
    base = _logprob(lm, HELD_OUT)
    cfg = FinetuneConfig(seq_len=48, steps=16, lr=2e-3, batch_size=2, rank=8, val_fraction=0.25, eval_every=100)
    result = finetune(lm, [folder], tmp_path / "out", cfg, export=False)
    tuned = _logprob(lm, HELD_OUT)
    print(
        f"val loss {result.val_loss_before:.3f} -> {result.val_loss_after:.3f} "
        f"(ppl {result.perplexity_before:.1f} -> {result.perplexity_after:.1f}); "
        f"held-out log-prob {base:.1f} -> {tuned:.1f}"
    )
    assert result.val_loss_after < result.val_loss_before - 0.5
    assert tuned > base + 10


def test_cli_finetune_then_generate_with_the_adapter(tiny_models, tmp_path, capsys):
    from engine.cli import main

    folder, _ = tiny_models("llama")
    data = _word_corpus(tmp_path / "data")
    (data / "junk.txt").write_bytes(b"\x00\x01binary")
    out = tmp_path / "run"
    argv = ["finetune", str(data), "--out", str(out), "--model", str(folder), "--steps", "3", "--seq-len", "24"]
    assert main([*argv, "--lr", "1e-2", "--batch-size", "2", "--rank", "4", "--val-fraction", "0.25"]) == 0
    captured = capsys.readouterr()
    assert "Settings chosen from your files (flags override them):" in captured.err
    assert "junk.txt: skipped: binary data" in captured.err
    assert "step 3/3" in captured.err and "tok/s" in captured.err
    assert "validation loss" in captured.out and "perplexity" in captured.out
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    prompt = ["--prompt", "w5 w9 w20", "--max-tokens", "4", "--temperature", "0", "--json"]
    assert main(["generate", str(folder), *prompt, "--adapter", str(out / "adapter")]) == 0
    tuned = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert main(["generate", str(out / "merged"), *prompt]) == 0
    merged = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert merged == tuned and len(tuned) == 4  # the adapter and the merged folder give the same tokens
    assert main(["finetune", str(data), "--out", str(tmp_path / "none"), "--model", str(folder), "--resume"]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err


def test_cli_refuses_folders_with_nothing_to_train_on_before_planning(tiny_models, tmp_path, capsys):
    from engine.cli import main

    folder, _ = tiny_models("llama")
    empty, unreadable = tmp_path / "empty", tmp_path / "unreadable"
    empty.mkdir()
    unreadable.mkdir()
    (unreadable / "a.txt").write_bytes(b"\x00\x01\x02binary")
    (unreadable / "scan.pdf").write_bytes(b"%PDF-1.4 not really")
    for data, reason in ((empty, "no files found"), (unreadable, "a.txt: binary data")):
        out = tmp_path / f"out-{data.name}"
        assert main(["finetune", str(data), "--out", str(out), "--model", str(folder)]) == 1
        err = capsys.readouterr().err
        assert f"nothing to train on ({reason}" in err
        assert "Settings chosen" not in err and "Estimate" not in err  # no plan for nothing
        assert not out.exists()


def test_an_adapter_on_the_packed_default_model(tmp_path, capsys):
    """An adapter trained on the float32 copy loads onto the default packed model (bf16 with int4
    projections): the dense layers take it merged, the packed ones run it beside them, and the tuned
    logits follow the float32 tuned model's. `generate --adapter` on the default model used to crash
    (`'Int4Linear' object has no attribute 'weight'`)."""
    from engine.cli import main
    from engine.finetune import save_peft_adapter
    from engine.finetune.lora import LoRALinear
    from engine.model.int4_linear import Int4Linear

    exact = load_model(dtype="float32")
    ids = torch.tensor([exact.encode_prompt("The capital of France is")])
    with torch.no_grad():
        exact_base = exact.model(ids)[0, -1]
        torch.manual_seed(0)  # the adapter's A matrices: the same whatever ran before in this process
        add_lora(exact.model, rank=4, alpha=8, dropout=0.0)
        for _, layer in lora_layers(exact.model):
            layer.lora_B.normal_(0, 0.06, generator=torch.Generator().manual_seed(0))
        exact_tuned = exact.model(ids)[0, -1]
    save_peft_adapter(exact, tmp_path / "adapter")

    packed = load_model()
    assert any(isinstance(m, Int4Linear) for m in packed.model.modules()), "the default model is not packed"
    with torch.no_grad():
        packed_base = packed.model(ids)[0, -1]
        load_peft_adapter(packed.model, tmp_path / "adapter")
        assert any(isinstance(m, LoRALinear) and isinstance(m.base, Int4Linear) for m in packed.model.modules())
        packed_tuned = packed.model(ids)[0, -1]
    shift = (exact_tuned - exact_base).abs().max()
    assert shift > 2.0, "the adapter should move the logits well past the packed model's rounding"
    # The packed model's own error against float32 (about 1) stays; the adapter's shift is carried over.
    assert (packed_tuned - exact_tuned).abs().max() < 0.25 * shift + (packed_base - exact_base).abs().max()
    assert (packed_tuned - exact_tuned).abs().max() < (packed_base - exact_tuned).abs().max()

    prompt = ["--prompt", "Say hi.", "--chat", "--max-tokens", "3", "--temperature", "0"]
    assert main(["generate", *prompt, "--adapter", str(tmp_path / "adapter")]) == 0
    assert capsys.readouterr().out.strip()


def test_recall_questions_are_asked_before_and_after_and_kept_with_the_run(tiny_models, tmp_path):
    folder, _ = tiny_models("llama")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "club.md").write_text(
        "The Copperfield Rowing Club was started by Agnes Whitlow in 1903. Its boathouse holds fourteen boats today."
    )
    lm = load_model(folder, dtype="float32")
    cfg = FinetuneConfig(seq_len=24, steps=2, batch_size=2, rank=4, val_fraction=0, lessons=True, probes=2)
    result = finetune(lm, [notes], tmp_path / "out", cfg, export=False)
    assert [(b.probe.expected, a.probe.expected) for b, a in result.recall.pairs] == [
        ("Agnes Whitlow", "Agnes Whitlow"),
        ("fourteen boats", "fourteen boats"),
    ]
    assert all(isinstance(b.reply, str) and isinstance(a.reply, str) for b, a in result.recall.pairs)
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved["recall"] == result.recall.to_json() and saved["config"]["lessons"] is True

    stopped = finetune(load_model(folder, dtype="float32"), [notes], tmp_path / "cut", cfg, should_stop=lambda: True)
    assert stopped.status == "cancelled" and stopped.recall is None  # no "after" for a run that did not finish
