"""The notifier on real herd servers joined in memory: who sends what, from which server, when."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test.iosim import IOPump

from herd.api import Change, ChangeContext
from notifier.feed import DIGESTS_PER_TURN, TICK
from notifier.message import Outgoing
from tests.protocol.harness import START_S, Session, link, make_node, settle, start_clock
from tests.protocol.notify_harness import Notified, add_user, attach

WHEN = "2023-11-17T19:00Z"  # three days after the harness's START_S (2023-11-14T22:13:20Z)
ALICE, BOB = "alice@example.org", "bob@example.org"


def posix(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@dataclass
class Herd:
    clock: Clock
    a: Notified
    b: Notified
    pumps: list[IOPump]

    def settle(self) -> None:
        settle(self.clock, self.pumps)

    def later(self, seconds: float, step: float = 5.0) -> None:
        """Let time pass in steps, moving bytes between the servers after each."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.settle()

    def until(self, moment: str, past: float = 2 * TICK) -> None:
        """Jump to just before `moment` (ISO, UTC), then live through it and `past` beyond."""
        self.clock.advance(posix(moment) - 60 - self.clock.seconds())
        self.settle()
        self.later(60 + past)


@pytest.fixture
def herd(tmp_path: Path) -> Iterator[Herd]:
    """A (alice's server) linked to B (bob's), each with its notifier."""
    clock = start_clock()
    a = attach(make_node(tmp_path / "A", "A", ("B",), clock))
    b = attach(make_node(tmp_path / "B", "B", ("A",), clock))
    made = Herd(clock, a, b, [link(a.node, b.node)])
    made.settle()
    add_user(a.node, "alice", f"email={ALICE}")
    add_user(b.node, "bob", f"email={BOB}")
    made.settle()
    yield made
    made.a.close()  # a test may have replaced it by a restarted one
    made.b.close()


@dataclass
class Dinner:
    event: str
    time: str
    place: str


def dinner(herd: Herd, *settings: str) -> Dinner:
    """alice, at A, organises a dinner with bob, after `USER SET <setting>` for each setting."""
    alice = Session(herd.a.node, "alice")
    for setting in settings:
        alice.json(f"USER SET {setting}", b"USER")
    event_id = alice.json("PLAN Dinner")["id"]
    alice.json(f"INVITE {event_id} bob")
    time_id = alice.json(f"PROPOSE {event_id} TIME {WHEN}")["times"][0]["id"]
    place_id = alice.json(f"PROPOSE {event_id} PLACE +48.8530+002.3389 Chez Paul")["places"][0]
    herd.settle()
    return Dinner(event_id, time_id, place_id["id"])


def test_a_vote_at_a_is_mailed_by_a_alone(herd: Herd) -> None:
    plan = dinner(herd, "digest off")
    Session(herd.a.node, "bob").json(f"VOTE {plan.event} {plan.time} YES")
    herd.settle()
    assert herd.a.email.to(ALICE) == []  # votes wait a minute for more to join them
    herd.later(TICK + 5)
    [mail] = herd.a.email.to(ALICE)
    assert mail.subject == "Votes on Dinner"
    assert "bob" in mail.text
    assert [m.subject for m in herd.a.email.to(BOB)] == ["alice invited you to Dinner"]
    assert herd.b.email.sent == herd.b.xmpp.sent == []
    assert herd.b.outbox_rows() == []


def test_a_flooded_change_is_pushed_by_every_server_with_one_checkpoint(herd: Herd) -> None:
    plan = dinner(herd, "digest off")
    on_a, on_b = herd.a.subscribe("alice"), herd.b.subscribe("alice")
    bob = Session(herd.a.node, "bob")
    bob.connection.dataReceived(f"VOTE {plan.event} {plan.time} YES\n".encode())
    assert on_a == []  # not before the vote is durable
    herd.settle()
    assert on_a == on_b
    [push] = on_b
    word, mark, rest = push.split(b" ", 2)
    assert word == b"PUSH"
    assert rest == f'votes {plan.event} "Dinner": {plan.time} yes 1 maybe 0 no 0; '.encode() + (
        f"{plan.place} yes 0 maybe 0 no 0\n".encode()
    )
    assert herd.a.hub.latest("alice") == herd.b.hub.latest("alice") == mark.decode()
    assert herd.b.outbox_rows() == []  # B rendered the line only


