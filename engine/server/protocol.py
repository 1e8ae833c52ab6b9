"""The OpenAI wire format: request bodies in, validated `CompletionRequest`s out; responses and
stream chunks back.  Pure Python, no HTTP: the app (`engine.server.app`) does the transport.

Every problem with a request raises `APIError`, which carries the HTTP status and the OpenAI-style
error body ``{"error": {"message", "type", "param", "code"}}`` that clients such as the official
``openai`` package turn into typed exceptions.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field, fields
from typing import Any

from engine.generation.generate import TokenEvent
from engine.generation.sampling import SamplerSettings

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
MAX_TOP_LOGPROBS = 20  # chat: top_logprobs in [0, 20], as OpenAI documents
MAX_COMPLETION_LOGPROBS = 5  # legacy completions: logprobs in [0, 5]

# Sampler fields a request may set.  temperature, top_p, presence_penalty, frequency_penalty and
# seed are OpenAI's own; the rest are Ember extensions (send them in the body, with the openai
# client as ``extra_body={...}``).  Unset fields take SamplerSettings' defaults.
SAMPLER_FIELDS = tuple(f.name for f in fields(SamplerSettings))

CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}


class APIError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, `body()` the JSON error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class CompletionRequest:
    """One validated request: what to generate and how to answer."""

    chat: bool
    model: str
    messages: list[dict[str, str]] | None  # chat: rendered with the model's template by the worker
    prompt: str | None  # completions: the raw prompt text
    settings: SamplerSettings
    max_tokens: int | None  # None: until the context is full
    stop: list[str]
    stream: bool
    include_usage: bool
    top_logprobs: int | None  # None: no logprobs; else how many alternatives per token
    think: bool | None = None  # chat_template_kwargs.enable_thinking (None: the template's default)
    id: str = field(default_factory=lambda: "")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)


def _present(body: dict[str, Any], key: str) -> bool:
    return body.get(key) is not None


def _int_field(body: dict[str, Any], key: str, low: int, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    span = f">= {low}" if high is None else f"in [{low}, {high}]"
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise bad_request(f"{key} must be an integer {span}, got {value!r}", key)
    return value


def _bool_field(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{key} must be true or false, got {value!r}", key)
    return value


def _sampler_settings(body: dict[str, Any]) -> SamplerSettings:
    given = {name: body[name] for name in SAMPLER_FIELDS if body.get(name) is not None}
    try:
        return SamplerSettings(**given)
    except ValueError as e:
        message = str(e)
        param = message.split(" ", 1)[0]
        raise bad_request(message, param if param in SAMPLER_FIELDS else None) from None


def _stop_strings(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in stops):
        raise bad_request(
            f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_LENGTH} characters", "stop"
        )
    return [s for s in stops if s]


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise bad_request("only n=1 is supported", "n")
    if body.get("best_of") not in (None, 1):
        raise bad_request("only best_of=1 is supported", "best_of")
    for key in ("tools", "functions", "logit_bias"):
        if body.get(key):
            raise bad_request(f"{key} is not supported by this server", key)
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise bad_request("only response_format {'type': 'text'} is supported", "response_format")
    if body.get("echo"):
        raise bad_request("echo is not supported", "echo")
    if body.get("suffix"):
        raise bad_request("suffix is not supported", "suffix")


def _model(body: dict[str, Any], served: set[str]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: one of the ids that /v1/models lists", "model")
    if model not in served:
        raise APIError(
            404,
            f"The model {model!r} does not exist on this server; it serves {', '.join(sorted(served))}",
            param="model",
            code="model_not_found",
        )
    return model


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"messages[{index}].content: only text parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise bad_request(f"messages[{index}].content must be a string or a list of text parts", "messages")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object", "messages")
        role = CHAT_ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise bad_request(
                f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {message.get('role')!r}", "messages"
            )
        out.append({"role": role, "content": _message_text(message.get("content"), i)})
    return out


def _think(body: dict[str, Any]) -> bool | None:
    """``chat_template_kwargs.enable_thinking``, as vLLM and llama.cpp's server take it; other keys are
    ignored (the template gets no variables from the client but this switch)."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        return None
    if not isinstance(kwargs, dict):
        raise bad_request("chat_template_kwargs must be an object", "chat_template_kwargs")
    think = kwargs.get("enable_thinking")
    if think is not None and not isinstance(think, bool):
        message = f"chat_template_kwargs.enable_thinking must be true or false, got {think!r}"
        raise bad_request(message, "chat_template_kwargs")
    return think


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("prompt must be a non-empty string (one prompt per request)", "prompt")
    return prompt


