"""Refuse a tokenizer whose regexes could take exponential (or just very long) time on some text.

A ``tokenizer.json`` carries regexes (a ``Split`` pre-tokenizer, a ``Replace`` normalizer or decoder)
that ``tokenizers`` runs with Oniguruma, a backtracking engine, while holding the GIL: a pattern such
as ``(a+)+$`` or ``(a|aa)+$`` freezes the whole app, window included, on text with a long run of
``a``. Oniguruma gives up a single match attempt after ten million backtracking steps (and
``tokenizers`` then panics), but it starts again at the next position, so the time still grows with
the length of the text: a few hundred characters already take seconds.

Two checks at load, before the tokenizer is ever used:

* **By reading the patterns**: a quantified group that holds an unbounded quantifier (``(a+)+``,
  ``(\\w+\\s?)*``, ``(.*x){9}``) and backreferences or subexpression calls (``\\1``, ``\\k<n>``,
  ``\\g<0>``) are refused. No regex a real model ships has either (the test checks all of llama.cpp's
  pre-tokenizers pass), and both are the textbook sources of exponential backtracking.
* **By running them**: patterns with overlapping alternatives (``(a|aa)+``) look harmless, so every
  pattern also splits probe texts, runs of each character class and of each character the patterns
  name; hitting the engine's backtracking limit, or splitting more slowly than a budget per character,
  is refused. The probe takes a few milliseconds for a real tokenizer.

Both refusals are ``ModelFileError``s naming the file, the place of the pattern in it, and why.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError

# The probe: each character below (and each one the patterns write literally) repeated in runs of
# doubling length, each run followed by a character of another class. An exponential pattern reaches
# Oniguruma's retry limit on the first run; a polynomial one shows in the time per character long
# before a step can take long (doubling the run multiplies even a cubic's time by only 8).
_PROBE_CHARS = "aZ1 \t\n!.,'-_é中한\u0300\u2581"
_RUNS = (48, 96, 192, 384, 768)
# Seconds per probe character above which a pattern is refused: ~25 ms for a 1,000-character message,
# one second for a 40,000-character one. Real pre-tokenizers take well under a microsecond. A step
# under MIN_STEP_SECONDS is never refused, so that a busy machine cannot fail a real model.
MAX_SECONDS_PER_CHAR = 25e-6
MIN_STEP_SECONDS = 0.03
# A step that took longer than NOISE_SECONDS is extrapolated, by how its time grew from the step
# before, to a LONG_MESSAGE_CHARS message (a long pasted document), which must take less than
# LONG_MESSAGE_SECONDS: this catches a pattern that is quadratic in the length of a run.
NOISE_SECONDS = 0.004
LONG_MESSAGE_CHARS = 40_000
LONG_MESSAGE_SECONDS = 2.0
# The whole probe may take this long (a real tokenizer's takes 10-100 ms).
MAX_PROBE_SECONDS = 1.5


def regexes(spec: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``{"Regex": pattern}`` in a parsed ``tokenizer.json``, with a JSON path naming its place."""
    if isinstance(spec, dict):
        pattern = spec.get("Regex")
        if isinstance(pattern, str) and len(spec) == 1:
            yield where or "/", pattern
            return
        for key, value in spec.items():
            yield from regexes(value, f"{where}/{key}")
    elif isinstance(spec, list):
        for i, value in enumerate(spec):
            yield from regexes(value, f"{where}/{i}")


def component_specs(inner: Any) -> dict[str, Any]:
    """The parsed JSON of a ``tokenizers.Tokenizer``'s normalizer, pre-tokenizer and decoder (the parts
    that hold regexes), without serialising its vocabulary."""
    specs = {}
    for name in ("normalizer", "pre_tokenizer", "decoder"):
        part = getattr(inner, name)
        if part is not None:
            specs[name] = json.loads(part.__getstate__())
    return specs


def static_problem(pattern: str) -> str | None:
    """Why the pattern can backtrack catastrophically, read from its text; None when no reason is seen.

    Parses Oniguruma's syntax far enough to know groups, character classes, escapes and quantifiers.
    """
    parser = _Parser(pattern)
    try:
        parser.sequence(0)
    except _Unsafe as reason:
        return str(reason)
    return None


