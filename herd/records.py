"""What each server stores and floods, pure: the location table, the per-server replication log
(locations and ops, by sequence number) and the digests that compare them.

Merge rule for locations: an update replaces the stored one only if it is newer by
(client time as a number, AT text as bytes), compared in that order.  That order is total, so
any servers that have seen the same set of updates hold the same table, whatever the order of
arrival, and equal times still converge.

Every accepted change gets this server's next sequence number.  The log keeps only the current
entry per key, ordered by sequence number, so a peer that has seen everything up to `seq`
catches up with exactly `since(seq)`: the changes it lacks, oldest first.

Both kinds of record are also summed into a `DigestIndex` (per origin server and bucket), so
two servers can find where they differ by comparing a few numbers (anti-entropy).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from xxhash import xxh3_64_intdigest

from herd.wire.client import At
from herd.wire.grammar import time_key

BUCKETS = 16  # per origin: a differing bucket costs sending ~1/16 of that origin's records
_BUCKET_MASK = BUCKETS - 1
_BUCKET_SEED = 1  # so a key's bucket is not made of the bits of its record hash (ops hash ids)


def record_hash(line: bytes) -> int:
    """A record's contribution to its bucket's digest: 64-bit XXH3 (fast enough for the hot
    path; equal sets give equal digests, and an accidental collision is a 1 in 2^64 chance)."""
    return xxh3_64_intdigest(line)


def bucket_of(key: bytes) -> int:
    """The bucket of a client id or op id: the same on every server."""
    return xxh3_64_intdigest(key, _BUCKET_SEED) & _BUCKET_MASK


class DigestIndex:
    """For each origin server and bucket, the XOR of the hashes of the records held: kept up to
    date on every store or replacement (one hash each), so a digest exchange costs
    O(origins x buckets), not a pass over the data.

    A record longer than `max_record` (one stored before such records were refused: no peer
    can take it) is left out, so it never makes two servers' digests differ for good."""

    def __init__(self, max_record: int | None = None) -> None:
        self.max_record = max_record
        self._sums: dict[bytes, list[int]] = {}

    def toggle(self, origin: bytes, key: bytes, line: bytes) -> None:
        """Add a record, or take it out again (XOR is its own inverse)."""
        if self.max_record is not None and len(line) > self.max_record:
            return
        sums = self._sums.get(origin)
        if sums is None:
            sums = self._sums[origin] = [0] * BUCKETS
        # bucket_of(key) and record_hash(line), inlined: this runs for every report
        sums[xxh3_64_intdigest(key, _BUCKET_SEED) & _BUCKET_MASK] ^= xxh3_64_intdigest(line)

    def digests(self) -> dict[bytes, tuple[int, ...]]:
        """Every origin held, with its per-bucket digests."""
        return {origin: tuple(sums) for origin, sums in self._sums.items() if any(sums)}

    def differing(
        self, theirs: Mapping[bytes, Sequence[int]]
    ) -> dict[tuple[bytes, int], tuple[int, int]]:
        """Where a peer whose digests are `theirs` may lack (or hold older) records that this
        index holds: each (origin, bucket) with records here and a digest that differs, with
        both digests (this one's, then theirs)."""
        zeros = (0,) * BUCKETS
        found = {}
        for origin, sums in self._sums.items():
            other = theirs.get(origin, zeros)
            for bucket in range(BUCKETS):
                if sums[bucket] and sums[bucket] != other[bucket]:
                    found[(origin, bucket)] = (sums[bucket], other[bucket])
        return found


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

    def __init__(self, sequencer: Sequencer | None = None, max_record: int | None = None) -> None:
        self._by_client: dict[bytes, Location] = {}
        self.sequencer = sequencer if sequencer is not None else Sequencer()
        self.digests = DigestIndex(max_record)

    def limit_records(self, max_record: int) -> None:
        """Leave records longer than `max_record` out of the digests (see `DigestIndex`)."""
        self.digests = DigestIndex(max_record)
        for location in self._by_client.values():
            self.digests.toggle(location.at.server, location.at.client, location.at.line)

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
        self._replace(current, location)
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
            self.digests.toggle(current.at.server, at.client, current.at.line)
        self._by_client[at.client] = location
        self.digests.toggle(at.server, at.client, at.line)
        return location

    def _replace(self, current: Location | None, location: Location) -> None:
        """Make `location` its client's entry, last in the log, and update the digests."""
        at = location.at
        if current is not None:
            del self._by_client[at.client]
            self.digests.toggle(current.at.server, at.client, current.at.line)
        self._by_client[at.client] = location
        self.digests.toggle(at.server, at.client, at.line)

    def restore(self, location: Location) -> None:
        """Put back a location loaded from the store (any order; keeps the log ordered)."""
        current = self._by_client.get(location.at.client)
        if current is not None and current.key >= location.key:
            return
        if current is not None:
            self.digests.toggle(current.at.server, current.at.client, current.at.line)
        self._by_client[location.at.client] = location
        self.digests.toggle(location.at.server, location.at.client, location.at.line)
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

    def scan(self, wanted: Collection[tuple[bytes, int]]) -> Iterator[Location | None]:
        """For each location held when the scan starts: itself if it is still current and in
        one of the `wanted` (origin, bucket)s, else None (one item per location, so that a
        caller can bound the work of each step of a long scan)."""
        for location in list(self._by_client.values()):
            at = location.at
            in_wanted = (at.server, bucket_of(at.client)) in wanted
            yield location if in_wanted and self._by_client.get(at.client) is location else None

    def in_bucket(self, origin: bytes, bucket: int) -> list[Location]:
        return [location for location in self.scan({(origin, bucket)}) if location is not None]


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

    def __init__(self, sequencer: Sequencer, max_record: int | None = None) -> None:
        self._ops: dict[str, LoggedOp] = {}
        self.sequencer = sequencer
        self.digests = DigestIndex(max_record)

    def limit_records(self, max_record: int) -> None:
        """Leave operations longer than `max_record` out of the digests (see `DigestIndex`)."""
        self.digests = DigestIndex(max_record)
        for logged in self._ops.values():
            self._digest(logged)

    def _digest(self, logged: LoggedOp) -> None:
        """Count an operation in the digests by its id (an operation never changes)."""
        if self.digests.max_record is None or len(logged.line) <= self.digests.max_record:
            key = logged.op_id.encode()
            self.digests.toggle(op_origin(logged.op_id), key, key)

    def scan(self, wanted: Collection[tuple[bytes, int]]) -> Iterator[LoggedOp | None]:
        """As `LocationTable.scan`, for operations."""
        for logged in list(self._ops.values()):
            in_wanted = (op_origin(logged.op_id), bucket_of(logged.op_id.encode())) in wanted
            yield logged if in_wanted else None

    def in_bucket(self, origin: bytes, bucket: int) -> list[LoggedOp]:
        return [logged for logged in self.scan({(origin, bucket)}) if logged is not None]

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, op_id: str) -> bool:
        return op_id in self._ops

    def ids(self) -> Iterator[str]:
        return iter(self._ops)

    def add(self, op_id: str, line: bytes) -> LoggedOp:
        logged = LoggedOp(op_id, self.sequencer.next(), line)
        self._ops[op_id] = logged
        self._digest(logged)
        return logged

    def restore(self, logged: LoggedOp) -> None:
        """Put back an operation loaded from the store (in sequence order)."""
        self._ops[logged.op_id] = logged
        self._digest(logged)
        self.sequencer.saw(logged.seq)

    def since(self, seq: int) -> list[LoggedOp]:
        newer: list[LoggedOp] = []
        for logged in reversed(self._ops.values()):
            if logged.seq <= seq:
                break
            newer.append(logged)
        newer.reverse()
        return newer


def op_origin(op_id: str) -> bytes:
    """The server that accepted an operation (its id is `<server>.<instance>.<n>`; a server
    name may hold dots, the other two parts do not: `herd.changes.op_server` reads it alike)."""
    return op_id.rsplit(".", 2)[0].encode()


def changes_since(table: LocationTable, ops: OpLog, seq: int) -> list[Location | LoggedOp]:
    """What a peer that has everything up to `seq` lacks: locations and operations, oldest
    first (a peer applies them in this order, so an operation never arrives before one it was
    made after on this server)."""
    merged: Iterator[Location | LoggedOp] = heapq.merge(
        table.since(seq), ops.since(seq), key=lambda entry: entry.seq
    )
    return list(merged)
