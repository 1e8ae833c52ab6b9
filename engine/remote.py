"""Remote models: a small client for OpenAI-compatible servers (vLLM, llama.cpp's server, Ollama, LM
Studio, ``ember-cli serve``).

`RemoteClient.models` lists what a server offers; `RemoteClient.chat` returns a `RemoteGeneration`,
which streams over server-sent events and behaves like `engine.generation.generate.Generation`: iterate it for
`TokenEvent`s (``id`` is -1: a remote server sends text, not our token ids), then read ``text``,
``finish_reason``, ``stats`` and ``seed``.  Every failure is a `RemoteError` whose message says what
happened and what to check: connection refused, timeouts, a refused key, an unknown model, a stream
that breaks off or is not what the API promises.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from engine.errors import EmberError
from engine.generation.generate import Alternative, GenerationStats, TokenEvent
from engine.generation.sampling import SamplerSettings
from engine.inspection.inspect import Candidate, Inspection
from engine.stop_signal import StopSignal, is_stopped
from engine.text.stop_strings import StopMatcher

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0  # the longest wait for the next piece of a reply (a big model's prefill)
STOP_POLL = 0.05  # how often a waiting reply looks at its stop signal (a stop takes effect within this)

# Ember's samplers beyond OpenAI's, sent only when switched on; vLLM and llama.cpp's server know them.
# field -> value that means "off"
EXTENSION_OFF = {"top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repetition_penalty": 1.0}
EXTENSION_FIELDS = (*EXTENSION_OFF, "repetition_window")
MAX_KEPT_TOKENS = 2048  # per-token logprobs kept for the inspector (a reply's meta stays small)
LOGPROB_FLOOR = -9999.0  # stands for -inf in what is kept (JSON has no infinity)


class RemoteError(EmberError):
    """A remote server could not be used; the message is meant for the user."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def normalise_base_url(url: str) -> str:
    """``http://host:port`` or ``.../v1`` -> ``http(s)://host:port/v1`` (no trailing slash)."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        if "://" in url:
            raise RemoteError(f"{url}: only http:// and https:// addresses are supported")
        url = "http://" + url
    if not url.endswith("/v1"):
        url += "/v1"
    return url


def sampler_fields(settings: SamplerSettings) -> dict[str, Any]:
    """The request fields for Ember's sampler settings."""
    body: dict[str, Any] = {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "presence_penalty": settings.presence_penalty,
        "frequency_penalty": settings.frequency_penalty,
    }
    if settings.seed is not None:
        body["seed"] = settings.seed
    for name, off in EXTENSION_OFF.items():
        value = getattr(settings, name)
        if value != off:
            body[name] = value
    if settings.repetition_penalty != 1.0:
        body["repetition_window"] = settings.repetition_window
    return body


def _error_message(response: httpx.Response) -> str:
    try:
        body = json.loads(response.read() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.HTTPError):
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return response.reason_phrase or "no details"


