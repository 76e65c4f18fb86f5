"""The herd's replicated state, pure: locations and the per-server replication log.

Merge rule for locations: an update replaces the stored one only if it is newer by
(client time as a number, AT text as bytes), compared in that order.  That order is total, so
any servers that have seen the same set of updates hold the same table, whatever the order of
arrival, and equal times still converge.

Every accepted change gets this server's next sequence number.  The log keeps only the current
entry per key, ordered by sequence number, so a peer that has seen everything up to `seq`
catches up with exactly `since(seq)`: the changes it lacks, oldest first.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from herd.wire import At, time_key


class Outcome(Enum):
    """What became of an offered update."""

    STORED = "stored"
    STALE = "stale"


class Location(NamedTuple):
    """The newest report of one client, with the AT line it produced and its log position."""

    at: At
    key: tuple[int, bytes, bytes, bytes]
    seq: int


def location_key(at: At) -> tuple[int, bytes, bytes, bytes]:
    """Newer-wins order: (time as a number, AT text)."""
    return (*time_key(at.time), at.line)


class Sequencer:
    """This server's sequence numbers, shared by every kind of change it stores."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last += 1
        return self.last

    def saw(self, seq: int) -> None:
        self.last = max(self.last, seq)


class LocationTable:
    """The newest location per client, and the replication log over them.

    `_by_client` is kept in sequence order (an update is removed and re-inserted), which makes
    `since()` a walk from the end that stops at the first entry the peer already has.
    """

    def __init__(self, sequencer: Sequencer | None = None) -> None:
        self._by_client: dict[bytes, Location] = {}
        self.sequencer = sequencer if sequencer is not None else Sequencer()

    @property
    def last_seq(self) -> int:
        return self.sequencer.last

    def __len__(self) -> int:
        return len(self._by_client)

    def get(self, client: bytes) -> Location | None:
        return self._by_client.get(client)

    def offer(self, at: At) -> tuple[Outcome, Location]:
        """Store `at` if it is newer than what is stored for its client.

        Returns the outcome and the location now stored for that client.
        """
        key = location_key(at)
        current = self._by_client.get(at.client)
        if current is not None and key <= current.key:
            return Outcome.STALE, current
        location = Location(at, key, self.sequencer.next())
        if current is not None:
            del self._by_client[at.client]
        self._by_client[at.client] = location
        return Outcome.STORED, location

    def is_newer_report(self, client: bytes, time: bytes) -> bool:
        """Whether a client's own report is newer than the stored one (by time alone: a report
        with an equal time is stale for the client that sent it)."""
        current = self._by_client.get(client)
        return current is None or time_key(time) > current.key[:3]

    def report(self, at: At, current: Location | None) -> Location:
        """Store a client's own report, already known to be newer than `current` (the hot
        path of IAMAT: the newness check was made on the time alone)."""
        location = Location(at, (*time_key(at.time), at.line), self.sequencer.next())
        if current is not None:
            del self._by_client[at.client]
        self._by_client[at.client] = location
        return location

    def restore(self, location: Location) -> None:
        """Put back a location loaded from the store (any order; keeps the log ordered)."""
        current = self._by_client.get(location.at.client)
        if current is not None and current.key >= location.key:
            return
        self._by_client[location.at.client] = location
        self.sequencer.saw(location.seq)

    def reorder(self) -> None:
        """Sort the log by sequence number after a bulk `restore`."""
        ordered = sorted(self._by_client.values(), key=lambda location: location.seq)
        self._by_client = {location.at.client: location for location in ordered}

    def since(self, seq: int) -> list[Location]:
        """Every current location with a sequence number above `seq`, oldest first."""
        newer: list[Location] = []
        for location in reversed(self._by_client.values()):
            if location.seq <= seq:
                break
            newer.append(location)
        newer.reverse()
        return newer

    def __iter__(self) -> Iterator[Location]:
        return iter(self._by_client.values())


@dataclass(frozen=True, slots=True)
class LoggedOp:
    """A planning operation as replicated: its id, this server's sequence number for it, and
    its one-line JSON (what is flooded and stored)."""

    op_id: str
    seq: int
    line: bytes


class OpLog:
    """Every planning operation this server holds, in sequence order (operations are never
    replaced, so the order is the order of arrival)."""

    def __init__(self, sequencer: Sequencer) -> None:
        self._ops: dict[str, LoggedOp] = {}
        self.sequencer = sequencer

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, op_id: str) -> bool:
        return op_id in self._ops

    def ids(self) -> Iterator[str]:
        return iter(self._ops)

    def add(self, op_id: str, line: bytes) -> LoggedOp:
        logged = LoggedOp(op_id, self.sequencer.next(), line)
        self._ops[op_id] = logged
        return logged

    def restore(self, logged: LoggedOp) -> None:
        """Put back an operation loaded from the store (in sequence order)."""
        self._ops[logged.op_id] = logged
        self.sequencer.saw(logged.seq)

    def since(self, seq: int) -> list[LoggedOp]:
        newer: list[LoggedOp] = []
        for logged in reversed(self._ops.values()):
            if logged.seq <= seq:
                break
            newer.append(logged)
        newer.reverse()
        return newer


def changes_since(table: LocationTable, ops: OpLog, seq: int) -> list[Location | LoggedOp]:
    """What a peer that has everything up to `seq` lacks: locations and operations, oldest
    first (a peer applies them in this order, so an operation never arrives before one it was
    made after on this server)."""
    merged: Iterator[Location | LoggedOp] = heapq.merge(
        table.since(seq), ops.since(seq), key=lambda entry: entry.seq
    )
    return list(merged)
