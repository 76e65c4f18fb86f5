"""One herd server's behaviour: what each client command and peer message does.

Joins the pure state (`LocationTable`) to its effects: durable storage through the group
committer, floods to peers, replies in request order.  Ordering rules kept here:

- a reply never reveals a change that is not yet durable: replies wait for the batch holding
  every change made before them;
- the flood of a batch is written to the peers before the replies of that batch;
- an update is forwarded to every ready peer except the one it came from, and only if it was
  newer than what this server had.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, TypeVar
from typing import Protocol as TypingProtocol

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IConsumer, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from herd.config import LimitsConfig
from herd.events import OPERATOR, AddPlace, Body, Change, ChangeFeed, Op, PlanningState
from herd.fairness import FairQueue
from herd.leases import Leases
from herd.model import (
    BUCKETS,
    Location,
    LocationTable,
    LoggedOp,
    OpLog,
    Outcome,
    Sequencer,
    changes_since,
    op_origin,
)
from herd.peers import LinkState, PeerSession, answer_hello
from herd.planning import (
    PLANNING_WORDS,
    Login,
    PlanningError,
    Suggest,
    Venue,
    auth_delay,
    execute,
    execute_operator,
    parse_planning_line,
    position_lookup,
    respond,
    suggest_reply,
    suggestion_query,
    verify_token,
)
from herd.protocol import ConnectionLimits, LineConnection, LineTooLong, SliceScheduler, Slot
from herd.store import GroupCommitter, Snapshot
from herd.wire import (
    CLIENT_WORDS,
    ClientCommand,
    Digest,
    DigestEnd,
    Hello,
    IAmAt,
    Lease,
    OperatorLineError,
    OpRecord,
    OpUpdate,
    Record,
    Status,
    Sync,
    Update,
    WhatsAt,
    WireError,
    error_reply,
    format_at,
    format_whatsat_reply,
    max_at_line,
    max_op_payload,
    parse_client_fields,
    parse_operator_line,
    redact_secrets,
)

if TYPE_CHECKING:
    from herd.places import OfflinePlaces, PlacesAnswer, PlacesProvider
    from herd.traffic import TrafficLog

_log = Logger()
_BOT_ADDRESS = UNIXAddress(None)
T = TypeVar("T")
RunBlocking = Callable[[Callable[[], T]], Deferred[T]]
SUGGEST_LIMIT = 20
RECENT_OPS = 5000  # replayed at start into what needs them (the line pushes' history)
DEFAULT_ANTI_ENTROPY_SECONDS = 30.0
REPAIR_CHUNK = 1024  # records scanned for anti-entropy per reactor turn
REPAIR_WAIT = 0.05  # seconds to wait while the link's write buffer is full
MAX_DIGEST_LINES = 4096  # per round from a peer; more are ignored (a peer gone wrong)


@dataclass(slots=True)
class Replica:
    """Everything a server has to agree on with the others, and what it has seen of them."""

    instance: bytes
    sequencer: Sequencer
    table: LocationTable
    ops: OpLog
    planning: PlanningState
    marks: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    recent_changes: list[Change] = field(default_factory=list)  # of the newest operations

    @classmethod
    def restore(cls, snapshot: Snapshot, max_line: int | None = None) -> Replica:
        """Rebuild the state from the store (blocking work: run it off the reactor).  With
        `max_line`, records no peer could take are left out of the digests (`DigestIndex`)."""
        sequencer = Sequencer()
        table = LocationTable(sequencer, None if max_line is None else max_at_line(max_line))
        for location in snapshot.locations:
            table.restore(location)
        table.reorder()
        ops = OpLog(sequencer, None if max_line is None else max_op_payload(max_line))
        planning = PlanningState()
        recent: deque[list[Change]] = deque(maxlen=RECENT_OPS)
        for logged in snapshot.ops:
            try:
                op = Op.from_json(logged.line)
            except WireError:
                _log.warn("store: skipping a corrupt operation {op_id}", op_id=logged.op_id)
                continue
            ops.restore(logged)
            recent.append(planning.apply(op))
        replica = cls(snapshot.instance, sequencer, table, ops, planning, snapshot.marks)
        replica.recent_changes = [change for changes in recent for change in changes]
        return replica


class LinePush(TypingProtocol):
    """Line notifications for subscribed connections (the notifier implements it; the core
    only routes SUBSCRIBE to it, so it does not import the notifier)."""

    def subscribe(
        self, user: str, since: str | None, push: Callable[[bytes], None]
    ) -> Callable[[], None]:
        """Push `user`'s notifications after checkpoint `since`, then live; returns the
        function that stops it."""

    def latest(self, user: str) -> str | None: ...


class HerdServer:
    """The state and rules of one server, shared by all its connections."""

    def __init__(
        self,
        name: str,
        peers: tuple[str, ...],
        secret: bytes,
        max_line: int,
        replica: Replica,
        committer: GroupCommitter,
        places: PlacesProvider,
        log: TrafficLog,
        clock: IReactorTime,
        now_ns: Callable[[], int],
        run_cpu: RunBlocking[bool],
        limits: LimitsConfig = LimitsConfig(),  # noqa: B008 (frozen)
        anti_entropy_seconds: float = DEFAULT_ANTI_ENTROPY_SECONDS,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.peers = peers
        self.secret = secret
        self.max_line = max_line
        self.max_at_line = max_at_line(max_line)
        self.max_op_payload = max_op_payload(max_line)
        self.anti_entropy_seconds = anti_entropy_seconds
        self.jitter = jitter
        self.skipped_lines = 0  # peer lines skipped (over-long, unreadable, failed): logged
        if replica.table.digests.max_record is None:
            replica.table.limit_records(self.max_at_line)
        if replica.ops.digests.max_record is None:
            replica.ops.limit_records(self.max_op_payload)
        self.replica = replica
        self.table = replica.table
        self.planning = replica.planning
        self.instance = replica.instance
        self.marks = replica.marks
        self.committer = committer
        self.places = places
        self.log = log
        self.clock = clock
        self.now_ns = now_ns
        self.run_cpu = run_cpu
        self.connection_limits = ConnectionLimits(
            output_budget=limits.output_budget,
            input_budget=limits.input_budget,
            slice_lines=limits.slice_lines,
            replies_pending=limits.replies_pending,
            push_backlog=limits.push_backlog,
        )
        self.slices = SliceScheduler(clock, limits.slice_ms / 1000, limits.turn_ms / 1000)
        self.auth_checks = AuthChecks(run_cpu, limits.auth_per_address)
        self.feed = ChangeFeed()
        self.line_push: LinePush | None = None
        self.link_codes: Callable[[str, str, int], tuple[str, int]] | None = None
        self.opt_out: Callable[[str, str], bool] | None = None
        self.leases: Leases | None = None  # set by the wiring when the notifier runs
        self.links: dict[str, PeerSession] = {}
        self.position_of = position_lookup(self.planning, self.table)
        self.op_prefix = f"{name}.{replica.instance[:6].decode()}."
        self._op_counter = max(
            (
                int(op_id[len(self.op_prefix) :])
                for op_id in replica.ops.ids()
                if op_id.startswith(self.op_prefix)
            ),
            default=0,
        )
        self._flood_batch: object = None
        self._floods: list[tuple[bytes, PeerSession | None, bytes]] = []
        self._handlers: dict[type, Callable[[LineConnection, ClientCommand, bytes], None]] = {
            IAmAt: self._iamat,  # type: ignore[dict-item]
            WhatsAt: self._whatsat,  # type: ignore[dict-item]
            Status: self._status,  # type: ignore[dict-item]
            Hello: partial(answer_hello, self),
        }

    def client_handler(self) -> ClientHandler:
        return ClientHandler(self)

    def operator_handler(self) -> OperatorHandler:
        return OperatorHandler(self)

    def client_connection(
        self, kind: type[LineConnection] = LineConnection, label: str = ""
    ) -> LineConnection:
        """A new connection on the client port, with the server's budgets and scheduler."""
        return kind(
            self.client_handler(),
            self.max_line,
            self.log,
            label,
            redact_secrets,
            self.slices,
            self.connection_limits,
        )

    # --- client commands -------------------------------------------------------------------

    def client_line(
        self, connection: LineConnection, session: ClientHandler, line: bytes
    ) -> Deferred[None] | None:
        """Run one line; a Deferred when its effect on the session comes later (`AUTH`): the
        connection runs its next line only after that."""
        fields = line.split()
        if not fields:
            return None
        if fields[0] in CLIENT_WORDS:
            self._classic(connection, fields, line)
            return None
        if fields[0] in (b"SUBSCRIBE", b"UNSUBSCRIBE"):
            self._subscribe(connection, session, fields, line)
            return None
        if fields[0] == b"LINK":
            self._link(connection, session, fields, line)
            return None
        if fields[0] == b"OPTOUT":
            self._opt_out(connection, fields, line)
            return None
        if fields[0] in PLANNING_WORDS:
            try:
                return self._planning_line(connection, session, line)
            except Exception:
                _log.failure("internal error handling a {word!r} line", word=fields[0])
                self.reply(connection, error_reply(line))
            return None
        self.reply(connection, error_reply(line))
        return None

    def _classic(self, connection: LineConnection, fields: list[bytes], line: bytes) -> None:
        try:
            command = parse_client_fields(fields)
        except WireError:
            self.reply(connection, error_reply(line))
            return
        try:
            self._handlers[type(command)](connection, command, line)
        except Exception:
            # A bug must not cost the client its connection or the others their server: the
            # line gets the defined answer and the traceback goes to the log.
            _log.failure("internal error handling {line!r}", line=line)
            self.reply(connection, error_reply(line))

    def reply(self, connection: LineConnection, data: bytes) -> None:
        """Answer in request order, once every change made so far is durable.  Replies that
        wait for the same commit go out in one write per connection."""
        committer = self.committer
        if not committer.busy:
            connection.send(data)
            return
        slot = connection.gather(committer.open_batch)
        if slot is not None:
            committer.after_commit(partial(connection.release, slot))
        connection.add(data)

    def reply_later(self, connection: LineConnection, slot: Slot, data: bytes) -> None:
        """Fill a reserved reply once every change made so far is durable."""
        self.committer.after_commit(lambda: connection.fill(slot, data))

    def _iamat(self, connection: LineConnection, report: IAmAt, line: bytes) -> None:
        table = self.table
        current = table.get(report.client)
        if not table.is_newer_report(report.client, report.time):
            assert current is not None
            self.reply(connection, current.at.line + b"\n")
            return
        at = format_at(self.name_bytes, self.now_ns(), report)
        if len(at.line) > self.max_at_line:
            # No peer could take its update: refused, so that nothing unfloodable is stored.
            self.reply(connection, error_reply(line))
            return
        location = table.report(at, current)
        self.committer.add_location(location)
        self._flood(b"U %d %s\n" % (location.seq, at.line), None, self.name_bytes)
        self.reply(connection, at.line + b"\n")

    def _whatsat(self, connection: LineConnection, query: WhatsAt, line: bytes) -> None:
        stored = self.table.get(query.client)
        if stored is None:
            self.reply(connection, error_reply(line))
            return
        slot = connection.reserve()
        answer = self.places.nearby(
            stored.at.latitude, stored.at.longitude, query.radius_km, query.max_items
        )

        def answered(places: PlacesAnswer) -> None:
            # Not held for the store: a query changes nothing.  It may show a report whose own
            # AT reply still waits for the store (flooded ones are durable where accepted).
            connection.fill(slot, format_whatsat_reply(stored.at.line, places))

        def failed(failure: Failure) -> None:
            _log.failure("places lookup failed for {line!r}", failure, line=line)
            data = format_whatsat_reply(
                stored.at.line,
                {"html_attributions": [], "results": [], "status": "UNKNOWN_ERROR"},
            )
            connection.fill(slot, data)

        answer.addCallback(answered).addErrback(failed)

    def _status(self, connection: LineConnection, command: Status, line: bytes) -> None:
        peers = {peer: ("up" if peer in self.links else "down") for peer in self.peers}
        body = json.dumps({"server": self.name, "peers": peers}, separators=(",", ":"))
        self.reply(connection, b"STATUS " + body.encode() + b"\n")

    # --- planning --------------------------------------------------------------------------

    def _planning_line(
        self, connection: LineConnection, session: ClientHandler, line: bytes
    ) -> Deferred[None] | None:
        try:
            command = parse_planning_line(line)
        except WireError:
            self.reply(connection, error_reply(line))
            return None
        if command is None:
            return None
        if isinstance(command, Login):
            return self._login(connection, session, command)
        if isinstance(command, Suggest):
            self._suggest(connection, session, command)
            return None
        result = execute(self.planning, session.user, command, self.now_ns(), self.new_op_id)
        if not isinstance(result, PlanningError):
            result = self._floodable(result)
        if isinstance(result, PlanningError):
            self.reply(connection, result.line())
            return None
        for op in result:
            self.accept_op(op)
        assert session.user is not None
        self.reply(
            connection, respond(self.planning, session.user, command, result, self.position_of)
        )
        return None

    def _subscribe(
        self, connection: LineConnection, session: ClientHandler, fields: list[bytes], line: bytes
    ) -> None:
        """`SUBSCRIBE [<checkpoint>]`: push the user's notifications as `PUSH <checkpoint>
        <line>` lines (first those after the checkpoint) until `UNSUBSCRIBE` or disconnection;
        answered `SUBSCRIBED <user> <latest checkpoint or ->`."""
        if fields[0] == b"UNSUBSCRIBE" or len(fields) > 2 or self.line_push is None:
            if fields == [b"UNSUBSCRIBE"]:
                session.unsubscribe()
                self.reply(connection, b"UNSUBSCRIBED\n")
                return
            self.reply(connection, error_reply(line))
            return
        if session.user is None:
            self.reply(connection, PlanningError("not-authenticated", "AUTH first").line())
            return
        since = fields[1].decode("ascii", "replace") if len(fields) == 2 else None
        session.unsubscribe()
        user, push = session.user, self.line_push
        latest = push.latest(user) or "-"
        self.reply(connection, f"SUBSCRIBED {user} {latest}\n".encode())
        starting = session.starting = object()

        def start() -> None:
            # After the reply is out (it may wait for a commit), so no PUSH line overtakes it;
            # unless a later line (UNSUBSCRIBE, AUTH as another user, HERD-HELLO) ended it.
            if not connection.disconnected and session.starting is starting:
                session.starting = None
                session.stop_push = push.subscribe(user, since, connection.push)

        self.committer.after_commit(start)

    def _link(
        self, connection: LineConnection, session: ClientHandler, fields: list[bytes], line: bytes
    ) -> None:
        """`LINK <jid>`: a one-time code proving the user owns the JID: they send `link <user>
        <code>` to the bot from it.  Answered `LINKCODE <code> <expires, POSIX seconds>`."""
        if len(fields) != 2 or self.link_codes is None:
            self.reply(connection, error_reply(line))
            return
        if session.user is None:
            self.reply(connection, PlanningError("not-authenticated", "AUTH first").line())
            return
        jid = fields[1].decode("utf-8", "replace").lower()
        code, expires = self.link_codes(session.user, jid, self.now_ns())
        self.reply(connection, f"LINKCODE {code} {expires}\n".encode())

    def _opt_out(self, connection: LineConnection, fields: list[bytes], line: bytes) -> None:
        """`OPTOUT <user> <token>`: the unsubscribe token every notification mail carries (no
        login needed: the token proves it) stops email notifications for that user."""
        user_id = fields[1].decode("utf-8", "replace") if len(fields) == 3 else ""
        token = fields[2].decode("ascii", "replace") if len(fields) == 3 else ""
        user = self.planning.user(user_id)
        if self.opt_out is None or user is None or not self.opt_out(user_id, token):
            self.reply(connection, error_reply(line))
            return
        kept = sorted(set(user.channels) - {"email"}) or ["none"]
        reply = self.run_as(user_id, b"USER SET channels " + ",".join(kept).encode())
        slot = connection.reserve()
        reply.addCallback(
            lambda answer: connection.fill(
                slot,
                b"OPTOUT " + user_id.encode() + b"\n" if answer.startswith(b"USER") else answer,
            )
        )

    def run_as(self, user: str, line: bytes) -> Deferred[bytes]:
        """Run one line as `user`, as if they had sent it on an authenticated connection (the
        Jabber bot speaks the line protocol for the people it talks to); fires with the reply."""
        answered: Deferred[bytes] = Deferred()
        connection = self.client_connection(label=f"bot:{user}")
        handler = connection.handler
        assert isinstance(handler, ClientHandler)
        handler.user = user
        connection.makeConnection(_Answer(answered))  # type: ignore[no-untyped-call]
        connection.dataReceived(line + b"\n")
        return answered

    def new_op_id(self) -> str:
        """`<server>.<store instance>.<n>`: unique without coordination, short enough to type."""
        self._op_counter += 1
        return f"{self.op_prefix}{self._op_counter}"

    def _floodable(self, ops: list[Op]) -> list[Op] | PlanningError:
        """`ops`, or `ERR too-long` if one of them could not be flooded (its JSON, where text
        outside ASCII takes up to 12 bytes a character, is over what a peer line holds)."""
        for op in ops:
            if len(op.to_json()) > self.max_op_payload:
                return PlanningError("too-long", "the change would not fit a line between servers")
        return ops

    def accept_op(self, op: Op, source: PeerSession | None = None) -> None:
        """Apply, store and flood a new operation, and tell the change feed's listeners (they
        may add durable writes, such as notifications, to the same transaction)."""
        payload = op.to_json()
        logged = self.replica.ops.add(op.op_id, payload)
        self.committer.add_op(logged)
        changes = self.planning.apply(op)
        self._flood(OpUpdate(logged.seq, payload).to_line(), source, op_origin(op.op_id))
        self.feed.publish(changes)

    def _login(
        self, connection: LineConnection, session: ClientHandler, command: Login
    ) -> Deferred[None]:
        """Check the token off the reactor (scrypt costs milliseconds), in a fair turn among
        client addresses (`AuthChecks`); a wrong one is answered after a delay that grows with
        each failure on this connection.  The connection's next line runs once the session is
        changed (or, for a refusal, once the delay is over), so lines after `AUTH` run as the
        user it logged in, and a connection has one check at a time."""
        user = self.planning.user(command.user)
        stored = None if user is None else user.token_hash
        slot = connection.reserve()
        done: Deferred[None] = Deferred()

        def checked(valid: bool) -> None:
            if valid:
                if session.user != command.user:
                    session.unsubscribe()
                session.user = command.user
                session.auth_failures = 0
                reply = respond(self.planning, command.user, command, [], self.position_of)
                self.reply_later(connection, slot, reply)
                done.callback(None)
                return
            refuse("unknown user or wrong token")

        def refuse(why: str) -> None:
            session.auth_failures += 1

            def answer() -> None:
                self.reply_later(connection, slot, PlanningError("auth-failed", why).line())
                done.callback(None)

            self.clock.callLater(auth_delay(session.auth_failures), answer)

        def failed(failure: Failure) -> None:
            _log.failure("token check failed", failure)
            connection.fill(slot, PlanningError("auth-failed", "try again later").line())
            done.callback(None)

        check = self.auth_checks.check(
            _address(connection), lambda: not connection.disconnected, stored, command.token
        )
        if check is None:
            refuse("too many logins waiting from your address; try again later")
        else:
            check.addCallback(checked).addErrback(failed)
        return done

    def _suggest(
        self, connection: LineConnection, session: ClientHandler, command: Suggest
    ) -> None:
        query = suggestion_query(self.planning, session.user, command, self.position_of)
        if isinstance(query, PlanningError):
            self.reply(connection, query.line())
            return
        slot = connection.reserve()
        latitude, longitude = query.center

        def answered(places: PlacesAnswer) -> None:
            results = places.get("results")
            venues = []
            for result in results if isinstance(results, list) else []:
                if isinstance(result, dict) and (position := _lat_lng(result)) is not None:
                    venues.append(Venue(str(result.get("name", "")), *position))
            self.reply_later(connection, slot, suggest_reply(query, venues))

        def failed(failure: Failure) -> None:
            _log.failure("places lookup failed for SUGGEST", failure)
            self.reply_later(connection, slot, suggest_reply(query, []))

        self.places.nearby(latitude, longitude, query.radius_km, SUGGEST_LIMIT).addCallback(
            answered
        ).addErrback(failed)

    def operator_line(self, connection: LineConnection, line: bytes) -> None:
        """`USER-ADD <user> <token hash> [email=E] [jid=J]` / `USER-TOKEN <user> <token hash>`
        from an authenticated operator connection (`herd user`): answered `OK <user>` or
        `ERR <code>: <message>` (a bad field included: then nothing changes); any other line
        `? <line>`."""
        try:
            command = parse_operator_line(line)
        except OperatorLineError as error:
            self.reply(connection, error.line())
            return
        except WireError:
            self.reply(connection, error_reply(line))
            return
        if command is None:
            return
        result = execute_operator(self.planning, command, self.now_ns(), self.new_op_id)
        if isinstance(result, PlanningError):
            self.reply(connection, result.line())
            return
        for op in result:
            self.accept_op(op)
        self.reply(connection, b"OK " + command.user.encode() + b"\n")

    # --- peers -----------------------------------------------------------------------------

    def link_up(self, session: PeerSession) -> None:
        old = self.links.get(session.name)
        if old is not None and old is not session:
            _log.info("link to {peer} replaced by a new one", peer=session.name)
            old.close()
        self.links[session.name] = session
        _log.info("link to {peer} up ({label})", peer=session.name, label=session.connection.label)
        known, seq = self.marks.get(session.name, (b"-", 0))
        session.send(Sync(self.instance, known, seq).to_line())

    def link_down(self, session: PeerSession, reason: Failure) -> None:
        if self.links.get(session.name) is session:
            del self.links[session.name]
            _log.info(
                "link to {peer} down: {why}",
                peer=session.name,
                why=reason.getErrorMessage(),
            )

    def peer_sync(self, session: PeerSession, sync: Sync) -> None:
        """The peer says what it has of ours: send the rest, then flood to it live."""
        session.instance = sync.instance
        since = sync.seq if sync.known == self.instance else 0
        missing = changes_since(self.table, self.replica.ops, since)
        if self.marks.get(session.name, (None, 0))[0] == sync.instance:
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
        leases = [] if self.leases is None else self.leases.entries()
        if leases:
            session.send(b"".join(Lease(name.encode(), ns).to_line() for name, ns in leases))

    def _fits(self, entry: Location | LoggedOp) -> bool:
        if isinstance(entry, Location):
            return len(entry.at.line) <= self.max_at_line
        return len(entry.line) <= self.max_op_payload

    def peer_update(self, session: PeerSession, update: Update) -> None:
        if session.instance is None:
            _log.warn("peer {peer} sent an update before SYNC: ignored", peer=session.name)
            return
        if len(update.at.line) > self.max_at_line:
            self.peer_skipped(session, update.seq, "an update too long to flood on")
            return
        outcome, location = self.table.offer(update.at)
        self._mark(session, update.seq)
        if outcome is Outcome.STORED:
            self.committer.add_location(location)
            self._flood(Update(location.seq, location.at).to_line(), session, location.at.server)

    def peer_op(self, session: PeerSession, update: OpUpdate) -> None:
        if session.instance is None:
            _log.warn("peer {peer} sent an operation before SYNC: ignored", peer=session.name)
            return
        if len(update.payload) > self.max_op_payload:
            self.peer_skipped(session, update.seq, "an operation too long to flood on")
            return
        try:
            op = Op.from_json(update.payload)
        except WireError as error:
            self.peer_skipped(session, update.seq, f"a bad operation ({error})")
            return
        self._mark(session, update.seq)
        if op.op_id not in self.replica.ops:
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
        for kind, digests in ((b"AT", self.table.digests), (b"OP", self.replica.ops.digests)):
            for origin, sums in digests.digests().items():
                try:
                    line = Digest(kind, origin, sums).to_line()
                except WireError:
                    continue  # an origin name no line can carry: its records are not compared
                if len(line) <= self.max_line:
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
        for kind, digests in ((b"AT", self.table.digests), (b"OP", self.replica.ops.digests)):
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
            for location in self.table.scan(locations):
                if location is None or len(location.at.line) > self.max_at_line:
                    yield b""
                else:
                    yield Record(location.at).to_line()
        ops = {(origin, bucket) for kind, origin, bucket in wanted if kind == b"OP"}
        if ops:
            for logged in self.replica.ops.scan(ops):
                if logged is None or len(logged.line) > self.max_op_payload:
                    yield b""
                else:
                    yield OpRecord(logged.line).to_line()

    def _send_repair(self, session: PeerSession, lines: Iterator[bytes]) -> None:
        """Write `lines` a chunk per reactor turn (waiting while the link's buffer is full),
        so a large repair never holds the reactor or the link's other traffic for long."""
        if session.state is LinkState.CLOSED:
            return
        if session.connection.backlog:
            self.clock.callLater(REPAIR_WAIT, self._send_repair, session, lines)
            return
        step = list(itertools.islice(lines, REPAIR_CHUNK))
        if not step:
            session.repairing = False
            return
        chunk = b"".join(step)
        if chunk:
            session.send(chunk)
        self.clock.callLater(0, self._send_repair, session, lines)

    def peer_record(self, session: PeerSession, record: Record) -> None:
        """A location sent by anti-entropy: merged by the usual rule (newer wins), and if it is
        new here, stored and flooded on like any update."""
        if len(record.at.line) > self.max_at_line:
            self.peer_skipped(session, None, "a record too long to flood on")
            return
        outcome, location = self.table.offer(record.at)
        if outcome is Outcome.STORED:
            session.brought += 1
            self.committer.add_location(location)
            self._flood(Update(location.seq, location.at).to_line(), session, location.at.server)

    def peer_op_record(self, session: PeerSession, record: OpRecord) -> None:
        """An operation sent by anti-entropy: accepted if it is new here."""
        if len(record.payload) > self.max_op_payload:
            self.peer_skipped(session, None, "an operation too long to flood on")
            return
        try:
            op = Op.from_json(record.payload)
        except WireError as error:
            self.peer_skipped(session, None, f"a bad operation ({error})")
            return
        if op.op_id not in self.replica.ops:
            session.brought += 1
            self.accept_op(op, session)

    def accept_body(self, body: Body) -> None:
        """Make an operation of this server's own (the notifier's records) and accept it."""
        time_ns = self.planning.next_time(self.now_ns())
        self.accept_op(Op(self.new_op_id(), time_ns, OPERATOR, body))

    def renew_lease(self) -> None:
        """Announce this server's lease anew to every ready peer (see `herd.leases`)."""
        if self.leases is not None:
            lease = Lease(self.name_bytes, self.leases.renew(self._clock_ns()))
            self._send_lease(lease, None)

    def peer_lease(self, session: PeerSession, lease: Lease) -> None:
        """Keep a server's newer lease and pass it on, so that it crosses the herd."""
        server = lease.server.decode("ascii")  # `parse_peer_line` let only ASCII through
        if self.leases is not None and self.leases.offer(server, lease.ns, self._clock_ns()):
            self._send_lease(lease, session)

    def _clock_ns(self) -> int:
        """The reactor's clock, which the notifier reads lease ages on too."""
        return round(self.clock.seconds() * 1_000_000_000)

    def _send_lease(self, lease: Lease, source: PeerSession | None) -> None:
        """Not held for a commit: nothing about a lease is stored."""
        line = lease.to_line()
        for session in list(self.links.values()):
            if (
                session.state is LinkState.FLOODING
                and session is not source
                and session.name_bytes != lease.server
            ):
                session.send(line)

    def _mark(self, session: PeerSession, seq: int) -> None:
        """Remember (durably, with the update) how far we have read the peer's log."""
        assert session.instance is not None
        known, last = self.marks.get(session.name, (b"", 0))
        if known != session.instance or seq > last:
            self.marks[session.name] = (session.instance, seq)
            self.committer.set_mark(session.name, session.instance, seq)

    # --- durability and flooding -----------------------------------------------------------

    def _flood(self, line: bytes, source: PeerSession | None, origin: bytes) -> None:
        """Send `line` to every ready peer but `source` and the server it came from (`origin`
        made it, so has it or newer), once the batch holding it commits (and before that
        batch's replies).

        Updates from peers wait for the commit too, though their origin already made them
        durable: a peer's catch-up mark says "I have all of your log up to seq N", which holds
        only if lines go out in sequence order.  Relaying at once would need such lines to be
        sent without a sequence number (so they move no mark); that would save one commit per
        hop of propagation."""
        batch = self.committer.open_batch
        if batch is not self._flood_batch:
            self._flood_batch = batch
            floods: list[tuple[bytes, PeerSession | None, bytes]] = []
            self._floods = floods
            self.committer.after_commit(lambda: self._release(floods))
        self._floods.append((line, source, origin))

    def _release(self, floods: list[tuple[bytes, PeerSession | None, bytes]]) -> None:
        for session in list(self.links.values()):
            if session.state is not LinkState.FLOODING:
                continue
            name = session.name_bytes
            data = b"".join(
                line for line, source, origin in floods if source is not session and origin != name
            )
            if data:
                session.send(data)

    def idle(self) -> Deferred[None]:
        """Fires once every accepted change is durable (for a clean stop)."""
        return self.committer.idle()


