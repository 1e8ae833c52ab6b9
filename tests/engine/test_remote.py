"""`engine.remote`: Ember's OpenAI-compatible client against Ember's own server on loopback, and
against fake servers (httpx mock transports, a socket that never answers) for every failure."""

from __future__ import annotations

import math
import socket
import threading

import httpx
import pytest

from engine.loader import load_model
from engine.remote import RemoteClient, RemoteError, normalise_base_url, sampler_fields
from engine.sampling import SamplerSettings
from engine.server import EmberServer

HI = [{"role": "user", "content": "Hi"}]
GREEDY = SamplerSettings.greedy()


@pytest.fixture(scope="module")
def server():
    with EmberServer(load_model(), api_key="k3y", max_queue=4) as srv:
        yield srv


@pytest.fixture
def remote(server):
    with RemoteClient(server.url, "k3y") as client:
        yield client


def test_base_url_forms():
    assert normalise_base_url("127.0.0.1:8080") == "http://127.0.0.1:8080/v1"
    assert normalise_base_url("http://h:1/v1/") == "http://h:1/v1"
    assert normalise_base_url("https://h/") == "https://h/v1"
    with pytest.raises(RemoteError, match="only http"):
        normalise_base_url("ftp://h")


def test_sampler_fields_send_extensions_only_when_on():
    assert sampler_fields(SamplerSettings(top_k=0, min_p=0.0)).keys() == {
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
    }
    fields = sampler_fields(SamplerSettings(seed=3, repetition_penalty=1.1))
    assert fields["seed"] == 3 and fields["top_k"] == 40 and fields["repetition_window"] == 64


def test_models_and_a_streamed_chat(remote, server):
    assert remote.models() == [server.model_id]
    gen = remote.chat(server.model_id, HI, GREEDY, max_tokens=8)
    events = list(gen)
    assert events and "".join(e.text for e in events) == gen.text and gen.text.strip()
    assert gen.finish_reason in ("stop", "length")
    assert 0 < gen.stats.generated_tokens <= 8 and gen.stats.prompt_tokens > 0
    again = remote.chat(server.model_id, HI, GREEDY, max_tokens=8)
    list(again)
    assert again.text == gen.text


def test_logprobs_stop_seed_and_cancel(remote, server):
    gen = remote.chat(server.model_id, HI, GREEDY, max_tokens=6, top_logprobs=2)
    events = list(gen)
    assert all(not math.isnan(e.logprob) and len(e.top) == 2 for e in events)
    stop = gen.text[3:5]
    stopped = remote.chat(server.model_id, HI, GREEDY, max_tokens=6, stop_strings=[stop])
    list(stopped)
    assert stopped.text == gen.text[: gen.text.index(stop)] and stopped.finish_reason == "stop"
    sampled = remote.chat(server.model_id, HI, SamplerSettings(seed=99), max_tokens=4)
    list(sampled)
    assert sampled.seed == 99
    cancel = threading.Event()
    long = remote.chat(server.model_id, HI, GREEDY, max_tokens=500, should_stop=cancel)
    for _ in long:
        cancel.set()
    assert long.finish_reason == "cancelled"


def test_refused_key_and_unknown_model(server):
    with RemoteClient(server.url, "wrong") as bad:
        with pytest.raises(RemoteError, match="refused the API key") as err:
            bad.models()
        assert err.value.status == 401
        with pytest.raises(RemoteError, match="API key"):
            list(bad.chat(server.model_id, HI, GREEDY, max_tokens=2))
    with RemoteClient(server.url, "k3y") as good:
        with pytest.raises(RemoteError, match="does not exist") as err:
            list(good.chat("no-such-model", HI, GREEDY, max_tokens=2))
        assert err.value.status == 404
        with pytest.raises(RemoteError, match="400: max_tokens"):
            list(good.chat(server.model_id, HI, GREEDY, max_tokens=-1))


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    with RemoteClient(f"127.0.0.1:{port}") as client, pytest.raises(RemoteError, match="cannot connect"):
        client.models()


def test_a_server_that_never_answers_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    try:
        url = f"127.0.0.1:{listener.getsockname()[1]}"
        with RemoteClient(url, read_timeout=0.5) as client, pytest.raises(RemoteError, match="stopped answering"):
            client.models()
    finally:
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


