"""Peer links between in-memory servers: handshake, flooding, catch-up, backoff, keepalive."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.application.internet import ClientService
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump

from herd.config import LimitsConfig
from herd.peers import (
    AUTH_FAILURE_HOLD_OFF,
    KEEPALIVE_SECONDS,
    MISSED_KEEPALIVES,
    DialFactory,
    LinkState,
    retry_policy,
)
from tests.protocol.harness import Node, link, make_node, settle

TOPOLOGY = {"A": ("B",), "B": ("A", "C"), "C": ("B",)}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def chain(tmp_path: Path, clock: Clock) -> Iterator[dict[str, Node]]:
    """A - B - C, each with its own store."""
    nodes = {
        name: make_node(tmp_path / name, name, peers, clock) for name, peers in TOPOLOGY.items()
    }
    yield nodes
    for node in nodes.values():
        node.close()


def known(node: Node, client: bytes) -> bytes | None:
    location = node.server.table.get(client)
    return None if location is None else location.at.line


def catch_up_sent(node: Node, peer: bytes) -> int:
    """How many updates `node` sent to `peer` after its last SYNC from that peer."""
    after = traffic(node).split(b" recv " + peer + b" SYNC ")[-1]
    return after.count(b" sent " + peer + b" U ")


def traffic(node: Node) -> bytes:
    node.server.log.flush()
    return node.server.log._path.read_bytes()


def test_handshake_brings_both_ends_up(chain: dict[str, Node], clock: Clock) -> None:
    pump = link(chain["A"], chain["B"])
    settle(clock, [pump])
    assert set(chain["A"].server.links) == {"B"}
    assert set(chain["B"].server.links) == {"A"}
    assert chain["B"].ask(b"STATUS\n") == b'STATUS {"server":"B","peers":{"A":"up","C":"down"}}\n'
    assert b"test-secret" not in traffic(chain["A"]) + traffic(chain["B"])


def test_flood_reaches_everyone_and_never_echoes(chain: dict[str, Node], clock: Clock) -> None:
    pumps = [link(chain["A"], chain["B"]), link(chain["B"], chain["C"])]
    settle(clock, pumps)
    reply = chain["A"].ask(b"IAMAT phone +1.0+2.0 1700000000\n")
    settle(clock, pumps)
    assert reply.startswith(b"AT A ")
    assert known(chain["B"], b"phone") == known(chain["C"], b"phone") == reply.rstrip(b"\n")
    assert b"recv B U " not in traffic(chain["A"])
    assert b"recv C U " not in traffic(chain["C"])
    assert b"sent A " not in traffic(chain["B"]).split(b"SYNC")[-1]


def test_flood_lines_are_never_answered(chain: dict[str, Node], clock: Clock) -> None:
    pump = link(chain["A"], chain["B"])
    settle(clock, [pump])
    chain["A"].ask(b"IAMAT phone +1.0+2.0 1700000000\n")
    settle(clock, [pump])
    after_sync = traffic(chain["B"]).split(b"recv A U ")[-1]
    assert b"sent A" not in after_sync


def test_newer_wins_whatever_the_order(chain: dict[str, Node], clock: Clock) -> None:
    pumps = [link(chain["A"], chain["B"]), link(chain["B"], chain["C"])]
    settle(clock, pumps)
    chain["A"].ask(b"IAMAT phone +1.0+2.0 1700000005\n")
    chain["C"].ask(b"IAMAT phone +3.0+4.0 1700000001\n")
    settle(clock, pumps)
    lines = {known(node, b"phone") for node in chain.values()}
    assert len(lines) == 1
    assert lines.pop().endswith(b"+1.0+2.0 1700000005")  # type: ignore[union-attr]


def test_a_client_cannot_inject_updates(chain: dict[str, Node]) -> None:
    forged = b"U 1 AT Evil +0.000000000 phone +1.0+1.0 1900000000"
    assert chain["B"].ask(forged + b"\n") == b"? " + forged + b"\n"
    assert known(chain["B"], b"phone") is None


def test_a_wrong_proof_leaves_the_connection_a_client(chain: dict[str, Node]) -> None:
    node = chain["B"]
    connection, transport = node.client()
    connection.dataReceived(b"HERD-HELLO A B " + b"ab" * 16 + b"\n")
    node.clock.advance(0)
    assert re.fullmatch(rb"HERD-CHALLENGE [0-9a-f]{32} [0-9a-f]{64}\n", transport.value())
    transport.clear()
    bad = b"HERD-AUTH " + b"00" * 32
    connection.dataReceived(bad + b"\nSYNC x - 0\n")
    node.clock.advance(0)
    assert transport.value() == b"? " + bad + b"\n? SYNC x - 0\n"
    assert node.server.links == {}


def test_hello_from_a_stranger_is_refused(chain: dict[str, Node]) -> None:
    hello = b"HERD-HELLO Mallory B " + b"ab" * 16
    assert chain["B"].ask(hello + b"\n") == b"? " + hello + b"\n"


def test_dialer_with_another_secret_is_not_linked(tmp_path: Path, clock: Clock) -> None:
    stranger = make_node(tmp_path / "x", "A", ("B",), clock, secret=b"other")
    b = make_node(tmp_path / "b", "B", ("A",), clock)
    pump = link(stranger, b)
    settle(clock, [pump])
    assert stranger.server.links == {} and b.server.links == {}
    clock.advance(10)
    pump.flush(advanceClock=False)
    assert pump.clientIO.disconnected
    stranger.close()
    b.close()


def test_a_dialer_refused_by_name_is_held_off(tmp_path: Path, clock: Clock) -> None:
    """B does not list X as a peer: it answers `? HERD-HELLO …`, and X keeps the connection
    silent for the hold-off before closing it (then its service dials again)."""
    stranger = make_node(tmp_path / "x", "X", ("B",), clock)
    b = make_node(tmp_path / "b", "B", ("A",), clock)
    pump = link(stranger, b)
    settle(clock, [pump])
    assert b" sent ?:? ? HERD-HELLO X B " in traffic(b)
    assert stranger.server.links == {} and b.server.links == {}
    clock.advance(AUTH_FAILURE_HOLD_OFF - 0.1)
    pump.flush(advanceClock=False)
    assert not pump.clientIO.disconnected
    clock.advance(0.1)
    pump.flush(advanceClock=False)
    assert pump.clientIO.disconnected
    stranger.close()
    b.close()


def test_a_dialed_link_works_within_the_configured_limits(tmp_path: Path, clock: Clock) -> None:
    """Both ends of a link hold and run what `[limits]` says: the dialing end too, not the
    defaults."""
    limits = LimitsConfig(output_budget=4096, input_budget=2048, slice_lines=4)
    node = make_node(tmp_path, "A", ("B",), clock, limits=limits)
    connection = DialFactory(node.server, "B", clock).buildProtocol(None)
    assert (connection.limits.output_budget, connection.limits.input_budget) == (4096, 2048)
    assert connection.limits.slice_lines == 4
    node.close()


def test_a_link_floods_once_synced_and_is_closed_when_lost(
    chain: dict[str, Node], clock: Clock
) -> None:
    pump = link(chain["A"], chain["B"])
    a_end = None
    for _ in range(50):  # one step at a time, to see the dialer's end before B's SYNC
        clock.advance(0)
        pump.pump(advanceClock=False)
        a_end = chain["A"].server.links.get("B")
        if a_end is not None:
            break
    assert a_end is not None and a_end.state is LinkState.SYNCING
    settle(clock, [pump])
    b_end = chain["B"].server.links["A"]
    assert a_end.state is b_end.state is LinkState.FLOODING
    pump.clientIO.loseConnection()
    settle(clock, [pump])
    assert a_end.state is b_end.state is LinkState.CLOSED
    a_end.synced()
    assert a_end.state is LinkState.CLOSED


def test_peer_links_do_not_import_the_server() -> None:
    """`PeerHandler` is all a link knows of its server: no import cycle."""
    check = "import sys, herd.peers; sys.exit('herd.server' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], check=False).returncode == 0


def reconnect(chain: dict[str, Node], pump: IOPump, clock: Clock) -> IOPump:
    pump.clientIO.loseConnection()
    settle(clock, [pump])
    return link(chain["A"], chain["B"])


def test_catch_up_after_a_link_comes_back(chain: dict[str, Node], clock: Clock) -> None:
    pump = link(chain["A"], chain["B"])
    settle(clock, [pump])
    chain["A"].ask(b"IAMAT before +1.0+1.0 1700000000\n")
    settle(clock, [pump])
    pump.clientIO.loseConnection()
    settle(clock, [pump])
    assert chain["A"].server.links == {}
    for index in range(50):
        chain["A"].ask(b"IAMAT c%d +1.0+1.0 1700000000\n" % index)
    chain["B"].ask(b"IAMAT fromB +1.0+1.0 1700000000\n")
    pump = link(chain["A"], chain["B"])
    settle(clock, [pump])
    assert all(known(chain["B"], b"c%d" % i) == known(chain["A"], b"c%d" % i) for i in range(50))
    assert known(chain["A"], b"fromB") is not None
    assert catch_up_sent(chain["A"], b"B") == 50


def test_catch_up_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    a = make_node(tmp_path / "A", "A", ("B",), clock)
    b = make_node(tmp_path / "B", "B", ("A",), clock)
    pump = link(a, b)
    settle(clock, [pump])
    for index in range(10):
        a.ask(b"IAMAT old%d +1.0+1.0 1700000000\n" % index)
    settle(clock, [pump])
    pump.clientIO.loseConnection()
    settle(clock, [pump])
    b.close()
    a.ask(b"IAMAT new +1.0+1.0 1700000000\n")
    b = make_node(tmp_path / "B", "B", ("A",), clock)
    assert known(b, b"old9") is not None
    pump = link(a, b)
    settle(clock, [pump])
    assert known(b, b"new") == known(a, b"new")
    assert catch_up_sent(a, b"B") == 1
    a.close()
    b.close()


def test_keepalive_drops_a_silent_peer(chain: dict[str, Node], clock: Clock) -> None:
    pump = link(chain["A"], chain["B"])
    settle(clock, [pump])
    for _ in range(MISSED_KEEPALIVES + 1):
        clock.advance(KEEPALIVE_SECONDS)
    pump.clientIO.getOutBuffer()
    pump.serverIO.getOutBuffer()
    clock.advance(KEEPALIVE_SECONDS)
    assert pump.clientIO.disconnecting or pump.serverIO.disconnecting


def test_pings_keep_a_live_link_up(chain: dict[str, Node], clock: Clock) -> None:
    pump = link(chain["A"], chain["B"])
    settle(clock, [pump])
    for _ in range(MISSED_KEEPALIVES * 3):
        clock.advance(KEEPALIVE_SECONDS)
        settle(clock, [pump])
    assert set(chain["A"].server.links) == {"B"}


def test_dialing_backs_off_with_a_cap(chain: dict[str, Node]) -> None:
    reactor = MemoryReactorClock()
    service = ClientService(
        TCP4ClientEndpoint(reactor, "127.0.0.1", 1),
        DialFactory(chain["A"].server, "B", reactor),
        retryPolicy=retry_policy(lambda: 0.0),
        clock=reactor,
    )
    service.startService()
    attempts_at = []
    for _ in range(7):
        attempts_at.append(reactor.seconds())
        reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        reactor.advance(
            min(call.getTime() for call in reactor.getDelayedCalls()) - reactor.seconds()
        )
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts_at)]
    assert gaps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    service.stopService()


def test_jitter_is_added_within_bounds() -> None:
    assert retry_policy(lambda: 1.0)(10) == pytest.approx(1.25)
    assert retry_policy(lambda: 0.5)(1) == pytest.approx(0.1125)


def test_blank_lines_during_the_handshake_are_ignored(chain: dict[str, Node], clock: Clock) -> None:
    pump = link(chain["A"], chain["B"])
    pump.clientIO.write(b"\r\n")
    settle(clock, [pump])
    assert set(chain["B"].server.links) == {"A"}


def test_a_peer_link_keeps_reading_when_its_writes_back_up(
    chain: dict[str, Node], clock: Clock
) -> None:
    """Both ends of a link write: if each stopped reading while its own buffer was full, two
    busy servers would wait for each other for ever.  An ordinary client is still paused."""
    connection, transport = chain["B"].client()
    connection.pauseProducing()
    assert transport.producerState == "paused"
    connection.keep_reading()
    assert transport.producerState == "producing"
    connection.pauseProducing()
    assert transport.producerState == "producing"
    pump = link(chain["A"], chain["B"])
    settle(clock, [pump])
    assert not pump.clientIO.protocol.pause_reading_when_full
    assert not pump.serverIO.protocol.pause_reading_when_full
