"""The HTTP side: a Starlette app serving the OpenAI-compatible endpoints.

- ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (streaming as
  server-sent events when ``"stream": true``), and ``GET /health`` (no key needed).
- With an API key, every ``/v1`` request needs ``Authorization: Bearer KEY`` (401 otherwise).
- Bodies over ``max_body_bytes`` get 413, bodies that are not JSON 400, POSTs that are not
  ``application/json`` 415 (so a web page cannot post to the server without a CORS preflight, which
  it never answers).
- Served on loopback, only loopback ``Host`` headers are accepted (no DNS rebinding).
- At most ``max_queue`` requests wait behind the one generating; more get 429 at once.
- A client that goes away has its job cancelled as soon as the server sees the connection close: the
  generation stops before its next token, a job still waiting never starts.
- A client that stops reading never slows the model: its generation goes on at the model's pace (the
  worker never waits for a client while it holds the model), and the reply waits here, at most
  ``max_tokens`` tokens.  A response that makes no progress to its client for ``stall_timeout`` seconds
  is abandoned and its connection aborted (`SendTimeout`); a generation still running for it is then
  cancelled.
- A bug (an exception nobody expected, here or in the worker) gets a 500 with the OpenAI error body, or
  once a stream has started, an error event and then ``data: [DONE]``; the traceback goes to the log and
  the server keeps serving (tests/engine/server/test_server_faults.py injects such faults at random points).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.loading.loader import LoadedModel
from engine.server.protocol import (
    FINISH_REASONS,
    APIError,
    CompletionLogprobs,
    CompletionRequest,
    Outcome,
    chat_logprob,
    chunk_body,
    parse_request,
    response_body,
    usage_chunk,
)
from engine.server.worker import STALL_TIMEOUT, Busy, Job, JobStream, ModelWorker

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more text than a context window holds
MAX_QUEUE = 16
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def _error(e: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status in (429, 503) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _read_json(request: Request, limit: int) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise APIError(415, "send the body as JSON with Content-Type: application/json")
    too_large = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


class EmberAPI:
    """The endpoints, bound to one loaded model and its worker."""

    def __init__(
        self,
        lm: LoadedModel,
        *,
        model_id: str | None = None,
        api_key: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_queue: int = MAX_QUEUE,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.lm = lm
        self.model_id = model_id or lm.name
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.worker = ModelWorker(lm, max_queue=max_queue, stall_timeout=stall_timeout)

    def _check_key(self, request: Request) -> None:
        if not self.api_key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise APIError(401, "a valid API key is required: Authorization: Bearer KEY", code="invalid_api_key")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        try:
            self._check_key(request)
        except APIError as e:
            return _error(e)
        created = int(self.lm.path.stat().st_mtime) if self.lm.path.exists() else 0
        model = {"id": self.model_id, "object": "model", "created": created, "owned_by": "ember"}
        model["context_length"] = self.lm.context_length  # extension, as llama.cpp and LM Studio report it
        return JSONResponse({"object": "list", "data": [model]})

    async def chat_completions(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, *, chat: bool) -> Response:
        job: Job | None = None
        streaming = False
        try:
            self._check_key(request)
            body = await self._read_body(request)
            req = parse_request(body, chat=chat, served={self.model_id})
            stream = JobStream(asyncio.get_running_loop())
            job = Job(req, stream)
            try:
                self.worker.submit(job)
            except Busy:
                raise APIError(
                    429, "the server is busy: too many requests are waiting; retry shortly", type="rate_limit_error"
                ) from None
            async with _cancel_on_disconnect(request, job):
                # Wait for the first event: a request that fails before its first token gets a plain
                # HTTP error rather than a stream that opens and then breaks.
                first = await stream.get()
                if first[0] == "error":
                    raise first[1]
                if not req.stream:
                    return JSONResponse(await self._collect(req, stream, first))
            streaming = True
            return _EventStream(
                job,
                self._sse(req, job, stream, first),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        except APIError as e:
            return _error(e)
        except Exception as e:  # a bug: answer it as OpenAI would, keep serving (the worker does the same)
            log.exception("the request failed")
            return _error(_internal(e))
        finally:
            if job is not None and not streaming:  # done, failed, or the client went away: stop generating
                job.cancel.set()

    async def _read_body(self, request: Request) -> Any:
        """The JSON body; one that has not arrived whole within the stall timeout gets 408."""
        timeout = self.worker.stall_timeout
        try:
            with anyio.fail_after(timeout):
                return await _read_json(request, self.max_body_bytes)
        except TimeoutError:
            raise APIError(408, f"the request body did not arrive within {timeout:g} s", code="timeout") from None
        except ClientDisconnect:  # nobody will read the answer; uvicorn drops it
            raise APIError(499, "the client closed the connection") from None

    async def _collect(self, req: CompletionRequest, stream: JobStream, event: tuple[str, Any]) -> dict[str, Any]:
        text: list[str] = []
        logprobs: list[Any] = []
        lp = CompletionLogprobs(req.top_logprobs or 0)
        while True:
            kind, value = event
            if kind == "error":
                raise value
            if kind == "done":
                return response_body(req, "".join(text), logprobs, value)
            for token, piece in value:
                text.append(token.text)
                if req.top_logprobs is not None:
                    if req.chat:
                        logprobs.append(chat_logprob(token, piece, req.top_logprobs))
                    else:
                        logprobs.append(lp.entry(token, piece))
            event = await stream.get()

    async def _sse(
        self, req: CompletionRequest, job: Job, stream: JobStream, event: tuple[str, Any]
    ) -> AsyncIterator[str]:
        def data(obj: dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            try:
                lp = CompletionLogprobs(req.top_logprobs or 0)
                if req.chat:
                    yield data(chunk_body(req, text="", first=True))
                while True:
                    kind, value = event
                    if kind == "error":
                        # Headers are sent: report it in the stream, as OpenAI does.
                        yield data(value.body())
                        break
                    if kind == "done":
                        outcome: Outcome = value
                        yield data(chunk_body(req, finish=_finish(outcome)))
                        if req.include_usage:
                            yield data(usage_chunk(req, outcome))
                        break
                    for token, piece in value:
                        if req.top_logprobs is None:
                            if token.text:
                                yield data(chunk_body(req, text=token.text))
                        elif req.chat:
                            entry = chat_logprob(token, piece, req.top_logprobs)
                            yield data(chunk_body(req, text=token.text, logprobs=[entry]))
                        else:
                            yield data(chunk_body(req, text=token.text, logprobs=lp.entry(token, piece)))
                    event = await stream.get()
            except Exception as e:  # a bug after the headers went out: an error event ends the stream, not a cut
                log.exception("the stream failed")
                job.cancel.set()
                yield data(_internal(e).body())
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()  # the client went away, or we are done: either way stop generating


@contextlib.asynccontextmanager
async def _cancel_on_disconnect(request: Request, job: Job) -> AsyncIterator[None]:
    """Cancel ``job`` the moment its client goes away, while the block runs (the body has been read, so
    the next ASGI message is the disconnect).  The worker then ends the job with its last event, which
    is what the block waits for.  A streaming response listens for itself once it has started."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel.set()

    watcher = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        watcher.cancel()


