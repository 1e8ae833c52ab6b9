"""The typed errors the engine raises for problems a user can act on."""

from __future__ import annotations

from pathlib import Path


class EmberError(Exception):
    """Base class: the message is meant to be shown to a user as it is."""


class ModelFileError(EmberError):
    """A model file or folder that cannot be used; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class TokenizerError(EmberError):
    """A tokenizer that failed on a text (e.g. its regex gave up); the text, not the file, is named."""


class TemplateError(EmberError):
    """A chat template that failed to render (syntax, sandbox violation, time or size limit)."""


class UnsafeTemplateError(TemplateError):
    """A chat template stopped for what it tried (sandbox escape, time, size, recursion or memory), as
    opposed to one that rejects a conversation on purpose."""


class OutOfMemoryError(EmberError):
    """A model that would not fit in the memory available, refused before allocating."""


class CompileUnavailableError(EmberError):
    """Decoding cannot be compiled here (no C++ compiler or headers, a device other than the CPU), or its
    compiling failed or was stopped."""
