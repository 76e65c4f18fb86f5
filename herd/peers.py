"""Peer links (Twisted, thin): both ends of the handshake (`herd.wire.handshake` decides, this
module does the I/O), then the link itself: flooding, catch-up and keepalive, reported to the server
through `PeerHandler`.

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

from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import Protocol as TypingProtocol
from typing import runtime_checkable

from OpenSSL.SSL import Error as SSLError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.backoff import Backoff
from herd.clock import Clock
from herd.ops import OPERATOR
from herd.protocol import ConnectionLimits, LineConnection, LineHandler, Traffic
from herd.slices import SliceScheduler
from herd.tokens import new_nonce, peer_mac
from herd.wire.client import Hello, error_reply
from herd.wire.grammar import WireError
from herd.wire.handshake import (
    Authenticated,
    Handshake,
    NotChallenged,
    NotForUs,
    WrongProof,
)
from herd.wire.peer import (
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

KEEPALIVE_SECONDS = 5.0
MISSED_KEEPALIVES = 3
MAX_PEER_BACKLOG = 64 * 1024 * 1024
DIAL_BACKOFF = Backoff(initial=0.1, factor=2.0, cap=1.0, jitter=0.25)
AUTH_FAILURE_HOLD_OFF = 5.0

_log = Logger()


class PeerHandler(TypingProtocol):
    """What the peer links need from their server: what the handshake ends and the links read
    of it, and what each link reports (each callback gets the `PeerSession` it came from).
    Peer links know their server only through this, so this module never imports it."""

    @property
    def name(self) -> str: ...
    @property
    def name_bytes(self) -> bytes: ...
    @property
    def peers(self) -> tuple[str, ...]: ...
    @property
    def secret(self) -> bytes: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def max_line(self) -> int: ...
    @property
    def log(self) -> Traffic: ...
    @property
    def slices(self) -> SliceScheduler: ...
    @property
    def connection_limits(self) -> ConnectionLimits: ...
    @property
    def anti_entropy_seconds(self) -> float: ...
    @property
    def jitter(self) -> Callable[[], float]: ...

    def reply(self, connection: LineConnection, data: bytes) -> None:
        """Answer on a client connection, in request order (a challenge, or `? line`)."""

    def client_handler(self) -> LineHandler:
        """What handles an ordinary client connection (one that fails the handshake)."""

    def operator_handler(self) -> LineHandler:
        """What handles a connection that proved the secret as `@operator`."""

    def link_up(self, session: PeerSession) -> None: ...
    def link_down(self, session: PeerSession, reason: Failure) -> None: ...
    def peer_sync(self, session: PeerSession, sync: Sync) -> None: ...
    def peer_update(self, session: PeerSession, update: Update) -> None: ...
    def peer_op(self, session: PeerSession, update: OpUpdate) -> None: ...
    def peer_record(self, session: PeerSession, record: Record) -> None: ...
    def peer_op_record(self, session: PeerSession, record: OpRecord) -> None: ...
    def peer_digest(self, session: PeerSession, digest: Digest) -> None: ...
    def peer_digest_end(self, session: PeerSession) -> None: ...
    def peer_lease(self, session: PeerSession, lease: Lease) -> None: ...
    def peer_skipped(self, session: PeerSession, seq: int | None, what: str) -> None: ...
    def send_digests(self, session: PeerSession) -> None: ...


class LinkState(Enum):
    """Where a peer link is; each state names what may be sent on it."""

    SYNCING = "syncing"
    """Up, our `SYNC` sent: only the catch-up goes out, once the peer's `SYNC` says what it
    lacks (`synced()`)."""
    FLOODING = "flooding"
    """Caught up: live floods, leases and digest rounds go out too."""
    CLOSED = "closed"
    """Closed or lost: nothing more is sent."""


class PeerSession:
    """An authenticated link to one peer, whichever side dialed.  Lines from the peer are
    never answered, except `PING`."""

    def __init__(
        self,
        name: str,
        connection: LineConnection,
        server: PeerHandler,
        clock: IReactorTime,
    ) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.connection = connection
        self.server = server
        self.instance: bytes | None = None
        self.state = LinkState.SYNCING
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

    def synced(self) -> None:
        """The peer's catch-up has been sent: live floods may follow it."""
        if self.state is LinkState.SYNCING:
            self.state = LinkState.FLOODING

    def _schedule_round(self) -> None:
        """The next digest exchange, after the configured interval give or take half of it
        (jitter, so the links of a herd started together do not all compare at once)."""
        delay = self.server.anti_entropy_seconds * (0.5 + self.server.jitter())
        self._round = self.clock.callLater(delay, self._anti_entropy)

    def _anti_entropy(self) -> None:
        if self.state is LinkState.CLOSED:
            return
        if self.state is LinkState.FLOODING:
            self.server.send_digests(self)
        self._schedule_round()

    def send(self, data: bytes) -> None:
        """Write to the peer; a peer that stops reading for too long is dropped (it will catch
        up when the link is back, so dropping loses nothing)."""
        if self.state is LinkState.CLOSED:
            return
        self.connection.send(data)
        if self.connection.backlog > MAX_PEER_BACKLOG:
            _log.warn("peer {peer} is not reading: dropping the link", peer=self.name)
            self.state = LinkState.CLOSED
            self.connection.transport.abortConnection()  # type: ignore[union-attr]

    def close(self) -> None:
        if self.state is not LinkState.CLOSED:
            self.state = LinkState.CLOSED
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
        self.state = LinkState.CLOSED
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

    def __init__(
        self,
        server: PeerHandler,
        peer: str,
        clock: IReactorTime,
        on_tls_failure: Callable[[bool], None] = lambda failed: None,
    ) -> None:
        self.server = server
        self.peer = peer
        self.clock = clock
        self.on_tls_failure = on_tls_failure
        sign = partial(peer_mac, server.secret)
        self.handshake = Handshake.dialer(sign, server.name.encode(), peer.encode(), new_nonce())

    def connection_made(self, connection: LineConnection) -> None:
        connection.send(self.handshake.send_hello())

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        outcome = self.handshake.receive_challenge(line)
        if isinstance(outcome, NotChallenged):
            self._fail(connection, f"unexpected answer to the handshake: {line[:80]!r}")
        elif isinstance(outcome, WrongProof):
            self._fail(connection, "the peer does not know the herd secret")
        else:
            connection.send(outcome.auth)
            self.on_tls_failure(False)
            PeerSession(self.peer, connection, self.server, self.clock).start()

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        # With TLS, a certificate the herd's CA did not sign (or for another host) ends here:
        # the next dial waits as after a failed handshake, not in a tight loop.
        self.on_tls_failure(reason.check(SSLError) is not None)
        _log.info(
            "link to {peer} lost during the handshake: {why}",
            peer=self.peer,
            why=reason.getErrorMessage(),
        )

    def _fail(self, connection: LineConnection, why: str) -> None:
        _log.error("link to {peer} refused: {why}", peer=self.peer, why=why)
        connection.handler = _HoldOff(connection, self.clock)


