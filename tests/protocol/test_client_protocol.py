"""The client-facing line protocol over a fake transport: framing, replies, ordering."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from herd.store import Store
from tests.protocol.harness import START_NS, Node, make_node, start_clock

REPORT = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1700000000.5"
AT_LINE = b"AT Bailey -0.500000000 kiwi.cs.ucla.edu +34.068930-118.445127 1700000000.5"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    node = make_node(tmp_path, "Bailey", ("Bona",), start_clock())
    yield node
    node.close()


def test_iamat_answers_at_with_signed_fixed_point_diff(node: Node) -> None:
    assert START_NS == 1_700_000_000_000_000_000
    assert node.ask(REPORT + b"\n") == AT_LINE + b"\n"


def test_iamat_reply_waits_for_the_store(node: Node) -> None:
    connection, transport = node.client()
    connection.dataReceived(REPORT + b"\n")
    assert transport.value() == b""
    node.clock.advance(0)
    assert transport.value() == AT_LINE + b"\n"
    reopened = Store(node.store.path)
    assert [loc.at.line for loc in reopened.open().locations] == [AT_LINE]
    reopened.close()


def test_stale_or_equal_report_gets_the_stored_line_byte_for_byte(node: Node) -> None:
    node.ask(REPORT + b"\n")
    older = b"IAMAT kiwi.cs.ucla.edu +10.0+10.0 1600000000\n"
    equal = b"IAMAT kiwi.cs.ucla.edu +10.0+10.0 01700000000.50\n"
    assert node.ask(older + equal) == AT_LINE + b"\n" + AT_LINE + b"\n"


def test_crlf_and_whitespace_runs(node: Node) -> None:
    reply = node.ask(b"  IAMAT \t kiwi.cs.ucla.edu   +34.068930-118.445127\t1700000000.5  \r\n")
    assert reply == AT_LINE + b"\n"


def test_invalid_lines_are_echoed_without_terminator(node: Node) -> None:
    reply = node.ask(b"hello there\r\nIAMAT a +1.0+1.0\nAT Bailey +0.1 x +1.0+1.0 1\n")
    assert reply == b"? hello there\n? IAMAT a +1.0+1.0\n? AT Bailey +0.1 x +1.0+1.0 1\n"


def test_blank_lines_are_ignored(node: Node) -> None:
    assert node.ask(b"\n   \r\n\t\n") == b""


def test_half_close_answers_last_unterminated_line_then_closes(node: Node) -> None:
    connection, transport = node.client()
    connection.dataReceived(b"bogus\n" + REPORT)
    connection.readConnectionLost()
    assert not transport.disconnecting
    node.clock.advance(0)
    assert transport.value() == b"? bogus\n" + AT_LINE + b"\n"
    assert transport.disconnecting


def test_half_close_echoes_last_line_as_it_came(node: Node) -> None:
    connection, transport = node.client()
    connection.dataReceived(b"nonsense\r")
    connection.readConnectionLost()
    assert transport.value() == b"? nonsense\r\n"
    assert transport.disconnecting


def test_interactive_connection_stays_open(node: Node) -> None:
    connection, transport = node.client()
    for index in range(5):
        connection.dataReceived(b"IAMAT c%d +1.0+1.0 1700000000\n" % index)
        node.clock.advance(0)
    assert transport.value().count(b"\n") == 5
    assert not transport.disconnecting


def test_over_long_line_closes_without_reply_and_spares_others(node: Node) -> None:
    victim, victim_transport = node.client()
    other, other_transport = node.client()
    victim.dataReceived(b"IAMAT " + b"x" * 2000)
    assert victim_transport.disconnecting
    assert victim_transport.value() == b""
    other.dataReceived(REPORT + b"\n")
    node.clock.advance(0)
    assert other_transport.value() == AT_LINE + b"\n"


def test_line_of_exactly_max_line_is_served(node: Node) -> None:
    """Read and answered, not closed; the report itself is refused, its flooded update
    (`U <seq> AT Bailey <diff> ...`) being longer than any peer takes."""
    client = b"c" * (1024 - len(b"IAMAT  +1.0+1.0 1700000000"))
    line = b"IAMAT " + client + b" +1.0+1.0 1700000000"
    assert len(line) == 1024
    assert node.ask(line + b"\r\n") == b"? " + line + b"\n"


def test_longest_floodable_report_is_stored(node: Node) -> None:
    overhead = len(b"U 1234567890123456789 AT Bailey +0.000000000  +1.0+1.0 1700000000")
    client = b"c" * (1024 - overhead)
    reply = node.ask(b"IAMAT " + client + b" +1.0+1.0 1700000000\n")
    assert reply == b"AT Bailey +0.000000000 " + client + b" +1.0+1.0 1700000000\n"
    assert node.ask(b"IAMAT " + client + b"c +1.0+1.0 1700000001\n").startswith(b"? IAMAT")


def test_non_utf8_client_id_round_trips(node: Node) -> None:
    reply = node.ask(b"IAMAT \xff\xfe\x80 +1.0+1.0 1700000000\n")
    assert reply == b"AT Bailey +0.000000000 \xff\xfe\x80 +1.0+1.0 1700000000\n"


def test_whatsat_unknown_client_is_an_error(node: Node) -> None:
    assert node.ask(b"WHATSAT nobody 10 5\n") == b"? WHATSAT nobody 10 5\n"


def test_whatsat_reply_shape(node: Node) -> None:
    node.ask(REPORT + b"\n")
    reply = node.ask(b"WHATSAT kiwi.cs.ucla.edu 10 5\n")
    first, _, rest = reply.partition(b"\n")
    assert first == AT_LINE
    assert rest.endswith(b"\n\n") and b"\n\n" not in rest[:-2]
    assert json.loads(rest)["status"] == "ZERO_RESULTS"
    assert node.places.queries == [(34.06893, -118.445127, 10.0, 5)]


def test_replies_keep_request_order_when_places_are_slow(node: Node) -> None:
    node.ask(REPORT + b"\n")
    node.places.hold = True
    connection, transport = node.client()
    connection.dataReceived(b"WHATSAT kiwi.cs.ucla.edu 1 0\nIAMAT other +1.0+1.0 1699999999.999\n")
    node.clock.advance(0)
    assert transport.value() == b""
    node.places.pending[0].callback({"html_attributions": [], "results": [], "status": "OK"})
    node.clock.advance(0)
    whatsat, _, after = transport.value().partition(b"\n\n")
    assert whatsat.startswith(AT_LINE + b"\n{")
    assert after == b"AT Bailey +0.001000000 other +1.0+1.0 1699999999.999\n"


def test_status_lists_peer_links(node: Node) -> None:
    reply = node.ask(b"STATUS\n")
    assert reply == b'STATUS {"server":"Bailey","peers":{"Bona":"down"}}\n'


def test_client_that_does_not_read_stops_being_read(node: Node) -> None:
    connection, transport = node.client()
    connection.pauseProducing()
    assert transport.producerState == "paused"
    connection.resumeProducing()
    assert transport.producerState == "producing"


def test_every_line_is_logged(node: Node, tmp_path: Path) -> None:
    node.ask(b"junk\n")
    node.server.log.stop()
    text = (tmp_path / "Bailey.log").read_bytes()
    assert b"Z Bailey recv 192.168.1.1:54321 junk\n" in text
    assert b"Z Bailey sent 192.168.1.1:54321 ? junk\n" in text


def test_huge_numbers_are_answered_and_the_connection_stays(tmp_path: Path) -> None:
    node = make_node(tmp_path, "Bailey", (), start_clock(), max_line=65536)
    connection, transport = node.client()
    huge = b"WHATSAT kiwi 10 " + b"0" * 5000 + b"5"
    connection.dataReceived(huge + b"\nIAMAT k +1.0+1.0 " + b"9" * 30 + b"\n")
    node.clock.advance(0)
    error, far_future, end = transport.value().split(b"\n")
    assert error == b"? " + huge
    assert far_future == b"AT Bailey -999999999999999999998299999999.000000000 k +1.0+1.0 " + (
        b"9" * 30
    )
    assert end == b""
    assert not transport.disconnecting
    node.close()
