"""kill -9 during fine-tuning: a run killed (SIGKILL, no chance to clean up) right after a checkpoint
appeared, then resumed in a new process, ends with LoRA weights bit-identical to a run never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.finetune import latest_checkpoint
from tests.engine.finetune.test_finetune import _word_corpus

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def _child(folder, data, out, *extra) -> list[str]:
    cmd = [sys.executable, "-m", "tests.engine.finetune.finetune_child", str(folder), str(data), str(out), *extra]
    return cmd


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step-00000010"
    return load_file(str(ckpt / "trainable.safetensors"))


@pytest.mark.parametrize("kill_after", [2, 6])
def test_sigkill_then_resume_is_bit_identical(kill_after, tiny_models, tmp_path):
    folder, _ = tiny_models("llama")
    data = _word_corpus(tmp_path / "data", n_docs=6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    straight = subprocess.run(_child(folder, data, tmp_path / "a"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    assert "done finished 10" in straight.stdout

    victim = subprocess.Popen(
        _child(folder, data, tmp_path / "b", "--step-delay", "0.15"), cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            ckpt = latest_checkpoint(tmp_path / "b")
            if ckpt is not None and int(ckpt.name.split("-")[1]) >= kill_after:
                break
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)  # the marker is on disk; the next step is in flight
    finally:
        victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    killed_at = int(latest_checkpoint(tmp_path / "b").name.split("-")[1])
    assert kill_after <= killed_at < 10

    resumed = subprocess.run(
        _child(folder, data, tmp_path / "b", "--resume"), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {killed_at + 1}\n" in resumed.stdout and "done finished 10" in resumed.stdout
    assert f"step {killed_at}\n" not in resumed.stdout  # it continued, it did not start over

    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert a.keys() == b.keys() and all("lora_" in k for k in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    print(f"killed after checkpoint {killed_at}, resumed, {len(a)} LoRA tensors bit-identical")