def parse_request(body: Any, *, chat: bool, served: set[str]) -> CompletionRequest:
    """Validate a decoded JSON body for ``/v1/chat/completions`` (chat) or ``/v1/completions``."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = _model(body, served)
    _refuse_unsupported(body)
    messages = _messages(body) if chat else None
    prompt = None if chat else _prompt(body)
    max_tokens = _int_field(body, "max_completion_tokens", 1) if chat else None
    if max_tokens is None:
        max_tokens = _int_field(body, "max_tokens", 1)
    if chat:
        top = _int_field(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if _bool_field(body, "logprobs"):
            top_logprobs = top or 0
        elif top is not None:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        else:
            top_logprobs = None
    else:
        top_logprobs = _int_field(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS)
    stream = _bool_field(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    return CompletionRequest(
        chat=chat,
        model=model,
        messages=messages,
        prompt=prompt,
        settings=_sampler_settings(body),
        max_tokens=max_tokens,
        stop=_stop_strings(body),
        stream=stream,
        include_usage=include_usage,
        top_logprobs=top_logprobs,
        think=_think(body) if chat else None,
    )


# Responses ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the worker reports when a generation ends."""

    finish_reason: str  # the engine's: eos, stop, length, context, cancelled
    prompt_tokens: int
    completion_tokens: int
    seed: int | None

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


_ESCAPED_BYTE = re.compile(r"\\x([0-9a-f]{2})")


def token_bytes(piece: str) -> list[int]:
    """The UTF-8 bytes of a token's text; a token holding part of a character shows as ``\\xe4``
    escapes in `Tokenizer.piece`, which are turned back into the raw bytes."""
    out = bytearray()
    pos = 0
    for m in _ESCAPED_BYTE.finditer(piece):
        out += piece[pos : m.start()].encode("utf-8")
        out.append(int(m.group(1), 16))
        pos = m.end()
    out += piece[pos:].encode("utf-8")
    return list(out)


def chat_logprob(event: TokenEvent, piece: str, top: int) -> dict[str, Any]:
    """One entry of ``choices[0].logprobs.content``."""
    return {
        "token": piece,
        "logprob": event.logprob,
        "bytes": token_bytes(piece),
        "top_logprobs": [
            {"token": a.text, "logprob": a.logprob, "bytes": token_bytes(a.text)} for a in event.top[:top]
        ],
    }


class CompletionLogprobs:
    """The legacy completions ``logprobs`` object, built token by token."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.offset = 0

    def entry(self, event: TokenEvent, piece: str) -> dict[str, list]:
        out = {
            "tokens": [piece],
            "token_logprobs": [event.logprob],
            "top_logprobs": [{a.text: a.logprob for a in event.top[: self.top]}],
            "text_offset": [self.offset],
        }
        self.offset += len(event.text)
        return out

    @staticmethod
    def merge(entries: list[dict[str, list]]) -> dict[str, list]:
        keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
        return {k: [v for e in entries for v in e[k]] for k in keys}


def response_body(req: CompletionRequest, text: str, logprobs: list, outcome: Outcome) -> dict[str, Any]:
    """The whole (non-streaming) response."""
    finish = FINISH_REASONS[outcome.finish_reason]
    if req.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": logprobs} if req.top_logprobs is not None else None,
            "finish_reason": finish,
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": CompletionLogprobs.merge(logprobs) if req.top_logprobs is not None else None,
            "finish_reason": finish,
        }
    return {
        "id": req.id,
        "object": "chat.completion" if req.chat else "text_completion",
        "created": req.created,
        "model": req.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
        "usage": outcome.usage(),
        "seed": outcome.seed,  # extension: the seed used, to replay this reply
    }


def chunk_body(
    req: CompletionRequest, *, text: str | None = None, logprobs: Any = None, finish: str | None = None, first=False
) -> dict[str, Any]:
    """One streamed chunk (``data: {...}``)."""
    if req.chat:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": {"content": logprobs} if logprobs is not None else None,
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
    return {
        "id": req.id,
        "object": "chat.completion.chunk" if req.chat else "text_completion",
        "created": req.created,
        "model": req.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
    }


def usage_chunk(req: CompletionRequest, outcome: Outcome) -> dict[str, Any]:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, only usage."""
    body = chunk_body(req)
    body["choices"] = []
    body["usage"] = outcome.usage()
    body["seed"] = outcome.seed
    return body


SYSTEM_FINGERPRINT = "ember"
