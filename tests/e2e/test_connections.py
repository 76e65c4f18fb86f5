"""Hostile connections against a real `herd run`: amplification, AUTH floods, pipelining after
AUTH, subscriptions that outlive their role, and framing at the edges (issue 9, defects 3-5, 11).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from herd.ops import OPERATOR
from tests.support.herd import Herd, running_herd
from tests.support.lines import Client, connect, now_time
from tests.support.polling import wait_until

from .test_planning import Session, add_user

WHATSAT_FLOOD = b"WHATSAT nyc 50 20\n" * (65536 // 18)
FLOODERS = 5


@pytest.fixture
def bailey(tmp_path: Path, places_seed: Path) -> Iterator[Herd]:
    """One server of its own (the tests here try to take it down)."""
    with running_herd(tmp_path, names=("Bailey",), links=(), seed=places_seed) as herd:
        herd.up()
        herd.warm_up()
        yield herd


def rss_bytes(herd: Herd) -> int:
    status = Path(f"/proc/{herd.procs['Bailey'].pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match[1]) * 1024


def never_reading(port: int) -> socket.socket:
    """A client with a small receive buffer that will never read what it is sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5.0)
    sock.connect(("127.0.0.1", port))
    return sock


def timed_iamat(port: int, client: bytes) -> float:
    with Client(port) as probe:
        started = time.monotonic()
        reply = probe.request(b"IAMAT " + client + b" +40.7-74.0 " + now_time())
        assert reply.startswith(b"AT Bailey "), reply
        return time.monotonic() - started


def test_whatsat_flood_that_is_never_read_is_bounded(bailey: Herd) -> None:
    port = bailey.port("Bailey")
    assert bailey.iamat("Bailey", b"nyc", b"+40.7128-074.0060", now_time()).startswith(b"AT ")
    before = rss_bytes(bailey)
    flooders = [never_reading(port) for _ in range(FLOODERS)]
    try:
        for sock in flooders:
            sock.sendall(WHATSAT_FLOOD)  # 3,640 lines, 25 MB of replies if all were run
        waits = [timed_iamat(port, b"probe%d" % index) for index in range(10)]
        growth = rss_bytes(bailey) - before
    finally:
        for sock in flooders:
            sock.close()
    assert max(waits) < 1.0, waits
    assert growth < 40 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB"


def test_a_valid_auth_is_answered_fast_under_an_auth_flood(bailey: Herd) -> None:
    token = add_user(bailey, "alice")
    port = bailey.port("Bailey")
    flood = b"AUTH mallory wrong\n" * 2000
    flooders = [connect(port) for _ in range(10)]
    try:
        for sock in flooders:
            sock.sendall(flood)
        time.sleep(0.5)  # the flood is in: on main, 20,000 checks queued by now
        for _ in range(3):
            with Client(port) as alice:
                started = time.monotonic()
                reply = alice.request(f"AUTH alice {token}".encode())
                waited = time.monotonic() - started
            assert reply.startswith(b"USER "), reply
            assert waited < 1.0, f"a valid AUTH waited {waited:.2f} s"
    finally:
        for sock in flooders:
            sock.close()


def test_lines_after_auth_in_one_write_run_as_that_user(bailey: Herd) -> None:
    tokens = {user: add_user(bailey, user) for user in ("alice", "bob")}
    port = bailey.port("Bailey")
    with Client(port) as fresh:
        fresh.send(f"AUTH bob {tokens['bob']}\nPLAN Lunch\n".encode())
        assert fresh.line().startswith(b"USER ")
        plan = fresh.line()
    assert plan.startswith(b"EVENT "), plan
    event = json.loads(plan[len(b"EVENT ") :])
    assert event["organiser"] == "bob"
    event_id = event["id"]
    with Session(bailey, "Bailey", "bob", tokens["bob"]) as bob:
        bob.event(f"INVITE {event_id} alice")
    with Session(bailey, "Bailey", "alice", tokens["alice"]) as alice:
        alice.send(f"AUTH bob {tokens['bob']}\nCOMMENT {event_id} from bob\n".encode())
        assert alice.line().startswith(b"USER ")
        commented = alice.line()
    assert commented.startswith(b"EVENT "), commented
    comments = json.loads(commented[len(b"EVENT ") :])["comments"]
    assert [(c["by"], c["text"]) for c in comments] == [("bob", "from bob")]


def _subscribed_alice(herd: Herd, tokens: dict[str, str]) -> tuple[Session, str, str]:
    """alice organises an event with bob invited and a time proposed, and subscribes."""
    with Session(herd, "Bailey", "alice", tokens["alice"]) as alice:
        event_id = str(alice.event("PLAN Games")["id"])
        alice.event(f"INVITE {event_id} bob")
        times = alice.event(f"PROPOSE {event_id} TIME 2031-01-01T19:00Z")["times"]
    subscriber = Session(herd, "Bailey", "alice", tokens["alice"])
    assert subscriber.request(b"SUBSCRIBE").startswith(b"SUBSCRIBED alice ")
    return subscriber, event_id, str(times[0]["id"])  # type: ignore[index]


def _pushed_after_bob_votes(
    herd: Herd, tokens: dict[str, str], subscriber: Client, event_id: str, option: str
) -> bytes:
    with Session(herd, "Bailey", "bob", tokens["bob"]) as bob:
        bob.event(f"VOTE {event_id} {option} YES")
    subscriber.sock.settimeout(1.5)
    try:
        return subscriber.buffer + subscriber.sock.recv(65536)
    except TimeoutError:
        return subscriber.buffer


