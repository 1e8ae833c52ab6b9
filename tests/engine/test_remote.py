"""`engine.remote`: Ember's OpenAI-compatible client against Ember's own server on loopback, and
against fake servers (httpx mock transports, sockets that stay silent) for every failure and for a stop
while nothing arrives. Independent servers (llama.cpp's, transformers') are in test_remote_independent.py."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from engine.generation.sampling import SamplerSettings
from engine.loading.loader import load_model
from engine.remote import RemoteClient, RemoteError, normalise_base_url, sampler_fields
from engine.server.ember_server import EmberServer

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


def _stream(*pieces: str, finish: str = "length") -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return b"".join(b"data: %s\n\n" % json.dumps(c).encode() for c in chunks) + b"data: [DONE]\n\n"


def test_stop_strings_are_matched_by_the_client_too():
    """A server that ignores ``stop``, or leaves the stop string in the reply (transformers serve): the
    reply still ends just before it, and text that might start one is held back, then released."""
    with _fake(_stream("Hel", "lo", " wo", "rld")) as client:
        gen = client.chat("m", HI, GREEDY, stop_strings=["o w"])
        assert [e.text for e in gen] == ["Hel", "l"]
        assert gen.text == "Hell" and gen.finish_reason == "stop"
        gen = client.chat("m", HI, GREEDY, stop_strings=["xyz"])
        assert [e.text for e in gen] == ["Hel", "lo", " wo", "rld"] and gen.finish_reason == "length"
    with _fake(_stream("ab", "cx")) as client:
        gen = client.chat("m", HI, GREEDY, stop_strings=["xyz"])
        assert [e.text for e in gen] == ["ab", "c", "x"]  # "x" held back until the server finished
        assert gen.text == "abcx" and gen.finish_reason == "length"


FOREIGN = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'


def test_logprobs_refused_with_400_are_asked_once_more_without():
    """A server without logprobs (400 to a request with them): the request is sent again without them."""
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


def test_extension_samplers_refused_by_a_strict_server_are_dropped():
    """A server that checks fields strictly (transformers serve: 422 "Unexpected fields"; OpenAI: 400
    "Unrecognized request argument") gets the request again without Ember's extension samplers."""
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        unexpected = {k for k in body if k in ("top_k", "min_p", "typical_p", "repetition_penalty")}
        if unexpected:
            return httpx.Response(422, json={"detail": f"Unexpected fields in the request: {unexpected}"})
        return httpx.Response(200, content=FOREIGN, headers={"content-type": "text/event-stream"})

    settings = SamplerSettings(top_k=40, min_p=0.05, repetition_penalty=1.1, seed=1)
    with RemoteClient("http://fake", transport=httpx.MockTransport(handler)) as client:
        gen = client.chat("m", HI, settings)
        assert [e.text for e in gen] == ["Hi"] and gen.extensions_refused and not gen.logprobs_refused
        assert {"top_k", "min_p", "repetition_penalty", "repetition_window"} <= bodies[0].keys()
        assert not bodies[1].keys() & {"top_k", "min_p", "repetition_penalty", "repetition_window"}
        assert bodies[1]["seed"] == 1 and bodies[1]["temperature"] == settings.temperature  # the rest is kept
        bodies.clear()
        with pytest.raises(RemoteError, match="422: Unexpected fields"):
            list(client.chat("m", HI, settings, extensions_fallback=False))
        assert len(bodies) == 1
        # An error that names none of them is not retried.
        bodies.clear()
        with _fake(b'{"error": {"message": "max_tokens is too large"}}', "application/json", 400) as other:
            with pytest.raises(RemoteError, match="400: max_tokens is too large"):
                list(other.chat("m", HI, settings))


# A stop while the server sends nothing: the connection is closed from the stopping side.

HEADERS = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunked(*events: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)


HEL = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}\n\n'
LO = b'data: {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}\n\n'


@contextmanager
def _quiet_server(first: bytes, later: bytes = b"", after: float | None = None) -> Iterator[tuple[str, list]]:
    """A loopback HTTP server that answers every request with ``first`` (nothing at all, or the headers and
    the start of a stream) and then stays silent, or sends ``later`` after ``after`` seconds. Yields its
    address and the accepted sockets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed at the end of the test
                return
            accepted.append(conn)
            conn.recv(65536)
            conn.sendall(first)
            if after is not None:
                time.sleep(after)
                conn.sendall(later)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(), which close() alone would not
        listener.close()
        for conn in accepted:
            conn.close()
        thread.join(5)


def _hung_up(conn: socket.socket, within: float = 2.0) -> bool:
    """Whether the client closed its end of ``conn`` (what is left of the request is read and dropped)."""
    conn.settimeout(within)
    try:
        while conn.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        pass
    return True


def _stop_after(seconds: float, signal: threading.Event) -> list[float]:
    """Sets ``signal`` after ``seconds``; the list receives the moment it did."""
    when: list[float] = []

    def fire() -> None:
        when.append(time.perf_counter())
        signal.set()

    threading.Timer(seconds, fire).start()
    return when


@pytest.mark.parametrize("first", [b"", HEADERS + _chunked(HEL)], ids=["before-headers", "mid-stream"])
def test_a_stop_while_the_server_is_silent_takes_effect_at_once(first):
    """The read timeout is a minute (a big model's prefill), yet a stop ends the wait within a second:
    the reply keeps what arrived and is marked cancelled, and the server sees the client hang up."""
    cancel = threading.Event()
    with _quiet_server(first) as (url, accepted), RemoteClient(url) as client:
        assert client.read_timeout == 60.0
        gen = client.chat("m", HI, GREEDY, should_stop=cancel)
        fired = _stop_after(0.3, cancel)
        events = list(gen)
        returned = time.perf_counter()
        assert fired and returned - fired[0] < 1.0
        assert gen.finish_reason == "cancelled"
        expected = "Hel" if first else ""
        assert gen.text == expected and "".join(e.text for e in events) == expected
        assert len(accepted) == 1 and _hung_up(accepted[0])


def test_a_stop_signal_may_be_a_callable_and_may_fire_before_the_connection():
    stopped = []
    with _quiet_server(b"") as (url, _accepted), RemoteClient(url) as client:
        t0 = time.perf_counter()
        gen = client.chat("m", HI, GREEDY, should_stop=lambda: bool(stopped))
        threading.Timer(0.2, stopped.append, (True,)).start()
        assert list(gen) == [] and gen.finish_reason == "cancelled"
        assert time.perf_counter() - t0 < 1.2
        stopped.append(True)  # already stopped when the request starts
        again = client.chat("m", HI, GREEDY, should_stop=lambda: bool(stopped))
        assert list(again) == [] and again.finish_reason == "cancelled"


def test_a_slow_server_is_still_waited_for():
    """Watching the stop signal does not shorten the patience: a server silent for longer than the stop
    check's poll interval still finishes its reply."""
    cancel = threading.Event()
    with _quiet_server(HEADERS + _chunked(HEL), _chunked(LO, b"data: [DONE]\n\n") + b"0\r\n\r\n", after=1.2) as (
        url,
        _accepted,
    ):
        with RemoteClient(url) as client:
            gen = client.chat("m", HI, GREEDY, should_stop=cancel)
            assert [e.text for e in gen] == ["Hel", "lo"]
            assert gen.text == "Hello" and gen.finish_reason == "stop"
