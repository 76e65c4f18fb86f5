"""Peer links: the authenticated handshake, flooding, catch-up and keepalive (Twisted, thin).

A connection becomes a peer link by a challenge-response over the herd secret; the secret
never crosses the wire:

    dialer   -> HERD-HELLO <dialer> <acceptor> <nonce_d>
    acceptor -> HERD-CHALLENGE <nonce_a> <mac("acceptor")>
    dialer   -> HERD-AUTH <mac("dialer")>
    both     -> SYNC <instance> <known instance of the other> <seq seen>
    both     -> U <seq> AT ...   (what the other lacks, oldest first, then live updates)
    both     -> DIGEST ... DIGEST-END, R ...   (anti-entropy, every `anti_entropy_seconds`)

where mac(role) = HMAC-SHA256(secret, "renga-peer-v1|role|dialer|acceptor|nonce_d|nonce_a").
Until `HERD-AUTH` checks out, the acceptor treats the connection as an ordinary client, so a
stranger cannot inject updates.  Of each linked pair, the server with the smaller name dials
(`ClientService`, with capped backoff and jitter); the other only accepts.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.backoff import Backoff
from herd.protocol import LineConnection
from herd.tokens import new_nonce, peer_mac
from herd.wire.client import Hello
from herd.wire.grammar import WireError
from herd.wire.peer import (
    Auth,
    Challenge,
    Digest,
    DigestEnd,
    Lease,
    OpRecord,
    OpUpdate,
    Ping,
    Pong,
    Record,
    Sync,
    Update,
    parse_peer_line,
    update_seq,
)

if TYPE_CHECKING:
    from herd.server import HerdServer

KEEPALIVE_SECONDS = 5.0
MISSED_KEEPALIVES = 3
MAX_PEER_BACKLOG = 64 * 1024 * 1024
DIAL_BACKOFF = Backoff(initial=0.1, factor=2.0, cap=1.0, jitter=0.25)
AUTH_FAILURE_HOLD_OFF = 5.0

_log = Logger()


class PeerSession:
    """An authenticated link to one peer, whichever side dialed.  Lines from the peer are
    never answered, except `PING`."""

    def __init__(
        self,
        name: str,
        connection: LineConnection,
        server: HerdServer,
        clock: IReactorTime,
    ) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.connection = connection
        self.server = server
        self.instance: bytes | None = None
        self.ready = False
        self.closed = False
        self._heard = True
        self._missed = 0
        self._keepalive = LoopingCall(self._tick)
        self._keepalive.clock = clock
        self.clock = clock
        # anti-entropy: the peer's digests of the round being received, the buckets that
        # differed in its last round (with both digests), whether a repair is being sent, and
        # how many records the peer's repairs brought
        self.digests: dict[tuple[bytes, bytes], tuple[int, ...]] = {}
        self.differed: dict[tuple[bytes, bytes, int], tuple[int, int]] = {}
        self.repairing = False
        self.brought = 0
        self._round: IDelayedCall | None = None

    def start(self) -> None:
        self.connection.handler = self
        self.connection.keep_reading(self.line_skipped)
        self.server.link_up(self)
        self._keepalive.start(KEEPALIVE_SECONDS, now=False)
        self._schedule_round()

    def _schedule_round(self) -> None:
        """The next digest exchange, after the configured interval give or take half of it
        (jitter, so the links of a herd started together do not all compare at once)."""
        delay = self.server.anti_entropy_seconds * (0.5 + self.server.jitter())
        self._round = self.clock.callLater(delay, self._anti_entropy)

    def _anti_entropy(self) -> None:
        if self.closed:
            return
        if self.ready:
            self.server.send_digests(self)
        self._schedule_round()

    def send(self, data: bytes) -> None:
        """Write to the peer; a peer that stops reading for too long is dropped (it will catch
        up when the link is back, so dropping loses nothing)."""
        if self.closed:
            return
        self.connection.send(data)
        if self.connection.backlog > MAX_PEER_BACKLOG:
            _log.warn("peer {peer} is not reading: dropping the link", peer=self.name)
            self.closed = True
            self.connection.transport.abortConnection()  # type: ignore[union-attr]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.connection.close()

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        self._heard = True
        try:
            message = parse_peer_line(line)
        except WireError as error:
            self.server.peer_skipped(self, update_seq(line), f"a bad line ({error})")
            return
        try:
            self._dispatch(message)
        except Exception:
            # A bug must not cost the link: the line is skipped (and marked read) like a bad one.
            _log.failure("peer {peer}: internal error on {line!r}", peer=self.name, line=line[:200])
            self.server.peer_skipped(self, update_seq(line), "a line that failed")

    def _dispatch(self, message: object) -> None:
        server = self.server
        if isinstance(message, Update):
            server.peer_update(self, message)
        elif isinstance(message, OpUpdate):
            server.peer_op(self, message)
        elif isinstance(message, Record):
            server.peer_record(self, message)
        elif isinstance(message, OpRecord):
            server.peer_op_record(self, message)
        elif isinstance(message, Digest):
            server.peer_digest(self, message)
        elif isinstance(message, DigestEnd):
            server.peer_digest_end(self)
        elif isinstance(message, Sync):
            server.peer_sync(self, message)
        elif isinstance(message, Lease):
            self.server.peer_lease(self, message)
        elif isinstance(message, Ping):
            self.send(Pong().to_line())
        elif isinstance(message, Pong | None):
            return
        else:
            _log.warn("peer {peer} sent an unexpected {kind}", peer=self.name, kind=type(message))

    def line_skipped(self, head: bytes, length: int, terminated: bool) -> None:
        """The connection cut a line out: an over-long one is skipped (and if it is an update,
        marked read); one cut by the end of the connection was never complete, so it is not
        applied and its update not marked (the peer sends it again at the next catch-up)."""
        self._heard = True
        if terminated:
            self.server.peer_skipped(self, update_seq(head), f"a line of {length} bytes")
        else:
            _log.warn(
                "peer {peer} closed the link in the middle of a line ({length} bytes, {head!r}):"
                " dropped, not applied",
                peer=self.name,
                length=length,
                head=head,
            )

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        self.closed = True
        if self._keepalive.running:
            self._keepalive.stop()
        if self._round is not None and self._round.active():
            self._round.cancel()
        self.server.link_down(self, reason)

    def _tick(self) -> None:
        if self._heard:
            self._heard = False
            self._missed = 0
        else:
            self._missed += 1
            if self._missed >= MISSED_KEEPALIVES:
                _log.warn("peer {peer} silent too long: dropping the link", peer=self.name)
                self.connection.transport.abortConnection()  # type: ignore[union-attr]
                return
        self.send(Ping().to_line())


class Dialer:
    """The dialing side's handshake on a fresh connection; becomes a `PeerSession`."""

    def __init__(self, server: HerdServer, peer: str, clock: IReactorTime) -> None:
        self.server = server
        self.peer = peer
        self.clock = clock
        self.nonce = new_nonce()
        self._challenged = False

    def connection_made(self, connection: LineConnection) -> None:
        hello = Hello(self.server.name.encode(), self.peer.encode(), self.nonce)
        data = hello.to_line()
        connection.send(data)

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        try:
            message = parse_peer_line(line)
        except WireError:
            message = None
        if self._challenged or not isinstance(message, Challenge):
            self._fail(connection, f"unexpected answer to the handshake: {line[:80]!r}")
            return
        self._challenged = True
        secret = self.server.secret
        me, them = self.server.name.encode(), self.peer.encode()
        expected = peer_mac(secret, b"acceptor", me, them, self.nonce, message.nonce)
        if not hmac.compare_digest(expected, message.mac):
            self._fail(connection, "the peer does not know the herd secret")
            return
        auth = Auth(peer_mac(secret, b"dialer", me, them, self.nonce, message.nonce)).to_line()
        connection.send(auth)
        session = PeerSession(self.peer, connection, self.server, self.clock)
        session.start()

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        _log.info("link to {peer} lost during the handshake", peer=self.peer)

    def _fail(self, connection: LineConnection, why: str) -> None:
        _log.error("link to {peer} refused: {why}", peer=self.peer, why=why)
        connection.handler = _HoldOff(connection, self.clock)