def test_digest_readers_get_one_digest_at_eight_local_from_their_server(herd: Herd) -> None:
    plan = dinner(herd, "tz Europe/Paris")
    bob = Session(herd.b.node, "bob")
    bob.json(f"COMMENT {plan.event} I'll bring wine")
    bob.json(f"VOTE {plan.event} {plan.time} YES")
    herd.settle()
    items = "SELECT user_id, kind FROM notifier_digest_items ORDER BY user_id, kind"
    bobs = [("bob", "new_option"), ("bob", "new_option")]
    # Every server holds every reader's items, so another can send them if the home is down.
    assert (
        herd.a.query(items)
        == herd.b.query(items)
        == [("alice", "comment"), ("alice", "votes"), *bobs]
    )
    herd.later(TICK * 3)
    assert herd.a.email.to(ALICE) == herd.b.email.sent == []
    herd.until("2023-11-15T07:00")  # 08:00 in Paris
    [digest] = herd.a.email.to(ALICE)
    assert digest.subject == "Your daily Renga digest: 2 updates"
    assert "wine" in digest.text
    assert herd.a.query(items) == herd.b.query(items) == bobs  # B dropped what A's covered
    assert herd.b.email.sent == []  # bob's zone is UTC: his comes an hour later, from B
    herd.until("2023-11-15T08:00")
    [theirs] = herd.b.email.to(BOB)
    assert theirs.subject == "Your daily Renga digest: 2 updates"
    assert herd.a.query(items) == herd.b.query(items) == []
    herd.later(86400, step=TICK)
    assert len(herd.a.email.to(ALICE)) == len(herd.b.email.to(BOB)) == 1
    digests = [m for m in (*herd.a.email.to(BOB), *herd.b.email.to(ALICE)) if "digest" in m.key]
    assert digests == []


def test_a_user_with_a_digest_hour_of_their_own_gets_it_then_once_a_day(herd: Herd) -> None:
    plan = dinner(herd, "tz Europe/Paris", "digest_at 19:30")
    bob = Session(herd.b.node, "bob")
    bob.json(f"COMMENT {plan.event} I'll bring wine")
    herd.settle()
    herd.until("2023-11-15T07:00")  # 08:00 in Paris, the herd's hour: not alice's
    assert herd.a.email.to(ALICE) == herd.b.email.to(ALICE) == []
    herd.until("2023-11-15T08:00")
    assert [m.subject for m in herd.b.email.to(BOB)] == ["Your daily Renga digest: 2 updates"]
    herd.until("2023-11-15T18:29", past=0)
    assert herd.a.email.to(ALICE) == []
    herd.until("2023-11-15T18:30")  # 19:30 in Paris
    [digest] = herd.a.email.to(ALICE)
    assert digest.subject == "Your daily Renga digest: 1 update"
    assert "wine" in digest.text
    assert herd.b.email.to(ALICE) == []  # from her server alone
    # Moved later the evening she had one: the next is tomorrow's, not a second today.
    bob.json(f"COMMENT {plan.event} And cheese")
    Session(herd.b.node, "alice").json("USER SET digest_at 21:00", b"USER")  # through B
    herd.settle()
    herd.until("2023-11-15T20:00")
    assert len(herd.a.email.to(ALICE)) == 1
    herd.until("2023-11-16T20:00")  # 21:00 in Paris the next day
    assert [m.subject for m in herd.a.email.to(ALICE)][1:] == ["Your daily Renga digest: 1 update"]
    assert "cheese" in herd.a.email.to(ALICE)[1].text
    assert herd.b.email.to(ALICE) == []


def test_reminders_are_sent_by_each_recipients_home_server(herd: Herd) -> None:
    plan = dinner(herd, "digest off")
    bob_lines = herd.b.subscribe("bob")
    alice = Session(herd.a.node, "alice")
    alice.json(f"DECIDE {plan.event} {plan.time} {plan.place}")
    herd.settle()
    herd.until("2023-11-16T19:00")  # a day before the dinner
    reminder = "Reminder: Dinner, Fri 17 Nov 19:00 UTC"
    assert [m.subject for m in herd.a.email.to(ALICE)] == [reminder]
    assert reminder not in [m.subject for m in (*herd.a.email.to(BOB), *herd.b.email.to(ALICE))]
    assert herd.b.xmpp.sent == []
    assert [m.subject for m in herd.b.email.to(BOB)][-1] == reminder
    assert next(m.key.split("-")[0] for m in herd.b.email.sent) == "digest"  # bob's, 08:00 UTC
    assert bob_lines[-1].split(b" ", 2)[2].startswith(b"reminder ")
    assert herd.b.hub.latest("bob") == herd.a.hub.latest("bob")
    herd.later(TICK * 5, step=TICK)
    assert [m.subject for m in herd.a.email.to(ALICE)] == [reminder]


