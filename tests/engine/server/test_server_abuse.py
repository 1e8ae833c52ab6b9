"""The server under abuse (issue 19): clients that vanish mid-stream, clients that stop reading, prompts
longer than the context, and 500 requests in a row, against the real server over real HTTP on loopback.

None of this depends on what the model says, so a tiny random Llama (context 128, about 1.5 ms a token
here) stands in for the default model; where a generation must outlast its client, each forward pass is
slowed to ``STEP_SECONDS``.  The 500-request run serves from a subprocess, so that the RSS measured is the
server's alone.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from engine.loading.loader import load_model
from engine.model_lock import hold
from engine.server.ember_server import EmberServer
from engine.server.protocol import APIError, parse_request
from engine.server.worker import Job, JobStream, ModelWorker
from tests.hardening import count, figure

ROOT = Path(__file__).resolve().parents[3]
HI = [{"role": "user", "content": "w1 w2 w3"}]
STEP_SECONDS = 0.01  # a slowed forward pass: 100 tokens take a second, so a vanished client is noticed mid-way
STALL = 1.0  # the stall timeout of the in-process server (the default is 30 s)
LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def tiny_folder(tiny_models):
    return tiny_models("llama")[0]


@pytest.fixture(scope="module")
def lm(tiny_folder):
    return load_model(tiny_folder)


@pytest.fixture(scope="module")
def server(lm):
    srv = EmberServer(lm, max_queue=4, stall_timeout=STALL)
    # Small kernel buffers (accepted sockets inherit the listener's on Linux): a client that stops reading
    # then fills them within a few dozen tokens, where on loopback the kernel would take megabytes.
    srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with srv:
        yield srv


@pytest.fixture
def slow_model(lm, monkeypatch):
    forward = lm.model.forward

    def slow(*args, **kwargs):
        time.sleep(STEP_SECONDS)
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", slow)


def _body(server, *, chat: bool = True, **kwargs) -> dict:
    base = {"model": server.model_id, "max_tokens": 2, "temperature": 0}
    base.update({"messages": HI} if chat else {"prompt": "w1 w2 w3"})
    return {**base, **kwargs}


def _send(port: int, path: str, body: dict, *, rcvbuf: int | None = None) -> socket.socket:
    """A raw HTTP/1.1 request; the caller reads (or does not read) the answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the TCP window
    sock.settimeout(20)
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def _read_until(sock: socket.socket, done, limit: int = 1 << 22) -> bytes:
    got = b""
    while not done(got) and len(got) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _close(sock: socket.socket, reset: bool) -> None:
    if reset:  # RST instead of FIN, as a killed client or a dropped network would
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _idle(server) -> bool:
    """Nothing generating or queued, no request task and no connection left in uvicorn."""
    stats = server.app.state.api.worker.stats()
    state = server._server.server_state
    return not (stats.running or stats.waiting or state.tasks or state.connections)


def _wait_in_flight(server, timeout: float = 3.0) -> None:
    """Until uvicorn has read a request and runs the app for it."""
    deadline = time.monotonic() + timeout
    while not server._server.server_state.tasks:
        assert time.monotonic() < deadline, "the server never started on the request"
        time.sleep(0.001)


def _wait_idle(server, timeout: float) -> float:
    t0 = time.monotonic()
    while not _idle(server):
        if time.monotonic() - t0 > timeout:
            state = server._server.server_state
            raise AssertionError(
                f"the server is still busy {timeout} s on: {server.app.state.api.worker.stats()}, "
                f"{len(state.tasks)} request tasks, "
                f"{len(state.connections)} connections"
            )
        time.sleep(0.002)
    return time.monotonic() - t0


def _tasks(server) -> int:
    """asyncio tasks alive on the server's event loop (the counting one included)."""

    async def n() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(n(), server.app.state.loop).result(5)


def _live(*types) -> int:
    gc.collect()
    return sum(type(o) in types for o in gc.get_objects())  # type(), not isinstance: no lazy module attributes


def _ok(server, **kwargs) -> httpx.Response:
    r = httpx.post(f"{server.url}/chat/completions", json=_body(server, **kwargs), timeout=30)
    assert r.status_code == 200, r.text
    return r


# -- clients that disconnect mid-stream ---------------------------------------------------------------


