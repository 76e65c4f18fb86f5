"""How blocking work leaves the reactor: the one `RunBlocking` type that the store, the traffic log,
the outbox and the CPU-bound checks are given, instead of a thread pool.

The wiring passes `deferToThreadPool` on a pool of its choice; tests pass work that runs inline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

T = TypeVar("T")


class RunBlocking(Protocol):
    """Runs `work` off the reactor thread (e.g. on a single-thread pool, so jobs keep their
    order); the Deferred fires on the reactor with its result."""

    def __call__(self, work: Callable[[], T], /) -> Deferred[T]: ...
