"""A full disk while a checkpoint is written: a clear error, the previous checkpoint intact (and
still the one `latest_checkpoint` finds), nothing half-written left behind, and once there is room
again the run resumes and ends bit-identical to one that never hit the fault."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors import SafetensorError

import engine.finetune.train as train
from engine.finetune import CheckpointWriteError, FinetuneConfig, build_dataset, finetune, latest_checkpoint
from engine.finetune.lora import lora_state_dict
from engine.loading.loader import load_model
from tests.engine.finetune.test_finetune import _word_corpus

CFG = FinetuneConfig(seq_len=24, steps=6, lr=5e-3, batch_size=2, dropout=0.1, checkpoint_every=2)


def _full_disk_at(monkeypatch, step: int, error: Exception) -> list[str]:
    """safetensors' writer fails (after writing some bytes) for the checkpoint of ``step``."""
    real, failed = train.save_file, []

    def save_file(tensors, path, *a, **k):
        if f"step-{step:08d}" in str(path) and path.endswith("optimizer.safetensors"):
            with open(path, "wb") as f:
                f.write(b"\0" * 100)  # a torn file, as a real full disk leaves
            failed.append(path)
            raise error
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(train, "save_file", save_file)
    return failed


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        ),
    ],
    ids=["OSError", "safetensors"],
)
def test_disk_full_during_a_checkpoint(error, tiny_models, tmp_path, monkeypatch):
    folder, _ = tiny_models("llama")
    data = build_dataset(
        [_word_corpus(tmp_path / "data")], load_model(folder, dtype="float32").tokenizer, seq_len=24, val_fraction=0.2
    )
    torch.manual_seed(0)
    straight = load_model(folder, dtype="float32")
    finetune(straight, data, tmp_path / "a", CFG, export=False)

    failed = _full_disk_at(monkeypatch, 4, error)
    out = tmp_path / "b"
    with pytest.raises(CheckpointWriteError) as caught:
        finetune(load_model(folder, dtype="float32"), data, out, CFG, export=False)
    assert failed
    message = str(caught.value)
    assert "could not write checkpoint step-00000004" in message and "the disk is full" in message
    assert "previous checkpoint step-00000002 is intact" in message and "resume" in message
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]  # no torn temp folder
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step-00000002" and (ckpt / "COMPLETE").is_file()
    assert train.json.loads((ckpt / "state.json").read_text())["step"] == 2

    monkeypatch.undo()  # space freed
    torch.manual_seed(123)
    resumed = load_model(folder, dtype="float32")
    result = finetune(resumed, data, out, resume=True, export=False)
    assert result.status == "finished" and result.step == 6
    a, b = lora_state_dict(straight.model), lora_state_dict(resumed.model)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_other_write_errors_say_what_happened(tiny_models, tmp_path, monkeypatch):
    folder, _ = tiny_models("llama")
    _full_disk_at(monkeypatch, 2, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(CheckpointWriteError, match="Permission denied.*no earlier checkpoint"):
        finetune(
            load_model(folder, dtype="float32"), [_word_corpus(tmp_path / "data")], tmp_path / "out", CFG, export=False
        )
    assert latest_checkpoint(tmp_path / "out") is None