def test_clients_that_vanish_mid_stream(server, lm, slow_model):
    """100 clients close the connection at a random point (before the answer, after k events, with FIN
    or RST, streaming or not): each generation is cancelled well before its 100 tokens, the server is
    done with each client within a bound, keeps serving, and ends with the threads, tasks, jobs and KV
    cache it started with."""
    rng = random.Random(19)
    worker = server.app.state.api.worker
    _ok(server)  # warm-up
    _wait_idle(server, 5)
    threads0, tasks0, cache0 = threading.active_count(), _tasks(server), lm.model.cache_capacity
    jobs0 = _live(Job, JobStream)
    stats0 = worker.stats()
    latencies = []
    for trial in range(100):
        chat = rng.random() < 0.7
        stream = rng.random() < 0.8
        events = rng.choice([0, 0, 1, 2, 3, 5, 8, 13]) if stream else 0
        path = "/v1/chat/completions" if chat else "/v1/completions"
        sock = _send(server.port, path, _body(server, chat=chat, stream=stream, max_tokens=100))
        if events:
            got = _read_until(sock, lambda b, n=events: b.count(b"data: ") >= n)
            assert got.startswith(b"HTTP/1.1 200"), got[:200]
        else:
            _wait_in_flight(server)  # closing before the server has even read the request proves nothing
            time.sleep(rng.choice([0, rng.uniform(0, 0.1)]))  # before or after the generation starts
        _close(sock, reset=rng.random() < 0.3)
        latencies.append(_wait_idle(server, 3.0))
        if trial % 20 == 19:
            _ok(server)  # still serving
            _wait_idle(server, 5)
    stats = worker.stats()
    ran = stats.finished - stats0.finished - 5  # the five checks above ran to their end
    # Every generation begun for a vanished client was cancelled, none ran its 100 tokens for nobody.
    assert stats.cancelled - stats0.cancelled == ran, (stats0, stats)
    assert ran >= 60, "most trials should have reached the model"
    assert max(latencies) < 1.5, sorted(latencies)[-5:]
    _ok(server)
    _wait_idle(server, 5)
    assert threading.active_count() == threads0
    assert _tasks(server) == tasks0
    assert _live(Job, JobStream) == jobs0
    assert lm.model.cache_capacity == cache0
    count("server: clients disconnected mid-stream", 100)
    figure(
        "server: time to be done with a vanished client (median / max, 100 trials)",
        f"{statistics.median(latencies) * 1000:.0f} / {max(latencies) * 1000:.0f} ms "
        f"({ran} generations cancelled, model slowed to {STEP_SECONDS * 1000:.0f} ms a token)",
    )
    figure(
        "server: threads / asyncio tasks before and after 100 vanished clients",
        f"{threads0} -> {threading.active_count()} / {tasks0} -> {_tasks(server)}",
    )


def test_a_waiting_request_whose_client_vanishes_never_runs(server, lm, slow_model):
    """Queued behind a long generation, a request whose client goes away is dropped within the poll."""
    worker = server.app.state.api.worker
    _wait_idle(server, 5)
    stats0 = worker.stats()
    long = _send(server.port, "/v1/chat/completions", _body(server, stream=True, max_tokens=100))
    _read_until(long, lambda b: b.count(b"data: ") >= 2)
    waiting = _send(server.port, "/v1/chat/completions", _body(server, max_tokens=100))
    time.sleep(0.1)
    assert worker.stats().waiting == 1
    _close(waiting, reset=False)
    rest = _read_until(long, lambda b: b"data: [DONE]" in b)
    assert b"data: [DONE]" in rest
    long.close()
    _wait_idle(server, 3)
    stats = worker.stats()
    assert stats.finished - stats0.finished == 2
    assert stats.cancelled - stats0.cancelled == 1  # the waiting one, at its turn: it never generated