class RemoteClient:
    """An OpenAI-compatible endpoint.  ``transport`` is for tests."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        # A fresh connection for every request (no keep-alive), so that each reply's socket is known to its
        # `_HangUp` and a stop can close it even while the server sends nothing.
        limits = httpx.Limits(max_keepalive_connections=0)
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, limits=limits, transport=transport
        )
        self.read_timeout = read_timeout

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, e: httpx.HTTPError) -> RemoteError:
        where = self.base_url
        if isinstance(e, httpx.ConnectTimeout):
            return RemoteError(f"{where}: no answer to the connection attempt (timed out). Check the address.")
        if isinstance(e, httpx.TimeoutException):
            return RemoteError(f"{where}: the server stopped answering (no data for {self.read_timeout:g} s).")
        if isinstance(e, httpx.ConnectError):
            return RemoteError(f"{where}: cannot connect ({e}). Is the server running, and is the address right?")
        return RemoteError(f"{where}: {type(e).__name__}: {e}")

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _error_message(response)
        if status in (401, 403):
            raise RemoteError(f"the server refused the API key ({status}): {message}. Check the key.", status=status)
        if status == 404:
            raise RemoteError(f"not found (404): {message}", status=status)
        if status in (429, 503):
            raise RemoteError(f"the server is busy ({status}): {message}. Try again shortly.", status=status)
        raise RemoteError(f"the server answered {status}: {message}", status=status)

    def models(self) -> list[str]:
        """The model ids the server lists at ``/models``."""
        try:
            response = self._http.get("/models")
            self._check(response)
            body = response.json()
        except httpx.HTTPError as e:
            raise self._fail(e) from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RemoteError(
                f"{self.base_url}/models did not answer with JSON: is this an OpenAI-style API?"
            ) from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise RemoteError(f"{self.base_url}/models answered without a 'data' list of models")
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def chat(
        self,
        model: str,
        messages: Sequence[dict[str, str]],
        settings: SamplerSettings | None = None,
        *,
        max_tokens: int | None = 512,
        stop_strings: Sequence[str] = (),
        top_logprobs: int | None = None,
        logprobs_fallback: bool = False,
        extensions_fallback: bool = True,
        should_stop: StopSignal = None,
    ) -> RemoteGeneration:
        """A streamed reply. With ``top_logprobs`` it asks for per-token logprobs; with ``logprobs_fallback``
        a 400 to that request is taken to mean the server does not offer them: the request is sent again
        without them and the generation's ``logprobs_refused`` says so. With ``extensions_fallback``, a 400
        or 422 whose message names one of Ember's extension samplers (``top_k``, ``min_p``, ...: servers
        that check fields strictly, such as ``transformers serve`` or OpenAI's own API) sends the request
        again without them, and ``extensions_refused`` says so.

        ``should_stop`` is also read from a helper thread while the reply waits for the server: a stop
        closes the connection within `STOP_POLL` seconds, even when no bytes arrive."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            **sampler_fields(settings or SamplerSettings()),
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if stop_strings:
            body["stop"] = list(stop_strings)
        if top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        return RemoteGeneration(
            self, body, should_stop, logprobs_fallback=logprobs_fallback, extensions_fallback=extensions_fallback
        )


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data`` payloads of a server-sent event stream (multi-line data joined, comments skipped)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


class _HangUp:
    """Closes a reply's connection when its stop signal fires, so that a read waiting on a silent server (a
    big model's prefill, a stalled proxy) ends at once instead of at the read timeout.

    ``trace`` is an httpcore trace hook: it learns each new connection's socket. A helper thread polls
    the stop signal every `STOP_POLL` seconds and shuts the sockets down; the blocked read then sees the
    connection end, and the server sees the client go (vLLM, llama.cpp's server and Ember's own stop
    generating). A stop during the connection attempt itself takes effect once it ends (at most
    `CONNECT_TIMEOUT`). Used as a context manager around the request."""

    def __init__(self, signal: StopSignal) -> None:
        self.signal = signal
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="remote-stop", daemon=True)

    def __enter__(self) -> _HangUp:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def trace(self, event: str, info: dict) -> None:
        if event != "connection.connect_tcp.complete":
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:  # stopped while connecting
            _shut(sock)

    def _watch(self) -> None:
        while not self._done.wait(STOP_POLL):
            if is_stopped(self.signal):
                with self._lock:
                    self.fired = True
                    sockets = list(self._sockets)
                for sock in sockets:
                    _shut(sock)
                return


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # unlike close(), this wakes a recv() blocked in another thread
    except OSError:  # already closed
        pass


