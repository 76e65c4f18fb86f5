"""The notifier attached to in-memory herd servers (`harness.make_node`): a real listener, line
hub and outbox over the node's own SQLite file, with channels that record what they deliver."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field

from twisted.internet.task import Clock

from herd.clock import Clock as HerdClock
from herd.operator import dial_handshake
from herd.ops import OPERATOR
from herd.tokens import hash_token
from notifier.build import Host, build_notifier
from notifier.channels.line import LineHub
from notifier.feed import NotifierListener
from notifier.outbox import Outbox
from notifier.render import Templates, Unsubscribe
from notifier.routing import Presence, Watching, nobody_watching, offline
from notifier.tables import load
from tests.protocol.harness import SECRET, Node, inline, token
from tests.support.channels import RecordingChannel

TEMPLATES = Templates()
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


def attach(
    node: Node,
    presence: Presence = offline,
    clock: Clock | None = None,
    watching: Watching = nobody_watching,
) -> Notified:
    """Wire a notifier into `node` as `herd/service.py` does, and start it; `clock` is the
    listener's, if not the node's; `watching` stands for the web's live streams."""
    server = node.server
    email, xmpp = RecordingChannel("email"), RecordingChannel("xmpp")
    host = Host(
        name=node.name,
        servers=sorted({node.name, *server.peers}),
        state=server.planning,
        position_of=server.position_of,
        subscribe=server.feed.subscribe,
        add_write=server.committer.add_write,
        after_commit=server.committer.after_commit,
        renew=server.renew_lease,
        accept=server.accept_body,
        run_as=server.run_as,
        secret=SECRET,
        store=node.store.path,
    )
    notifier = build_notifier(
        host,
        load(node.store.path),
        {"email": email, "xmpp": xmpp},
        server.clock,
        inline,
        lambda: 0.5,
        op_lines=(logged.line for logged in server.replica.ops.since(0)),
        unsubscribe=UNSUBSCRIBE,
        templates=TEMPLATES,
        presence=presence,
        watching=watching,
        listener_clock=None if clock is None else HerdClock.following(clock),
    )
    server.leases = notifier.leases
    assert notifier.start(()).called
    listener, hub, outbox = notifier.listener, notifier.hub, notifier.outbox
    return Notified(node, listener, hub, outbox, email, xmpp)


def operator(node: Node, command: str) -> bytes:
    """What `herd user` does: the operator handshake, then one command."""
    connection, transport = node.client()

    def send(data: bytes) -> None:
        connection.dataReceived(data)
        node.clock.advance(0)

    def read_line() -> bytes:
        line: bytes = transport.value()
        transport.clear()
        return line

    auth = dial_handshake(SECRET, OPERATOR.encode(), node.name.encode(), send, read_line)
    send(auth + command.encode() + b"\n")
    data: bytes = transport.value()
    return data


def add_user(node: Node, user: str, *extra: str) -> None:
    """`herd user add` at `node`; `extra` as `email=…`, `jid=…`."""
    digest = hash_token(token(user), b"salt" * 4)
    reply = operator(node, " ".join(["USER-ADD", user, digest, *extra]))
    assert reply == f"OK {user}\n".encode(), reply