def test_the_default_model_stops_for_a_vanished_client(tmp_path):
    """The same with the real default model, unslowed: 12 clients vanish from a 500-token reply (after 1-6
    streamed events, or non-streaming after 0.2 s); the generation stops within one decode step or so.
    Also the time a short request takes with this model."""
    lm = load_model()
    rng = random.Random(190)
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    stops, short = [], []
    with EmberServer(lm) as srv:
        worker = srv.app.state.api.worker
        _ok(srv, messages=story, max_tokens=2)  # warm-up
        for i in range(12):
            stream = i % 3 != 2
            sock = _send(srv.port, "/v1/chat/completions", _body(srv, messages=story, stream=stream, max_tokens=500))
            if stream:
                events = rng.randint(1, 6)
                _read_until(sock, lambda b, n=events: b.count(b"data: ") >= n)
            else:
                time.sleep(0.2)
            _close(sock, reset=i % 2 == 0)
            stops.append(_wait_idle(srv, 5.0))
        assert worker.stats().cancelled == 12
        for i in range(10):
            t0 = time.monotonic()
            _ok(srv, max_tokens=1 + i % 4, stream=i % 2 == 0)
            short.append(time.monotonic() - t0)
    assert max(stops) < 2.0, stops
    figure(
        "server (default model): a vanished client's generation stopped within (median / max, 12 trials)",
        f"{statistics.median(stops) * 1000:.0f} / {max(stops) * 1000:.0f} ms",
    )
    figure(
        "server (default model): a short request (1-4 tokens, new connection each)",
        f"{statistics.median(short) * 1000:.0f} ms median",
    )


def test_a_closed_worker_refuses_new_jobs(lm):
    """Once closing, the worker refuses a job with 503 at once (queued behind the end it would wait for
    ever), and closing twice is harmless."""
    worker = ModelWorker(lm, max_queue=1)
    worker.close()
    worker.close()
    loop = asyncio.new_event_loop()
    try:
        req = parse_request({"model": "m", "prompt": "w1"}, chat=False, served={"m"})
        with pytest.raises(APIError) as err:
            worker.submit(Job(req, JobStream(loop)))
        assert err.value.status == 503
    finally:
        loop.close()


# -- slow readers ---------------------------------------------------------------------------------------


def test_a_job_taken_as_the_worker_closes_is_cancelled(lm):
    """close() between the worker's taking a job off its queue and its starting it: close() finds the
    queue empty and nothing running, so the worker must see that it is closing and cancel the job
    rather than run it to its end for nobody.  The gap is made wide, deterministically: the worker's
    queue hands the job over only once close() is through its critical section."""
    worker = ModelWorker(lm, max_queue=1)

    class Gap(queue.Queue):
        def get(self, *args, **kwargs):
            job = super().get(*args, **kwargs)
            if job is not None:
                deadline = time.monotonic() + 10
                while not worker._closed:
                    assert time.monotonic() < deadline, "close() never began"
                    time.sleep(0.001)
                with worker._closing:  # close() sets _closed under this lock: it is through once we hold it
                    pass
            return job

    # A fresh worker thread on the gappy queue (the first one is blocked on the plain queue: end it).
    worker._jobs.put(None)
    worker._thread.join(5)
    gap: queue.Queue = Gap(maxsize=2)
    worker._jobs = gap
    worker._thread = threading.Thread(target=worker._run, daemon=True)
    worker._thread.start()
    loop = asyncio.new_event_loop()
    try:
        req = parse_request({"model": "m", "prompt": "w1", "max_tokens": 100}, chat=False, served={"m"})
        job = Job(req, JobStream(loop))
        worker.submit(job)
        while gap.qsize():  # until the worker has taken it, and waits in the gap
            time.sleep(0.001)
        worker.close()
        assert not worker._thread.is_alive()
        assert job.cancel.is_set()
        kind, value = loop.run_until_complete(asyncio.wait_for(job.stream.get(), 1))
        assert kind == "error" and value.status == 503, (kind, value)  # not ("tokens", ...): it never ran
        stats = worker.stats()
        assert (stats.cancelled, stats.finished, stats.running) == (1, 1, False)
    finally:
        loop.close()


def _stall(server, max_tokens: int = 110) -> socket.socket:
    """A streaming request whose client reads the headers (so its generation has begun), then nothing.
    With 20 alternatives a token, each event is over 1 KB: more than the small buffers hold."""
    body = _body(server, stream=True, max_tokens=max_tokens, logprobs=True, top_logprobs=20)
    sock = _send(server.port, "/v1/chat/completions", body, rcvbuf=4096)
    head = _read_until(sock, lambda b: b"\r\n\r\n" in b)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    return sock


