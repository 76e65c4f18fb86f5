"""One server's figures for the operator's status listener (`web.status.StatusSource`), read
from what the server already keeps: its peer links (`HerdServer.links`), its client
connections, its op log, and the outbox table in its database (counted on the outbox's
thread, never on the reactor).  Built by the wiring (`herd.service`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from herd.clock import Clock
from herd.peers import LinkState
from herd.server import HerdServer
from web.status import PeerLink, ServerEntry, StatusFigures

__all__ = ["ServerFigures"]

OutboxDepth = Callable[[Path], Mapping[tuple[str, str], int]]


class ServerFigures:
    """The `StatusSource` of one running server."""

    def __init__(
        self,
        *,
        name: str,
        servers: Sequence[str],
        peers: Sequence[str],
        server: HerdServer,
        connections: Callable[[], int],
        clock: Clock,
        database: Path,
        channels: Callable[[], Sequence[str]],
        count_outbox: OutboxDepth,
        run_blocking: Callable[[Callable[[], Mapping[tuple[str, str], int]]], Deferred[object]],
        web_streams: Callable[[], int] | None = None,
    ) -> None:
        self._name = name
        self._servers = tuple(servers)
        self._peers = tuple(sorted(peers))
        self._server = server
        self._connections = connections
        self._clock = clock
        self._started = clock.seconds()
        self._database = database
        self._channels = channels
        self._count = count_outbox
        self._run = run_blocking
        self._web_streams = web_streams
        self._outbox: Mapping[tuple[str, str], int] = {}
        self._outbox_error: str | None = None
        self._reading: Deferred[None] | None = None
        self._waiting: list[Deferred[None]] = []

    def refresh(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        if self._reading is None:
            if not self._channels():
                self._finish()
                return waiter
            reading = self._run(lambda: self._count(self._database))
            self._reading = reading  # type: ignore[assignment]
            reading.addCallbacks(self._counted, self._failed)
            reading.addBoth(lambda _: self._finish())
        return waiter

    def _counted(self, counts: object) -> None:
        assert isinstance(counts, dict)
        self._outbox = counts
        self._outbox_error = None

    def _failed(self, failure: Failure) -> None:
        self._outbox_error = failure.getErrorMessage()

    def _finish(self) -> None:
        self._reading = None
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def figures(self) -> StatusFigures:
        links = tuple(PeerLink(peer, self._link_state(peer)) for peer in self._peers)
        by_peer = {link.peer: link for link in links}
        servers = tuple(
            ServerEntry(
                name,
                "this server"
                if name == self._name
                else "neighbour"
                if name in by_peer
                else "through others",
                by_peer.get(name),
            )
            for name in self._servers
        )
        channels = tuple(sorted({*self._channels(), *(c for c, _ in self._outbox)}))
        return StatusFigures(
            server=self._name,
            servers=servers,
            links=links,
            outbox=dict(self._outbox),
            channels=channels,
            line_connections=self._connections(),
            web_streams=None if self._web_streams is None else self._web_streams(),
            uptime_seconds=max(self._clock.seconds() - self._started, 0.0),
            ops_stored=len(self._server.ops),
            outbox_error=self._outbox_error,
        )

    def _link_state(self, peer: str) -> str:
        session = self._server.links.get(peer)
        if session is None or session.state is LinkState.CLOSED:
            return "down"
        return str(session.state.value)
