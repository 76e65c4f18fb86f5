"""Turns on the reactor for the connections that have lines waiting: round robin, a slice each,
so that no one connection (a flood of IAMATs, a peer's catch-up) holds the reactor from I/O,
store commits and keepalives.

What runs in a slice, and when a connection asks for one, is the connection's business
(`herd.protocol.LineConnection`); this only takes turns.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Sliced(Protocol):
    """What takes turns: a connection with lines it may run."""

    scheduled: bool  # in the scheduler's ready queue (set and cleared by the scheduler)

    def run_slice(self) -> None:
        """Run a slice of the waiting lines (the connection asks again if some are left)."""


class SliceScheduler:
    """Runs the connections that have lines waiting, round robin, a slice each, for at most
    `turn_seconds` per reactor turn; then yields to the reactor (`callLater(0)`) so that I/O,
    commits and keepalives are served between turns.  A slice ends after `slice_seconds`
    too, so one expensive command after another cannot hold the reactor."""

    def __init__(
        self, clock: IReactorTime, slice_seconds: float = 0.002, turn_seconds: float = 0.005
    ) -> None:
        self.clock = clock
        self.slice_seconds = slice_seconds
        self.turn_seconds = turn_seconds
        self._ready: deque[Sliced] = deque()
        self._call: IDelayedCall | None = None

    @property
    def idle(self) -> bool:
        """No connection waits for its turn (fresh input may run at once)."""
        return not self._ready

    def want(self, connection: Sliced) -> None:
        """`connection` has lines it may run: give it a slice in a coming turn."""
        if connection.scheduled:
            return
        connection.scheduled = True
        self._ready.append(connection)
        if self._call is None:
            self._call = self.clock.callLater(0, self._turn)

    def _turn(self) -> None:
        self._call = None
        ready = self._ready
        deadline = self.clock.seconds() + self.turn_seconds
        for _ in range(len(ready)):
            connection = ready.popleft()
            connection.scheduled = False
            connection.run_slice()
            if self.clock.seconds() >= deadline:
                break
        if ready and self._call is None:
            self._call = self.clock.callLater(0, self._turn)
