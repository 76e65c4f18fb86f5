"""The Jabber bot end to end: a real Prosody started here, real `herd run` servers logged in as
the bot `renga@localhost` (resource = server name, priority by server order), real slixmpp
clients as alice, bob, carol and dave, and the line protocol on the side.  No mocks.

Each test has its own Prosody and its own three-server herd (all linked), so breaking one
(SIGKILL, Prosody restarts) cannot disturb another.  No `[smtp]`: users have no email, so the
bot is everyone's personal channel.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from notifier.channels.xmpp import STRANGER_REPLY
from tests.support.lines import at_line
from tests.support.polling import wait_until

from .bot_harness import NOTICE_SECONDS, BotHerd, Received, Scene, bot_scene

pytestmark = pytest.mark.timeout(90)

NAMES = ("Bailey", "Bona", "Campbell")  # priorities 3, 2, 1: Bailey gets the chats
LINKS = (("Bailey", "Bona"), ("Bona", "Campbell"), ("Bailey", "Campbell"))
PEOPLE = ("alice", "bob", "carol")
EVENT_ID = r"\(([^)\s]+)\)"


@pytest.fixture
def scene(tmp_path: Path, places_seed: Path) -> Iterator[Scene]:
    """Prosody with the bot, alice, bob, carol and dave; the herd up; alice, bob and carol are
    Renga users with their JIDs (dave is a Prosody account only)."""
    with bot_scene(tmp_path, NAMES, LINKS, places_seed, (*PEOPLE, "dave")) as built:
        built.herd.up()
        for name in PEOPLE:
            built.herd.add_user(name, jid=built.prosody.jid(name))
        yield built


def invited(actor: str, title: str) -> str:
    return f'{actor} invited you to "{title}"'


def decided(actor: str, title: str) -> str:
    return f'{actor} decided "{title}"'


def event_id_of(message: Received) -> str:
    match = re.search(EVENT_ID, message.body)
    assert match is not None, message.body
    return match[1]


def wait_event(
    herd: BotHerd, server: str, user: str, event: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll `EVENT <id>` at `server` as `user` until `done(document)` holds."""
    with herd.line(server, user) as line:

        def shown() -> dict[str, Any] | None:
            document = line.event(f"EVENT {event}")
            return document if done(document) else None

        return wait_until(shown, 10.0, f"{server} to show {event} as wanted")


def test_a_whole_plan_by_chat(scene: Scene) -> None:
    herd = scene.herd
    alice, bob, carol = (scene.friend(name) for name in PEOPLE)

    answer = alice.ask("plan Dinner", "Planned “Dinner”")
    assert answer.resource == "Bailey"  # the highest priority takes the chats
    assert answer.kind == "chat"
    alice.ask("invite bob carol", "Invited bob, carol to “Dinner”")
    notices = [
        person.wait_message(lambda m: invited("alice", "Dinner") in m.body, "the invitation")
        for person in (bob, carol)
    ]
    event = event_id_of(notices[0])
    assert event_id_of(notices[1]) == event
    alice.ask("time fri 19:00", "Added option 1 to “Dinner”")
    alice.ask("place Chez Paul 48.85, 2.35", "Added option 2 to “Dinner”: Chez Paul")

    # bob votes on the line, at another server, once the options have reached it
    document = wait_event(herd, "Bona", "bob", event, lambda d: bool(d["times"] and d["places"]))
    time_option = document["times"][0]["id"]
    with herd.line("Bona", "bob") as line:
        voted = line.event(f"VOTE {event} {time_option} YES")
    assert voted["times"][0]["yes"] == ["bob"]
    wait_event(herd, "Bailey", "carol", event, lambda d: d["times"][0]["yes"] == ["bob"])

    answer = carol.ask("vote yes 1", "You said yes to 1.")
    assert "yes bob, carol" in answer.body, answer.body
    quorum = alice.wait_message(lambda m: "2 of 3 people said YES" in m.body, "the quorum")
    assert f"({event})" in quorum.body and "bob, carol" in quorum.body, quorum.body
    answer = alice.ask("decide 1 2", "Decided: “Dinner” is on")
    assert "Chez Paul" in answer.body

    for person in (bob, carol):
        notice = person.wait_message(lambda m: decided("alice", "Dinner") in m.body, "the decision")
        assert f"({event})" in notice.body and "Chez Paul" in notice.body, notice.body
        assert notice.kind == "chat" and notice.resource == "Bailey"
    # each participant got each notification once; the actor none about her own changes
    for person in (bob, carol):
        assert person.count(invited("alice", "Dinner")) == 1, person.bodies()
        assert person.count('alice proposed a new time for "Dinner"') == 1, person.bodies()
        assert person.count('alice proposed a new place for "Dinner"') == 1, person.bodies()
        assert person.count(decided("alice", "Dinner")) == 1, person.bodies()
    assert alice.count(decided("alice", "Dinner")) == 0, alice.bodies()
    assert alice.count("invited you") == 0, alice.bodies()