def test_a_subscription_gets_pushes_until_its_role_ends(bailey: Herd) -> None:
    tokens = {user: add_user(bailey, user) for user in ("alice", "bob")}
    subscriber, event_id, option = _subscribed_alice(bailey, tokens)
    with subscriber:
        pushed = _pushed_after_bob_votes(bailey, tokens, subscriber, event_id, option)
        assert pushed.startswith(b"PUSH "), pushed  # the control: pushes do flow
        subscriber.buffer = b""
        subscriber.send(f"HERD-HELLO {OPERATOR} Bailey 0123456789abcdef\n".encode())
        assert subscriber.line().startswith(b"HERD-CHALLENGE ")
        later = _pushed_after_bob_votes(bailey, tokens, subscriber, event_id, option)
    assert b"PUSH" not in later, later


def test_a_subscription_ends_with_auth_as_another_user(bailey: Herd) -> None:
    tokens = {user: add_user(bailey, user) for user in ("alice", "bob")}
    subscriber, event_id, option = _subscribed_alice(bailey, tokens)
    with subscriber:
        subscriber.send(f"AUTH bob {tokens['bob']}\n".encode())
        assert subscriber.line().startswith(b"USER ")
        later = _pushed_after_bob_votes(bailey, tokens, subscriber, event_id, option)
    assert b"PUSH" not in later, later


def test_unsubscribe_with_an_argument_is_a_shape_error(bailey: Herd) -> None:
    token = add_user(bailey, "alice")
    with Session(bailey, "Bailey", "alice", token) as alice:
        assert alice.request(b"UNSUBSCRIBE x") == b"? UNSUBSCRIBE x\n"
        assert alice.request(b"UNSUBSCRIBE") == b"UNSUBSCRIBED\n"


def test_an_over_long_last_line_before_half_close_is_not_answered(bailey: Herd) -> None:
    with Client(bailey.port("Bailey")) as client:
        client.send(b"STATUS\n" + b"x" * (bailey.max_line + 1))
        client.sock.shutdown(socket.SHUT_WR)
        assert client.line().startswith(b"STATUS ")
        assert client.at_eof()
        assert client.buffer == b""


def test_a_burst_of_connects_is_accepted_at_once(bailey: Herd) -> None:
    """More connects at once than the old listen backlog (50): none of them waits for the
    kernel to retry a dropped SYN (1 s)."""
    if int(Path("/proc/sys/net/core/somaxconn").read_text()) < 1024:
        pytest.skip("net.core.somaxconn caps the listen backlog below 1024 here")
    port = bailey.port("Bailey")
    bailey.pause("Bailey")
    socks: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            socks.append(sock)
        time.sleep(0.2)  # every SYN sent while the server cannot accept
        bailey.resume("Bailey")
        started = time.monotonic()
        for sock in socks:
            sock.setblocking(True)
            sock.settimeout(5.0)
            sock.sendall(b"STATUS\n")
        replies = [sock.recv(100) for sock in socks]
        waited = time.monotonic() - started
    finally:
        bailey.resume("Bailey")
        for sock in socks:
            sock.close()
    assert all(reply.startswith(b"STATUS ") for reply in replies)
    assert waited < 0.9, f"the burst took {waited:.2f} s (dropped SYNs are retried after 1 s)"


def test_a_subscriber_that_never_reads_is_dropped_and_resumes_from_its_checkpoint(
    tmp_path: Path, places_seed: Path
) -> None:
    """Pushes are not replies, so no budget holds them back: a subscriber that stops reading
    is disconnected once `push_backlog` bytes wait for it (else every change would grow the
    server's memory for as long as it stays connected), and subscribing again with the last
    checkpoint it read gives it the rest."""
    with running_herd(tmp_path, names=("Bailey",), links=(), seed=places_seed) as herd:
        with herd.config_path.open("a") as config:
            config.write("\n[limits]\noutput_budget = 4096\npush_backlog = 4096\n")
        herd.up()
        tokens = {user: add_user(herd, user) for user in ("alice", "bob")}
        with Session(herd, "Bailey", "alice", tokens["alice"]) as alice:
            event_id = str(alice.event("PLAN Games")["id"])
            alice.event(f"INVITE {event_id} bob")
            times = alice.event(f"PROPOSE {event_id} TIME 2031-01-01T19:00Z")["times"]
        option = str(times[0]["id"])  # type: ignore[index]
        port = herd.port("Bailey")
        with never_reading(port) as stalled, Session(herd, "Bailey", "bob", tokens["bob"]) as bob:
            stalled.sendall(f"AUTH alice {tokens['alice']}\nSUBSCRIBE\n".encode())
            for round_number in range(400):
                vote = ("YES", "NO")[round_number % 2]
                bob.event(f"VOTE {event_id} {option} {vote}")
                if _closed_by_server(stalled):
                    break
            else:
                pytest.fail("a subscriber that never reads was never disconnected")
        with Session(herd, "Bailey", "alice", tokens["alice"]) as again:
            again.send(b"SUBSCRIBE 0\n")  # as if it had read nothing: all is replayed
            assert again.line().startswith(b"SUBSCRIBED alice ")
            assert again.line().startswith(b"PUSH "), "the history is still there to resume"
        wait_until(
            lambda: "a subscriber not reading" in herd.log_path("Bailey").read_text(),
            5.0,
            "the log to say why the subscriber was dropped",
        )


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has reset or closed this connection (nothing is ever read from it,
    so a send is how to find out)."""
    try:
        sock.send(b"\n")
    except OSError:
        return True
    return False
