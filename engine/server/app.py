"""The HTTP side: a Starlette app serving the OpenAI-compatible endpoints.

- ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (streaming as
  server-sent events when ``"stream": true``), and ``GET /health`` (no key needed).
- With an API key, every ``/v1`` request needs ``Authorization: Bearer KEY`` (401 otherwise).
- Bodies over ``max_body_bytes`` get 413, bodies that are not JSON 400, POSTs that are not
  ``application/json`` 415 (so a web page cannot post to the server without a CORS preflight, which
  it never answers).
- Served on loopback, only loopback ``Host`` headers are accepted (no DNS rebinding).
- At most ``max_queue`` requests wait behind the one generating; more get 429 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.loader import LoadedModel
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
from engine.server.worker import Busy, Job, JobStream, ModelWorker

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
    ) -> None:
        self.lm = lm
        self.model_id = model_id or lm.name
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.worker = ModelWorker(lm, max_queue=max_queue)

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
        try:
            self._check_key(request)
            body = await _read_json(request, self.max_body_bytes)
            req = parse_request(body, chat=chat, served={self.model_id})
            stream = JobStream(asyncio.get_running_loop())
            job = Job(req, stream.emit)
            try:
                self.worker.submit(job)
            except Busy:
                raise APIError(
                    429, "the server is busy: too many requests are waiting; retry shortly", type="rate_limit_error"
                ) from None
            try:
                # Wait for the first event: a request that fails before its first token gets a plain
                # HTTP error rather than a stream that opens and then breaks.
                first = await self._next(stream, job, request)
                if first[0] == "error":
                    raise first[1]
            except BaseException:
                job.cancel.set()
                raise
        except APIError as e:
            return _error(e)
        if req.stream:
            return StreamingResponse(
                self._sse(req, job, stream, first),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            return JSONResponse(await self._collect(req, job, stream, first, request))
        except APIError as e:
            return _error(e)
        finally:
            job.cancel.set()

    async def _next(self, stream: JobStream, job: Job, request: Request) -> tuple[str, Any]:
        """The next event; cancels the job and raises when the client has gone away meanwhile."""
        while True:
            try:
                return await asyncio.wait_for(stream.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel.set()
                    raise APIError(499, "the client closed the connection") from None

    async def _collect(
        self, req: CompletionRequest, job: Job, stream: JobStream, event: tuple[str, Any], request: Request
    ) -> dict[str, Any]:
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
            event = await self._next(stream, job, request)

    async def _sse(
        self, req: CompletionRequest, job: Job, stream: JobStream, event: tuple[str, Any]
    ) -> AsyncIterator[str]:
        def data(obj: dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        lp = CompletionLogprobs(req.top_logprobs or 0)
        try:
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
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()  # the client went away, or we are done: either way stop generating


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
) -> Starlette:
    """The ASGI app for one loaded model.  ``loopback_only`` accepts only loopback Host headers."""
    api = EmberAPI(lm, model_id=model_id, api_key=api_key, max_body_bytes=max_body_bytes, max_queue=max_queue)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)] if loopback_only else []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        await asyncio.to_thread(api.worker.close)

    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error}, lifespan=lifespan
    )
    app.state.api = api
    return app
