"""Waiting for something to happen: a poll with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.02


class HerdError(AssertionError):
    """A wait that ran out, with what the servers said on stderr."""


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str],
) -> T:
    """Poll `condition` until it returns something truthy; raise HerdError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = what() if callable(what) else what
            raise HerdError(f"timed out after {timeout} s: {message}")
        time.sleep(POLL_SECONDS)


def stays_false(condition: Callable[[], bool], seconds: float) -> bool:
    """True if `condition` stays false for `seconds` (polled), False as soon as it holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return False
        time.sleep(POLL_SECONDS)
    return not condition()