def test_failover_when_the_chat_server_is_killed(scene: Scene) -> None:
    herd = scene.herd
    alice = scene.friend("alice")
    answer = alice.ask("plan Lunch", "Planned “Lunch”")
    assert answer.resource == "Bailey"
    with herd.line("Bona", "alice") as line:  # the event reached Bona before Bailey dies
        wait_until(
            lambda: any(e["title"] == "Lunch" for e in line.call("EVENTS")[1]),
            10.0,
            "Bona to know Lunch",
        )

    herd.kill("Bailey")  # SIGKILL: no goodbye to Prosody; the kernel closes the socket
    killed = time.monotonic()
    alice.wait_bot_resources({"Bona", "Campbell"}, timeout=5.0)
    answer = alice.ask("status", "“Lunch”", timeout=5.0)
    assert answer.resource == "Bona", answer
    assert time.monotonic() - killed < 5.0
    answer = alice.ask("time sat 12:00", "Added option 1 to “Lunch”", timeout=5.0)
    assert answer.resource == "Bona"


def test_notifications_queued_while_prosody_is_down_arrive_once(scene: Scene) -> None:
    herd, prosody = scene.herd, scene.prosody
    alice, bob = scene.friend("alice"), scene.friend("bob")
    with herd.line("Bona", "alice") as line:
        event = line.event("PLAN Picnic")["id"]
        for person in (alice, bob):
            person.logout()
        prosody.stop()
        line.event(f"INVITE {event} bob carol")
        line.event(f"PROPOSE {event} TIME 2099-06-01T12:00Z")

    def failed_once() -> bool:
        rows = herd.pending("Bona")
        ours = [row for row in rows if row[0] == "xmpp" and row[1] != "alice@localhost"]
        return len(ours) == 4 and all(tries >= 1 for *_, tries in ours)

    wait_until(failed_once, 20.0, lambda: f"Bona's outbox to try and fail: {herd.pending('Bona')}")

    prosody.start()  # same port, same data
    bob, carol = scene.person("bob"), scene.person("carol")
    for person in (bob, carol):
        person.wait_message(lambda m: invited("alice", "Picnic") in m.body, "the invitation", 45.0)
        person.wait_message(lambda m: "proposed a new time" in m.body, "the new time", 45.0)
    wait_until(
        lambda: not [row for row in herd.pending("Bona") if row[0] == "xmpp"],
        20.0,
        lambda: f"Bona's outbox to be empty: {herd.pending('Bona')}",
    )
    for person in (bob, carol):
        person.ping(prosody.domain)  # everything the server had for them has arrived
        assert person.count(invited("alice", "Picnic")) == 1, person.bodies()
        assert person.count("proposed a new time") == 1, person.bodies()
    # every bot is back by itself (the same processes) and answers
    assert herd.running() == list(NAMES) and set(herd.starts.values()) == {1}
    alice = scene.person("alice")
    alice.befriend()
    alice.wait_bot_resources(set(NAMES), timeout=30.0)
    assert alice.ask("status", "“Picnic”").resource == "Bailey"