@pytest.mark.skipif(not LINUX, reason="needs small socket buffers inherited from the listening socket")
def test_a_client_that_stops_reading_holds_the_model_for_its_generation_only(lm, caplog):
    """The desktop app serves the model it chats with, so its replies take the model's lock too.  A
    client reads the headers of a 110-token stream (about 150 KB: more than the socket buffers and
    uvicorn's 64 KB write buffer hold), then nothing.  Its generation runs to its end at the model's
    pace, the worker never waiting on the client with the lock held: a lock waiter (as the desktop's
    chat) and another HTTP client wait for that generation only, while the stalled client is still
    connected.  Then its response makes no progress for the stall timeout and `SendTimeout` drops it by
    aborting the connection (the path that reaches into uvicorn: this fails if an upgrade takes it
    away); its generation had ended, so nothing is cancelled.  The stall timeout must outlast the
    generation, which takes 0.3-5 s depending on how busy the machine is: it is set to three times the time
    the same generation takes for a reading client, at least 5 s."""
    srv = EmberServer(lm)  # the default 30 s, for the warm-up
    srv.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with srv:
        worker, guard = srv.app.state.api.worker, srv.send_timeout
        # The same generation for a client that reads: how long it holds the model (and a warm-up).
        t0 = time.monotonic()
        _ok(srv, max_tokens=110, logprobs=True, top_logprobs=20)
        own = time.monotonic() - t0
        stall = guard.timeout = max(5.0, 3 * own)  # read at each send
        stats0 = worker.stats()
        t0 = time.monotonic()
        stalled = _stall(srv)
        t1 = time.monotonic()
        with hold(lm):  # as the desktop's chat takes the model
            waited = time.monotonic() - t1
            dropped_at_lock = guard.dropped
        t2 = time.monotonic()
        _ok(srv)  # and another HTTP client
        other = time.monotonic() - t2
        assert guard.dropped == 0, "the other client waited for the stalled one to be dropped"
        _wait_idle(srv, stall + own + 5)
        dropped = time.monotonic() - t0
        stats = worker.stats()
        rest = _read_until(stalled, lambda b: False)  # what the buffers held, then the abort
        stalled.close()
    # The lock came free when the stalled client's generation ended (not cancelled: see below), before
    # the client was dropped (the worker used to wait up to the stall timeout for it, lock held).
    assert dropped_at_lock == 0, "the lock waited for the stalled client to be dropped"
    assert waited < stall, f"the lock waited {waited:.2f} s behind a stalled client"
    assert stats.finished - stats0.finished == 2
    assert stats.cancelled == stats0.cancelled  # nothing cancelled: the generation had ended
    assert (guard.dropped, guard.aborted) == (1, 1)  # dropped once, by an abort, not a close
    assert any("dropped a client that took nothing" in r.getMessage() for r in caplog.records)
    assert not any("could not abort" in r.getMessage() for r in caplog.records)
    assert b"data: [DONE]" not in rest
    assert 0 < rest.count(b"data: ") < 110
    assert stall <= dropped < stall + own + 5
    count("server: clients that stopped reading dropped", 1)
    figure(
        "server: the model's lock with a client connected that reads nothing (110 tokens, 20 alternatives)",
        f"a lock waiter waited {waited:.2f} s, another HTTP client {other:.2f} s: the generation's own "
        f"time (for a reading client {own:.2f} s), not the stall timeout ({stall:.1f} s here, 30 s by default)",
    )
    figure(
        "server: a client that stops reading",
        f"its generation ran to its end; its connection aborted {dropped:.2f} s after its request "
        f"(stall timeout {stall:.1f} s); it got {rest.count(b'data: ')} of 113 events",
    )


@pytest.mark.skipif(not LINUX, reason="needs small socket buffers inherited from the listening socket")
def test_a_client_that_stops_reading_is_dropped_and_its_generation_cancelled(server, lm, monkeypatch):
    """The same with a generation that outlasts the stall timeout (each token slowed by 30 ms, so 110 take
    over 3.3 s; the buffers are full about half way, and the 1 s stall timeout runs out before the end):
    the drop is a disconnect like any other and cancels the generation, which never ends on its own."""
    forward = lm.model.forward

    def slower(*args, **kwargs):
        time.sleep(0.03)
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm.model, "forward", slower)
    worker, guard = server.app.state.api.worker, server.send_timeout
    _wait_idle(server, 5)
    stats0, dropped0, aborted0 = worker.stats(), guard.dropped, guard.aborted
    t0 = time.monotonic()
    stalled = _stall(server)
    _wait_idle(server, 20)
    took = time.monotonic() - t0
    stats = worker.stats()
    assert (stats.finished - stats0.finished, stats.cancelled - stats0.cancelled) == (1, 1)
    assert (guard.dropped - dropped0, guard.aborted - aborted0) == (1, 1)
    rest = _read_until(stalled, lambda b: False)
    stalled.close()
    assert b"data: [DONE]" not in rest
    assert 0 < rest.count(b"data: ") < 110
    figure(
        "server: a stalled client whose generation outlasts the stall timeout",
        f"dropped and its generation cancelled {took:.2f} s after its request (stall timeout {STALL:g} s, "
        f"110 tokens slowed to 30+ ms each); it got {rest.count(b'data: ')} of 113 events",
    )


