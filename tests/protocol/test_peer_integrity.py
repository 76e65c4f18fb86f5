"""Peer-link framing and anti-entropy between in-memory servers (deterministic clock)."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test.iosim import IOPump

from herd.config import DEFAULT_ANTI_ENTROPY_SECONDS
from herd.protocol import LineConnection
from herd.rules import add_user
from herd.tokens import hash_token
from tests.protocol.harness import Node, link, make_node, settle, start_clock

POSITION = b"+34.068930-118.445127"
TOPOLOGY = {"A": ("B",), "B": ("A", "C"), "C": ("B",)}


class Lines:
    """A handler that records what a peer-framed connection hands on and what it skips."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.skipped: list[tuple[bytes, int, bool]] = []

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        self.lines.append(line)

    def connection_lost(self, connection: LineConnection, reason: object) -> None:
        return

    def skip(self, head: bytes, length: int, terminated: bool) -> None:
        self.skipped.append((head, length, terminated))


def peer_framed(max_line: int = 1024) -> tuple[LineConnection, Lines, StringTransport]:
    lines = Lines()
    connection = LineConnection(lines, max_line)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.keep_reading(lines.skip)
    return connection, lines, transport


line_bodies = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    st.integers(1000, 3000).map(lambda n: b"U %d " % n + b"x" * n),
)


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(line_bodies, max_size=12), cuts=st.lists(st.integers(0, 20_000)))
def test_peer_framing_skips_each_over_long_line_whatever_the_reads(
    bodies: list[bytes], cuts: list[int]
) -> None:
    """However the stream is split into reads: every line of at most max_line is handed on,
    in order, every longer one reported once with its head and length, the link kept."""
    connection, lines, transport = peer_framed()
    stream = b"".join(body + b"\n" for body in bodies)
    points = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    for start, end in itertools.pairwise(points):
        connection.dataReceived(stream[start:end])
    assert lines.lines == [body for body in bodies if len(body) <= 1024]
    assert lines.skipped == [(body[:64], len(body), True) for body in bodies if len(body) > 1024]
    assert not transport.disconnecting


def test_a_last_line_without_newline_is_dropped_on_a_peer_link() -> None:
    connection, lines, _transport = peer_framed()
    connection.dataReceived(b"U 1 AT whole\nU 2 AT cut 17966")
    connection.readConnectionLost()
    assert lines.lines == [b"U 1 AT whole"]
    assert lines.skipped == [(b"U 2 AT cut 17966", 16, False)]


def test_a_line_being_skipped_when_the_link_ends_is_reported_unterminated() -> None:
    connection, lines, _ = peer_framed()
    connection.dataReceived(b"U 9 " + b"x" * 2000)
    connection.dataReceived(b"x" * 100)
    connection.readConnectionLost()
    assert lines.lines == []
    assert lines.skipped == [(b"U 9 " + b"x" * 60, 2104, False)]


def test_a_client_keeps_its_last_unterminated_line_answered() -> None:
    """The peer rules do not touch clients: their last line before a half-close IS a command."""
    lines = Lines()
    connection = LineConnection(lines, 1024)
    connection.makeConnection(StringTransport())
    connection.dataReceived(b"STATUS")
    connection.readConnectionLost()
    assert lines.lines == [b"STATUS"]


# --- anti-entropy between in-memory servers ------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return start_clock()


def chain(tmp_path: Path, clock: Clock) -> dict[str, Node]:
    return {
        name: make_node(tmp_path / name, name, peers, clock) for name, peers in TOPOLOGY.items()
    }


@pytest.fixture
def nodes(tmp_path: Path, clock: Clock) -> Iterator[dict[str, Node]]:
    made = chain(tmp_path, clock)
    yield made
    for node in made.values():
        node.close()


def rounds(clock: Clock, pumps: list[IOPump], count: int = 4) -> None:
    """Let `count` anti-entropy periods pass (each round is jittered within 0.5-1.5 periods)."""
    for _ in range(count * 3):
        clock.advance(DEFAULT_ANTI_ENTROPY_SECONDS / 2)
        settle(clock, pumps)


def holdings(node: Node) -> tuple[dict[bytes, bytes], set[str]]:
    table = {location.at.client: location.at.line for location in node.server.table}
    return table, set(node.server.replica.ops.ids())