def check_tokenizer(inner: Any, path: str | Path) -> None:
    """Refuse ``inner`` (a ``tokenizers.Tokenizer``) when one of its regexes is unsafe; the
    ModelFileError names ``path``, where the pattern is in the file, the pattern and the reason."""
    found = list(regexes(component_specs(inner)))
    if not found:
        return
    for where, pattern in found:
        problem = static_problem(pattern)
        if problem is not None:
            raise ModelFileError(path, f"the regex at {where} ({_short(pattern)}) {problem}; Ember refuses it")
    literal = "".join(sorted({c for _, p in found for c in p if c.isprintable() and not c.isspace()}))[:96]
    _probe(inner, path, _PROBE_CHARS + literal, [p for _, p in found])


def _probe(inner: Any, path: str | Path, chars: str, patterns: list[str]) -> None:
    steps = []
    if inner.normalizer is not None:
        steps.append(("normalizer", inner.normalizer.normalize_str))
    if inner.pre_tokenizer is not None:
        steps.append(("pre-tokenizer", inner.pre_tokenizer.pre_tokenize_str))
    if inner.decoder is not None and any(True for _ in regexes(component_specs(inner).get("decoder"))):
        steps.append(("decoder", lambda text: inner.decoder.decode([text])))
    spent = 0.0
    previous: dict[tuple[str, str], float] = {}
    for run in _RUNS:
        for char in dict.fromkeys(chars):
            other = "!" if char.isalnum() else "a"
            text = (char * run + other) * 2 + "\n"
            limit = max(MIN_STEP_SECONDS, MAX_SECONDS_PER_CHAR * len(text))
            for name, step in steps:
                took = _timed(step, text, path, name, patterns, run, char)
                if took > limit or _long_message_time(took, previous.get((name, char)), len(text)) > limit:
                    # once more, in case the machine was busy
                    took = min(took, _timed(step, text, path, name, patterns, run, char))
                spent += took
                expected = _long_message_time(took, previous.get((name, char)), len(text))
                previous[name, char] = took
                if took > limit or spent > MAX_PROBE_SECONDS or expected > LONG_MESSAGE_SECONDS:
                    estimate = f"about {expected:.0f} s" if expected < 3600 else "more than an hour"
                    why = (
                        f"would take {estimate} on a {LONG_MESSAGE_CHARS:,}-character message"
                        if expected > LONG_MESSAGE_SECONDS
                        else "a long message would freeze the app"
                    )
                    raise ModelFileError(
                        path,
                        f"its {name} regex ({_short(*patterns)}) took {took * 1000:.0f} ms to split "
                        f"{len(text)} characters ({run} repeated {char!r}); it {why}, so Ember refuses it",
                    )


def _long_message_time(took: float, before: float | None, n: int) -> float:
    """Seconds a LONG_MESSAGE_CHARS message would take, from the times of two probe steps (the second
    twice as long): 0 when the step is too quick to say (noise), else the growth extrapolated."""
    if before is None or took < NOISE_SECONDS or before <= 0:
        return 0.0
    exponent = min(max(math.log2(took / before), 1.0), 4.0)
    return took * (LONG_MESSAGE_CHARS / n) ** exponent


def _timed(step: Any, text: str, path: str | Path, name: str, patterns: list[str], run: int, char: str) -> float:
    t0 = time.perf_counter()
    try:
        step(text)
    except BaseException as exc:  # noqa: BLE001 - a Rust panic is a BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise ModelFileError(
            path,
            f"its {name} regex ({_short(*patterns)}) gave up on {run} repeated {char!r}: "
            f"it backtracks catastrophically ({exc}); Ember refuses it",
        ) from None
    return time.perf_counter() - t0


def _short(*patterns: str) -> str:
    text = " | ".join(repr(p) for p in patterns)
    return text if len(text) <= 80 else text[:77] + "..."


class _Unsafe(Exception):
    pass


