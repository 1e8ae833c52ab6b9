"""Ember's remote-model client against OpenAI-compatible servers that are not Ember's, each started on
loopback by the test as a subprocess: list the models, a streamed reply, a stop string, a stop mid-stream,
and a second turn on the same server.

- ``transformers serve`` (Hugging Face's server, FastAPI + uvicorn) on a tiny random Llama saved into the
  test's folder with its own small BPE tokenizer, fully offline: runs wherever the dev extra is installed.
- llama.cpp's server (``llama-cpp-python[server]``) on the default model: skipped when it is not
  installed (it compiles llama.cpp, so CI does not install it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from engine.generation.sampling import SamplerSettings
from engine.remote import RemoteClient

STARTUP_DEADLINE = 60.0  # seconds for a server to answer /v1/models (imports torch, loads a model)
QUESTION = [{"role": "user", "content": "Write a short poem about the sea."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _server(argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``argv`` (a server listening on 127.0.0.1:``port``), wait until it lists its models, yield
    its base URL; always kill it afterwards."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{argv[2]} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{argv[2]} not ready in {STARTUP_DEADLINE:g} s:\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    """Terminate the server (one process: uvicorn runs in it), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _stop_string(text: str) -> tuple[str, int]:
    """A piece of ``text`` from its second half whose first occurrence is not at the start: (piece, where)."""
    for k in range(len(text) // 2, len(text) - 2):
        piece = text[k : k + 3]
        if piece.strip() == piece and text.index(piece) > 0:
            return piece, text.index(piece)
    raise AssertionError(f"no usable stop string in {text!r}")


def _full_chat(client: RemoteClient, model: str, settings: SamplerSettings, **chat) -> dict:
    """The conversation every independent server goes through; returns what the server-specific checks need."""
    assert client.models() == [model]

    # A streamed reply arrives in pieces, and the pieces are the reply.
    first = client.chat(model, QUESTION, settings, max_tokens=16, **chat)
    events = list(first)
    assert len(events) >= 4 and all(e.id == -1 for e in events)
    assert "".join(e.text for e in events) == first.text and first.text.strip()
    assert first.finish_reason == "length"
    again = client.chat(model, QUESTION, settings, max_tokens=16, **chat)
    list(again)
    assert again.text == first.text  # greedy: the same reply

    # A stop string from the middle of that reply ends the next one there.
    stop, at = _stop_string(first.text)
    stopped = client.chat(model, QUESTION, settings, max_tokens=16, stop_strings=[stop], **chat)
    list(stopped)
    assert stopped.finish_reason == "stop"

    # A stop mid-stream keeps what arrived, and the server stops sending.
    cancel = threading.Event()
    long = client.chat(model, QUESTION, settings, max_tokens=200, should_stop=cancel, **chat)
    pieces = []
    for event in long:
        pieces.append(event.text)
        if len(pieces) == 3:
            cancel.set()
    assert long.finish_reason == "cancelled" and len(pieces) == 3 and long.text == "".join(pieces)
    assert first.text.startswith(long.text)

    # A second turn (the stopped reply, then a new question) on the same server.
    history = QUESTION + [
        {"role": "assistant", "content": long.text},
        {"role": "user", "content": "Now one about the sky."},
    ]
    second = client.chat(model, history, settings, max_tokens=8, **chat)
    assert len(list(second)) >= 2 and second.text.strip()
    assert second.finish_reason == "length"
    return {"first": first, "stopped": stopped, "stop": stop, "at": at, "second": second}


# transformers serve on a tiny random Llama, offline

CORPUS = [
    "the sea is deep and blue and the sky is wide",
    "a small boat sails over the waves at night",
    "stars shine above the quiet water while the wind sings",
    "write a short poem about the sea now one about the sky",
]


def _tiny_llama(folder: Path) -> None:
    """A randomly initialised Llama with a small byte-free BPE tokenizer (Metaspace, like SentencePiece)
    and a chat template: what ``transformers serve`` needs to load a folder with no network."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=128,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz.,"),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.save(str(folder / "tokenizer.json"))
    template = (
        "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant{% endif %}"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "chat_template": template,
            }
        )
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    # No end-of-sequence: a reply ends at max_tokens, a stop string or a cancel, whatever the random weights.
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)


def test_transformers_serve(tmp_path):
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"transformers {transformers.__version__}: the serve command tested here is transformers 5's")
    folder = tmp_path / "tiny-llama"
    _tiny_llama(folder)
    port = _free_port()
    argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    t0 = time.perf_counter()
    with _server(argv, port, tmp_path / "server.log", offline) as url:
        ready = time.perf_counter() - t0
        with RemoteClient(url) as client:
            # Ember's default samplers: transformers serve refuses top_k and min_p (422), and the client
            # sends the request again without them.
            got = _full_chat(client, str(folder), SamplerSettings.greedy())
    first, stopped = got["first"], got["stopped"]
    assert first.extensions_refused
    assert first.stats.generated_tokens == 16 and first.stats.prompt_tokens > 0  # the server's usage chunk
    # The server saw the whole conversation the second time.
    assert got["second"].stats.prompt_tokens > first.stats.prompt_tokens
    # transformers ends the reply at the stop string but, unlike OpenAI's API, leaves the string in it;
    # Ember's client takes it out, so the reply ends just before it as with every other server.
    assert stopped.text == first.text[: got["at"]]
    print(f"transformers serve: ready in {ready:.1f} s, whole test {time.perf_counter() - t0:.1f} s")


# llama.cpp's server on the default model, when llama-cpp-python[server] is installed


def test_llama_cpp_server(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed", exc_type=ImportError)
    pytest.importorskip(
        "llama_cpp.server.app", reason="llama-cpp-python[server] is not installed", exc_type=ImportError
    )
    from engine.loading.default_model import default_model_path

    model = str(default_model_path())
    port = _free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", model]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    t0 = time.perf_counter()
    with _server(argv, port, tmp_path / "server.log") as url:
        ready = time.perf_counter() - t0
        with RemoteClient(url) as client:
            got = _full_chat(client, model, SamplerSettings.greedy(), top_logprobs=3, logprobs_fallback=True)
    first, stopped = got["first"], got["stopped"]
    # Per-token logprobs, one entry a token, the greedy choice on top.
    assert not first.logprobs_refused and len(first.tokens) == 16
    for _text, logprob, alternatives in first.tokens:
        assert len(alternatives) == 3 and alternatives[0][1] >= logprob - 1e-3
    # OpenAI's semantics: the reply ends just before the stop string.
    assert stopped.text == first.text[: got["at"]]
    print(f"llama.cpp server: ready in {ready:.1f} s, whole test {time.perf_counter() - t0:.1f} s")
