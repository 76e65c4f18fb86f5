"""The running herd, from outside: five `herd run` processes on loopback, plain TCP clients.

One herd serves the whole module; each test uses its own client ids, so the tests do not
disturb each other.  Destructive tests (kills, restarts) are in test_faults.py.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest

from tests.support.herd import NAMES, Herd
from tests.support.lines import Client, connect, exchange, now_time, pipeline
from tests.support.polling import wait_until

pytestmark = pytest.mark.timeout(60)

POSITION = b"+34.068930-118.445127"
AT_LINE = re.compile(rb"AT (\S+) ([+-](?:0|[1-9][0-9]*)\.[0-9]{9}) (\S+) (\S+) (\S+)\Z")


def split_at(line: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """(server, diff, client, position, time) of an AT line without newline."""
    match = AT_LINE.match(line)
    assert match is not None, f"not an AT line: {line!r}"
    server, diff, client, position, when = match.groups()
    return server, diff, client, position, when


def exact(number: bytes) -> Fraction:
    return Fraction(number.decode())


# --- flooding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", NAMES)
def test_a_report_reaches_every_server_byte_for_byte_within_a_second(
    herd: Herd, origin: str
) -> None:
    client = b"flood-" + origin.encode()
    line = herd.iamat(origin, client, POSITION, now_time())
    flooded = time.monotonic()
    herd.wait_knows(NAMES, client, line, timeout=1.0)
    assert time.monotonic() - flooded < 1.0
    assert split_at(line)[0] == origin.encode()


def test_the_at_reply_names_the_server_and_copies_the_fields_verbatim(herd: Herd) -> None:
    position, when = b"+034.0689300-0118.4451270", b"%d.5000" % int(time.time())
    before = time.time_ns()
    line = herd.iamat("Campbell", b"verbatim", position, when)
    after = time.time_ns()
    server, diff, client, stored_position, stored_time = split_at(line)
    assert (server, client, stored_position, stored_time) == (
        b"Campbell",
        b"verbatim",
        position,
        when,
    )
    received = exact(diff) + exact(when)
    assert Fraction(before, 10**9) <= received <= Fraction(after, 10**9)


@pytest.mark.parametrize(
    "when",
    [b"0", b"1", b"99999999999.5", b"1621464827.959498503", b"1621464827.9594985034999"],
    ids=["zero", "one", "future", "nanos", "beyond-nanos"],
)
def test_the_diff_is_receive_time_minus_client_time_to_the_nanosecond(
    herd: Herd, when: bytes
) -> None:
    client = b"diff-" + when.replace(b".", b"_")
    before = time.time_ns()
    line = herd.iamat("Bona", client, POSITION, when)
    after = time.time_ns()
    _, diff, _, _, stored_time = split_at(line)
    assert stored_time == when
    received = exact(diff) + exact(when)
    # The server rounds a client time to whole nanoseconds first: allow that half nanosecond.
    slack = Fraction(1, 10**9)
    assert Fraction(before, 10**9) - slack <= received <= Fraction(after, 10**9) + slack
    assert diff.startswith(b"-" if exact(when) > Fraction(after, 10**9) else b"+")


# --- newer wins --------------------------------------------------------------------------------


def test_a_newer_report_wins_everywhere_even_when_the_older_arrives_second(herd: Herd) -> None:
    now = int(time.time())
    stored_older = 0
    for index in range(3):
        client = b"newer-wins-%d" % index
        with Client(herd.port("Bailey")) as bailey, Client(herd.port("Jaquez")) as jaquez:
            # the newer first, the older right after, two hops away: Jaquez cannot have the
            # newer yet, so for a moment the herd holds both
            bailey.send(b"IAMAT %s %s %d.25\n" % (client, POSITION, now))
            jaquez.send(b"IAMAT %s +10.0-10.0 %d.25\n" % (client, now - 100))
            newer, older = bailey.line()[:-1], jaquez.line()[:-1]
        assert split_at(newer)[0] == b"Bailey"
        if older != newer:
            assert split_at(older)[::4] == (b"Jaquez", b"%d.25" % (now - 100))
            stored_older += 1
        herd.wait_knows(NAMES, client, newer, timeout=2.0)
    assert stored_older, "the older report was never stored anywhere; nothing was tested"


def test_an_older_report_first_then_a_newer_one_elsewhere(herd: Herd) -> None:
    client = b"older-then-newer"
    now = int(time.time())
    older = herd.iamat("Clark", client, POSITION, b"%d" % (now - 5))
    herd.wait_knows(NAMES, client, older, timeout=2.0)
    newer = herd.iamat("Bailey", client, b"+1.5-2.5", b"%d" % now)
    assert split_at(newer)[0] == b"Bailey"
    herd.wait_knows(NAMES, client, newer, timeout=2.0)


def test_equal_times_at_two_servers_converge_to_the_same_line_everywhere(herd: Herd) -> None:
    when = now_time()
    diverged = 0
    for index in range(5):
        client = b"equal-times-%d" % index
        # Bailey and Jaquez are two hops apart: sent together, each stores its own AT line
        # before the other's flood arrives, so the herd holds two texts for one time.
        with Client(herd.port("Bailey")) as bailey, Client(herd.port("Jaquez")) as jaquez:
            bailey.send(b"IAMAT %s %s %s\n" % (client, POSITION, when))
            jaquez.send(b"IAMAT %s %s %s\n" % (client, b"-12.5+130.25", when))
            replies = [bailey.line()[:-1], jaquez.line()[:-1]]
        for reply in replies:
            assert split_at(reply)[4] == when
        diverged += replies[0] != replies[1]
        # (time, AT text) decides: with equal times, the larger text.
        herd.wait_knows(NAMES, client, max(replies), timeout=2.0)
    assert diverged, "the two reports never made two different AT lines; nothing was tested"


def test_concurrent_reports_of_the_same_clients_converge_everywhere(herd: Herd) -> None:
    """Five writers, one per server, race on 20 clients with times that are often equal
    (and spelled differently: 5, 5.0, 05, 5.000): every server ends with the same line per
    client, the largest by (time as a number, AT text)."""
    rng = random.Random(2024)
    base = int(time.time()) - 100
    spellings = [b"%d", b"%d.0", b"0%d", b"%d.000", b"%d.5", b"%d.50", b"00%d.5"]
    clients = [b"race-%02d" % index for index in range(20)]
    requests = {
        name: [
            b"IAMAT %s %+.3f%+.3f %s"
            % (
                rng.choice(clients),
                rng.uniform(-90, 90),
                rng.uniform(-180, 180),
                rng.choice(spellings) % (base + rng.randrange(4)),
            )
            for _ in range(300)
        ]
        for name in NAMES
    }
    with ThreadPoolExecutor(len(NAMES)) as pool:
        futures = {
            name: pool.submit(pipeline, herd.port(name), lines, 20)
            for name, lines in requests.items()
        }
        replies = [reply for future in futures.values() for reply in future.result()]

    def key(line: bytes) -> tuple[Fraction, bytes]:
        return exact(split_at(line)[4]), line

    winners: dict[bytes, bytes] = {}
    for reply in replies:
        client = split_at(reply)[2]
        if client not in winners or key(reply) > key(winners[client]):
            winners[client] = reply
    # A precondition, not the behaviour: the writers really competed (how many distinct lines
    # win for a moment depends on how fast floods overtake the writers: 82-127 seen).
    assert len(set(replies)) > 2 * len(clients), "the race made few distinct lines"
    herd.wait_converged(NAMES, winners, timeout=5.0)


def test_a_report_not_newer_is_answered_with_the_stored_line_byte_for_byte(herd: Herd) -> None:
    client = b"stale"
    now = int(time.time())
    stored = herd.iamat("Bona", client, POSITION, b"%d.5" % now)
    herd.wait_knows(NAMES, client, stored, timeout=2.0)
    for name, position, when in [
        ("Bona", b"+1.0+1.0", b"%d.5" % now),  # same time, other place, same server
        ("Bona", POSITION, b"%d.50" % now),  # the same time written differently
        ("Bona", POSITION, b"%d.4999" % now),  # older
        ("Clark", b"+1.0+1.0", b"%d.5" % now),  # same time at another server
        ("Jaquez", POSITION, b"%d" % (now - 1)),  # older at another server
    ]:
        assert herd.iamat(name, client, position, when) == stored, (name, position, when)
    for name in NAMES:
        assert herd.at_line(name, client) == stored


# --- herd status -------------------------------------------------------------------------------


def test_herd_status_json_shows_every_server_and_link_up(herd: Herd) -> None:
    assert herd.herd_status() == {
        "servers": {
            name: {
                "port": herd.port(name),
                "up": True,
                "peers": dict.fromkeys(sorted(herd.peers[name]), "up"),
            }
            for name in NAMES
        }
    }


def test_status_command_names_the_server_and_its_peers(herd: Herd) -> None:
    for name in NAMES:
        reply = exchange(herd.port(name), b"STATUS\n")
        assert reply.startswith(b"STATUS ") and reply.endswith(b"\n") and reply.count(b"\n") == 1
        assert json.loads(reply[len(b"STATUS ") :]) == {
            "server": name,
            "peers": dict.fromkeys(herd.peers[name], "up"),
        }


# --- the line protocol at the process level ----------------------------------------------------


def parse_whatsat(reply: bytes) -> tuple[bytes, dict[str, object]]:
    """(AT line, places JSON) of a whole WHATSAT reply."""
    assert reply.endswith(b"\n\n"), reply
    first, _, body = reply[:-2].partition(b"\n")
    assert b"\n\n" not in body, "runs of newlines must be squeezed"
    answer = json.loads(body)
    assert isinstance(answer, dict)
    assert set(answer) == {"html_attributions", "results", "status"}, answer
    return first, answer


def test_half_close_gets_every_reply_then_the_server_closes(herd: Herd) -> None:
    when = now_time()
    request = (
        b"IAMAT half-close " + POSITION + b" " + when + b"\n"
        b"WHATSAT half-close 10 3\n"
        b"BOGUS line\n"
        b"STATUS\n"
        b"IAMAT half-close " + POSITION + b" " + when + b"\n"
    )
    reply = exchange(herd.port("Clark"), request)  # reads to EOF: the server closed
    at, _, rest = reply.partition(b"\n")
    assert split_at(at)[0] == b"Clark"
    whatsat_end = rest.index(b"\n\n") + 2
    first, answer = parse_whatsat(rest[:whatsat_end])
    assert first == at
    results = answer["results"]
    assert isinstance(results, list) and len(results) <= 3
    assert answer["status"] == ("OK" if results else "ZERO_RESULTS")
    bogus, status, stale, end = rest[whatsat_end:].split(b"\n")
    assert bogus == b"? BOGUS line"
    assert status.startswith(b'STATUS {"server":"Clark"')
    assert (stale, end) == (at, b"")


def test_half_close_after_more_than_64_kib_of_replies_still_closes(herd: Herd) -> None:
    # 1200 new reports (62 KB, one read) are committed together after the half-close is seen;
    # their 83 KB of replies are released in one go.
    when = int(time.time())
    request = b"".join(b"IAMAT burst-%04d %s %d\n" % (i, POSITION, when) for i in range(1200))
    assert len(request) < 64 * 1024
    with connect(herd.port("Bailey")) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(3.0)
        received = b""
        while received.count(b"\n") < 1200:
            chunk = sock.recv(65536)
            assert chunk, "closed before every reply"
            received += chunk
        assert len(received) > 64 * 1024
        try:
            closed = sock.recv(65536) == b""
        except TimeoutError:
            closed = False
        assert closed, "every reply is out, but the server does not close the connection"


def test_a_last_line_without_newline_is_answered(herd: Herd) -> None:
    port = herd.port("Bailey")
    reply = exchange(port, b"IAMAT no-newline " + POSITION + b" 1621464827.5")
    assert split_at(reply[:-1])[2:] == (b"no-newline", POSITION, b"1621464827.5")
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    assert exchange(port, b"STATUS\n  no newline here  ").endswith(b"\n?   no newline here  \n")
    # echoed as it came: a lone \r at the very end is not a line terminator
    assert exchange(port, b"junk\r") == b"? junk\r\n"


def test_crlf_terminators_and_whitespace_runs_are_accepted(herd: Herd) -> None:
    port = herd.port("Campbell")
    when = b"1621464827.25"
    reply = exchange(
        port,
        b"  IAMAT \t crlf  \x0b" + POSITION + b"\t\t" + when + b" \r\n"
        b"\r\n"
        b" \t \n"
        b"junk\r\n"
        b"junk\r\r\n"
        b"WHATSAT\tcrlf 1 0\r\n",
    )
    at, junk, junk_cr, whatsat = reply.split(b"\n", 3)
    assert split_at(at)[2:] == (b"crlf", POSITION, when)
    assert (junk, junk_cr) == (b"? junk", b"? junk\r")
    assert parse_whatsat(whatsat)[0] == at


def test_an_interactive_connection_stays_open_across_many_commands(herd: Herd) -> None:
    base = int(time.time())
    with Client(herd.port("Jaquez")) as client:
        for index in range(60):
            when = b"%d.%03d" % (base, index + 1)
            at = client.request(b"IAMAT interactive " + POSITION + b" " + when)[:-1]
            assert split_at(at)[4] == when
            assert client.whatsat(b"WHATSAT interactive 5 1").startswith(at + b"\n{")
            assert client.request(b"HELLO %d" % index) == b"? HELLO %d\n" % index
            assert client.request(b"STATUS").startswith(b'STATUS {"server":"Jaquez"')
        # still open, still answering after a quiet moment
        assert not client.at_eof(timeout=0.3)
        assert client.request(b"STATUS").startswith(b"STATUS ")


def test_an_over_long_line_closes_only_that_connection_without_a_reply(herd: Herd) -> None:
    port = herd.port("Bona")
    assert herd.max_line == 1024
    with Client(port) as bystander, Client(port) as offender, Client(port) as streamer:
        assert bystander.request(b"STATUS").startswith(b"STATUS ")
        # exactly max_line bytes (with or without \r) is still a line
        exactly = b"x" * 1024
        assert offender.request(exactly) == b"? " + exactly + b"\n"
        assert offender.request(exactly + b"\r") == b"? " + exactly + b"\n"
        offender.send(b"y" * 1025 + b"\nSTATUS\n")
        assert offender.at_eof(), "the connection must be closed"
        assert offender.buffer == b"", "and nothing answered"
        # a long line is refused before its newline ever comes
        streamer.send(b"z" * 4096)
        assert streamer.at_eof()
        assert streamer.buffer == b""
        assert bystander.request(b"STATUS").startswith(b"STATUS ")
    wait_until(
        lambda: b"max_line" in herd.log_path("Bona").read_bytes(),
        5.0,
        "the over-long line to be logged",
    )


@pytest.mark.parametrize(
    "client",
    [b"\xff\xfe", b"caf\xc3\xa9", b"\xe2\x82", b"nul\x00byte", b"\x1f\x7f\xa0\x85"],
    ids=["ff-fe", "utf8", "cut-utf8", "nul", "controls"],
)
def test_any_non_whitespace_client_id_round_trips_byte_for_byte(herd: Herd, client: bytes) -> None:
    when = now_time()
    line = herd.iamat("Bailey", client, POSITION, when)
    assert line == b"AT Bailey " + split_at(line)[1] + b" " + client + b" " + POSITION + b" " + when
    reply = exchange(herd.port("Bailey"), b"WHATSAT " + client + b" 10 1\n")
    assert parse_whatsat(reply)[0] == line
    # ...and through the flood, at the far end of the herd
    herd.wait_knows(NAMES, client, line, timeout=2.0)


def test_peer_lines_from_a_client_are_errors_and_inject_nothing(herd: Herd) -> None:
    lines = [
        b"AT Bailey +0.000000001 intruder " + POSITION + b" 99999999999",
        b"U 1 AT Bailey +0.000000001 intruder " + POSITION + b" 99999999999",
        b"SYNC 0123456789abcdef - 0",
        b"HERD-AUTH " + b"ab" * 32,
        b"HERD-CHALLENGE " + b"ab" * 16 + b" " + b"cd" * 32,
        b"PING",
        b"PONG",
    ]
    reply = exchange(herd.port("Campbell"), b"".join(line + b"\n" for line in lines))
    assert reply == b"".join(b"? " + line + b"\n" for line in lines)
    for name in NAMES:
        assert herd.at_line(name, b"intruder") is None


def test_a_stranger_without_the_secret_cannot_become_a_peer(herd: Herd) -> None:
    nonce = b"0123456789abcdef" * 2
    with Client(herd.port("Bona")) as stranger:
        # not a neighbour of Bona, or not Bona: an ordinary error
        for hello in [b"HERD-HELLO Mallory Bona " + nonce, b"HERD-HELLO Bailey Clark " + nonce]:
            assert stranger.request(hello) == b"? " + hello + b"\n"
        challenge = stranger.request(b"HERD-HELLO Bailey Bona " + nonce)
        assert re.fullmatch(rb"HERD-CHALLENGE [0-9a-f]+ [0-9a-f]+\n", challenge), challenge
        wrong = b"HERD-AUTH " + b"0" * 64
        assert stranger.request(wrong) == b"? " + wrong + b"\n"
        update = b"U 99 AT Bailey +0.000000001 intruder2 " + POSITION + b" 99999999999"
        assert stranger.request(update) == b"? " + update + b"\n"
        assert stranger.request(b"STATUS").startswith(b'STATUS {"server":"Bona"')
        # challenged again, it answers with an ordinary command: an ordinary client again
        assert stranger.request(b"HERD-HELLO Clark Bona " + nonce).startswith(b"HERD-CHALLENGE ")
        report = b"IAMAT stranger " + POSITION + b" 1621464827"
        assert stranger.request(report).startswith(b"AT Bona ")
    for name in NAMES:
        assert herd.at_line(name, b"intruder2") is None
    assert herd.links_up(), "the real Bailey link is untouched"


@pytest.mark.parametrize(
    "line",
    [
        b"IAMAT",
        b"IAMAT a",
        b"IAMAT a " + POSITION,
        b"IAMAT a " + POSITION + b" 1 extra",
        b"iamat a " + POSITION + b" 1",
        b"IAMAT a 34.068930-118.445127 1",
        b"IAMAT a +34.068930118.445127 1",
        b"IAMAT a +34-118 1",
        b"IAMAT a +34.-118.5 1",
        b"IAMAT a +.5-118.5 1",
        b"IAMAT a +91.0-118.5 1",
        b"IAMAT a +34.0-180.5 1",
        b"IAMAT a +34.0-118.5 -1",
        b"IAMAT a +34.0-118.5 +1",
        b"IAMAT a +34.0-118.5 1e9",
        b"IAMAT a +34.0-118.5 1.",
        b"IAMAT a +34.0-118.5 .5",
        b"IAMAT a +34.0-118.5 0x10",
        b"IAMAT a +34.0-118.5 \xd9\xa1",
        b"IAMAT a +\xd9\xa1.0-118.5 1",
        b"WHATSAT",
        b"WHATSAT ghost-client 10 5",
        b"WHATSAT known-client 0 5",
        b"WHATSAT known-client 0.0 5",
        b"WHATSAT known-client 50.5 5",
        b"WHATSAT known-client 10 21",
        b"WHATSAT known-client -1 5",
        b"WHATSAT known-client 10 -1",
        b"WHATSAT known-client 1e1 5",
        b"WHATSAT known-client 10 5.0",
        b"WHATSAT known-client 10",
        b"WHATSAT known-client 10 5 5",
        b"whatsat known-client 10 5",
        b"STATUS now",
        b"\x00",
        b"\xff\xfe\xfd",
    ],
)
def test_invalid_commands_are_echoed_after_a_question_mark(herd: Herd, line: bytes) -> None:
    port = herd.port("Clark")
    herd.iamat("Clark", b"known-client", POSITION, b"1621464827")
    assert exchange(port, line + b"\n") == b"? " + line + b"\n"


@pytest.mark.parametrize(
    ("position", "radius", "count"),
    [
        (b"+90.0-180.0", b"50", b"20"),
        (b"-90.0+180.0", b"0.001", b"0"),
        (b"+00034.0680-0118.4450", b"50.0", b"020"),
        (POSITION, b"10.25", b"00"),
    ],
)
def test_edge_values_are_valid(herd: Herd, position: bytes, radius: bytes, count: bytes) -> None:
    client = b"edge-" + position
    line = herd.iamat("Jaquez", client, position, now_time())
    reply = exchange(herd.port("Jaquez"), b"WHATSAT %s %s %s\n" % (client, radius, count))
    first, answer = parse_whatsat(reply)
    assert first == line
    results = answer["results"]
    assert isinstance(results, list) and len(results) <= int(count)


def test_whatsat_answers_in_the_shape_of_google_nearby_search(herd: Herd) -> None:
    line = herd.iamat("Bailey", b"ucla", POSITION, now_time())
    with Client(herd.port("Bailey")) as client:
        first, near = parse_whatsat(client.whatsat(b"WHATSAT ucla 10 5"))
        assert first == line
        assert near["status"] == "OK" and near["html_attributions"] == []
        results = near["results"]
        assert isinstance(results, list) and 1 <= len(results) <= 5
        for result in results:
            assert isinstance(result, dict)
            assert {"geometry", "name", "place_id", "types", "vicinity"} <= set(result)
        # found before the cut: still OK with no results
        _, none = parse_whatsat(client.whatsat(b"WHATSAT ucla 10 0"))
        assert none == {"html_attributions": [], "results": [], "status": "OK"}
    # mid-Pacific: nothing within a kilometre
    herd.iamat("Bailey", b"pacific", b"-30.0-140.0", now_time())
    _, empty = parse_whatsat(exchange(herd.port("Bailey"), b"WHATSAT pacific 1 5\n"))
    assert empty == {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}


def test_the_same_whatsat_gets_the_same_answer_at_every_server(herd: Herd) -> None:
    line = herd.iamat("Campbell", b"same-answer", POSITION, now_time())
    herd.wait_knows(NAMES, b"same-answer", line, timeout=2.0)
    replies = {exchange(herd.port(name), b"WHATSAT same-answer 20 7\n") for name in NAMES}
    assert len(replies) == 1, replies
    assert parse_whatsat(replies.pop())[0] == line


# --- exact bounds and long numbers -------------------------------------------------------------


def test_values_just_past_a_bound_are_refused(herd: Herd) -> None:
    herd.iamat("Bailey", b"bound", POSITION, b"1")
    lines = [
        b"IAMAT bound-lat +90.00000000000000001+0.0 1",
        b"IAMAT bound-lon +0.0-180.0000000000000001 1",
        b"WHATSAT bound 50.0000000000000001 1",
        b"WHATSAT bound 10 20.0",
        b"WHATSAT bound 10 " + b"0" * 900 + b"21",
    ]
    reply = exchange(herd.port("Bailey"), b"".join(line + b"\n" for line in lines))
    assert reply == b"".join(b"? " + line + b"\n" for line in lines)


def test_times_of_more_than_19_digits_are_valid(herd: Herd) -> None:
    when = b"12345678901234567890.5"
    reply = exchange(herd.port("Bailey"), b"IAMAT far-future %s %s\n" % (POSITION, when))
    assert reply.startswith(b"AT Bailey -") and reply.endswith(b" " + when + b"\n")


def test_values_at_or_just_inside_a_bound_are_valid(herd: Herd) -> None:
    at = herd.iamat("Bailey", b"inside", b"+90.0000000000000000000-180.00000000000000000", b"1")
    assert split_at(at)[3] == b"+90.0000000000000000000-180.00000000000000000"
    for radius, count in [
        (b"0." + b"0" * 400 + b"1", b"1"),  # tiny, but more than 0
        (b"50.0000000000000000000", b"0" * 900 + b"20"),
    ]:
        reply = exchange(herd.port("Bailey"), b"WHATSAT inside %s %s\n" % (radius, count))
        assert parse_whatsat(reply)[0] == at


def test_the_herd_is_still_whole(herd: Herd) -> None:
    """Last in the module: nothing above took a server down or a link with it."""
    assert sorted(herd.running()) == sorted(NAMES)
    assert herd.links_up()
    for name in NAMES:
        assert b"Traceback" not in herd.stderr_path(name).read_bytes(), herd.diagnose(name)