def test_anti_entropy_repairs_what_catch_up_cannot_see(tmp_path: Path, clock: Clock) -> None:
    """C's store loses a location and an operation and holds another location truncated, its
    marks untouched: catch-up sends nothing, anti-entropy brings all of A's records back."""
    nodes = chain(tmp_path, clock)
    pumps = [link(nodes["A"], nodes["B"]), link(nodes["B"], nodes["C"])]
    settle(clock, pumps)
    for i in range(30):
        nodes["A"].ask(b"IAMAT ae-%d %s 1796600000.11692\n" % (i, POSITION))
    a = nodes["A"].server
    ops = add_user(a.planning, "alice", hash_token("t", b"salt"), 1, a.new_op_id)
    assert isinstance(ops, list)
    for op in ops:
        a.accept_op(op)
    settle(clock, pumps)
    expected = holdings(nodes["A"])
    assert holdings(nodes["C"]) == expected
    for node in nodes.values():
        node.close()

    with sqlite3.connect(tmp_path / "C" / "C.sqlite") as db:
        db.execute("DELETE FROM locations WHERE client = ?", (b"ae-1",))
        truncated = expected[0][b"ae-2"].replace(b"1796600000.11692", b"179660000")
        db.execute("UPDATE locations SET at_line = ? WHERE client = ?", (truncated, b"ae-2"))
        db.execute("DELETE FROM ops WHERE op_id = ?", (ops[1].op_id,))
    nodes = chain(tmp_path, clock)
    try:
        pumps = [link(nodes["A"], nodes["B"]), link(nodes["B"], nodes["C"])]
        settle(clock, pumps)
        stored = nodes["C"].server.table.get(b"ae-2")
        assert stored is not None and stored.at.line == truncated
        assert holdings(nodes["C"]) != expected
        rounds(clock, pumps)
        for node in nodes.values():
            assert holdings(node) == expected, node.name
    finally:
        for node in nodes.values():
            node.close()


def test_a_herd_in_agreement_sends_no_records(nodes: dict[str, Node], clock: Clock) -> None:
    pumps = [link(nodes["A"], nodes["B"]), link(nodes["B"], nodes["C"])]
    settle(clock, pumps)
    for i in range(20):
        nodes["A"].ask(b"IAMAT calm-%d %s 1796600000.5\n" % (i, POSITION))
    settle(clock, pumps)
    rounds(clock, pumps)
    for node in nodes.values():
        node.server.log.flush()
        traffic = node.server.log._path.read_bytes()
        assert b" DIGEST-END" in traffic
        assert b" R AT " not in traffic and b" R OP " not in traffic


def test_an_over_long_stored_record_is_neither_sent_nor_compared(
    tmp_path: Path, clock: Clock
) -> None:
    """A record from before unfloodable reports were refused: kept where it is, never sent by
    catch-up or anti-entropy, and it makes no digest differ."""
    directory = tmp_path / "A"
    directory.mkdir()
    huge = b"AT A -1.000000000 huge " + POSITION + b" " + b"1" * 2000
    nodes = chain(tmp_path, clock)
    nodes["A"].close()
    with sqlite3.connect(directory / "A.sqlite") as db:
        db.execute("INSERT INTO locations VALUES (?, ?, ?)", (b"huge", 1, huge))
    nodes["A"] = make_node(directory, "A", TOPOLOGY["A"], clock)
    try:
        pumps = [link(nodes["A"], nodes["B"]), link(nodes["B"], nodes["C"])]
        settle(clock, pumps)
        rounds(clock, pumps)
        assert nodes["A"].server.table.get(b"huge") is not None
        assert nodes["B"].server.table.get(b"huge") is None
        assert set(nodes["A"].server.links) == {"B"}
        nodes["A"].server.log.flush()
        assert b"huge" not in nodes["B"].server.log._path.read_bytes()
    finally:
        for node in nodes.values():
            node.close()


def test_a_planning_change_that_could_not_be_flooded_is_refused(nodes: dict[str, Node]) -> None:
    a = nodes["A"].server
    ops = add_user(a.planning, "bob", hash_token("t", b"salt"), 1, a.new_op_id)
    assert isinstance(ops, list)
    for op in ops:
        a.accept_op(op)
    nodes["A"].clock.advance(0)
    connection, transport = nodes["A"].client()
    connection.dataReceived(b"AUTH bob t\n")
    nodes["A"].clock.advance(0)
    assert transport.value().startswith(b"USER ")
    # 300 characters outside the BMP: 1,200 bytes as UTF-8 on the client line, but each is a
    # 12-byte surrogate pair in the operation's JSON
    title = "\U0001f600" * 80
    line = f"PLAN {title}\n".encode()
    assert len(line) < 1024
    transport.clear()
    connection.dataReceived(line)
    nodes["A"].clock.advance(0)
    assert transport.value().startswith(b"ERR too-long: ")
    assert len(a.replica.ops) == len(ops)
