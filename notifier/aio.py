"""The one bridge between asyncio and Twisted.

The herd server runs Twisted on the asyncio reactor, so both share one loop; yet Twisted code can
await only Deferreds and asyncio code only futures.  Channels built on asyncio libraries
(aiosmtplib, aiosmtpd) hand their coroutines to Twisted through here, and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def as_deferred(coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run `coro` as a task on the shared loop.  Cancelling the Deferred cancels the task and,
    once the task has unwound, fails with Twisted's `CancelledError`, as any cancelled Deferred
    does (so `addTimeout` and its callers recognise it)."""
    deferred = Deferred.fromFuture(asyncio.ensure_future(coro))
    deferred.addErrback(_as_twisted_cancel)
    return deferred


def _as_twisted_cancel(failure: Failure) -> Failure:
    if failure.check(asyncio.CancelledError):
        return Failure(CancelledError())
    return failure
