"""The one retry policy: capped exponential backoff with proportional jitter (pure).

Dialing a peer, retrying an outbox delivery and reconnecting the Jabber bot all wait by it, each
with its own figures. The jitter source is passed in (a number in [0, 1], e.g. `random.random()`)
so a test can pin it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay after the n-th failure in a row (n from 1) is the nominal delay
    `min(cap, initial * factor ** (n - 1))`, lengthened by up to `jitter` times itself.

    Jitter only ever adds, so no wait is shorter than its nominal delay and none longer than
    `longest`: many clients that failed together spread out, and none comes back sooner than
    planned.
    """

    initial: float
    factor: float
    cap: float
    jitter: float

    def __post_init__(self) -> None:
        if not (self.initial >= 0 and self.cap >= 0 and self.factor >= 1 and self.jitter >= 0):
            raise ValueError(f"not a usable backoff: {self}")

    @property
    def longest(self) -> float:
        """No delay is longer than this."""
        return self.cap * (1 + self.jitter)

    def nominal(self, failures: int) -> float:
        """The delay after `failures` failures in a row, before jitter."""
        doublings = max(failures - 1, 0)
        try:
            return min(self.cap, self.initial * float(self.factor) ** doublings)
        except OverflowError:
            return self.cap

    def delay(self, failures: int, jitter: float) -> float:
        """The delay after `failures` failures in a row; `jitter` is a random number in [0, 1]."""
        return self.nominal(failures) * (1 + self.jitter * jitter)