class _EventStream(StreamingResponse):
    """Server-sent events for one job, which is cancelled however the response ends: finished, the client
    gone (Starlette cancels the sending task, which may leave the body iterator suspended, unclosed, until
    the garbage collector finds it), or abandoned by `SendTimeout`."""

    def __init__(self, job: Job, content: AsyncIterator[str], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel.set()


class _ClientStalled(Exception):
    """A send to the client made no progress for the stall timeout."""


class SendTimeout:
    """ASGI middleware, outside the app (uvicorn's own ``send`` must reach it): a response that cannot
    send anything to its client for ``timeout`` seconds (the client stopped reading and every buffer on
    the way is full) is abandoned and its connection aborted, so a client that stops reading holds a
    connection, and the reply waiting for it, that long at most.  Aborted, not closed: closing waits to
    flush a write buffer that this client will never read, and would keep the connection forever."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout
        self.dropped = 0  # clients dropped for taking nothing
        self.aborted = 0  # of those, connections aborted (the rest were left to the server to close)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_in_time(message: Message) -> None:
            try:
                with anyio.fail_after(self.timeout):
                    await send(message)
            except TimeoutError:
                raise _ClientStalled from None

        try:
            await self.app(scope, receive, send_in_time)
        except _ClientStalled:
            self.dropped += 1
            if _abort_connection(send):
                self.aborted += 1
                log.warning("dropped a client that took nothing for %g s", self.timeout)
            else:  # not uvicorn's request cycle (another server, or a uvicorn that changed it)
                log.error(
                    "dropped a client that took nothing for %g s, but could not abort its connection: "
                    "the server may keep it open until the client reads",
                    self.timeout,
                )


def _abort_connection(send: Send) -> bool:
    """Abort the connection that ``send`` writes to, dropping what waits in its buffer.  uvicorn's ``send``
    is a method of its request cycle, which holds the asyncio transport (h11 and httptools alike); with
    another server, False, and the server closes the connection as it sees fit.  This reaches into
    uvicorn: tests/engine/server/test_server_abuse.py fails if a uvicorn upgrade takes the path away."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if abort is None:
        return False
    abort()
    return True


def _internal(e: Exception) -> APIError:
    return APIError(500, f"the server failed: {e}", type="server_error")


def _finish(outcome: Outcome) -> str:
    return FINISH_REASONS[outcome.finish_reason]


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or "error"
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return _error(APIError(status, f"{request.method} {request.url.path}: {detail}", type=kind))


def create_app(
    lm: LoadedModel,
    *,
    model_id: str | None = None,
    api_key: str | None = None,
    loopback_only: bool = True,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_queue: int = MAX_QUEUE,
    stall_timeout: float = STALL_TIMEOUT,
) -> Starlette:
    """The ASGI app for one loaded model.  ``loopback_only`` accepts only loopback Host headers;
    ``stall_timeout`` is how long a request body may take to arrive (serve the app wrapped in
    `SendTimeout` with the same timeout, as `EmberServer` does, to drop a client that stops reading)."""
    api = EmberAPI(
        lm,
        model_id=model_id,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        max_queue=max_queue,
        stall_timeout=stall_timeout,
    )
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)] if loopback_only else []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.loop = asyncio.get_running_loop()  # for tests only: they count the tasks left on it
        yield
        await asyncio.to_thread(api.worker.close)

    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error}, lifespan=lifespan
    )
    app.state.api = api
    return app
