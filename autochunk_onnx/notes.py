"""Notes: what the user must hear about a degraded or changed path (no silent fallback).

Every place that falls back (an ORT-based analysis failed, shape inference left holes, a rule
raised, an op was made opaque by an error rather than by design) calls `note(...)`. The API collects
the notes of one call with `collect()` and puts them in its result; the CLI prints them on stderr
(`autochunk-onnx: note: ...`) and in the JSON `notes`.

Under the test suite (`AUTOCHUNK_STRICT=1`, set by tests/conftest.py) a *degraded* note raises
`UnexpectedNote` instead, so a silent degradation fails the tests; a test that expects one wraps
the call in `expected("substring")`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

DEGRADED = "degraded"  # the tool knows less than it should: results may be worse (or the estimate low)
CHANGED = "changed"  # the tool changed something the user should know of (opset raised, IR lowered)
INFO = "info"  # the plan's own explanations (what bounds it)


@dataclass(frozen=True)
class Note:
    kind: str
    text: str

    def __str__(self) -> str:
        return self.text


class UnexpectedNote(AssertionError):
    """A degraded path was taken under strict mode (tests) without a test expecting it."""


_current: ContextVar[list[Note] | None] = ContextVar("autochunk_notes", default=None)
_expected: ContextVar[tuple[str, ...]] = ContextVar("autochunk_expected_notes", default=())


def strict() -> bool:
    """True under the test suite: degraded paths and exceptions inside rules must surface."""
    return os.environ.get("AUTOCHUNK_STRICT", "") not in ("", "0")


def note(text: str, kind: str = DEGRADED) -> None:
    """Record a note for the current API call (deduplicated, in order of first appearance)."""
    if kind == DEGRADED and strict() and not any(s in text for s in _expected.get()):
        raise UnexpectedNote(text)
    sink = _current.get()
    if sink is not None and all(n.text != text for n in sink):
        sink.append(Note(kind, text))


@contextmanager
def collect() -> Iterator[list[Note]]:
    """Collect the notes raised inside the block; nested blocks share the outermost list."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    sink: list[Note] = []
    token = _current.set(sink)
    try:
        yield sink
    finally:
        _current.reset(token)


@contextmanager
def expected(*substrings: str) -> Iterator[None]:
    """Tests: degraded notes containing one of `substrings` are allowed inside the block."""
    token = _expected.set(_expected.get() + substrings)
    try:
        yield
    finally:
        _expected.reset(token)