def _nothing() -> None:
    return


@implementer(ITransport, IConsumer)
class _Answer:
    """The transport of a `run_as` connection: the first write is the answer."""

    def __init__(self, answered: Deferred[bytes]) -> None:
        self._answered = answered

    def write(self, data: bytes) -> None:
        if not self._answered.called:
            self._answered.callback(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def registerProducer(self, producer: object, streaming: bool) -> None:
        return

    def unregisterProducer(self) -> None:
        return

    def loseConnection(self) -> None:
        return

    def getPeer(self) -> IAddress:
        return _BOT_ADDRESS

    def getHost(self) -> IAddress:
        return _BOT_ADDRESS


class AuthChecks:
    """Token checks (scrypt) on the CPU thread one at a time, taken round robin over client
    addresses: a flood of `AUTH` lines from one address (whose connections each have one
    check at a time) delays another address's login by at most one check per flooding
    address, and an address has at most `per_address` checks waiting."""

    def __init__(self, run_cpu: RunBlocking[bool], per_address: int) -> None:
        self.run_cpu = run_cpu
        self._queue: FairQueue[tuple[Callable[[], bool], str | None, str, Deferred[bool]]] = (
            FairQueue(per_address)
        )
        self._running = False

    def check(
        self, address: str, wanted: Callable[[], bool], stored: str | None, token: str
    ) -> Deferred[bool] | None:
        """Whether `token` matches `stored`, once its turn comes (skipped if `wanted()` is
        false by then: the connection is gone); None if `address` has its share waiting."""
        result: Deferred[bool] = Deferred()
        if not self._queue.push(address, (wanted, stored, token, result)):
            return None
        self._next()
        return result

    def _next(self) -> None:
        while not self._running:
            item = self._queue.pop()
            if item is None:
                return
            wanted, stored, token, result = item
            if not wanted():
                continue
            self._running = True
            checking = self.run_cpu(partial(verify_token, stored, token))
            checking.addBoth(self._finished).addCallbacks(result.callback, result.errback)

    def _finished(self, outcome: T) -> T:
        self._running = False
        self._next()
        return outcome


def _address(connection: LineConnection) -> str:
    """The client's IP address (the unit of fairness for logins); the label for others."""
    peer = connection.transport.getPeer()  # type: ignore[union-attr]
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else connection.label


def _origin(entry: Location | LoggedOp) -> bytes:
    return entry.at.server if isinstance(entry, Location) else op_origin(entry.op_id)


def _update_line(entry: Location | LoggedOp) -> bytes:
    if isinstance(entry, Location):
        return Update(entry.seq, entry.at).to_line()
    return OpUpdate(entry.seq, entry.line).to_line()


def _lat_lng(result: dict[str, object]) -> tuple[float, float] | None:
    geometry = result.get("geometry")
    location = geometry.get("location") if isinstance(geometry, dict) else None
    if not isinstance(location, dict):
        return None
    lat, lng = location.get("lat"), location.get("lng")
    if isinstance(lat, int | float) and isinstance(lng, int | float):
        return float(lat), float(lng)
    return None


class ClientHandler:
    """Lines from an ordinary client connection, and who it has authenticated as."""

    def __init__(self, server: HerdServer) -> None:
        self.server = server
        self.user: str | None = None
        self.auth_failures = 0
        self.stop_push: Callable[[], None] = _nothing
        self.starting: object = None  # a SUBSCRIBE whose pushes start after its reply

    def line_received(self, connection: LineConnection, line: bytes) -> Deferred[None] | None:
        return self.server.client_line(connection, self, line)

    def unsubscribe(self) -> None:
        self.starting = None
        self.stop_push()
        self.stop_push = _nothing

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        self.unsubscribe()
        if reason.check(LineTooLong):
            _log.warn(
                "closed {client}: {why}", client=connection.label, why=reason.getErrorMessage()
            )


class OperatorHandler:
    """A connection that proved it knows the herd secret as the operator (`herd user`)."""

    def __init__(self, server: HerdServer) -> None:
        self.server = server

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        self.server.operator_line(connection, line)

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        return


class ProposedVenues:
    """Places proposed in events (with a position) become venues of the offline provider, so
    WHATSAT and SUGGEST know the herd's own places."""

    def __init__(self, places: OfflinePlaces) -> None:
        self._places = places

    def add_all(self, planning: PlanningState) -> None:
        for place in planning.places():
            if place.lat is not None and place.lon is not None:
                self._places.add_venue(place.id, place.name, place.lat, place.lon)

    def changed(self, change: Change) -> None:
        body = change.op.body
        if isinstance(body, AddPlace) and body.lat is not None and body.lon is not None:
            self._places.add_venue(change.op.op_id, body.name, body.lat, body.lon)
