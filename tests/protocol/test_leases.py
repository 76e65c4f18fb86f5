"""Leases between in-memory servers: flooded when newer, sent whole on each new link, and
never stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from herd.leases import Leases, LeaseSettings
from herd.wire.peer import Lease
from tests.protocol.harness import Node, link, make_node, settle

TOPOLOGY = {"A": ("B",), "B": ("A", "C"), "C": ("B",)}
SETTINGS = LeaseSettings(renew=1.0, valid=3.0)
S = 10**9


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[dict[str, Node]]:
    """A - B - C, each with its own store and its view of the leases."""
    clock = Clock()
    clock.advance(1000)
    nodes = {
        name: make_node(tmp_path / name, name, peers, clock) for name, peers in TOPOLOGY.items()
    }
    for node in nodes.values():
        node.server.leases = Leases(node.name, sorted(TOPOLOGY), SETTINGS, 1000 * S)
    yield nodes
    for node in nodes.values():
        node.close()


def leases(node: Node) -> Leases:
    assert node.server.leases is not None
    return node.server.leases


def test_a_lease_crosses_the_herd_and_a_late_link_gets_the_newest(
    chain: dict[str, Node],
) -> None:
    a, b, c = chain["A"], chain["B"], chain["C"]
    clock = a.clock
    pumps = [link(a, b)]
    settle(clock, pumps)
    stored = len(a.server.replica.ops), len(a.server.table)
    a.server.renew_lease()
    settle(clock, pumps)
    first = dict(leases(b).entries())["A"]
    clock.advance(2)
    a.server.renew_lease()
    settle(clock, pumps)
    newest = dict(leases(b).entries())["A"]
    assert newest > first

    pumps.append(link(b, c))  # C was cut off: B hands it every lease it holds on the link
    settle(clock, pumps)
    assert dict(leases(c).entries()) == {"A": newest}
    clock.advance(2.5)  # A renewed 2.5 s ago: alive for C, who heard of it only now
    assert leases(c).responsible("A", round(clock.seconds() * S)) == "A"

    c.server.renew_lease()  # C's own lease reaches A through B
    settle(clock, pumps)
    assert "C" in dict(leases(a).entries())
    clock.advance(3)  # A falls silent: its users pass to B, the next after it
    b.server.renew_lease()
    settle(clock, pumps)
    assert leases(c).responsible("A", round(clock.seconds() * S)) == "B"
    assert (len(a.server.replica.ops), len(a.server.table)) == stored  # nothing kept of leases


def test_an_old_or_unknown_lease_is_not_passed_on(chain: dict[str, Node]) -> None:
    a, b, c = chain["A"], chain["B"], chain["C"]
    clock = a.clock
    pumps = [link(a, b), link(b, c)]
    settle(clock, pumps)
    a.server.renew_lease()
    settle(clock, pumps)
    assert relayed(c) == 1
    from_a = b.server.links["A"]
    b.server.peer_lease(from_a, Lease(b"A", 5))  # older than what B holds
    b.server.peer_lease(from_a, Lease(b"Stranger", 10**19))  # not in the config
    settle(clock, pumps)
    assert relayed(c) == 1
    assert [server for server, _ in leases(c).entries()] == ["A"]


def relayed(node: Node) -> int:
    """How many LEASE lines `node` received from B."""
    node.server.log.flush()
    return node.server.log._path.read_bytes().count(b" recv B LEASE ")


def test_a_client_cannot_send_a_lease(chain: dict[str, Node]) -> None:
    """Only an authenticated peer link carries leases: on the client port the line is an
    error, so nobody can keep a down server's duties from passing on."""
    b = chain["B"]
    line = b"LEASE A 9999999999999999999"
    assert b.ask(line + b"\n") == b"? " + line + b"\n"
    assert leases(b).entries() == []
