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

import hmac
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.model import Location, LocationTable, Outcome
from herd.peers import PeerSession, new_nonce, peer_mac
from herd.protocol import LineConnection, LineTooLong
from herd.store import GroupCommitter
from herd.wire import (
    Auth,
    Challenge,
    ClientCommand,
    Hello,
    IAmAt,
    Status,
    Sync,
    Update,
    WhatsAt,
    WireError,
    error_reply,
    format_at,
    format_whatsat_reply,
    parse_client_line,
    parse_peer_line,
)

if TYPE_CHECKING:
    from herd.places import PlacesAnswer, PlacesProvider
    from herd.traffic import TrafficLog

_log = Logger()


class HerdServer:
    """The state and rules of one server, shared by all its connections."""

    def __init__(
        self,
        name: str,
        peers: tuple[str, ...],
        secret: bytes,
        max_line: int,
        table: LocationTable,
        committer: GroupCommitter,
        places: PlacesProvider,
        log: TrafficLog,
        clock: IReactorTime,
        now_ns: Callable[[], int],
        instance: bytes,
        marks: dict[str, tuple[bytes, int]],
    ) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.peers = peers
        self.secret = secret
        self.max_line = max_line
        self.table = table
        self.committer = committer
        self.places = places
        self.log = log
        self.clock = clock
        self.now_ns = now_ns
        self.instance = instance
        self.marks = marks
        self.links: dict[str, PeerSession] = {}
        self._floods: list[tuple[Location, PeerSession | None]] = []
        self._handlers: dict[type, Callable[[LineConnection, ClientCommand, bytes], None]] = {
            IAmAt: self._iamat,  # type: ignore[dict-item]
            WhatsAt: self._whatsat,  # type: ignore[dict-item]
            Status: self._status,  # type: ignore[dict-item]
            Hello: self._hello,  # type: ignore[dict-item]
        }

    def client_handler(self) -> ClientHandler:
        return ClientHandler(self)

    # --- client commands -------------------------------------------------------------------

    def client_line(self, connection: LineConnection, line: bytes) -> None:
        self.log.received(connection.label, line)
        try:
            command = parse_client_line(line)
        except WireError:
            self.reply(connection, error_reply(line))
            return
        if command is None:
            return
        try:
            self._handlers[type(command)](connection, command, line)
        except Exception:
            # A bug must not cost the client its connection or the others their server: the
            # line gets the defined answer and the traceback goes to the log.
            _log.failure("internal error handling {line!r}", line=line)
            self.reply(connection, error_reply(line))

    def reply(self, connection: LineConnection, data: bytes) -> None:
        """Answer in request order, once every change made so far is durable."""
        self.log.sent(connection.label, data)
        if not self.committer.busy:
            connection.send(data)
            return
        slot = connection.reserve()
        self.committer.after_commit(lambda: connection.fill(slot, data))

    def _iamat(self, connection: LineConnection, report: IAmAt, line: bytes) -> None:
        if not self.table.is_newer_report(report.client, report.time):
            stored = self.table.get(report.client)
            assert stored is not None
            self.reply(connection, stored.at.line + b"\n")
            return
        at = format_at(self.name_bytes, self.now_ns(), report)
        _, location = self.table.offer(at)
        self._store_and_flood(location, None)
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
            data = format_whatsat_reply(stored.at.line, places)
            self.log.sent(connection.label, data)
            self.committer.after_commit(lambda: connection.fill(slot, data))

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

    def _hello(self, connection: LineConnection, hello: Hello, line: bytes) -> None:
        """A server asks to become a peer link: challenge it, stay a client until it answers."""
        dialer = hello.sender.decode("utf-8", "replace")
        if hello.receiver != self.name_bytes or dialer not in self.peers:
            self.reply(connection, error_reply(line))
            return
        nonce = new_nonce()
        mac = peer_mac(self.secret, b"acceptor", hello.sender, self.name_bytes, hello.nonce, nonce)
        connection.handler = _AwaitingAuth(self, dialer, hello, nonce)
        self.reply(connection, Challenge(nonce, mac).to_line())

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
        missing = self.table.since(since)
        if missing:
            session.send(b"".join(Update(loc.seq, loc.at).to_line() for loc in missing))
        _log.info(
            "link to {peer}: sent {count} updates to catch up",
            peer=session.name,
            count=len(missing),
        )
        session.ready = True

    def peer_update(self, session: PeerSession, update: Update) -> None:
        if session.instance is None:
            _log.warn("peer {peer} sent an update before SYNC: ignored", peer=session.name)
            return
        outcome, location = self.table.offer(update.at)
        known, seq = self.marks.get(session.name, (b"", 0))
        if known != session.instance or update.seq > seq:
            self.marks[session.name] = (session.instance, update.seq)
            self.committer.set_mark(session.name, session.instance, update.seq)
        if outcome is Outcome.STORED:
            self._store_and_flood(location, session)

    # --- durability and flooding -----------------------------------------------------------

    def _store_and_flood(self, location: Location, source: PeerSession | None) -> None:
        self.committer.add_location(location)
        if not self._floods:
            self.committer.after_commit(self._release_floods)
        self._floods.append((location, source))

    def _release_floods(self) -> None:
        floods, self._floods = self._floods, []
        lines = [(Update(loc.seq, loc.at).to_line(), source) for loc, source in floods]
        for session in list(self.links.values()):
            if not session.ready:
                continue
            data = b"".join(line for line, source in lines if source is not session)
            if data:
                session.send(data)

    def idle(self) -> Deferred[None]:
        """Fires once every accepted change is durable (for a clean stop)."""
        return self.committer.idle()


class ClientHandler:
    """Lines from an ordinary client connection."""

    def __init__(self, server: HerdServer) -> None:
        self.server = server

    def line_received(self, connection: LineConnection, line: bytes, terminated: bool) -> None:
        self.server.client_line(connection, line)

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        if reason.check(LineTooLong):
            _log.warn(
                "closed {client}: {why}", client=connection.label, why=reason.getErrorMessage()
            )


class _AwaitingAuth:
    """A connection that said HERD-HELLO and was challenged: its next line must be HERD-AUTH
    with the right proof, or it goes back to being an ordinary client."""

    def __init__(self, server: HerdServer, dialer: str, hello: Hello, nonce: bytes) -> None:
        self.server = server
        self.dialer = dialer
        self.hello = hello
        self.nonce = nonce

    def line_received(self, connection: LineConnection, line: bytes, terminated: bool) -> None:
        server = self.server
        try:
            message = parse_peer_line(line)
        except WireError:
            message = None
        else:
            if message is None:
                return
        if isinstance(message, Auth):
            expected = peer_mac(
                server.secret,
                b"dialer",
                self.hello.sender,
                server.name_bytes,
                self.hello.nonce,
                self.nonce,
            )
            if hmac.compare_digest(expected, message.mac):
                server.log.received(connection.label, line)
                connection.label = self.dialer
                PeerSession(self.dialer, connection, server, server.clock).start()
                return
            _log.warn("failed peer authentication from {client}", client=connection.label)
        connection.handler = server.client_handler()
        server.client_line(connection, line)

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        return