class _HoldOff:
    """A dialed connection whose handshake failed: kept open, silent, for a while before it is
    closed, so that a misconfigured peer is retried every few seconds, not in a tight loop
    (`ClientService` counts any TCP connection as a success)."""

    def __init__(self, connection: LineConnection, clock: IReactorTime) -> None:
        self._close = clock.callLater(AUTH_FAILURE_HOLD_OFF, connection.close)

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        return

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        if self._close.active():
            self._close.cancel()


class _DialConnection(LineConnection):
    def connectionMade(self) -> None:
        super().connectionMade()
        dialer = self.handler
        assert isinstance(dialer, Dialer)
        dialer.connection_made(self)


class DialFactory(Factory):
    """Builds the dialing side of one link (a fresh handshake per connection)."""

    def __init__(self, server: HerdServer, peer: str, clock: IReactorTime) -> None:
        self.server = server
        self.peer = peer
        self.clock = clock

    def buildProtocol(self, addr: object) -> _DialConnection:
        dialer = Dialer(self.server, self.peer, self.clock)
        server = self.server
        connection = _DialConnection(
            dialer, server.max_line, server.log, self.peer, scheduler=server.slices
        )
        connection.pause_reading_when_full = False
        return connection


def retry_policy(jitter: Callable[[], float]) -> Callable[[int], float]:
    """Backoff for dialing a peer (`ClientService`'s retry policy): 0.1 s doubling to 1 s, plus up
    to a quarter of that at random, so a returning peer is found within about a second and a
    half."""

    def policy(failed_attempts: int) -> float:
        return DIAL_BACKOFF.delay(failed_attempts, jitter())

    return policy
