"""One herd server: the state its connections share, and the one dispatch of a client line
(first word -> wire class -> handler).  What each command does is in `herd.handlers`:
locations (IAMAT, WHATSAT, STATUS), planning, sessions (AUTH), operator commands and flooding;
extensions (`herd.extensions`) add commands of their own.

The ordering rule kept here: a reply never reveals a change that is not yet durable: replies
wait for the batch holding every change made before them (and go out after that batch's flood).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, get_args

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from herd.changes import Change, ChangeFeed
from herd.clock import Clock
from herd.extensions import CommandHandler, Extension
from herd.handlers.core import ServerSettings
from herd.handlers.flooding import Flooding
from herd.handlers.locations import Locations
from herd.handlers.operator import OperatorCommands, OperatorHandler
from herd.handlers.planning import OpIds, Planning, run_as
from herd.handlers.sessions import AuthChecks, ClientHandler, Sessions
from herd.leases import Leases
from herd.offload import RunBlocking
from herd.ops import Body, Op
from herd.peers import PeerSession, answer_hello
from herd.protocol import ConnectionLimits, LineConnection, Slot
from herd.records import LocationTable, OpLog, Sequencer
from herd.slices import SliceScheduler
from herd.state import PlanningState
from herd.store import GroupCommitter, Snapshot
from herd.wire.client import Hello, IAmAt, Status, WhatsAt, error_reply
from herd.wire.commands import CLIENT_PORT
from herd.wire.grammar import WireError, redact_secrets
from herd.wire.peer import max_at_line, max_op_payload
from herd.wire.planning import Login, StateCommand, Suggest, Unsubscribe
from herd.zones import position_lookup

if TYPE_CHECKING:
    from herd.places.answers import PlacesProvider
    from herd.traffic import TrafficLog

_log = Logger()
RECENT_OPS = 5000  # replayed at start into what needs them (the line pushes' history)


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


class HerdServer:
    """The state and rules of one server, shared by all its connections."""

    def __init__(
        self,
        settings: ServerSettings,
        replica: Replica,
        committer: GroupCommitter,
        places: PlacesProvider,
        log: TrafficLog,
        clock: Clock,
        run_cpu: RunBlocking,
    ) -> None:
        self.settings = settings
        # what `herd.peers` reads of the server
        self.name = settings.name
        self.name_bytes = settings.name_bytes
        self.peers = settings.peers
        self.secret = settings.secret
        self.max_line = settings.max_line
        self.anti_entropy_seconds = settings.anti_entropy_seconds
        self.jitter = settings.jitter
        if replica.table.digests.max_record is None:
            replica.table.limit_records(settings.max_at_line)
        if replica.ops.digests.max_record is None:
            replica.ops.limit_records(settings.max_op_payload)
        self.replica = replica
        self.table = replica.table
        self.ops = replica.ops
        self.planning = replica.planning
        self.instance = replica.instance
        self.marks = replica.marks
        self.committer = committer
        self.log = log
        self.clock = clock
        limits = settings.limits
        self.connection_limits = ConnectionLimits(
            output_budget=limits.output_budget,
            input_budget=limits.input_budget,
            slice_lines=limits.slice_lines,
            replies_pending=limits.replies_pending,
            push_backlog=limits.push_backlog,
        )
        self.slices = SliceScheduler(clock.scheduler, limits.slice_ms / 1000, limits.turn_ms / 1000)
        self.auth_checks = AuthChecks(run_cpu, limits.auth_per_address)
        self.feed = ChangeFeed(self.planning, committer.add_write)
        self.leases: Leases | None = None  # set by the wiring when the notifier runs
        self.links: dict[str, PeerSession] = {}
        self.position_of = position_lookup(self.planning, self.table)
        self.op_ids = OpIds(settings.name, replica.instance, replica.ops.ids())
        self.op_prefix = self.op_ids.prefix

        self.flooding = Flooding(self, self.accept_op)
        self.locations = Locations(self, places, self.flooding.flood)
        self.planning_lines = Planning(
            self, places, self.flooding.flood, self.feed, self.position_of, self.op_ids
        )
        self.sessions = Sessions(self, self.auth_checks, self.position_of)
        self.operator = OperatorCommands(self, self.accept_op, self.op_ids.new)
        # what `herd.peers.PeerSession` calls on the server: served by the flooding handler
        flooding = self.flooding
        self.link_up = flooding.link_up
        self.link_down = flooding.link_down
        self.peer_sync = flooding.peer_sync
        self.peer_update = flooding.peer_update
        self.peer_op = flooding.peer_op
        self.peer_skipped = flooding.peer_skipped
        self.send_digests = flooding.send_digests
        self.peer_digest = flooding.peer_digest
        self.peer_digest_end = flooding.peer_digest_end
        self.peer_record = flooding.peer_record
        self.peer_op_record = flooding.peer_op_record
        self.peer_lease = flooding.peer_lease
        self.renew_lease = flooding.renew_lease

        planning = self.planning_lines
        handlers: dict[type, CommandHandler] = {
            IAmAt: self.locations.iamat,
            WhatsAt: self.locations.whatsat,
            Status: self.locations.status,
            Hello: lambda connection, session, hello, line: answer_hello(
                self, connection, hello, line
            ),
            Login: self.sessions.login,
            Unsubscribe: self.sessions.unsubscribe,
            Suggest: planning.suggest,
        }
        for command in get_args(StateCommand):
            handlers.setdefault(command, planning.state_command)
        self._handlers = handlers

    def register(self, extension: Extension) -> None:
        """Serve the commands `extension` handles (until then they are answered `? <line>`)."""
        self._handlers.update(extension.handlers(self))

    def operator_handler(self) -> OperatorHandler:
        return OperatorHandler(self)

    def client_handler(self) -> ClientHandler:
        return ClientHandler(self)

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

    # --- client lines ----------------------------------------------------------------------

    def client_line(
        self, connection: LineConnection, session: ClientHandler, line: bytes
    ) -> Deferred[None] | None:
        """Run one line: its first word gives its wire class (`CLIENT_PORT`), the class its
        handler.  A Deferred when its effect on the session comes later (`AUTH`): the
        connection runs its next line only after that."""
        fields = line.split()
        if not fields:
            return None
        parse = CLIENT_PORT.get(fields[0])
        try:
            if parse is None:
                raise WireError("unknown command")
            command = parse(fields, line)
            handler = self._handlers.get(type(command))
            if handler is None:
                raise WireError("not served here")
        except WireError:
            self.reply(connection, error_reply(line))
            return None
        try:
            return handler(connection, session, command, line)
        except Exception:
            # A bug must not cost the client its connection or the others their server: the
            # line gets the defined answer and the traceback goes to the log.
            _log.failure("internal error handling {line!r}", line=redact_secrets(line))
            self.reply(connection, error_reply(line))
            return None

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

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once every change made so far is durable."""
        self.committer.after_commit(callback)

    def operator_line(self, connection: LineConnection, line: bytes) -> None:
        """A line from an authenticated operator connection (`herd user`)."""
        self.operator.line(connection, line)

    # --- planning operations -------------------------------------------------------------------

    def run_as(self, user: str, line: bytes, channel: str = "bot") -> Deferred[bytes]:
        """Run one line as `user`, as if they had sent it on an authenticated connection;
        fires with the reply.  `channel` names the way it came in the log (`bot:alice`,
        `web:alice`)."""
        return run_as(partial(self.client_connection, LineConnection), user, line, channel)

    def new_op_id(self) -> str:
        return self.op_ids.new()

    def accept_op(self, op: Op, source: PeerSession | None = None) -> None:
        self.planning_lines.accept_op(op, source)

    def accept_body(self, body: Body) -> None:
        self.planning_lines.accept_body(body)

    def idle(self) -> Deferred[None]:
        """Fires once every accepted change is durable (for a clean stop)."""
        return self.committer.idle()