@dataclass
class RemoteGeneration:
    """A streamed chat reply from a remote server; iterate once."""

    client: RemoteClient
    body: dict[str, Any]
    should_stop: StopSignal = None
    logprobs_fallback: bool = False
    extensions_fallback: bool = True
    text: str = field(default="", init=False)
    # Per token, when the server sent logprobs: [text, logprob, [[alternative, logprob], ...]] (the first
    # MAX_KEPT_TOKENS tokens): plain data for a reply's meta and `remote_inspection`.
    tokens: list[list] = field(default_factory=list, init=False)
    logprobs_refused: bool = field(default=False, init=False)
    extensions_refused: bool = field(default=False, init=False)
    finish_reason: str | None = field(default=None, init=False)
    seed: int | None = field(default=None, init=False)
    stats: GenerationStats = field(default_factory=GenerationStats, init=False)
    # Stop strings are also matched here: some servers leave the stop string in the reply (transformers
    # serve), some ignore ``stop``; text that may be the start of one is held back until it cannot be.
    _stops: StopMatcher = field(init=False, repr=False)
    _stop_hit: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self._stops = StopMatcher(self.body.get("stop") or ())

    def __iter__(self) -> Iterator[TokenEvent]:
        client = self.client
        t0 = time.perf_counter()
        hang_up = _HangUp(self.should_stop) if self.should_stop is not None else None
        extensions = {"trace": hang_up.trace} if hang_up is not None else None
        try:
            with hang_up or nullcontext():
                while True:
                    with client._http.stream(
                        "POST", "/chat/completions", json=self.body, extensions=extensions
                    ) as response:
                        if self._drop_refused(response):
                            continue
                        client._check(response)
                        kind = response.headers.get("content-type", "")
                        if "text/event-stream" not in kind:
                            raise RemoteError(
                                f"the server answered {kind or 'no content type'} instead of an event stream"
                            )
                        for data in _sse_data(response.iter_lines()):
                            if data.strip() == "[DONE]":
                                break
                            yield from self._chunk(data, t0)
                            if self._stop_hit:
                                break
                            if is_stopped(self.should_stop):
                                self.finish_reason = "cancelled"
                                return
                        break
        except httpx.HTTPError as e:
            if not (hang_up is not None and hang_up.fired):
                raise client._fail(e) from None
            self.finish_reason = "cancelled"  # the stop closed the connection: what arrived is kept
            return
        if self.finish_reason is None:
            if is_stopped(self.should_stop):
                self.finish_reason = "cancelled"
                return
            raise RemoteError("the reply broke off: the stream ended before the server said it was done")
        elapsed = time.perf_counter() - t0
        self.stats.decode_seconds = max(elapsed - self.stats.prefill_seconds, 0.0)

    def _drop_refused(self, response: httpx.Response) -> bool:
        """A 400 or 422 to a request with optional fields the caller allowed to drop: drop them and ask again.
        Extension samplers go when the error names one of them; logprobs go on any 400."""
        if response.status_code not in (400, 422):
            return False
        extensions = [k for k in EXTENSION_FIELDS if k in self.body] if self.extensions_fallback else []
        logprobs = self.logprobs_fallback and "logprobs" in self.body and response.status_code == 400
        if not extensions and not logprobs:
            return False
        message = _error_message(response)
        if any(k in message for k in extensions):
            self.body = {k: v for k, v in self.body.items() if k not in EXTENSION_FIELDS}
            self.extensions_refused = True
            return True
        if logprobs:
            self.body = {k: v for k, v in self.body.items() if k not in ("logprobs", "top_logprobs")}
            self.logprobs_refused = True
            return True
        return False

    def _keep(self, entries: list) -> None:
        def lp(value) -> float:
            return round(max(float(value), LOGPROB_FLOOR), 4)

        try:
            for e in entries[: MAX_KEPT_TOKENS - len(self.tokens)]:
                alternatives = [[str(a["token"]), lp(a["logprob"])] for a in e.get("top_logprobs") or []]
                self.tokens.append([str(e["token"]), lp(e["logprob"]), alternatives])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise RemoteError("malformed stream: logprobs not in the OpenAI format") from None

    def _chunk(self, data: str, t0: float) -> Iterator[TokenEvent]:
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise RemoteError(f"malformed stream: not JSON: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise RemoteError(f"malformed stream: expected an object, got {data[:80]!r}")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise RemoteError(f"the server failed mid-reply: {message}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.stats.generated_tokens = int(usage.get("completion_tokens") or self.stats.generated_tokens)
        if isinstance(chunk.get("seed"), int):
            self.seed = chunk["seed"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise RemoteError(f"malformed stream: a chunk without 'choices': {data[:80]!r}")
        for choice in choices[:1]:
            if not isinstance(choice, dict):
                raise RemoteError("malformed stream: a choice is not an object")
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            entries = ((choice.get("logprobs") or {}).get("content")) or []
            if text or entries:
                if not self.stats.prefill_seconds:
                    self.stats.prefill_seconds = time.perf_counter() - t0
                text = text if isinstance(text, str) else ""
                if not isinstance(usage, dict):
                    self.stats.generated_tokens += max(len(entries), 1 if text else 0)
                released, hit = self._stops.push(text)
                event = _event(released, entries)
                self._keep(entries)
                if released or entries:
                    self.text += released
                    yield event
                if hit:  # the server sent a stop string (or ignores them): the reply ends before it
                    self.finish_reason = "stop"
                    self._stop_hit = True
                    return
            if choice.get("finish_reason"):
                held = self._stops.flush()
                if held:
                    self.text += held
                    yield TokenEvent(-1, held, math.nan, ())
                self.finish_reason = choice["finish_reason"]


def _event(text: str, entries: list) -> TokenEvent:
    """One event per chunk; with logprobs, the chunk's tokens' log-probability (summed) and the last
    token's alternatives."""
    logprob, top = math.nan, ()
    try:
        if entries:
            logprob = sum(float(e["logprob"]) for e in entries)
            top = tuple(
                Alternative(-1, str(a["token"]), float(a["logprob"])) for a in entries[-1].get("top_logprobs", [])
            )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise RemoteError("malformed stream: logprobs not in the OpenAI format") from None
    return TokenEvent(-1, text, logprob, top)


PROMPT_MARK = "(prompt)"


def remote_inspection(tokens: Sequence) -> Inspection:
    """An `Inspection` of a remote reply from its kept per-token logprobs (`RemoteGeneration.tokens`):
    the pieces, their log-probabilities and the server's alternatives; no ids (a remote server sends text),
    no attention, no logit lens. Position 0 stands for the prompt, which the server scored out of sight,
    so the reply's first token has a position before it for its alternatives, as in a local inspection.
    Raises ValueError for data that is not in that shape (a reply's meta may come from an import)."""
    pieces, logprobs, top = [PROMPT_MARK], [None], []
    try:
        for text, logprob, alternatives in tokens:
            pieces.append(str(text))
            logprobs.append(float(logprob))
            top.append([Candidate(-1, str(a), float(lp)) for a, lp in alternatives])
    except (TypeError, ValueError) as e:
        raise ValueError(f"the reply's token probabilities are not in the expected shape: {e}") from None
    if len(pieces) == 1:
        raise ValueError("the reply has no token probabilities")
    n = len(pieces)
    return Inspection(
        ids=[-1] * n,
        pieces=pieces,
        special=[True] + [False] * (n - 1),
        token_logprobs=logprobs,
        top_raw=top + [[]],
        top_sampled=[[] for _ in range(n)],
    )


class KeyStore:
    """API keys for remote endpoints, by base URL: in the system keyring (the ``keyring`` package)
    where one works, otherwise in ``api_keys.json`` under ``folder``, readable only by the user (0600).
    Never in the conversation database or exports: callers keep only the base URL there."""

    SERVICE = "Ember remote endpoint"

    def __init__(self, folder: Path, *, use_keyring: bool = True) -> None:
        self.file = Path(folder) / "api_keys.json"
        self._keyring = None
        if use_keyring:
            try:
                import keyring
                from keyring.backends.fail import Keyring as NoKeyring

                if not isinstance(keyring.get_keyring(), NoKeyring):
                    self._keyring = keyring
            except Exception:  # not installed, or no usable backend (a headless Linux box)
                self._keyring = None

    @property
    def backend(self) -> str:
        return "keyring" if self._keyring is not None else "file"

    def _read_file(self) -> dict[str, str]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return (
            {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(data, dict)
            else {}
        )

    def _write_file(self, keys: dict[str, str]) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(keys, f)
        os.chmod(tmp, 0o600)  # also when the file already existed with wider permissions
        os.replace(tmp, self.file)

    def get(self, base_url: str) -> str | None:
        base_url = normalise_base_url(base_url)
        if self._keyring is not None:
            try:
                return self._keyring.get_password(self.SERVICE, base_url)
            except Exception:
                pass
        return self._read_file().get(base_url)

    def set(self, base_url: str, key: str | None) -> None:
        """Store the key (None or "": forget it)."""
        base_url = normalise_base_url(base_url)
        if self._keyring is not None:
            try:
                if key:
                    self._keyring.set_password(self.SERVICE, base_url, key)
                else:
                    try:
                        self._keyring.delete_password(self.SERVICE, base_url)
                    except Exception:
                        pass
                return
            except Exception:  # the keyring refused (locked, no backend after all): fall back to the file
                pass
        keys = self._read_file()
        if key:
            keys[base_url] = key
        else:
            keys.pop(base_url, None)
        self._write_file(keys)
