"""Chat templates: render a conversation into the prompt text a model was trained on.

Models ship their chat template as Jinja source (in ``tokenizer_config.json`` or the GGUF key
``tokenizer.chat_template``).  :class:`ChatTemplate` renders it exactly as transformers'
``apply_chat_template(..., tokenize=False)`` does: the same sandboxed Jinja environment, the same
``trim_blocks``/``lstrip_blocks`` settings and the same extra globals and filters
(``raise_exception``, ``strftime_now``, ``tojson``, ``namespace``, ``dict``).

Templates come from downloaded files, so they are treated as hostile code.  Rendering is bounded in
time and size:

* every loop iteration, call, filter, attribute or item lookup and output chunk checks a deadline, so
  even a loop that outputs nothing and calls nothing stops (each ``for`` loop's iterable is wrapped in
  a guard when the template is compiled);
* ``range`` is capped by the sandbox; ``*``, ``**``, ``%`` and width-taking filters and string methods
  refuse arguments that would build values larger than ``max_chars`` (or integers beyond
  ``_MAX_INT_BITS`` bits) before allocating them;
* output stops as soon as more than ``max_chars`` characters have been produced.

Every failure (syntax, sandbox violation, ``raise_exception``, undefined values, limits) surfaces as
:class:`~engine.errors.TemplateError` with a message meant for the user.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

from engine.errors import TemplateError, UnsafeTemplateError

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The ChatML template (as transformers documents it), used when a model ships no template."""

_MAX_INT_BITS = 1 << 16
"""Largest integer (in bits) that ``*`` and ``**`` may produce: stops ``10 ** 10 ** 10`` CPU bombs."""

_WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice", "format", "tojson"})
"""Filters whose integer arguments size their output: those are capped at ``max_chars``."""

_LOOP_GUARD = "ember_loop_guard"
"""Name of the environment method that wraps every ``for`` loop's iterable."""

_SIZE_CHECK = "check_size"
"""Name of the environment method that checks the result of every ``~`` concatenation."""


class _LimitExceeded(Exception):
    """Raised inside rendering when a time or size limit is hit."""


class _TemplateRaised(jinja2.TemplateError):
    """Raised by the template's own ``raise_exception(message)``."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' ``tojson``: plain ``json.dumps`` without Jinja's HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name templates use
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict`` for templates without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(Namespace):
    """``namespace()`` that refuses underscore-prefixed attribute names."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - same signature trick as Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a namespace cannot hold the underscore-prefixed attribute {name!r}")


