"""One connection's lines run strictly in order, in slices, within its budgets (fake transport)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from herd.protocol import LINE_OVERHEAD, ConnectionLimits, LineConnection, Slot
from herd.tokens import auth_delay
from tests.protocol.harness import Node, make_node
from tests.protocol.test_planning_protocol import TOKENS, add_user


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    node = make_node(tmp_path, "Bailey", (), Clock())
    add_user(node, "alice")
    add_user(node, "bob")
    yield node
    node.close()


def client_from(node: Node, host: str) -> tuple[LineConnection, StringTransport]:
    connection = node.server.client_connection()
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    connection.makeConnection(transport)
    return connection, transport


def replies(transport: StringTransport) -> list[bytes]:
    return transport.value().splitlines()


def whoami(reply: bytes) -> object:
    assert reply.startswith(b"USER "), reply
    return json.loads(reply[5:])["id"]


def held_checks(node: Node) -> list[tuple[Callable[[], bool], Deferred[bool]]]:
    """Token checks are queued here instead of run, so a test decides when each ends."""
    held: list[tuple[Callable[[], bool], Deferred[bool]]] = []

    def run_cpu(work: Callable[[], bool]) -> Deferred[bool]:
        done: Deferred[bool] = Deferred()
        held.append((work, done))
        return done

    node.server.auth_checks.run_cpu = run_cpu
    return held


def finish(held: list[tuple[Callable[[], bool], Deferred[bool]]]) -> None:
    work, done = held.pop(0)
    done.callback(work())


def test_lines_after_auth_in_the_same_write_run_as_the_new_user(node: Node) -> None:
    connection, transport = node.client()
    connection.dataReceived(f"AUTH bob {TOKENS['bob']}\nWHOAMI\nPLAN Dinner\n".encode())
    node.clock.advance(0)
    auth, who, plan = replies(transport)
    assert whoami(auth) == whoami(who) == "bob"
    assert plan.startswith(b"EVENT ")
    assert json.loads(plan[6:])["organiser"] == "bob"


def test_auth_as_another_user_changes_the_lines_after_it(node: Node) -> None:
    connection, transport = node.client()
    connection.dataReceived(f"AUTH alice {TOKENS['alice']}\n".encode())
    node.clock.advance(0)
    transport.clear()
    connection.dataReceived(f"WHOAMI\nAUTH bob {TOKENS['bob']}\nWHOAMI\n".encode())
    node.clock.advance(0)
    before, auth, after = replies(transport)
    assert [whoami(before), whoami(auth), whoami(after)] == ["alice", "bob", "bob"]


def test_a_connection_has_one_token_check_at_a_time(node: Node) -> None:
    held = held_checks(node)
    connection, transport = node.client()
    connection.dataReceived(b"AUTH alice wrong-1\nAUTH alice wrong-2\nAUTH alice wrong-3\n")
    assert len(held) == 1
    finish(held)
    assert held == []  # the next AUTH waits for the refusal, after the failure delay
    node.clock.advance(auth_delay(1))
    assert len(held) == 1
    assert replies(transport) == [b"ERR auth-failed: unknown user or wrong token"]


def test_token_checks_go_round_robin_over_addresses(node: Node) -> None:
    held = held_checks(node)
    flooders = [client_from(node, "10.0.0.1") for _ in range(5)]
    for connection, _ in flooders:
        connection.dataReceived(b"AUTH alice wrong\n")
    victim, transport = client_from(node, "10.0.0.2")
    victim.dataReceived(f"AUTH bob {TOKENS['bob']}\n".encode())
    assert len(held) == 1  # one check runs at a time (the CPU thread)
    for _ in range(3):  # at most one more of the flooding address's before the other's turn
        finish(held)
    node.clock.advance(0)
    assert whoami(transport.value().rstrip(b"\n")) == "bob"
    assert len(held) == 1
    assert len(node.server.auth_checks._queue) == 2  # two flooders still wait


def test_an_address_with_its_share_waiting_is_refused_at_once(node: Node) -> None:
    held = held_checks(node)
    share = node.server.auth_checks._queue.per_key
    for _ in range(share + 1):  # the first one is taken off the queue and runs
        client_from(node, "10.0.0.1")[0].dataReceived(b"AUTH alice wrong\n")
    late, transport = client_from(node, "10.0.0.1")
    late.dataReceived(f"AUTH bob {TOKENS['bob']}\n".encode())
    node.clock.advance(auth_delay(1))
    assert replies(transport) == [
        b"ERR auth-failed: too many logins waiting from your address; try again later"
    ]
    assert len(held) == 1


def test_a_check_for_a_closed_connection_is_skipped(node: Node) -> None:
    held = held_checks(node)
    first, _ = client_from(node, "10.0.0.1")
    first.dataReceived(b"AUTH alice wrong\n")
    gone, _ = client_from(node, "10.0.0.1")
    gone.dataReceived(b"AUTH alice wrong\n")
    gone.connectionLost()
    finish(held)
    assert held == []


def test_lines_run_in_slices_and_other_connections_get_turns(node: Node) -> None:
    table = node.server.table
    slice_lines = node.server.connection_limits.slice_lines
    busy, busy_transport = node.client()
    busy.dataReceived(b"".join(b"IAMAT c%d +1.0+1.0 1700000000\n" % i for i in range(200)))
    assert len(table) == slice_lines  # the rest waits for the scheduler's turns
    other, other_transport = node.client()
    other.dataReceived(b"IAMAT other +1.0+1.0 1700000000\n")
    assert len(table) == slice_lines  # the server is busy: it waits for its turn
    node.server.slices._turn()  # one turn: a slice of each, in order
    assert len(table) == 2 * slice_lines + 1 and table.get(b"other") is not None
    node.clock.advance(0)
    assert len(replies(busy_transport)) == 200
    assert len(replies(other_transport)) == 1


def test_a_turn_of_slices_ends_after_its_time(node: Node) -> None:
    clock = node.clock
    slices = node.server.slices
    ticking = clock.seconds

    def seconds() -> float:  # every look at the clock finds a millisecond gone
        clock.rightNow += 0.001
        return ticking()

    busy = [node.client() for _ in range(3)]
    for connection, _ in busy:
        connection.dataReceived(b"STATUS\n" * 500)
    before = sum(len(connection._lines) for connection, _ in busy)
    clock.seconds = seconds  # type: ignore[method-assign]
    slices._turn()  # what the reactor calls: one turn, then back to I/O
    left = [len(connection._lines) for connection, _ in busy]
    assert 0 < before - sum(left) < 20  # the turn ran a few lines, then yielded
    assert all(count > 400 for count in left)


def test_a_client_not_reading_runs_nothing_and_is_not_read(node: Node) -> None:
    connection, transport = node.client()
    connection.pauseProducing()  # its write buffer is over the output budget
    assert transport.producerState == "paused"
    connection.dataReceived(b"STATUS\nSTATUS\n")
    node.clock.advance(0)
    assert transport.value() == b""
    connection.resumeProducing()
    node.clock.advance(0)
    assert len(replies(transport)) == 2
    assert transport.producerState == "producing"


def test_replies_waiting_for_places_are_bounded(node: Node) -> None:
    node.ask(b"IAMAT kiwi +34.068930-118.445127 1700000000.5\n")
    node.places.hold = True
    pending = node.server.connection_limits.replies_pending
    connection, transport = node.client()
    connection.dataReceived(b"WHATSAT kiwi 10 5\n" * (pending * 3))
    node.clock.advance(0)
    assert len(node.places.pending) == pending + 1
    assert transport.producerState == "paused"
    for answer in node.places.pending[:]:
        answer.callback({"html_attributions": [], "results": [], "status": "OK"})
    node.clock.advance(0)
    assert len(node.places.pending) > pending + 1


def test_input_waiting_to_run_is_bounded(node: Node) -> None:
    held = held_checks(node)
    connection, transport = node.client()
    connection.dataReceived(b"AUTH alice wrong\n")
    limits = node.server.connection_limits
    count = limits.input_budget // (len(b"STATUS") + LINE_OVERHEAD) + 1
    connection.dataReceived(b"STATUS\n" * count)
    assert transport.producerState == "paused"  # behind the AUTH, and over the input budget
    finish(held)
    node.clock.advance(auth_delay(1))
    for _ in range(count // limits.slice_lines + 2):
        node.clock.advance(0)
    assert transport.producerState == "producing"
    assert len(replies(transport)) == count + 1


def test_input_under_the_budget_keeps_being_read(node: Node) -> None:
    held = held_checks(node)
    connection, transport = node.client()
    connection.dataReceived(b"AUTH alice wrong\n")
    limits = node.server.connection_limits
    connection.dataReceived(b"STATUS\n" * (limits.input_budget // (6 + LINE_OVERHEAD)))
    assert transport.producerState == "producing"
    assert len(held) == 1


def test_unsubscribe_with_an_argument_is_a_shape_error(node: Node) -> None:
    assert node.ask(b"UNSUBSCRIBE x\n") == b"? UNSUBSCRIBE x\n"
    assert node.ask(b"UNSUBSCRIBE\n") == b"UNSUBSCRIBED\n"


def test_an_over_long_last_line_before_half_close_closes_unanswered(node: Node) -> None:
    connection, transport = node.client()
    connection.dataReceived(b"STATUS\n" + b"x" * (node.server.max_line + 1))
    connection.readConnectionLost()
    node.clock.advance(0)
    assert replies(transport) == [replies(transport)[0]]
    assert transport.value().startswith(b"STATUS ")
    assert transport.disconnecting


def test_lines_before_an_over_long_line_are_still_answered(node: Node) -> None:
    connection, transport = node.client()
    connection.dataReceived(b"STATUS\n" + b"y" * (node.server.max_line + 2) + b"\nSTATUS\n")
    node.clock.advance(0)
    assert len(replies(transport)) == 1
    assert transport.disconnecting


class FullTransport(StringTransport):
    """A transport whose buffer is full past `buffer_size`: like Twisted's own, it tells its
    streaming producer to pause at every write while it is full."""

    def __init__(self, buffer_size: int) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.9", 40000))
        self.buffer_size = buffer_size
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.buffer_size and self.producer is not None:
            self.producer.pauseProducing()

    def abortConnection(self) -> None:
        self.aborted = True


def test_pushes_to_a_subscriber_that_does_not_read_are_bounded() -> None:
    limits = ConnectionLimits(output_budget=4096, push_backlog=8192)
    connection = LineConnection(_Ignore(), 1024, limits=limits)
    transport = FullTransport(limits.output_budget)
    connection.makeConnection(transport)
    pushed = 0
    while not transport.aborted and pushed < 1_000_000:
        connection.push(b'PUSH 00000000000000000001.abc votes e1 "Games": t1 yes 1\n')
        pushed += 57
    assert transport.aborted, "a subscriber that never reads is never dropped"
    assert pushed <= limits.output_budget + limits.push_backlog + 2 * 57, pushed
    assert connection.backlog > limits.push_backlog


def test_a_peer_link_counts_everything_written_while_its_transport_is_full() -> None:
    """`backlog` is what a peer link is dropped by (herd.peers): every write past the full
    buffer counts, though the transport says "pause" again at each one."""
    connection = LineConnection(_Ignore(), 1024)
    transport = FullTransport(4096)
    connection.makeConnection(transport)
    connection.keep_reading()
    for _ in range(200):
        connection.send(b"U 1 AT Bailey +0.000000001 c +1.0+1.0 1\n" * 10)
    assert connection.backlog > 200 * 400 - 8192


class _Ignore:
    def line_received(self, connection: LineConnection, line: bytes) -> None:
        return None

    def connection_lost(self, connection: LineConnection, reason: object) -> None:
        return None


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n", b""])
def test_a_line_one_byte_over_the_limit_closes_unanswered_however_it_ends(
    node: Node, terminator: bytes
) -> None:
    """One byte over: the edge where "a CR may still come" must not let it through."""
    connection, transport = node.client()
    connection.dataReceived(b"STATUS\n")
    connection.dataReceived(b"x" * (node.server.max_line + 1) + terminator)
    node.clock.advance(0)
    assert len(replies(transport)) == 1 and transport.value().startswith(b"STATUS ")
    assert transport.disconnecting


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"])
def test_a_line_of_exactly_the_limit_is_answered(node: Node, terminator: bytes) -> None:
    connection, transport = node.client()
    line = b"STATUS" + b" " * (node.server.max_line - len(b"STATUS"))
    connection.dataReceived(line + terminator + b"STATUS\n")
    node.clock.advance(0)
    assert [reply[:7] for reply in replies(transport)] == [b"STATUS ", b"STATUS "]
    assert not transport.disconnecting


class _HoldFirst:
    """Holds the first line's reply open and answers the second at once with a big reply, so
    the second waits behind the first, over the output budget, with no line left to run."""

    def __init__(self) -> None:
        self.first: Slot | None = None

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        if self.first is None:
            self.first = connection.reserve()
        else:
            connection.send(b"x" * 5000 + b"\n")

    def connection_lost(self, connection: LineConnection, reason: object) -> None:
        return None


def test_reading_resumes_once_held_replies_are_written_with_no_line_waiting() -> None:
    handler = _HoldFirst()
    connection = LineConnection(handler, 1024, limits=ConnectionLimits(output_budget=4096))
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"first\nsecond\n")
    assert transport.producerState == "paused", "replies held over the budget stop reading"
    assert handler.first is not None
    connection.fill(handler.first, b"ok\n")
    assert transport.value() == b"ok\n" + b"x" * 5000 + b"\n"
    assert transport.producerState == "producing", "reading never resumed: the client hangs"
