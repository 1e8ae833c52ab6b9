"""``ember-cli serve``: the official ``openai`` client, unmodified, against the server on loopback.

The default model (SmolLM2-135M-Instruct) is loaded once and served in-process on a free port; one
test starts ``ember-cli serve`` as a subprocess.  Generations are short and mostly greedy.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from engine.cli import main as cli_main
from engine.loading.loader import load_model
from engine.server.ember_server import EmberServer, check_bind, is_loopback
from engine.server.protocol import token_bytes
from engine.text.chat_template import ChatTemplate
from tests.engine.text.reasoning_templates import QWEN3

ROOT = Path(__file__).resolve().parents[3]
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def lm():
    return load_model()


@pytest.fixture(scope="module")
def server(lm):
    with EmberServer(lm, max_queue=4, max_body_bytes=64 * 1024) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def _raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _chat(client, server, **kwargs):
    args = {"model": server.model_id, "messages": HI, "max_tokens": 8, "temperature": 0, **kwargs}
    return client.chat.completions.create(**args)


# -- the happy paths ---------------------------------------------------------------------------------


def test_models_lists_the_loaded_model(client, server, lm):
    models = client.models.list().data
    assert [m.id for m in models] == [lm.name] == [server.model_id]


def test_chat_completion(client, server):
    r = _chat(client, server)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == server.model_id and r.object == "chat.completion"


def test_streaming_gives_the_same_text(client, server):
    whole = _chat(client, server).choices[0].message.content
    chunks = list(_chat(client, server, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_legacy_completions_stream_and_not(client, server):
    args = {"model": server.model_id, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    whole = client.completions.create(**args)
    assert whole.object == "text_completion" and "Paris" in whole.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(**args, stream=True))
    assert streamed == whole.choices[0].text


def test_chat_logprobs(client, server):
    r = _chat(client, server, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    assert "".join(e.token for e in content).startswith(r.choices[0].message.content[:3])


def test_chat_logprobs_streaming(client, server):
    chunks = [c for c in _chat(client, server, logprobs=True, top_logprobs=2, stream=True) if c.choices]
    entries = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert entries and all(len(e.top_logprobs) == 2 for e in entries)


def test_completion_logprobs(client, server):
    r = client.completions.create(
        model=server.model_id, prompt="One, two, three,", max_tokens=4, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0


def test_stop_strings(client, server):
    prompt = [{"role": "user", "content": "Count from one to ten in words, separated by commas."}]
    free = _chat(client, server, messages=prompt, max_tokens=24).choices[0].message.content
    assert len(free) >= 10, free
    stop = free[6:9]  # a stop string from the middle of the greedy reply
    r = _chat(client, server, messages=prompt, max_tokens=24, stop=[stop, "never appears"])
    assert r.choices[0].message.content == free[: free.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = _chat(client, server, messages=prompt, max_tokens=24, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == free[: free.index(stop)]


def test_seed_reproduces_a_sampled_reply(client, server):
    args = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 12, "extra_body": {"top_k": 0, "min_p": 0.0}}
    first = _chat(client, server, seed=1234, **args)
    again = _chat(client, server, seed=1234, **args)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.model_extra["seed"] == 1234
    replay = _chat(client, server, seed=_chat(client, server, **args).model_extra["seed"], **args)
    assert replay.usage.completion_tokens > 0


def test_extension_samplers_are_accepted(client, server):
    extra = {"top_k": 5, "min_p": 0.1, "typical_p": 0.9, "repetition_penalty": 1.2, "repetition_window": 16}
    r = _chat(client, server, temperature=0.8, seed=1, extra_body=extra)
    assert r.choices[0].message.content


def test_chat_template_kwargs_switch_thinking(client, server, lm, monkeypatch):
    """As vLLM and llama.cpp's server take it: a Qwen3-style template given enable_thinking false closes an
    empty thought in the prompt, which the usage counts."""
    template = ChatTemplate(QWEN3, bos_token=lm.tokenizer.bos_token or "", eos_token=lm.tokenizer.eos_token or "")
    monkeypatch.setattr(lm, "template", template)

    def prompt_tokens(**extra) -> int:
        return _chat(client, server, max_tokens=1, extra_body=extra).usage.prompt_tokens

    default = prompt_tokens()
    assert prompt_tokens(chat_template_kwargs={"enable_thinking": True}) == default
    assert prompt_tokens(chat_template_kwargs={"enable_thinking": False}) > default


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 9}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"seed": -5}, "seed"),
        ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"stop": ["x"] * 40}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"extra_body": {"top_k": -1}}, "top_k"),
        ({"extra_body": {"min_p": "lots"}}, "min_p"),
        ({"extra_body": {"chat_template_kwargs": {"enable_thinking": "no"}}}, "chat_template_kwargs"),
        ({"extra_body": {"chat_template_kwargs": ["enable_thinking"]}}, "chat_template_kwargs"),
    ],
)
def test_bad_parameters_are_400(client, server, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, server, **kwargs)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param
    assert err.value.body["type"] == "invalid_request_error"
    assert err.value.body["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-17", messages=HI, max_tokens=2)
    assert err.value.body["code"] == "model_not_found"


def test_prompt_longer_than_the_context(client, server, lm):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=server.model_id, prompt="word " * (lm.context_length + 10), max_tokens=2)
    assert err.value.body["code"] == "context_length_exceeded"


def test_invalid_json_oversized_and_wrong_type(server):
    status, body = _raw(server, "POST", "/v1/chat/completions", b'{"model": "x", "messages": [')
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, body = _raw(server, "POST", "/v1/chat/completions", b"[1, 2]")
    assert status == 400 and json.loads(body)["error"]["message"]
    status, body = _raw(server, "POST", "/v1/chat/completions", b"\xff\xfe")
    assert status == 400
    big = json.dumps({"model": server.model_id, "messages": HI, "pad": "x" * 100_000}).encode()
    status, body = _raw(server, "POST", "/v1/chat/completions", big)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    status, _ = _raw(server, "POST", "/v1/chat/completions", b"{}", {"Content-Type": "text/plain"})
    assert status == 415
    status, body = _raw(server, "GET", "/v1/nowhere")
    assert status == 404 and json.loads(body)["error"]["message"]
    status, _ = _raw(server, "GET", "/v1/chat/completions")
    assert status == 405


def test_oversized_chunked_body_without_length(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        chunks = (b"x" * 16384 for _ in range(8))  # 128 KiB, sent chunked: no Content-Length to check
        conn.request(
            "POST",
            "/v1/completions",
            body=chunks,
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 413
        resp.read()
    finally:
        conn.close()


def test_foreign_host_header_is_refused(server):
    """Served on loopback, a request naming another host (DNS rebinding) is refused."""
    status, _ = _raw(server, "GET", "/v1/models", headers={"Host": "attacker.example"})
    assert status == 400
    assert _raw(server, "GET", "/v1/models", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_api_key(lm):
    with EmberServer(lm, api_key="s3cret") as srv:  # only /v1/models here: the model is not touched
        with openai.OpenAI(base_url=srv.url, api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as err:
                bad.models.list()
            assert err.value.body["code"] == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                bad.chat.completions.create(model=srv.model_id, messages=HI, max_tokens=1)
        with openai.OpenAI(base_url=srv.url, api_key="s3cret", max_retries=0) as good:
            assert good.models.list().data[0].id == srv.model_id
        assert _raw(srv, "GET", "/health")[0] == 200


def test_refuses_a_public_address_without_a_key(monkeypatch, capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(ValueError, match="API key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "key")
    monkeypatch.delenv("EMBER_API_KEY", raising=False)
    assert cli_main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 1  # refused before loading
    assert "API key" in capsys.readouterr().err


def test_token_bytes_undo_escapes():
    assert token_bytes(" Paris") == list(b" Paris")
    assert token_bytes("\\xe4\\xb8") == [0xE4, 0xB8]
    assert token_bytes("é") == list("é".encode())


# -- load --------------------------------------------------------------------------------------------


def test_a_burst_of_concurrent_requests(client, server):
    """200 requests at once (some streaming, some abandoned mid-stream): each gets a reply or a clean
    429/503, and the server keeps serving."""

    def one(i: int) -> str:
        try:
            if i % 4 == 0:
                stream = _chat(client, server, max_tokens=3, stream=True)
                for _ in stream:
                    if i % 8 == 0:
                        break  # the client goes away mid-stream
                stream.close()
                return "ok"
            r = _chat(client, server, max_tokens=2)
            assert r.choices[0].finish_reason in ("stop", "length")
            return "ok"
        except openai.APIStatusError as e:
            assert e.status_code in (429, 503), (e.status_code, e.body)
            return str(e.status_code)

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(one, range(200)))
    assert len(results) == 200
    assert "ok" in results and "429" in results
    assert time.monotonic() - t0 < 45
    # Still serving, and the queue drained.
    assert _chat(client, server, max_tokens=2).choices[0].message.content
    deadline = time.monotonic() + 5
    while server.app.state.api.worker._running is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.app.state.api.worker._running is None


def test_abandoned_stream_frees_the_model(client, server):
    prompt = [{"role": "user", "content": "Write a long story about a dragon."}]
    stream = _chat(client, server, messages=prompt, max_tokens=2000, stream=True)
    next(iter(stream))
    stream.close()
    t0 = time.monotonic()
    r = _chat(client, server, max_tokens=2)  # would wait for 2000 tokens if the generation went on
    assert r.choices[0].message.content
    assert time.monotonic() - t0 < 20


# -- the command line --------------------------------------------------------------------------------


def _read_line(stream, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            byte = os.read(stream.fileno(), 1)
            if not byte:
                break
            line += byte
    return line.decode()


@pytest.mark.skipif(sys.platform == "win32", reason="select() on pipes")
def test_ember_cli_serve(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EMBER_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--model-name", "smol", "--api-key", "k"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        line = _read_line(proc.stderr, timeout=60)
        while line.startswith("[Compiling"):  # a compiled step missing here is built in the background
            line = _read_line(proc.stderr, timeout=60)
        assert "serving smol at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        with openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=30) as c:
            assert [m.id for m in c.models.list().data] == ["smol"]
            chunks = c.chat.completions.create(model="smol", messages=HI, max_tokens=3, temperature=0, stream=True)
            assert "".join(ch.choices[0].delta.content or "" for ch in chunks)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_worker_serialises_generations(lm, server, client):
    """Two requests at once: the second waits for the first; both complete with the same greedy text."""
    out: list[str] = []

    def run():
        out.append(_chat(client, server, max_tokens=6).choices[0].message.content)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == 3 and len(set(out)) == 1