class _GenerationTag(Extension):
    """Accepts transformers' ``{% generation %}...{% endgeneration %}`` and renders its body as is."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _ints_in(values: Iterable[Any]) -> Iterator[int]:
    """The integers among ``values`` and one level inside the tuples, lists and mappings there."""
    for value in values:
        if isinstance(value, Mapping):
            yield from (v for v in value.values() if isinstance(v, int))
        elif isinstance(value, (tuple, list)):
            yield from (v for v in value if isinstance(v, int))
        elif isinstance(value, int):
            yield value


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """transformers' chat-template environment plus deadline and size checks."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, max_chars: int) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
        self.max_chars = max_chars
        self.deadline: ContextVar[float | None] = ContextVar("chat_template_deadline", default=None)
        self.filters["tojson"] = _tojson
        for name in _WIDTH_FILTERS:
            self.filters[name] = self._guard_filter(name, self.filters[name])
        self.globals.pop("lipsum")  # lipsum(n) loops n times in one call: a time bomb no template uses
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now
        self.globals["dict"] = _TemplateDict()
        self.globals["namespace"] = _TemplateNamespace

    # --- limits ---------------------------------------------------------------------------------------

    def check_time(self) -> None:
        """Raise once the current render's deadline has passed."""
        deadline = self.deadline.get()
        if deadline is not None and time.monotonic() > deadline:
            raise _LimitExceeded("it took too long to render (is there a runaway loop?)")

    def check_size(self, value: Any) -> Any:
        """Return ``value`` unless it is a string or container longer than ``max_chars``."""
        if isinstance(value, (str, list, tuple, dict)) and len(value) > self.max_chars:
            raise _LimitExceeded(f"it built a value longer than {self.max_chars} items")
        return value

    def check_ints(self, values: Iterable[Any]) -> None:
        """Refuse integer arguments that would size an output beyond ``max_chars``."""
        if any(abs(value) > self.max_chars for value in _ints_in(values)):
            raise _LimitExceeded(f"it asked for a width or count above {self.max_chars}")

    def check_format(self, fmt: str) -> None:
        """Refuse format strings with widths or precisions above ``max_chars``."""
        if any(int(digits) > self.max_chars for digits in re.findall(r"\d+", fmt)):
            raise _LimitExceeded(f"it used a format width above {self.max_chars}")

    def _guard_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a width-taking filter: check the deadline, its size arguments and its result."""

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.check_time()
            values = [arg for arg in args if not isinstance(arg, (Context, jinja2.Environment))]
            if name == "format" and values:
                self.check_format(str(values[0]))
            self.check_ints([*values[1:], *kwargs.values()])
            return self.check_size(func(*args, **kwargs))

        return guarded

    def ember_loop_guard(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Yield from ``iterable``, checking the deadline before each item (wraps every ``for`` loop)."""
        for item in iterable:
            self.check_time()
            yield item

    # --- sandbox hooks --------------------------------------------------------------------------------

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        __self.check_time()
        if isinstance(getattr(__obj, "__self__", None), str):  # str.center(n), str.zfill(n), ...
            __self.check_ints([*args, *kwargs.values()])
        return __self.check_size(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.check_time()
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # Jinja returns an undefined that only fails when used, so ``{{ f.__globals__ }}`` prints nothing;
        # fail at once instead: no legitimate template reads private attributes or mutating methods.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.check_time()
        if operator == "*":
            self._check_multiply(left, right)
        elif operator == "**":
            self._check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            self.check_format(left)
            self.check_ints([right])
        return self.check_size(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        self.check_format(value.__self__)

        @functools.wraps(wrapped)
        def guarded(*args: Any, **kwargs: Any) -> str:
            self.check_ints([*args, *kwargs.values()])
            return self.check_size(wrapped(*args, **kwargs))

        return guarded

    def _check_multiply(self, left: Any, right: Any) -> None:
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise _LimitExceeded("it multiplied huge numbers")
            return
        sequence, count = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(sequence, (str, list, tuple)) and isinstance(count, int):
            if len(sequence) * count > self.max_chars:
                raise _LimitExceeded(f"it repeated a value beyond {self.max_chars} items")

    def _check_power(self, base: Any, exponent: Any) -> None:
        if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1:
            if exponent * base.bit_length() > _MAX_INT_BITS:
                raise _LimitExceeded("it raised a number to a huge power")


def _call_env(method: str, node: nodes.Expr) -> nodes.Call:
    """An AST node calling ``environment.<method>(node)``."""
    return nodes.Call(nodes.EnvironmentAttribute(method), [node], [], None, None, lineno=node.lineno)


class _Instrument(NodeTransformer):
    """Route every ``for`` iterable through the loop guard and every ``~`` result through the size check.

    The guard checks the deadline on each iteration, so a loop that neither outputs nor calls
    anything still stops; the size check stops string doubling with ``~`` before it eats memory.
    """

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = _call_env(_LOOP_GUARD, node.iter)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return _call_env(_SIZE_CHECK, node)


class ChatTemplate:
    """A compiled chat template, rendered under time and size limits.

    ``source`` None (or blank) means the model ships no template: :data:`CHATML` is used and
    ``is_fallback`` is True.  ``bos_token``/``eos_token`` are passed to the template as transformers
    passes the tokenizer's special tokens.  ``variables``: the names the template reads from its caller
    (``messages``, ``enable_thinking``, ...), found in its parsed source without running it.  Raises
    :class:`TemplateError` on a syntax error.
    """

    def __init__(
        self,
        source: str | None,
        *,
        bos_token: str = "",
        eos_token: str = "",
        max_seconds: float = 2.0,
        max_chars: int = 1_000_000,
    ) -> None:
        self.is_fallback = source is None or not source.strip()
        self.source: str = CHATML if self.is_fallback else source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.max_seconds = max_seconds
        self.max_chars = max_chars
        self._env = _GuardedEnvironment(max_chars)
        try:
            tree = self._env.parse(self.source)
            self.variables: frozenset[str] = frozenset(meta.find_undeclared_variables(tree))
            self._template = self._env.from_string(_Instrument().visit(tree))
        except jinja2.TemplateSyntaxError as exc:
            message = f"The chat template has a syntax error on line {exc.lineno}: {exc.message}"
            raise TemplateError(message) from None
        except Exception as exc:  # a compile-time failure of any other kind is still the template's fault
            raise TemplateError(f"The chat template could not be compiled: {exc}") from None

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True, **extra: Any) -> str:
        """Render ``messages`` (dicts with ``role`` and ``content``) into prompt text.

        ``extra`` is passed to the template as further variables (``tools``, ``documents``,
        ``enable_thinking``, ...); ``tools`` and ``documents`` default to None as in transformers.
        """
        variables = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "tools": None,
            "documents": None,
            **extra,
            "messages": [dict(message) for message in messages],
            "add_generation_prompt": add_generation_prompt,
        }
        token = self._env.deadline.set(time.monotonic() + self.max_seconds)
        try:
            return self._render(variables)
        finally:
            self._env.deadline.reset(token)

    def _render(self, variables: dict[str, Any]) -> str:
        chunks: list[str] = []
        size = 0
        stream = self._template.generate(**variables)
        try:
            for chunk in stream:
                size += len(chunk)
                if size > self.max_chars:
                    raise _LimitExceeded(f"it produced more than {self.max_chars} characters")
                self._env.check_time()
                chunks.append(chunk)
        except _LimitExceeded as exc:
            raise UnsafeTemplateError(f"The chat template was stopped: {exc}.") from None
        except _TemplateRaised as exc:
            raise TemplateError(f"The chat template rejected this conversation: {exc.message}") from None
        except SecurityError as exc:
            raise UnsafeTemplateError(f"The chat template tried something forbidden: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"The chat template used a missing value: {exc.message}") from None
        except RecursionError:
            raise UnsafeTemplateError("The chat template recursed too deeply.") from None
        except MemoryError:
            raise UnsafeTemplateError("The chat template ran out of memory.") from None
        except Exception as exc:  # anything else a template can trigger: TypeError, ZeroDivisionError, ...
            raise TemplateError(f"The chat template failed: {type(exc).__name__}: {exc}") from None
        finally:
            stream.close()
        return "".join(chunks)