class _Parser:
    """Just enough of an Oniguruma (Ruby syntax) parser to find nested quantifiers and backreferences."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0

    def sequence(self, depth: int) -> bool:
        """Parse until ``)`` or the end; True when the parsed part holds an unbounded quantifier."""
        if depth > 200:
            raise _Unsafe("nests groups more than 200 deep")
        unbounded = False
        while self.i < len(self.p):
            c = self.p[self.i]
            if c == ")":
                if depth == 0:
                    self.i += 1  # an unmatched ")" is Oniguruma's problem; skip it
                    continue
                return unbounded
            if c == "|":
                self.i += 1
                continue
            atom_unbounded, atomic = self.atom(depth)
            low, high, possessive = self.quantifier()
            if atom_unbounded and not atomic and not possessive and (high is None or high > 1):
                raise _Unsafe(
                    "repeats a group that itself holds an unbounded repeat (like (a+)+), which can "
                    "backtrack exponentially"
                )
            unbounded = unbounded or atom_unbounded or (high is None)
        return unbounded

    def atom(self, depth: int) -> tuple[bool, bool]:
        """Parse one atom; (holds an unbounded quantifier, is atomic so never backtracks into)."""
        c = self.p[self.i]
        if c == "\\":
            self.escape()
            return False, False
        if c == "[":
            self.char_class()
            return False, False
        if c == "(":
            self.i += 1
            atomic = False
            if self.p.startswith("?", self.i):
                self.i += 1
                head = self.p[self.i : self.i + 2]
                if head[:1] == ">":
                    atomic, self.i = True, self.i + 1
                elif head[:1] in (":", "=", "!"):
                    self.i += 1
                elif head in ("<=", "<!"):
                    self.i += 2
                elif head[:1] in ("<", "'"):  # a named group
                    end = self.p.find(">" if head[0] == "<" else "'", self.i + 1)
                    self.i = len(self.p) if end < 0 else end + 1
                elif head[:1] == "#":  # a comment
                    end = self.p.find(")", self.i)
                    self.i = len(self.p) if end < 0 else end + 1
                    return False, False
                else:  # option letters: (?i) or (?i-m:...)
                    while self.i < len(self.p) and self.p[self.i] not in ":)":
                        self.i += 1
                    if self.p.startswith(")", self.i):
                        self.i += 1
                        return False, False
                    self.i += 1
            inner = self.sequence(depth + 1)
            self.i += 1  # the ")"
            return inner, atomic
        self.i += 1
        return False, False

    def escape(self) -> None:
        nxt = self.p[self.i + 1 : self.i + 2]
        if nxt.isdigit() and nxt != "0":
            raise _Unsafe(f"uses a backreference (\\{nxt}), which can take exponential time")
        if nxt in ("k", "g") and self.p[self.i + 2 : self.i + 3] in ("<", "'"):
            what = "backreference" if nxt == "k" else "subexpression call"
            raise _Unsafe(f"uses a {what} (\\{nxt}<...>), which can take exponential time")
        self.i += 2
        if nxt in ("p", "P") and self.p.startswith("{", self.i):
            end = self.p.find("}", self.i)
            self.i = len(self.p) if end < 0 else end + 1
        elif nxt in ("x", "u", "o") and self.p.startswith("{", self.i):
            end = self.p.find("}", self.i)
            self.i = len(self.p) if end < 0 else end + 1

    def char_class(self) -> None:
        """Skip ``[...]``, nested classes and escapes included."""
        depth = 0
        self.i += 1
        if self.p.startswith("^", self.i):
            self.i += 1
        if self.p.startswith("]", self.i):  # a literal "]" first
            self.i += 1
        while self.i < len(self.p):
            c = self.p[self.i]
            if c == "\\":
                self.i += 2
                continue
            if c == "[":
                depth += 1
            elif c == "]":
                if depth == 0:
                    self.i += 1
                    return
                depth -= 1
            self.i += 1

    def quantifier(self) -> tuple[int, int | None, bool]:
        """(min, max or None for unbounded, possessive) of the quantifier here; (1, 1, False) if none."""
        c = self.p[self.i : self.i + 1]
        if c in ("*", "+", "?"):
            self.i += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        elif c == "{":
            end = self.p.find("}", self.i)
            body = self.p[self.i + 1 : end] if end > 0 else ""
            parts = body.split(",")
            if len(parts) > 2 or not all(part.strip().isdigit() or part.strip() == "" for part in parts) or not body:
                return 1, 1, False  # a literal "{"
            self.i = end + 1
            low = int(parts[0]) if parts[0].strip() else 0
            if len(parts) == 1:
                high: int | None = low
            else:
                high = int(parts[1]) if parts[1].strip() else None
        else:
            return 1, 1, False
        possessive = False
        nxt = self.p[self.i : self.i + 1]
        if nxt == "?":
            self.i += 1
        elif nxt == "+" and c != "{":
            self.i += 1
            possessive = True
        return low, high, possessive
