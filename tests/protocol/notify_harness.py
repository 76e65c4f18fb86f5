"""The notifier attached to in-memory herd servers (`harness.make_node`): a real listener, line
hub and outbox over the node's own SQLite file, with channels that record what they deliver."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field

from twisted.internet.task import Clock

from herd.events import OPERATOR
from herd.leases import Leases, LeaseSettings
from herd.peers import new_nonce, peer_mac
from herd.planning import hash_token
from herd.wire import Challenge, Hello, parse_peer_line
from notifier.channels.line import LineHub
from notifier.feed import TICK, NotifierListener, load
from notifier.outbox import Outbox
from notifier.render import Unsubscribe
from notifier.routing import Presence, Timing, offline
from tests.protocol.harness import SECRET, START_NS, Node, inline, token
from tests.support.channels import RecordingChannel

START_S = START_NS / 10**9  # the harness stamps ops from here: start the clock there too
UNSUBSCRIBE = Unsubscribe(b"test-secret", "mailto:unsubscribe@example.org?subject={user}+{token}")


@dataclass
class Notified:
    """One node with its notifier: listener, hub, outbox and recording channels."""

    node: Node
    listener: NotifierListener
    hub: LineHub
    outbox: Outbox
    email: RecordingChannel
    xmpp: RecordingChannel
    pushes: dict[str, list[bytes]] = field(default_factory=dict)

    def subscribe(self, user: str, since: str | None = None) -> list[bytes]:
        """What a SUBSCRIBE connection would be written, as a growing list."""
        got = self.pushes.setdefault(user, [])
        self.hub.subscribe(user, since, got.append)
        return got

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        """Read the node's database on a connection of its own (as an operator would)."""
        with closing(sqlite3.connect(self.node.store.path)) as db:
            return db.execute(sql, args).fetchall()

    def outbox_rows(self) -> list[tuple[object, ...]]:
        return self.query("SELECT key, channel, recipient, state FROM outbox ORDER BY key")

    def close(self) -> None:
        self.listener.stop()
        stopped = self.outbox.stop()
        assert stopped.called
        self.node.close()


def attach(node: Node, presence: Presence = offline, clock: Clock | None = None) -> Notified:
    """Wire a notifier into `node` as `herd/service.py` does, and start it; `clock` is the
    listener's, if not the node's."""
    saved = load(node.store.path)
    hub = LineHub()
    email, xmpp = RecordingChannel("email"), RecordingChannel("xmpp")
    outbox = Outbox(
        node.store.path, {"email": email, "xmpp": xmpp}, node.clock, inline, lambda: 0.5
    )
    server = node.server
    listening = node.clock if clock is None else clock
    servers = sorted({node.name, *server.peers})
    leases = Leases(node.name, servers, LeaseSettings(), round(listening.seconds() * 10**9))
    server.leases = leases
    listener = NotifierListener(
        server_name=node.name,
        op_prefix=server.op_prefix,
        state=server.planning,
        position_of=server.position_of,
        add_write=server.committer.add_write,
        after_commit=server.committer.after_commit,
        wake=outbox.wake,
        push=hub,
        unsubscribe=UNSUBSCRIBE,
        clock=node.clock if clock is None else clock,
        presence=presence,
        saved=saved,
        op_lines=(logged.line for logged in server.replica.ops.since(0)),
        leases=leases,
        renew=server.renew_lease,
        accept=server.accept_body,
        timing=Timing(),
        look_every=TICK,
    )
    server.feed.subscribe(listener)
    listener.start()
    assert outbox.start().called
    return Notified(node, listener, hub, outbox, email, xmpp)


def operator(node: Node, command: str) -> bytes:
    """What `herd user` does: the operator handshake, then one command."""
    connection, transport = node.client()
    nonce = new_nonce()
    me, them = OPERATOR.encode(), node.name.encode()
    connection.dataReceived(Hello(me, them, nonce).to_line())
    node.clock.advance(0)
    challenge = parse_peer_line(transport.value().rstrip(b"\n"))
    assert isinstance(challenge, Challenge)
    transport.clear()
    proof = peer_mac(SECRET, b"dialer", me, them, nonce, challenge.nonce)
    connection.dataReceived(b"HERD-AUTH " + proof + b"\n" + command.encode() + b"\n")
    node.clock.advance(0)
    data: bytes = transport.value()
    return data


def add_user(node: Node, user: str, *extra: str) -> None:
    """`herd user add` at `node`; `extra` as `email=…`, `jid=…`."""
    digest = hash_token(token(user), b"salt" * 4)
    reply = operator(node, " ".join(["USER-ADD", user, digest, *extra]))
    assert reply == f"OK {user}\n".encode(), reply