def test_a_stranger_is_refused_then_links_with_a_code(scene: Scene) -> None:
    herd = scene.herd
    scene.friend("alice")  # every bot is up
    token = herd.add_user("dave")  # a Renga user without a JID yet
    assert token
    dave = scene.person("dave")
    dave.say("hi")
    dave.say("what can you do?")
    dave.subscribe()
    bailey = f"{scene.bot}/Bailey"
    wait_until(
        lambda: (scene.bot, "unsubscribed") in dave.presences(),
        10.0,
        lambda: f"the bot to refuse dave's subscription: {dave.presences()}",
    )
    dave.ping(bailey)  # the bot answers a ping after what it sent before it
    assert dave.bodies() == [STRANGER_REPLY]
    assert not dave.subscribed()

    with herd.line("Campbell", "dave") as line:
        word, body = line.call("LINK dave@localhost")
    assert word == "LINKCODE", body
    code, expires = body.split()
    assert int(expires) > time.time()

    dave.ask("link dave 00000000", "That code does not work for this address")
    dave.ask(f"link dave {code}", "Linked: this address is dave's on Renga now.")

    def linked_at(server: str) -> bool:
        return (herd.knows_user(server, "dave") or {}).get("jid") == "dave@localhost"

    for server in NAMES:
        wait_until(partial(linked_at, server), 10.0, f"{server} to know dave's JID")
    assert dave.ask("plan Tea", "Planned “Tea”").resource == "Bailey"
    dave.befriend()  # now accepted
    dave.wait_bot_resources(set(NAMES))


def test_offline_user_gets_the_decision_at_login(scene: Scene) -> None:
    herd = scene.herd
    alice, carol = scene.friend("alice"), scene.friend("carol")
    alice.ask("plan Brunch", "Planned “Brunch”")
    alice.ask("invite carol", "Invited carol")
    carol.wait_message(lambda m: invited("alice", "Brunch") in m.body, "the invitation")
    carol.logout()
    alice.ask("time sun 11:00", "Added option 1")
    alice.ask("place Cafe Flore 48.854, 2.333", "Added option 2")
    alice.ask("decide 1 2", "Decided: “Brunch” is on")

    def delivered() -> bool:  # to Prosody, which keeps it for carol
        rows = herd.pending("Bailey")
        return not [row for row in rows if row[:2] == ("xmpp", "carol@localhost")]

    wait_until(delivered, NOTICE_SECONDS, lambda: f"Bailey's outbox: {herd.pending('Bailey')}")
    carol = scene.person("carol")
    notice = carol.wait_message(lambda m: decided("alice", "Brunch") in m.body, "the decision")
    assert notice.delayed, "it should come from Prosody's offline storage"
    assert "Cafe Flore" in notice.body
    assert carol.count(decided("alice", "Brunch")) == 1


def test_here_by_chat_moves_the_user_in_the_herd(scene: Scene) -> None:
    herd = scene.herd
    alice = scene.friend("alice")
    answer = alice.ask("here 34.07, -118.44", "Thanks, noted: you are at 34.07000, -118.44000")
    assert answer.resource == "Bailey"
    device = b"xmpp:alice@localhost"
    for server in NAMES:
        line = wait_until(
            partial(at_line, herd.port(server), device), 20.0, f"{server} to know {device!r}"
        )
        assert line.startswith(b"AT Bailey ")
        assert line.split()[3:5] == [device, b"+34.070000-118.440000"], line
    with herd.line("Campbell", "alice") as line_user:
        word, me = line_user.call("WHOAMI")
    assert word == "USER"
    assert device.decode() in str(me), me


def test_the_vote_hint_of_a_chat_notification_works_in_the_chat(scene: Scene) -> None:
    alice, bob = scene.friend("alice"), scene.friend("bob")
    alice.ask("plan Supper", "Planned “Supper”")
    alice.ask("invite bob", "Invited bob")
    alice.ask("time fri 20:00", "Added option 1")
    notice = bob.wait_message(lambda m: "proposed a new time" in m.body, "the new time")
    hint = re.search(r"^Vote: (VOTE \S+) <option> YES\|MAYBE\|NO$", notice.body, re.M)
    option = re.search(r"\(option (\S+)\)\.", notice.body)
    assert hint is not None and option is not None, notice.body
    before = len(bob.from_bot())
    bob.say(f"{hint[1]} {option[1]} YES")  # exactly what the notification says to send
    answer = bob.wait_message(lambda m: True, "the answer to the vote", after=before)
    assert "You said yes to 1." in answer.body, answer.body
