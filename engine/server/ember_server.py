"""Ember as an OpenAI-compatible HTTP server (``ember-cli serve``).

Starlette for the app (`engine.server.app`), uvicorn for HTTP, one worker thread for the model
(`engine.server.worker`), the wire format in `engine.server.protocol`.  `EmberServer` runs it on a
background thread (tests, the desktop app); `serve` runs it in the foreground (the CLI).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time

from engine.loading.loader import LoadedModel

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Raise ValueError for a non-loopback address without an API key."""
    if not is_loopback(host) and not api_key:
        raise ValueError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could use the model. "
            "Pass --api-key (or set EMBER_API_KEY), or serve on 127.0.0.1"
        )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), bound before the server starts so the port is known."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without
    # it every response (headers, then body) waits ~40 ms on Nagle and the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class EmberServer:
    """The server for one loaded model, on a background thread: `start`, `url`, `stop`."""

    def __init__(
        self,
        lm: LoadedModel,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        api_key: str | None = None,
        model_id: str | None = None,
        max_queue: int | None = None,
        max_body_bytes: int | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        import uvicorn

        from engine.server.app import MAX_BODY_BYTES, MAX_QUEUE, SendTimeout, create_app
        from engine.server.worker import STALL_TIMEOUT

        check_bind(host, api_key)
        max_queue = MAX_QUEUE if max_queue is None else max_queue
        stall_timeout = stall_timeout or STALL_TIMEOUT
        self.socket = bind_socket(host, port)  # first: a port in use fails before the model worker starts
        self.app = create_app(
            lm,
            model_id=model_id,
            api_key=api_key,
            loopback_only=is_loopback(host),
            max_body_bytes=max_body_bytes or MAX_BODY_BYTES,
            max_queue=max_queue,
            stall_timeout=stall_timeout,
        )
        self.host = host
        self.port = self.socket.getsockname()[1]
        self.send_timeout = SendTimeout(self.app, stall_timeout)  # drops clients that stop reading
        config = uvicorn.Config(
            self.send_timeout,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # A backstop beyond the app's own queue limit: connections past it get a plain 503.
            limit_concurrency=max_queue + 64,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def model_id(self) -> str:
        return self.app.state.api.model_id

    @property
    def url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def run(self) -> None:
        """Serve in this thread until `stop` (or Ctrl+C in the main thread)."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self, timeout: float = 10.0) -> EmberServer:
        self._thread = threading.Thread(target=self.run, name="ember-server-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, cancel the request generating and refuse the waiting ones (so open streams end
        now rather than after uvicorn's grace period), then wait for the HTTP thread."""
        self._server.should_exit = True
        self.app.state.api.worker.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> EmberServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(lm: LoadedModel, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **kwargs) -> None:
    """Serve in the foreground until Ctrl+C; prints the address to stderr."""
    server = EmberServer(lm, host, port, **kwargs)
    print(f"ember-cli: serving {server.model_id} at {server.url} (Ctrl+C stops)", file=sys.stderr, flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then re-raises the signal: that is a normal stop
        pass
    print("ember-cli: stopped", file=sys.stderr, flush=True)