@runtime_checkable
class ClientRole(TypingProtocol):
    """A client connection's handler: its role, and the pushes it asked for, end when the
    connection is challenged to become a link."""

    def unsubscribe(self) -> None: ...


def answer_hello(
    server: PeerHandler, connection: LineConnection, hello: Hello, line: bytes
) -> None:
    """The acceptor's side: a server (or the operator's `herd user` command) asks to become a
    peer link: challenge it; it stays an ordinary client until it proves it knows the secret."""
    known = (*server.peers, OPERATOR)
    sign = partial(peer_mac, server.secret)
    handshake = Handshake.acceptor(sign, server.name_bytes, known, new_nonce())
    outcome = handshake.receive_hello(hello)
    if isinstance(outcome, NotForUs):
        server.reply(connection, error_reply(line))
        return
    if isinstance(connection.handler, ClientRole):
        connection.handler.unsubscribe()  # the client role, and what it asked for, end here
    connection.handler = AwaitingAuth(server, handshake)
    server.reply(connection, outcome.challenge)


class AwaitingAuth:
    """A connection that said HERD-HELLO and was challenged: its next line must be HERD-AUTH
    with the right proof, or it goes back to being an ordinary client."""

    def __init__(self, server: PeerHandler, handshake: Handshake) -> None:
        self.server = server
        self.handshake = handshake

    def line_received(self, connection: LineConnection, line: bytes) -> Deferred[None] | None:
        server = self.server
        outcome = self.handshake.receive_auth(line)
        if outcome is None:
            return None
        if isinstance(outcome, Authenticated):
            if outcome.dialer == OPERATOR:
                connection.handler = server.operator_handler()
                return None
            connection.label = outcome.dialer
            PeerSession(outcome.dialer, connection, server, server.clock.scheduler).start()
            return None
        if outcome.wrong_proof:
            _log.warn("failed peer authentication from {client}", client=connection.label)
        client = server.client_handler()
        connection.handler = client
        return client.line_received(connection, line)

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        return


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

    def __init__(self, server: PeerHandler, peer: str, clock: IReactorTime) -> None:
        self.server = server
        self.peer = peer
        self.clock = clock
        # the last dial failed in TLS (`ClientService` counts the TCP connection a success)
        self.tls_failed = False

    def _tls_failure(self, failed: bool) -> None:
        self.tls_failed = failed

    def buildProtocol(self, addr: object) -> _DialConnection:
        dialer = Dialer(self.server, self.peer, self.clock, self._tls_failure)
        server = self.server
        connection = _DialConnection(
            dialer,
            server.max_line,
            server.log,
            self.peer,
            scheduler=server.slices,
            limits=server.connection_limits,
        )
        connection.pause_reading_when_full = False
        return connection


def retry_policy(
    jitter: Callable[[], float], held_off: Callable[[], bool] = lambda: False
) -> Callable[[int], float]:
    """Backoff for dialing a peer (`ClientService`'s retry policy): 0.1 s doubling to 1 s, plus up
    to a quarter of that at random, so a returning peer is found within about a second and a
    half; `AUTH_FAILURE_HOLD_OFF` while `held_off()` says the last dial failed in TLS."""

    def policy(failed_attempts: int) -> float:
        delay = DIAL_BACKOFF.delay(failed_attempts, jitter())
        return max(delay, AUTH_FAILURE_HOLD_OFF) if held_off() else delay

    return policy
