"""`ember-cli` on the default model: info, generate (--json, --stats), chat, and clean errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from engine.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json(capsys):
    code, out, _ = run(capsys, "info", "--json")
    info = json.loads(out)
    assert code == 0
    assert (info["architecture"], info["layers"], info["vocab_size"]) == ("llama", 30, 49152)
    assert info["weight_types"]["Q4_1"] == 210 and info["context_length"] == 8192


def test_generate_json_and_stats(capsys):
    code, out, err = run(
        capsys,
        "generate",
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
        "--stats",
    )
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert 1 <= len(events) <= 12
    assert "Paris" in "".join(e["text"] for e in events)
    for e in events:
        assert set(e) == {"id", "text", "logprob", "top"} and e["logprob"] <= 0
        assert e["top"][0]["id"] == e["id"] and len(e["top"]) == 5
    assert "prefill" in err and "decode" in err and "peak memory" in err and "load" in err


def test_generate_plain_text_with_system_and_seed(capsys):
    args = (
        "generate",
        "--system",
        "Answer in one word.",
        "--prompt",
        "Name a fruit.",
        "--seed",
        "3",
        "--temperature",
        "0.9",
        "--max-tokens",
        "8",
    )
    code, first, _ = run(capsys, *args)
    assert code == 0 and first.strip()
    assert run(capsys, *args)[1] == first


def test_chat_reads_turns_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is the capital of France?\n/quit\n"))
    code, out, err = run(capsys, "chat", "--temperature", "0", "--max-tokens", "30")
    assert code == 0
    assert "Paris" in out and "Ember chat" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--prompt", "hi", "--top-p", "1.5"], "top_p must be in"),
        (["generate", "--prompt", "hi", "--temperature", "-1"], "temperature must be in"),
        (["info", "/etc/hostname"], "not a GGUF file"),
        (["info", "/nonexistent/model.gguf"], "no such file"),
    ],
)
def test_bad_input_is_one_line_without_traceback(argv, message):
    proc = subprocess.run([sys.executable, "-m", "engine.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert message in proc.stderr and proc.stderr.startswith("ember-cli: error:")


def test_bad_flag_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "generate", "--prompt", "x", "--dtype", "int3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "invalid choice: 'int3'" in proc.stderr


def test_bad_gguf_exits_cleanly(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (2**63).to_bytes(8, "little") * 2)
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "info", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr
