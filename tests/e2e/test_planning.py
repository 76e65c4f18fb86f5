"""Event planning across the default herd of `herd run` processes, as a user runs it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from tests.support.herd import NAMES, Herd
from tests.support.lines import Client
from tests.support.polling import wait_until

pytestmark = pytest.mark.timeout(120)

USERS = ("alice", "bob", "carol", "dave")


def add_user(herd: Herd, user: str) -> str:
    """`herd user add` as an operator types it; the token it prints once."""
    done = subprocess.run(
        [sys.executable, "-m", "herd", "user", "add", user, "--config", str(herd.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    match = re.search(r"token (\S+)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    return match[1]


class Session(Client):
    """A line client authenticated as a user."""

    def __init__(self, herd: Herd, server: str, user: str, token: str) -> None:
        super().__init__(herd.port(server))
        assert self.request(f"AUTH {user} {token}".encode()).startswith(b"USER ")

    def event(self, line: str) -> dict[str, object]:
        reply = self.request(line.encode())
        assert reply.startswith(b"EVENT "), reply
        document = json.loads(reply[len(b"EVENT ") :])
        assert isinstance(document, dict)
        return document


def views(
    herd: Herd, tokens: dict[str, str], event_id: str, servers: tuple[str, ...]
) -> set[bytes]:
    """The organiser's view of the event on each server (their replies, byte for byte)."""
    seen = set()
    for server in servers:
        with Session(herd, server, "alice", tokens["alice"]) as alice:
            seen.add(alice.request(f"EVENT {event_id}".encode()))
    return seen


def converged(herd: Herd, tokens: dict[str, str], event_id: str, servers: tuple[str, ...]) -> bool:
    seen = views(herd, tokens, event_id, servers)
    return len(seen) == 1 and next(iter(seen)).startswith(b"EVENT ")


def test_a_plan_made_all_over_the_herd_is_the_same_everywhere(fresh_herd: Herd) -> None:
    herd = fresh_herd
    tokens = {user: add_user(herd, user) for user in USERS}
    wait_until(
        lambda: all(_knows_user(herd, s, "dave", tokens["dave"]) for s in NAMES),
        5.0,
        "every server to know the users",
    )
    with Session(herd, "Bailey", "alice", tokens["alice"]) as alice:
        event_id = str(alice.event("PLAN Dinner at Paul's")["id"])
        alice.event(f"INVITE {event_id} bob carol dave")
    wait_until(lambda: converged(herd, tokens, event_id, NAMES), 5.0, "the same event everywhere")
    with Session(herd, "Bona", "alice", tokens["alice"]) as alice:
        times = alice.event(f"PROPOSE {event_id} TIME 2031-06-05T19:00+02:00")["times"]
        places = alice.event(f"PROPOSE {event_id} PLACE +48.8530+002.3389 Le Procope")["places"]
    time_id = times[0]["id"]  # type: ignore[index]
    place_id = places[0]["id"]  # type: ignore[index]
    wait_until(lambda: converged(herd, tokens, event_id, NAMES), 5.0, "the same event everywhere")
    with Session(herd, "Jaquez", "bob", tokens["bob"]) as bob:
        bob.event(f"VOTE {event_id} {time_id} YES")
        bob.event(f"VOTE {event_id} {place_id} MAYBE")
    with Session(herd, "Clark", "carol", tokens["carol"]) as carol:
        carol.event(f"VOTE {event_id} {time_id} YES")
        refused = carol.request(f"DECIDE {event_id} {time_id} {place_id}".encode())
        assert refused.startswith(b"ERR not-organiser")
    wait_until(lambda: converged(herd, tokens, event_id, NAMES), 5.0, "the same event everywhere")
    with Session(herd, "Campbell", "alice", tokens["alice"]) as alice:
        decided = alice.event(f"DECIDE {event_id} {time_id} {place_id}")
    assert decided["status"] == "decided"
    assert decided["decision"] == {"time": time_id, "place": place_id}
    wait_until(lambda: converged(herd, tokens, event_id, NAMES), 5.0, "the same event everywhere")
    (view,) = views(herd, tokens, event_id, NAMES)
    shown = json.loads(view[len(b"EVENT ") :])
    assert shown["status"] == "decided"
    assert shown["times"][0]["yes"] == ["bob", "carol"]


def test_a_server_down_during_the_vote_catches_up(fresh_herd: Herd) -> None:
    herd = fresh_herd
    tokens = {user: add_user(herd, user) for user in USERS[:3]}
    with Session(herd, "Bailey", "alice", tokens["alice"]) as alice:
        event_id = str(alice.event("PLAN Picnic")["id"])
        alice.event(f"INVITE {event_id} bob carol")
        option = alice.event(f"PROPOSE {event_id} TIME 2031-07-01T12:00Z")["times"]
    option_id = option[0]["id"]  # type: ignore[index]
    wait_until(lambda: converged(herd, tokens, event_id, NAMES), 5.0, "the same event everywhere")
    herd.kill("Clark")
    with Session(herd, "Jaquez", "bob", tokens["bob"]) as bob:
        bob.event(f"VOTE {event_id} {option_id} YES")
    with Session(herd, "Bona", "carol", tokens["carol"]) as carol:
        carol.event(f"VOTE {event_id} {option_id} NO")
    herd.start("Clark")
    herd.wait_answering("Clark")
    wait_until(lambda: converged(herd, tokens, event_id, NAMES), 10.0, "Clark to catch up")


def test_every_acknowledged_change_survives_sigkill_of_the_whole_herd(fresh_herd: Herd) -> None:
    herd = fresh_herd
    tokens = {user: add_user(herd, user) for user in USERS[:2]}
    acknowledged: dict[str, bytes] = {}
    for index, server in enumerate(NAMES * 4):
        with Session(herd, server, "alice", tokens["alice"]) as alice:
            event_id = str(alice.event(f"PLAN Event {index}")["id"])
            reply = alice.request(f"INVITE {event_id} bob".encode())
            assert reply.startswith(b"EVENT ")
            acknowledged[event_id] = reply
    for name in NAMES:
        herd.signal(name, signal.SIGKILL)
    herd.start()
    herd.wait_answering()
    herd.wait_links()
    for event_id, reply in acknowledged.items():
        wait_until(
            lambda event_id=event_id: converged(herd, tokens, event_id, NAMES),  # type: ignore[misc]
            10.0,
            f"{event_id} everywhere after the restart",
        )
        assert views(herd, tokens, event_id, ("Bailey",)) == {reply}


def _knows_user(herd: Herd, server: str, user: str, token: str) -> bool:
    with Client(herd.port(server)) as client:
        client.send(f"AUTH {user} {token}\n".encode())
        return client.line().startswith(b"USER ")