@pytest.mark.skipif(not LINUX, reason="needs small socket buffers inherited from the listening socket")
def test_a_slow_but_steady_reader_gets_everything(server):
    """A client reading 2 KB every 25 ms takes longer than the stall timeout over the whole reply, but
    never stops for that long: it is never dropped, and the reply arrives whole."""
    body = _body(server, stream=True, max_tokens=110, logprobs=True, top_logprobs=20)
    _wait_idle(server, 5)
    sock = _send(server.port, "/v1/chat/completions", body, rcvbuf=4096)
    t0 = time.monotonic()
    got = b""
    while b"data: [DONE]" not in got:
        chunk = sock.recv(2048)
        assert chunk, "the server closed a reader that was still reading"
        got += chunk
        time.sleep(0.025)
    took = time.monotonic() - t0
    sock.close()
    assert got.count(b"data: ") == 110 + 3  # the role, 110 tokens, the finish, [DONE]
    assert took > STALL
    _wait_idle(server, 3)
    figure("server: a slow reader (2 KB / 25 ms) got its whole 110-token reply in", f"{took:.2f} s")


# -- prompts longer than the context ----------------------------------------------------------------------


def _prompt_of(lm, tokens: int) -> str:
    """A completions prompt that encodes to exactly ``tokens`` tokens."""
    words = tokens
    while len(lm.encode_prompt(" ".join(["w7"] * words))) > tokens:
        words -= 1
    text = " ".join(["w7"] * words)
    assert len(lm.encode_prompt(text)) == tokens
    return text


def test_prompts_longer_than_the_context(server, lm):
    """400 in OpenAI's error format (never a 500, never a broken stream), for chat and completions,
    streaming or not, up to a body just under the size limit; the longest prompt that fits works, with
    max_tokens cut to the room left; and the server keeps serving."""
    ctx = lm.context_length
    url = server.url
    refused = 0
    with httpx.Client(timeout=30) as c:
        cases = [
            (True, {"messages": [{"role": "user", "content": "w1 " * ctx}]}),
            (True, {"messages": [{"role": "system", "content": "w2 " * 60}, {"role": "user", "content": "w3 " * 80}]}),
            (False, {"prompt": _prompt_of(lm, ctx)}),
            (False, {"prompt": "w4 " * 300_000}),  # about 900 KB, under the 1 MiB body limit
        ]
        for chat, extra in cases:
            for stream in (False, True):
                path = "/chat/completions" if chat else "/completions"
                r = c.post(url + path, json={**_body(server, chat=chat, stream=stream), **extra})
                assert r.status_code == 400, (r.status_code, r.text[:300])
                error = r.json()["error"]
                assert error["code"] == "context_length_exceeded"
                assert error["type"] == "invalid_request_error"
                assert error["param"] == ("messages" if chat else "prompt")
                assert f"holds {ctx}" in error["message"]
                refused += 1
        r = c.post(url + "/completions", json=_body(server, chat=False, prompt="w5 " * 400_000))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        # The longest prompt that fits: one token of room, whatever max_tokens asks for.
        r = c.post(url + "/completions", json=_body(server, chat=False, prompt=_prompt_of(lm, ctx - 1), max_tokens=50))
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 1 and r.json()["choices"][0]["finish_reason"] == "length"
        r = c.post(
            url + "/completions", json=_body(server, chat=False, prompt=_prompt_of(lm, ctx - 10), max_tokens=1000)
        )
        assert r.json()["usage"]["completion_tokens"] == 10 and r.json()["choices"][0]["finish_reason"] == "length"
    _ok(server)
    count("server: prompts longer than the context refused with 400", refused)


def test_a_body_that_never_arrives_times_out(server):
    """Headers promising a body, then nothing: 408 after the stall timeout, not a connection held forever."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 500\r\n\r\n{"model": '
    )
    t0 = time.monotonic()
    got = _read_until(sock, lambda b: b"}}" in b)
    sock.close()
    assert got.startswith(b"HTTP/1.1 408"), got[:200]
    assert STALL <= time.monotonic() - t0 < STALL + 3
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "timeout"
    _ok(server)


def test_responses_do_not_wait_on_nagle(server):
    """The server's sockets have TCP_NODELAY: without it each response (headers, then body, two writes)
    waited ~40 ms for the client's delayed ACK, and a short request took 45 ms instead of a few."""
    with httpx.Client(timeout=10) as c:
        c.get(server.url + "/models")
        (conn,) = server._server.server_state.connections
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        times = []
        for _ in range(20):
            t0 = time.monotonic()
            assert c.get(server.url + "/models").status_code == 200
            times.append(time.monotonic() - t0)
    figure(
        "server: GET /v1/models on a kept-alive connection (median of 20)", f"{statistics.median(times) * 1000:.1f} ms"
    )


# -- 500 requests in a row ----------------------------------------------------------------------------------

LAUNCHER = """
import sys
from engine.loading.loader import load_model
from engine.server.ember_server import EmberServer
server = EmberServer(load_model(sys.argv[1])).start()
print(server.port, flush=True)
sys.stdin.read()
server.stop()
"""


def _fds(proc: psutil.Process) -> int:
    return proc.num_fds() if hasattr(proc, "num_fds") else proc.num_handles()


def _mib(n: int) -> float:
    return n / (1 << 20)


def test_500_requests_in_a_row_keep_memory_flat(tiny_folder, tmp_path):
    """500 short requests (chat and completions, streaming or not, 1-4 tokens, some on a fresh connection)
    to a server in its own process: all answered, its threads as many as before, and its RSS after the 500
    within 20 MiB of its RSS after a 50-request warm-up.  Why 20 MiB: a leak of 40 KB a request (one
    request's events and buffers kept) would add 20 MiB; the allocator's arenas settle within the
    warm-up, and what moves after it is a few MiB.  Open files (sockets) stay as many too."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tiny_folder)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        port = int(proc.stdout.readline())
        server = psutil.Process(proc.pid)
        url = f"http://127.0.0.1:{port}/v1"
        served = {"model": "", "temperature": 0}

        def one(c: httpx.Client, i: int) -> None:
            chat, stream = i % 2 == 0, i % 4 >= 2
            body = {**served, "max_tokens": 1 + i % 4, "stream": stream}
            body.update({"messages": HI} if chat else {"prompt": "w1 w2 w3"})
            headers = {"Connection": "close"} if i % 10 == 9 else None
            r = c.post(url + ("/chat/completions" if chat else "/completions"), json=body, headers=headers)
            assert r.status_code == 200, r.text
            if stream:
                assert r.text.endswith("data: [DONE]\n\n"), r.text[-200:]
            else:
                assert r.json()["usage"]["completion_tokens"] <= 1 + i % 4

        with httpx.Client(timeout=30) as c:
            served["model"] = c.get(url + "/models").json()["data"][0]["id"]
            for i in range(50):
                one(c, i)
            time.sleep(0.2)
            rss0, threads0, fds0 = server.memory_info().rss, server.num_threads(), _fds(server)
            t0 = time.monotonic()
            for i in range(500):
                one(c, i)
            took = time.monotonic() - t0
            time.sleep(0.2)
            rss1, threads1, fds1 = server.memory_info().rss, server.num_threads(), _fds(server)
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()
    assert threads1 == threads0
    assert fds1 <= fds0  # no socket left open (the client's kept-alive one is in both)
    assert _mib(rss1 - rss0) < 20, f"{_mib(rss0):.1f} -> {_mib(rss1):.1f} MiB"
    count("server: requests in a row", 500)
    figure("server RSS before/after 500 requests", f"{_mib(rss0):.1f} -> {_mib(rss1):.1f} MiB")
    figure("server threads / open files before/after 500 requests", f"{threads0} -> {threads1} / {fds0} -> {fds1}")
    figure("server: time per short request (tiny model, 1-4 tokens)", f"{took / 500 * 1000:.1f} ms")
