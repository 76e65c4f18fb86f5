"""Planning over the line protocol, replicated between in-memory servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from herd.extensions import JidLinks, OptOuts
from herd.tokens import auth_delay, hash_token
from tests.protocol.harness import Node, Session, link, make_node, settle
from tests.protocol.notify_harness import operator

TOPOLOGY = {"A": ("B",), "B": ("A", "C"), "C": ("B",)}
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789"}


def add_user(node: Node, user: str) -> None:
    digest = hash_token(TOKENS[user], b"salt" * 4)
    assert operator(node, f"USER-ADD {user} {digest}") == f"OK {user}\n".encode()


@pytest.fixture
def herd(tmp_path: Path) -> Iterator[dict[str, Node]]:
    clock = Clock()
    nodes = {
        name: make_node(tmp_path / name, name, peers, clock) for name, peers in TOPOLOGY.items()
    }
    yield nodes
    for node in nodes.values():
        node.close()


def test_operator_needs_the_secret(herd: dict[str, Node]) -> None:
    node = herd["A"]
    connection, transport = node.client()
    connection.dataReceived(b"HERD-HELLO @operator A " + b"ab" * 16 + b"\n")
    node.clock.advance(0)
    transport.clear()
    connection.dataReceived(b"HERD-AUTH " + b"00" * 32 + b"\nUSER-ADD eve x\n")
    node.clock.advance(0)
    assert transport.value() == b"? HERD-AUTH " + b"00" * 32 + b"\n? USER-ADD eve x\n"
    assert node.server.planning.user("eve") is None


def test_planning_needs_authentication(herd: dict[str, Node]) -> None:
    assert herd["A"].ask(b"PLAN Dinner\n").startswith(b"ERR not-authenticated")


def test_a_wrong_token_is_refused_after_a_growing_delay(herd: dict[str, Node]) -> None:
    node = herd["A"]
    add_user(node, "alice")
    connection, transport = node.client()
    connection.dataReceived(b"AUTH alice wrong-token\n")
    node.clock.advance(0)
    assert transport.value() == b""
    node.clock.advance(auth_delay(1))
    assert transport.value() == b"ERR auth-failed: unknown user or wrong token\n"
    connection.dataReceived(b"AUTH alice wrong-again\nWHOAMI\n")
    node.clock.advance(auth_delay(1))
    assert transport.value().count(b"\n") == 1
    node.clock.advance(auth_delay(2) - auth_delay(1))
    assert transport.value().endswith(b"ERR not-authenticated: AUTH <user> <token> first\n")


def test_tokens_never_reach_the_log(herd: dict[str, Node], tmp_path: Path) -> None:
    add_user(herd["A"], "alice")
    Session(herd["A"], "alice")
    herd["A"].server.log.flush()
    text = (tmp_path / "A" / "A.log").read_bytes()
    assert TOKENS["alice"].encode() not in text
    assert b"recv 192.168.1.1:54321 AUTH alice <redacted>" in text
    assert b"scrypt$" not in text.split(b"recv")[-1]


def test_a_whole_plan_across_three_servers(herd: dict[str, Node]) -> None:
    clock = herd["A"].clock
    pumps = [link(herd["A"], herd["B"]), link(herd["B"], herd["C"])]
    settle(clock, pumps)
    add_user(herd["A"], "alice")
    settle(clock, pumps)
    add_user(herd["C"], "bob")
    settle(clock, pumps)
    alice_a, bob_c = Session(herd["A"], "alice"), Session(herd["C"], "bob")
    event = alice_a.json("PLAN Dinner at Paul's")
    event_id = str(event["id"])
    alice_a.json(f"INVITE {event_id} bob")
    settle(clock, pumps)
    alice_b = Session(herd["B"], "alice")
    proposed = alice_b.json(f"PROPOSE {event_id} TIME 2030-12-05T19:00+01:00")
    time_id = proposed["times"][0]["id"]  # type: ignore[index]
    proposed = alice_b.json(f"PROPOSE {event_id} PLACE +48.8530+002.3389 Le Procope")
    place_id = proposed["places"][0]["id"]  # type: ignore[index]
    settle(clock, pumps)
    bob_c.json(f"VOTE {event_id} {time_id} YES")
    bob_c.json(f"VOTE {event_id} {place_id} MAYBE")
    settle(clock, pumps)
    decided = alice_a.json(f"DECIDE {event_id} {time_id} {place_id}")
    assert decided["status"] == "decided"
    settle(clock, pumps)
    views = {name: node.server.planning.event_view(event_id) for name, node in herd.items()}
    assert views["A"] == views["B"] == views["C"] == decided
    assert bob_c.send(f"DECIDE {event_id} {time_id} {place_id}").startswith(b"ERR not-organiser")


def test_operations_catch_up_after_a_link_comes_back(herd: dict[str, Node]) -> None:
    clock = herd["A"].clock
    pump = link(herd["A"], herd["B"])
    settle(clock, [pump])
    add_user(herd["A"], "alice")
    settle(clock, [pump])
    pump.clientIO.loseConnection()
    settle(clock, [pump])
    event_id = str(Session(herd["A"], "alice").json("PLAN Picnic")["id"])
    assert herd["B"].server.planning.event(event_id) is None
    pump = link(herd["A"], herd["B"])
    settle(clock, [pump])
    assert herd["B"].server.planning.event_view(event_id) == herd["A"].server.planning.event_view(
        event_id
    )


def test_operations_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    node = make_node(tmp_path, "A", (), clock)
    add_user(node, "alice")
    event_id = str(Session(node, "alice").json("PLAN Picnic")["id"])
    node.close()
    again = make_node(tmp_path, "A", (), clock)
    assert again.server.planning.event(event_id) is not None
    second = str(Session(again, "alice").json("PLAN Lunch")["id"])
    assert second != event_id
    again.close()


def test_unknown_user_cannot_log_in(herd: dict[str, Node]) -> None:
    node = herd["A"]
    connection, transport = node.client()
    connection.dataReceived(b"AUTH nobody some-token-123\n")
    node.clock.advance(auth_delay(1))
    assert transport.value() == b"ERR auth-failed: unknown user or wrong token\n"


def test_malformed_planning_lines_are_echoed(herd: dict[str, Node]) -> None:
    assert herd["A"].ask(b"VOTE\n") == b"? VOTE\n"


def test_extension_commands_are_served_only_once_registered(herd: dict[str, Node]) -> None:
    """SUBSCRIBE, LINK and OPTOUT belong to extensions: a server without them answers
    `? <line>` (UNSUBSCRIBE is the session's own, served either way); once registered, each
    answers with its own reply."""
    node = herd["A"]
    add_user(node, "alice")
    alice = Session(node, "alice")
    for line in ("SUBSCRIBE", "LINK alice@example.org", "OPTOUT alice x"):
        assert alice.send(line) == f"? {line}\n".encode()
    assert alice.send("UNSUBSCRIBE") == b"UNSUBSCRIBED\n"

    issued: list[tuple[str, str]] = []

    def codes(user: str, jid: str, now_ns: int) -> tuple[str, int]:
        issued.append((user, jid))
        return "ABCD-EFGH", 1_800_000_000

    node.server.register(JidLinks(codes))
    node.server.register(OptOuts(lambda user, token: token == "right"))
    assert alice.send("LINK Alice@Example.org") == b"LINKCODE ABCD-EFGH 1800000000\n"
    assert issued == [("alice", "alice@example.org")]
    assert alice.send("OPTOUT alice wrong") == b"? OPTOUT alice wrong\n"
    assert alice.send("OPTOUT alice right") == b"OPTOUT alice\n"
    assert alice.json("USER", b"USER")["channels"] == ["line", "xmpp"]
    stranger = node.client()
    stranger[0].dataReceived(b"LINK alice@example.org\n")
    node.clock.advance(0)
    assert stranger[1].value() == b"ERR not-authenticated: AUTH first\n"
