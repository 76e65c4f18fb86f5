"""The one clock of a server: what time it is (`now_ns`, `seconds`) and what runs later
(`callLater`), from one source, so that the herd, its handlers, its leases and the notifier never
disagree on the time.  The wiring (`herd.service`) builds it once and passes it in: nothing in a
running server reads the time another way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Clock"]

_SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Clock:
    """A scheduler and its time in nanoseconds.  A server runs on the reactor with
    `time.time_ns` (`Clock(reactor, time.time_ns)`: IAMAT's times stay exact to the nanosecond,
    which a float of seconds is not); a test steps a `task.Clock` (`Clock.following(clock)`).

    Parts that only schedule through Twisted (a `LoopingCall`, `Deferred.addTimeout`, the
    outbox, the channels) take `scheduler`, the same source."""

    scheduler: IReactorTime
    now_ns: Callable[[], int]

    @classmethod
    def following(cls, scheduler: IReactorTime) -> Clock:
        """A clock whose nanoseconds are `scheduler`'s seconds: stepped with it by hand."""
        return cls(scheduler, lambda: round(scheduler.seconds() * _SECOND))

    def seconds(self) -> float:
        return self.scheduler.seconds()

    def callLater(
        self, delay: float, call: Callable[..., object], *args: object, **kwargs: object
    ) -> IDelayedCall:
        """Run `call(*args, **kwargs)` `delay` seconds from now."""
        return self.scheduler.callLater(delay, call, *args, **kwargs)