def _fake(body: bytes, content_type: str = "text/event-stream", status: int = 200) -> RemoteClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return RemoteClient("http://fake", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("body", "content_type", "match"),
    [
        (b"data: {not json\n\n", "text/event-stream", "malformed stream: not JSON"),
        (b'data: {"id": 1}\n\n', "text/event-stream", "without 'choices'"),
        (b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n', "text/event-stream", "broke off"),
        (b'data: {"error": {"message": "GPU on fire"}}\n\n', "text/event-stream", "GPU on fire"),
        (b"<html>hello</html>", "text/html", "instead of an event stream"),
    ],
)
def test_malformed_streams(body, content_type, match):
    with _fake(body, content_type) as client, pytest.raises(RemoteError, match=match):
        list(client.chat("m", HI, GREEDY))


def test_a_well_formed_foreign_stream():
    """The chunks another server (llama.cpp, vLLM) sends: comments, role-only deltas, usage last."""
    body = (
        b": keep-alive\n\n"
        b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}\n\n'
        b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}\n\n'
        b'data: {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}\n\n'
        b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}\n\n'
        b"data: [DONE]\n\n"
    )
    with _fake(body) as client:
        gen = client.chat("m", HI, GREEDY)
        assert [e.text for e in gen] == ["Hel", "lo"]
    assert gen.text == "Hello" and gen.finish_reason == "stop"
    assert gen.stats.prompt_tokens == 5 and gen.stats.generated_tokens == 2


FOREIGN = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'


def test_logprobs_refused_with_400_are_asked_once_more_without():
    """A server without logprobs (400 to a request with them): the request is sent again without them."""
    import json

    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if "logprobs" in body:
            return httpx.Response(400, json={"error": {"message": "logprobs not supported"}})
        return httpx.Response(200, content=FOREIGN, headers={"content-type": "text/event-stream"})

    with RemoteClient("http://fake", transport=httpx.MockTransport(handler)) as client:
        gen = client.chat("m", HI, GREEDY, top_logprobs=5, logprobs_fallback=True)
        assert [e.text for e in gen] == ["Hi"] and gen.logprobs_refused and gen.tokens == []
        assert [("logprobs" in b, "top_logprobs" in b) for b in bodies] == [(True, True), (False, False)]
        # Without the fallback the 400 is an error, as for any bad request.
        with pytest.raises(RemoteError, match="400: logprobs not supported"):
            list(client.chat("m", HI, GREEDY, top_logprobs=5))


def test_per_token_logprobs_are_kept_for_the_inspector(remote, server):
    from engine.remote import remote_inspection

    gen = remote.chat(server.model_id, HI, GREEDY, max_tokens=6, top_logprobs=5, logprobs_fallback=True)
    events = list(gen)
    assert not gen.logprobs_refused and len(gen.tokens) == len(events) == gen.stats.generated_tokens
    for (_text, logprob, alternatives), event in zip(gen.tokens, events, strict=True):
        assert logprob == pytest.approx(event.logprob, abs=1e-3) and len(alternatives) == 5
        assert alternatives[0][1] >= logprob - 1e-3  # greedy: the chosen token is the top one
    result = remote_inspection(gen.tokens)
    assert result.pieces[1:] == [t[0] for t in gen.tokens] and result.token_logprobs[0] is None
    assert len(result.top_raw) == len(result.pieces) and result.attention == {} and result.residuals is None
    with pytest.raises(ValueError, match="no token probabilities"):
        remote_inspection([])
    with pytest.raises(ValueError, match="expected shape"):
        remote_inspection([["a", "x", []]])


def test_non_json_models_answer():
    with _fake(b"<html/>", "text/html") as client, pytest.raises(RemoteError, match="JSON"):
        client.models()
    with _fake(b'{"error": {"message": "boom"}}', "application/json", 500) as client:
        with pytest.raises(RemoteError, match="500: boom"):
            client.models()


def test_key_store_file_fallback_is_private(tmp_path):
    from engine.remote import KeyStore

    store = KeyStore(tmp_path / "config", use_keyring=False)
    assert store.backend == "file" and store.get("http://h:1") is None
    store.set("http://h:1", "sk-secret")
    assert store.get("h:1/v1") == "sk-secret"  # the same endpoint however it is written
    assert (store.file.stat().st_mode & 0o777) == 0o600
    store.set("http://h:1", None)
    assert store.get("http://h:1") is None