def test_votes_within_a_minute_become_one_message(herd: Herd) -> None:
    plan = dinner(herd, "digest off")
    bob = Session(herd.a.node, "bob")
    bob.json(f"VOTE {plan.event} {plan.time} YES")
    bob.json(f"VOTE {plan.event} {plan.place} MAYBE")
    herd.settle()
    waiting = [row for row in herd.a.outbox_rows() if row[2] == ALICE]
    assert [row[3] for row in waiting] == ["pending"]
    herd.later(TICK + 5)
    [mail] = herd.a.email.to(ALICE)
    assert "Chez Paul" in mail.text
    assert "maybe" in mail.text.lower()


class FailingWrite:
    """A later listener whose write fails the whole transaction (a full disk, say)."""

    def changed(self, change: Change, context: ChangeContext) -> None:
        context.add_write(self.fail)

    def fail(self, db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database or disk is full")


def test_notifications_commit_or_roll_back_with_their_change(herd: Herd) -> None:
    plan = dinner(herd, "digest off")
    bob = Session(herd.a.node, "bob")
    before = herd.a.outbox_rows()
    bob.json(f"COMMENT {plan.event} I'll bring wine")
    rows, ops = herd.a.outbox_rows(), herd.a.query("SELECT op_id FROM ops")
    assert [row[2] for row in rows if row not in before] == [ALICE]
    herd.a.node.server.feed.subscribe(FailingWrite())
    with capturedLogs() as events:
        bob.send(f"COMMENT {plan.event} And cheese")
    assert [failure.value for failure in herd.a.node.failures] == [events[-1]["log_failure"].value]
    assert herd.a.outbox_rows() == rows
    assert herd.a.query("SELECT op_id FROM ops") == ops


def test_folded_items_survive_a_restart(tmp_path: Path) -> None:
    clock = start_clock()
    node = attach(make_node(tmp_path, "A", (), clock))
    add_user(node.node, "alice", f"email={ALICE}")
    add_user(node.node, "bob")
    alice = Session(node.node, "alice")
    event_id = alice.json("PLAN Picnic")["id"]
    alice.json(f"INVITE {event_id} bob")
    Session(node.node, "bob").json(f"COMMENT {event_id} Sunny!")
    node.close()
    node = attach(make_node(tmp_path, "A", (), clock))
    clock.advance(posix("2023-11-15T08:00") - clock.seconds() + 2 * TICK)
    clock.advance(0)
    [digest] = node.email.to(ALICE)
    assert "Sunny!" in digest.text
    node.close()


def test_writes_need_the_tables_that_load_creates(tmp_path: Path) -> None:
    """`load` is what makes the tables; the listener's writes depend on it (no lazy DDL)."""
    node = make_node(tmp_path, "A", (), Clock())
    notified = attach(node)
    names = {name for (name,) in notified.query("SELECT name FROM sqlite_master")}
    assert {"outbox", "notifier_digest_items", "notifier_digest_sent", "notifier_marks"} <= names
    notified.close()


def test_users_online_in_jabber_are_told_there(tmp_path: Path) -> None:
    clock = start_clock()
    online = {"alice@example.org": "available"}
    node = attach(make_node(tmp_path, "A", (), clock), presence=online.get)
    add_user(node.node, "alice", f"email={ALICE}", "jid=alice@example.org")
    add_user(node.node, "bob")
    alice = Session(node.node, "alice")
    alice.json("USER SET digest off", b"USER")
    event_id = alice.json("PLAN Picnic")["id"]
    alice.json(f"INVITE {event_id} bob")
    Session(node.node, "bob").json(f"COMMENT {event_id} Sunny!")
    [chat] = node.xmpp.to("alice@example.org")
    assert "Sunny!" in chat.text
    assert node.email.sent == []
    node.close()


def test_a_change_a_quiet_user_watches_live_is_not_also_sent(tmp_path: Path) -> None:
    clock = start_clock()
    live: set[tuple[str, str]] = set()  # (user, event) with a page open, as the web says
    node = attach(
        make_node(tmp_path, "A", (), clock), watching=lambda user, event: (user, event) in live
    )
    add_user(node.node, "alice", f"email={ALICE}")
    add_user(node.node, "bob", f"email={BOB}")
    alice, bob = Session(node.node, "alice"), Session(node.node, "bob")
    for session in (alice, bob):
        session.json("USER SET digest off", b"USER")
    event_id = alice.json("PLAN Picnic")["id"]
    alice.json(f"INVITE {event_id} bob")
    on_line = node.subscribe("bob")
    live.add(("bob", event_id))
    alice.json(f"COMMENT {event_id} Sunny!")
    assert [mail.subject for mail in node.email.to(BOB)] == ["alice invited you to Picnic"]
    assert any(b"Sunny!" in push for push in on_line)  # still pushed on the line feed
    bob.json(f"COMMENT {event_id} Rainy?")
    assert "Rainy?" in node.email.to(ALICE)[-1].text  # alice is not watching
    bob.json("USER SET web_quiet no", b"USER")
    alice.json(f"COMMENT {event_id} Cloudy.")
    assert "Cloudy." in node.email.to(BOB)[-1].text  # watching, but not quiet
    bob.json("USER SET web_quiet yes", b"USER")
    live.clear()
    alice.json(f"COMMENT {event_id} Windy.")
    assert "Windy." in node.email.to(BOB)[-1].text  # quiet, but not watching
    node.close()


def digests(notified: Notified) -> list[Outgoing]:
    return [mail for mail in notified.email.sent if mail.key.startswith("digest-")]


class OneTurnAtATime(Clock):
    """A clock whose `advance` runs only what was due when it was called, not what those calls
    schedule for now: one advance is one reactor turn, so a test can see what a turn did."""

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        due = [call for call in self.calls if call.getTime() <= self.rightNow]
        for call in sorted(due, key=lambda call: call.getTime()):
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


def test_a_crowd_of_digests_is_composed_a_few_at_a_time(tmp_path: Path) -> None:
    """120 readers whose digest hour is the same minute: each turn composes at most
    `DIGESTS_PER_TURN` and enqueues them in its own transaction, so the server keeps
    answering in between and the first mails leave before the last are composed."""
    clock, turns = Clock(), OneTurnAtATime()
    clock.advance(START_S)
    turns.advance(START_S)
    a = attach(make_node(tmp_path / "A", "A", (), clock), clock=turns)
    crowd = [f"u{n:03d}" for n in range(120)]
    add_user(a.node, "alice", f"email={ALICE}")
    for user in crowd:
        add_user(a.node, user, f"email={user}@example.org")
    alice = Session(a.node, "alice")
    alice.json("USER SET digest off", b"USER")
    event = alice.json("PLAN Crowd")["id"]
    for start in range(0, len(crowd), 40):
        alice.json(f"INVITE {event} {' '.join(crowd[start : start + 40])}")
    alice.json(f"PROPOSE {event} TIME {WHEN}")  # a new option: into each reader's digest
    [(held,)] = a.query("SELECT COUNT(*) FROM notifier_digest_items")
    assert held == 120
    turns.advance(posix("2023-11-15T08:00") + TICK - turns.seconds())
    sent_after_each_turn = []
    while True:
        clock.advance(turns.seconds() - clock.seconds())  # commit the turn's write, send it
        sent_after_each_turn.append(len(digests(a)))
        if not any(call.getTime() <= turns.seconds() for call in turns.getDelayedCalls()):
            break
        turns.advance(0)
    assert sent_after_each_turn == [*range(DIGESTS_PER_TURN, 120, DIGESTS_PER_TURN), 120]
    assert sorted(m.recipient for m in digests(a)) == [f"{u}@example.org" for u in crowd]
    assert a.query("SELECT COUNT(*) FROM notifier_digest_items") == [(0,)]
    a.close()


def test_a_digest_run_stopped_halfway_keeps_the_rest_held(tmp_path: Path) -> None:
    clock, turns = Clock(), OneTurnAtATime()
    clock.advance(START_S)
    turns.advance(START_S)
    a = attach(make_node(tmp_path / "A", "A", (), clock), clock=turns)
    crowd = [f"u{n:03d}" for n in range(80)]
    add_user(a.node, "alice", f"email={ALICE}")
    for user in crowd:
        add_user(a.node, user, f"email={user}@example.org")
    alice = Session(a.node, "alice")
    alice.json("USER SET digest off", b"USER")
    event = alice.json("PLAN Crowd")["id"]
    for start in range(0, len(crowd), 40):
        alice.json(f"INVITE {event} {' '.join(crowd[start : start + 40])}")
    alice.json(f"PROPOSE {event} TIME {WHEN}")
    turns.advance(posix("2023-11-15T08:00") + TICK - turns.seconds())
    clock.advance(turns.seconds() - clock.seconds())
    a.listener.stop()
    assert turns.getDelayedCalls() == []  # the minute loops and the rest of the run
    assert len(digests(a)) == DIGESTS_PER_TURN
    held = [(len(crowd) - DIGESTS_PER_TURN,)]
    assert a.query("SELECT COUNT(*) FROM notifier_digest_items") == held
    a.close()


def test_a_digest_held_for_a_down_server_goes_out_from_the_next_and_not_again(
    herd: Herd, tmp_path: Path
) -> None:
    """alice's home A stops; B takes her digest over once A's lease is 30 s old; A comes back
    with her items still held, learns of B's digest on the link, and sends nothing."""
    plan = dinner(herd)
    Session(herd.b.node, "bob").json(f"COMMENT {plan.event} I'll bring wine")
    herd.settle()
    items = "SELECT user_id FROM notifier_digest_items WHERE user_id = 'alice'"
    assert herd.a.query(items) == herd.b.query(items) == [("alice",)]
    herd.a.close()
    herd.pumps = []
    herd.until("2023-11-15T08:00")
    [digest] = herd.b.email.to(ALICE)
    assert "wine" in digest.text
    assert herd.b.query(items) == []

    herd.a = attach(make_node(tmp_path / "A", "A", ("B",), herd.clock))
    assert herd.a.query(items) == [("alice",)]  # A went down before B's digest
    herd.pumps = [link(herd.a.node, herd.b.node)]
    herd.settle()
    assert herd.a.query(items) == []  # B's `digest` op reached A in the catch-up
    herd.later(86400, step=TICK)
    assert herd.a.email.to(ALICE) == []
    assert len(herd.b.email.to(ALICE)) == 1


def test_a_server_back_from_a_long_stop_leaves_vote_notices_to_the_one_that_took_over(
    herd: Herd, tmp_path: Path
) -> None:
    """Votes to alice (home A) while A is down: B sends the notice once A's lease expired; A,
    back, catches the vote up and does not mail it again."""
    plan = dinner(herd, "digest off")
    herd.later(TICK)
    herd.a.close()
    herd.pumps = []
    herd.later(60)  # A's lease expires at B
    Session(herd.b.node, "bob").json(f"VOTE {plan.event} {plan.place} YES")
    herd.later(2 * TICK)
    assert [m.subject for m in herd.b.email.to(ALICE)] == ["Votes on Dinner"]

    herd.a = attach(make_node(tmp_path / "A", "A", ("B",), herd.clock))
    herd.pumps = [link(herd.a.node, herd.b.node)]
    herd.settle()
    herd.later(3 * TICK)
    assert [m.subject for m in herd.a.email.to(ALICE)] == []
    assert [m.subject for m in herd.b.email.to(ALICE)] == ["Votes on Dinner"]


def test_votes_made_while_a_server_was_briefly_away_are_still_its_to_send(
    herd: Herd, tmp_path: Path
) -> None:
    """A stops for less than a lease: nobody took its duties over, so A sends the notice of a
    vote made meanwhile once it has caught it up."""
    plan = dinner(herd, "digest off")
    herd.later(TICK)
    herd.a.close()
    herd.pumps = []
    herd.later(10)
    Session(herd.b.node, "bob").json(f"VOTE {plan.event} {plan.place} YES")
    herd.later(2 * TICK)
    assert herd.b.email.to(ALICE) == []  # A's lease is still alive at B

    herd.a = attach(make_node(tmp_path / "A", "A", ("B",), herd.clock))
    herd.pumps = [link(herd.a.node, herd.b.node)]
    herd.settle()
    herd.later(3 * TICK)
    assert [m.subject for m in herd.a.email.to(ALICE)] == ["Votes on Dinner"]
    assert herd.b.email.to(ALICE) == []
