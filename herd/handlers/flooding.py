"""Flooding between peers: catch-up on a new link (SYNC), updates and operations in both
directions, anti-entropy (digests and the records of buckets that differ), leases, and the
catch-up marks.  Implements what `herd.peers.PeerSession` calls on the server.

Ordering rules kept here: the flood of a batch is written to the peers once it commits, before
that batch's replies; an update is forwarded to every ready peer except the one it came from,
and only if it was newer than what this server had.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.handlers.core import Core
from herd.ops import Op
from herd.peers import LinkState
from herd.records import BUCKETS, Location, LoggedOp, Outcome, changes_since, op_origin
from herd.wire.grammar import WireError
from herd.wire.peer import (
    Digest,
    DigestEnd,
    Lease,
    OpRecord,
    OpUpdate,
    Record,
    Sync,
    Update,
)

if TYPE_CHECKING:
    from herd.peers import PeerSession

_log = Logger()
REPAIR_CHUNK = 1024  # records scanned for anti-entropy per reactor turn
REPAIR_WAIT = 0.05  # seconds to wait while the link's write buffer is full
MAX_DIGEST_LINES = 4096  # per round from a peer; more are ignored (a peer gone wrong)


class Flooding:
    """The peer links of one server and what crosses them."""

    def __init__(self, core: Core, accept_op: Callable[[Op, PeerSession | None], None]) -> None:
        self.core = core
        self.settings = core.settings
        self.accept_op = accept_op
        self.skipped_lines = 0  # peer lines skipped (over-long, unreadable, failed): logged
        self._flood_batch: object = None
        self._floods: list[tuple[bytes, PeerSession | None, bytes]] = []

    # --- peers -----------------------------------------------------------------------------

    def link_up(self, session: PeerSession) -> None:
        old = self.core.links.get(session.name)
        if old is not None and old is not session:
            _log.info("link to {peer} replaced by a new one", peer=session.name)
            old.close()
        self.core.links[session.name] = session
        _log.info("link to {peer} up ({label})", peer=session.name, label=session.connection.label)
        known, seq = self.core.marks.get(session.name, (b"-", 0))
        session.send(Sync(self.core.instance, known, seq).to_line())

    def link_down(self, session: PeerSession, reason: Failure) -> None:
        if self.core.links.get(session.name) is session:
            del self.core.links[session.name]
            _log.info(
                "link to {peer} down: {why}",
                peer=session.name,
                why=reason.getErrorMessage(),
            )

    def peer_sync(self, session: PeerSession, sync: Sync) -> None:
        """The peer says what it has of ours: send the rest, then flood to it live."""
        session.instance = sync.instance
        since = sync.seq if sync.known == self.core.instance else 0
        missing = changes_since(self.core.table, self.core.ops, since)
        if self.core.marks.get(session.name, (None, 0))[0] == sync.instance:
            # The peer still has the store we last read from: what it made itself it has (or
            # newer).  A peer with a new store (its data was lost) gets everything back.
            name = session.name_bytes
            missing = [entry for entry in missing if _origin(entry) != name]
        floodable = [entry for entry in missing if self._fits(entry)]
        if len(floodable) < len(missing):
            # Stored before such records were refused: kept here, never sent (no peer can
            # read the line, and resending it at every catch-up would be for nothing).
            _log.warn(
                "link to {peer}: {count} stored records too long to send, left out",
                peer=session.name,
                count=len(missing) - len(floodable),
            )
            missing = floodable
        if missing:
            session.send(b"".join(_update_line(entry) for entry in missing))
        _log.info(
            "link to {peer}: sent {count} updates to catch up",
            peer=session.name,
            count=len(missing),
        )
        session.synced()
        leases = [] if self.core.leases is None else self.core.leases.entries()
        if leases:
            session.send(b"".join(Lease(name.encode(), ns).to_line() for name, ns in leases))

    def _fits(self, entry: Location | LoggedOp) -> bool:
        if isinstance(entry, Location):
            return len(entry.at.line) <= self.settings.max_at_line
        return len(entry.line) <= self.settings.max_op_payload

    def peer_update(self, session: PeerSession, update: Update) -> None:
        if session.instance is None:
            _log.warn("peer {peer} sent an update before SYNC: ignored", peer=session.name)
            return
        if len(update.at.line) > self.settings.max_at_line:
            self.peer_skipped(session, update.seq, "an update too long to flood on")
            return
        outcome, location = self.core.table.offer(update.at)
        self._mark(session, update.seq)
        if outcome is Outcome.STORED:
            self.core.committer.add_location(location)
            self.flood(Update(location.seq, location.at).to_line(), session, location.at.server)

    def peer_op(self, session: PeerSession, update: OpUpdate) -> None:
        if session.instance is None:
            _log.warn("peer {peer} sent an operation before SYNC: ignored", peer=session.name)
            return
        if len(update.payload) > self.settings.max_op_payload:
            self.peer_skipped(session, update.seq, "an operation too long to flood on")
            return
        try:
            op = Op.from_json(update.payload)
        except WireError as error:
            self.peer_skipped(session, update.seq, f"a bad operation ({error})")
            return
        self._mark(session, update.seq)
        if op.op_id not in self.core.ops:
            self.accept_op(op, session)

    def peer_skipped(self, session: PeerSession, seq: int | None, what: str) -> None:
        """A line from a peer that cannot be taken (over-long, unreadable, or failing): logged
        and counted, and if it was update `seq`, marked as read, so that no catch-up sends it
        again: one bad update never holds a link (anti-entropy still compares what is held)."""
        self.skipped_lines += 1
        _log.warn(
            "peer {peer} sent {what}: skipped{update} ({count} peer lines skipped so far)",
            peer=session.name,
            what=what,
            update="" if seq is None else f" update {seq}",
            count=self.skipped_lines,
        )
        if seq is not None and session.instance is not None:
            self._mark(session, seq)

    # --- anti-entropy ------------------------------------------------------------------------

    def send_digests(self, session: PeerSession) -> None:
        """One round: tell the peer what we hold, per kind, origin and bucket (`DIGEST` lines
        then `DIGEST-END`); it answers with the records of the buckets where it differs."""
        lines: list[bytes] = []
        for kind, digests in ((b"AT", self.core.table.digests), (b"OP", self.core.ops.digests)):
            for origin, sums in digests.digests().items():
                try:
                    line = Digest(kind, origin, sums).to_line()
                except WireError:
                    continue  # an origin name no line can carry: its records are not compared
                if len(line) <= self.settings.max_line:
                    lines.append(line)
        lines.append(DigestEnd().to_line())
        session.send(b"".join(lines))

    def peer_digest(self, session: PeerSession, digest: Digest) -> None:
        if len(digest.sums) != BUCKETS or len(session.digests) >= MAX_DIGEST_LINES:
            self.peer_skipped(session, None, f"a digest of {len(digest.sums)} buckets")
            return
        session.digests[(digest.kind, digest.origin)] = digest.sums

    def peer_digest_end(self, session: PeerSession) -> None:
        """The peer's round is complete: send it the records of each bucket that differs, and
        differed the same way in its previous round (neither side's digest of it changed in
        between).  A bucket whose digests move is being updated: its difference is most often
        an update still in flight, and sending the bucket at every round of a busy herd would
        cost more than the updates.  A real difference persists once the bucket is quiet."""
        theirs, session.digests = session.digests, {}
        if session.brought:
            _log.info(
                "link to {peer}: anti-entropy brought {count} records",
                peer=session.name,
                count=session.brought,
            )
            session.brought = 0
        differing: dict[tuple[bytes, bytes, int], tuple[int, int]] = {}
        for kind, digests in ((b"AT", self.core.table.digests), (b"OP", self.core.ops.digests)):
            of_kind = {origin: sums for (k, origin), sums in theirs.items() if k == kind}
            for (origin, bucket), pair in digests.differing(of_kind).items():
                differing[(kind, origin, bucket)] = pair
        previous, session.differed = session.differed, differing
        persistent = sorted(key for key, pair in differing.items() if previous.get(key) == pair)
        if persistent and not session.repairing:
            _log.info(
                "link to {peer}: {count} buckets differ: sending their records",
                peer=session.name,
                count=len(persistent),
            )
            session.repairing = True
            self._send_repair(session, self._repair_lines(set(persistent)))

    def _repair_lines(self, wanted: set[tuple[bytes, bytes, int]]) -> Iterator[bytes]:
        """The `R` lines of the `wanted` (kind, origin, bucket)s, found by scanning what is
        held: one item per record scanned (`b""` for those not wanted), so each step of the
        sending does bounded work."""
        locations = {(origin, bucket) for kind, origin, bucket in wanted if kind == b"AT"}
        if locations:
            for location in self.core.table.scan(locations):
                if location is None or len(location.at.line) > self.settings.max_at_line:
                    yield b""
                else:
                    yield Record(location.at).to_line()
        ops = {(origin, bucket) for kind, origin, bucket in wanted if kind == b"OP"}
        if ops:
            for logged in self.core.ops.scan(ops):
                if logged is None or len(logged.line) > self.settings.max_op_payload:
                    yield b""
                else:
                    yield OpRecord(logged.line).to_line()

    def _send_repair(self, session: PeerSession, lines: Iterator[bytes]) -> None:
        """Write `lines` a chunk per reactor turn (waiting while the link's buffer is full),
        so a large repair never holds the reactor or the link's other traffic for long."""
        if session.state is LinkState.CLOSED:
            return
        if session.connection.backlog:
            self.core.clock.callLater(REPAIR_WAIT, self._send_repair, session, lines)
            return
        step = list(itertools.islice(lines, REPAIR_CHUNK))
        if not step:
            session.repairing = False
            return
        chunk = b"".join(step)
        if chunk:
            session.send(chunk)
        self.core.clock.callLater(0, self._send_repair, session, lines)

    def peer_record(self, session: PeerSession, record: Record) -> None:
        """A location sent by anti-entropy: merged by the usual rule (newer wins), and if it is
        new here, stored and flooded on like any update."""
        if len(record.at.line) > self.settings.max_at_line:
            self.peer_skipped(session, None, "a record too long to flood on")
            return
        outcome, location = self.core.table.offer(record.at)
        if outcome is Outcome.STORED:
            session.brought += 1
            self.core.committer.add_location(location)
            self.flood(Update(location.seq, location.at).to_line(), session, location.at.server)

    def peer_op_record(self, session: PeerSession, record: OpRecord) -> None:
        """An operation sent by anti-entropy: accepted if it is new here."""
        if len(record.payload) > self.settings.max_op_payload:
            self.peer_skipped(session, None, "an operation too long to flood on")
            return
        try:
            op = Op.from_json(record.payload)
        except WireError as error:
            self.peer_skipped(session, None, f"a bad operation ({error})")
            return
        if op.op_id not in self.core.ops:
            session.brought += 1
            self.accept_op(op, session)

    def renew_lease(self) -> None:
        """Announce this server's lease anew to every ready peer (see `herd.leases`)."""
        if self.core.leases is not None:
            lease = Lease(
                self.settings.name_bytes, self.core.leases.renew(self.core.clock.now_ns())
            )
            self._send_lease(lease, None)

    def peer_lease(self, session: PeerSession, lease: Lease) -> None:
        """Keep a server's newer lease and pass it on, so that it crosses the herd."""
        server = lease.server.decode("ascii")  # `parse_peer_line` let only ASCII through
        if self.core.leases is not None and self.core.leases.offer(
            server, lease.ns, self.core.clock.now_ns()
        ):
            self._send_lease(lease, session)

    def _send_lease(self, lease: Lease, source: PeerSession | None) -> None:
        """Not held for a commit: nothing about a lease is stored."""
        line = lease.to_line()
        for session in list(self.core.links.values()):
            if (
                session.state is LinkState.FLOODING
                and session is not source
                and session.name_bytes != lease.server
            ):
                session.send(line)

    def _mark(self, session: PeerSession, seq: int) -> None:
        """Remember (durably, with the update) how far we have read the peer's log."""
        assert session.instance is not None
        known, last = self.core.marks.get(session.name, (b"", 0))
        if known != session.instance or seq > last:
            self.core.marks[session.name] = (session.instance, seq)
            self.core.committer.set_mark(session.name, session.instance, seq)

    # --- durability and flooding -----------------------------------------------------------

    def flood(self, line: bytes, source: PeerSession | None, origin: bytes) -> None:
        """Send `line` to every ready peer but `source` and the server it came from (`origin`
        made it, so has it or newer), once the batch holding it commits (and before that
        batch's replies).

        Updates from peers wait for the commit too, though their origin already made them
        durable: a peer's catch-up mark says "I have all of your log up to seq N", which holds
        only if lines go out in sequence order.  Relaying at once would need such lines to be
        sent without a sequence number (so they move no mark); that would save one commit per
        hop of propagation."""
        batch = self.core.committer.open_batch
        if batch is not self._flood_batch:
            self._flood_batch = batch
            floods: list[tuple[bytes, PeerSession | None, bytes]] = []
            self._floods = floods
            self.core.committer.after_commit(lambda: self._release(floods))
        self._floods.append((line, source, origin))

    def _release(self, floods: list[tuple[bytes, PeerSession | None, bytes]]) -> None:
        for session in list(self.core.links.values()):
            if session.state is not LinkState.FLOODING:
                continue
            name = session.name_bytes
            data = b"".join(
                line for line, source, origin in floods if source is not session and origin != name
            )
            if data:
                session.send(data)


def _origin(entry: Location | LoggedOp) -> bytes:
    return entry.at.server if isinstance(entry, Location) else op_origin(entry.op_id)


def _update_line(entry: Location | LoggedOp) -> bytes:
    if isinstance(entry, Location):
        return Update(entry.seq, entry.at).to_line()
    return OpUpdate(entry.seq, entry.line).to_line()
