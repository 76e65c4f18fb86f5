"""Herd servers built from their real parts, joined by in-memory transports on one fake clock.

The store is a real SQLite file; only the thread hop is replaced by running the blocking work
inline, so every test is deterministic and needs no reactor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect

from herd.clock import Clock as HerdClock
from herd.config import LimitsConfig
from herd.handlers.core import ServerSettings
from herd.peers import DialFactory
from herd.protocol import LineConnection
from herd.server import HerdServer, Replica
from herd.store import GroupCommitter, Store
from herd.traffic import TrafficLog

T = TypeVar("T")
PlacesAnswer = dict[str, object]
SECRET = b"test-secret"
START_NS = 1_700_000_000_000_000_000
START_S = START_NS / 10**9  # 2023-11-14T22:13:20Z


def inline(work: Callable[[], T]) -> Deferred[T]:
    return maybeDeferred(work)


class FixedPlaces:
    """A places provider whose answers the test controls (the real providers have their own
    tests); records each query."""

    def __init__(self) -> None:
        self.queries: list[tuple[float, float, float, int]] = []
        self.pending: list[Deferred[PlacesAnswer]] = []
        self.hold = False

    def nearby(
        self, latitude: float, longitude: float, radius_km: float, limit: int
    ) -> Deferred[PlacesAnswer]:
        self.queries.append((latitude, longitude, radius_km, limit))
        answer: PlacesAnswer = {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}
        if not self.hold:
            return succeed(answer)
        waiting: Deferred[PlacesAnswer] = Deferred()
        self.pending.append(waiting)
        return waiting

    def close(self) -> Deferred[None]:
        return succeed(None)


@dataclass
class Node:
    name: str
    server: HerdServer
    store: Store
    clock: Clock
    places: FixedPlaces
    failures: list[Failure] = field(default_factory=list)

    def client(self) -> tuple[LineConnection, StringTransport]:
        connection = self.server.client_connection()
        transport = StringTransport()
        connection.makeConnection(transport)
        return connection, transport

    def close(self) -> None:
        self.server.log.stop()
        self.store.close()

    def ask(self, data: bytes) -> bytes:
        """Send lines on a fresh connection; everything answered once the clock turns."""
        connection, transport = self.client()
        connection.dataReceived(data)
        self.clock.advance(0)
        return transport.value()


def start_clock() -> Clock:
    """A fake clock at `START_S`: a server's time (its AT lines' diffs, its ops' stamps) is
    this clock's, as a real server's is the reactor's."""
    clock = Clock()
    clock.advance(START_S)
    return clock


def make_node(
    directory: Path,
    name: str,
    peers: tuple[str, ...],
    clock: Clock,
    secret: bytes = SECRET,
    max_line: int = 1024,
    limits: LimitsConfig = LimitsConfig(),  # noqa: B008 (frozen)
) -> Node:
    """A server reading back whatever its store under `directory` already holds."""
    store = Store(directory / f"{name}.sqlite")
    replica = Replica.restore(store.open())
    failures: list[Failure] = []
    committer = GroupCommitter(store, inline, clock, failures.append)
    log = TrafficLog(name, directory / f"{name}.log", None, clock, inline)
    log.start()
    places = FixedPlaces()
    server = HerdServer(
        settings=ServerSettings(name, peers, secret, max_line, limits),
        replica=replica,
        committer=committer,
        places=places,
        log=log,
        clock=HerdClock.following(clock),
        run_cpu=inline,
    )
    return Node(name, server, store, clock, places, failures)


def link(dialer: Node, acceptor: Node) -> IOPump:
    """Connect `dialer` to `acceptor` as a peer link would: the dialer's handshake against the
    acceptor's ordinary client port."""
    accepting = acceptor.server.client_connection()
    dialing = DialFactory(dialer.server, acceptor.name, dialer.clock).buildProtocol(None)
    return connect(
        accepting,
        FakeTransport(accepting, isServer=True),
        dialing,
        FakeTransport(dialing, isServer=False),
        greet=False,
        clock=dialer.clock,
    )


def settle(clock: Clock, pumps: list[IOPump]) -> None:
    """Move bytes and run due calls until the whole in-memory herd is quiet."""
    for _ in range(1000):
        clock.advance(0)
        moved = [pump.pump(advanceClock=False) for pump in pumps]
        if not any(moved) and all(
            call.getTime() > clock.seconds() for call in clock.getDelayedCalls()
        ):
            return
    raise AssertionError("the herd did not settle")


def token(user: str) -> str:
    """The token the protocol tests give `user`."""
    return f"{user}-token-0123456789"


class Session:
    """An interactive client connection that has authenticated as a user."""

    def __init__(self, node: Node, user: str) -> None:
        self.node = node
        self.connection, self.transport = node.client()
        assert self.send(f"AUTH {user} {token(user)}").startswith(b"USER ")

    def send(self, line: str) -> bytes:
        self.transport.clear()
        self.connection.dataReceived(line.encode() + b"\n")
        self.node.clock.advance(0)
        data: bytes = self.transport.value()
        return data

    def json(self, line: str, word: bytes = b"EVENT") -> dict[str, Any]:
        reply = self.send(line)
        assert reply.startswith(word + b" "), reply
        document = json.loads(reply[len(word) + 1 :])
        assert isinstance(document, dict)
        return document
