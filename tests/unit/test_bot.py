"""The bot's conversation: chat to planning lines, current events, option numbers, replies
rendered from templates, mistakes explained, strangers and link codes; and the phrases people
type, read on their own.

Pure.  `Server` plays the server's side of the wiring with the real planning core: it runs a
line as a user (`execute`/`respond`, or `SUGGEST` over a fixed list of venues), keeps each
user's `Conversation`, and renders the reply, as the wiring will.  `now` is Friday 4 December
2026, 17:00 in Paris.
"""

from __future__ import annotations

import functools
import itertools
import re
import zoneinfo
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herd.api import Choice
from herd.ops import Op
from herd.replies import respond, suggest_reply
from herd.rules import add_user, execute, suggestion_query
from herd.state import PlanningState
from herd.tokens import LINK_WINDOW, issue_link_code
from herd.venues import Venue
from herd.wire.planning import PlanningError, Suggest, parse_planning_line
from herd.zones import Position
from notifier.chat.commands import interpret
from notifier.chat.linking import interpret_stranger, user_of_jid
from notifier.chat.phrases import (
    channels_named,
    choice_named,
    command_word,
    confirms,
    digest_named,
    iso6709,
    iso6709_degrees,
    listed,
    place_and_position,
    position,
    quiet_hours,
    radius_km,
    readable,
    turns_off,
    user_id_as_typed,
    zone_named,
)
from notifier.chat.replies import render_reply
from notifier.chat.steps import BotStep, Conversation, LinkJid, Reply, RunLine, Say, SetPosition
from notifier.render import Templates

ENVIRONMENT = Templates()
NOW = int(datetime(2026, 12, 4, 17, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")).timestamp())
NOW_NS = NOW * 10**9
SECRET = b"herd secret"
ZONES = {"alice": "Europe/Paris", "bob": "Europe/Paris", "carol": "America/Los_Angeles"}
VENUES = [Venue("Le Train Bleu", 48.8447, 2.3734), Venue("Café A", 48.8560, 2.3530)]
STRANGER = (
    "Hi! I only talk to Renga users. Ask for a code with `LINK <your jid>` on the line port, "
    "then send me `link <user> <code>`."
)


class Server:
    """The server's side of the bot, in memory: what the wiring does with each step."""

    def __init__(self) -> None:
        self.state = PlanningState()
        self.ids = itertools.count(1)
        self.positions: dict[str, Position] = {}
        self.conversations: dict[str, Conversation] = {}
        self.lines: list[bytes] = []
        for user in ZONES:
            jid = "Alice@Example.org" if user == "alice" else None
            self.apply(add_user(self.state, user, "no token", NOW_NS, self.new_op_id, jid=jid))

    def new_op_id(self) -> str:
        return f"B.{next(self.ids)}"

    def apply(self, ops: list[Op] | PlanningError) -> None:
        assert not isinstance(ops, PlanningError), ops
        for op in ops:
            self.state.apply(op)

    def run_as(self, user: str, line: bytes) -> bytes:
        self.lines.append(line)
        command = parse_planning_line(line)
        assert command is not None
        if isinstance(command, Suggest):
            query = suggestion_query(self.state, user, command, self.positions.get)
            if isinstance(query, PlanningError):
                return query.line()
            return suggest_reply(query, VENUES)
        ops = execute(self.state, user, command, NOW_NS, self.new_op_id)
        if isinstance(ops, PlanningError):
            return ops.line()
        self.apply(ops)
        return respond(self.state, user, command, ops, self.positions.get)

    def step(self, user: str, text: str) -> BotStep:
        found = self.state.user(user)
        assert found is not None
        conversation = self.conversations.get(user, Conversation())
        return interpret(ENVIRONMENT, text, found, self.state, conversation, ZONES[user], NOW_NS)

    def chat(self, user: str, text: str) -> str:
        """One message and the bot's answer, as the wiring does it."""
        step = self.step(user, text)
        if isinstance(step, Reply):
            return step.text
        if isinstance(step, SetPosition):
            self.positions[user] = step.lat, step.lon
            return step.reply
        reply = self.run_as(user, step.line)
        conversation = self.conversations.get(user, Conversation())
        self.conversations[user] = conversation.remember(reply)
        found = self.state.user(user)
        assert found is not None
        return render_reply(ENVIRONMENT, step, reply, self.state, found, ZONES[user], NOW_NS)

    def line(self, user: str, text: str) -> bytes:
        step = self.step(user, text)
        assert isinstance(step, RunLine), step
        return step.line

    def event_id(self, title: str) -> str:
        return next(e.id for e in self.state.events_of("alice") if e.title == title)


@pytest.fixture
def server() -> Server:
    return Server()


@pytest.fixture
def dinner() -> Server:
    return make_dinner()


@functools.cache
def shared_dinner() -> Server:
    """One dinner for tests that only interpret (which changes nothing)."""
    return make_dinner()


def make_dinner() -> Server:
    """alice's Dinner with bob and carol: times 1 (Fri 19:00) and 2 (Sat 12:30), places 3
    (Chez Paul, with a position) and 4 (Le Train Bleu)."""
    server = Server()
    for text in (
        "plan Dinner",
        "invite bob carol",
        "time fri 19:00",
        "time sat 12:30",
        "place Chez Paul 48.8566, 2.3522",
        "place Le Train Bleu",
    ):
        server.chat("alice", text)
    return server


def ids(server: Server) -> dict[str, str]:
    """The dinner's event id `e` and its option ids `o1`-`o4`."""
    event = server.state.event(server.event_id("Dinner"))
    assert event is not None
    option_ids = [o.id for o in event.times] + [o.id for o in event.places]
    options = {f"o{n}": option_id for n, option_id in enumerate(option_ids, start=1)}
    return {"e": event.id, **options}


# --- chat to planning lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("plan Dinner on Friday", "PLAN Dinner on Friday"),
        ("  PLAN   Dinner\n at  Paul's ", "PLAN Dinner at Paul's"),
        ("new Picnic", "PLAN Picnic"),
        ("invite dave", "INVITE {e} dave"),
        ("invite Bob, @carol and dave", "INVITE {e} bob carol dave"),
        ("uninvite carol", "UNINVITE {e} carol"),
        ("time fri 20:00", "PROPOSE {e} TIME 2026-12-04T19:00:00Z"),
        ("time 2026-12-24T19:00Z", "PROPOSE {e} TIME 2026-12-24T19:00:00Z"),
        ("propose sun 12:00", "PROPOSE {e} TIME 2026-12-06T11:00:00Z"),
        ("propose time tomorrow 8pm", "PROPOSE {e} TIME 2026-12-05T19:00:00Z"),
        ("propose place Chez Marie", "PROPOSE {e} PLACE Chez Marie"),
        ("place Bar at 48.85, 2.35", "PROPOSE {e} PLACE +48.850000+2.350000 Bar"),
        ("place +48.8566+002.3522 Chez Marie", "PROPOSE {e} PLACE +48.856600+2.352200 Chez Marie"),
        ("place Chez Marie, 48.8566,2.3522", "PROPOSE {e} PLACE +48.856600+2.352200 Chez Marie"),
        ("place Pier 39", "PROPOSE {e} PLACE Pier 39"),
        ("vote yes 1", "VOTE {e} {o1} YES"),
        ("Vote 3 maybe", "VOTE {e} {o3} MAYBE"),
        ("vote if need be 2", "VOTE {e} {o2} MAYBE"),
        ("vote no to option #4", "VOTE {e} {o4} NO"),
        ("VOTE   Y   1", "VOTE {e} {o1} YES"),
        ("yes 1", "VOTE {e} {o1} YES"),
        ("maybe 2", "VOTE {e} {o2} MAYBE"),
        ("no 4", "VOTE {e} {o4} NO"),
        ("vote yes {o3}", "VOTE {e} {o3} YES"),
        ("VOTE {e} {o1} YES", "VOTE {e} {o1} YES"),  # the form notifications show
        ("comment I'll  bring wine", "COMMENT {e} I'll bring wine"),
        ("say Running late", "COMMENT {e} Running late"),
        ("status", "EVENT {e}"),
        ("Status?", "EVENT {e}"),
        ("/show", "EVENT {e}"),
        ("status 1", "EVENT {e}"),
        ("status din", "EVENT {e}"),
        ("status DINNER", "EVENT {e}"),
        ("status {e}", "EVENT {e}"),
        ("where", "SUGGEST {e}"),
        ("where 2 km", "SUGGEST {e} 2"),
        ("suggest within 0,5km", "SUGGEST {e} 0.5"),
        ("decide 1 3", "DECIDE {e} {o1} {o3}"),
        ("decide 3 and 2", "DECIDE {e} {o2} {o3}"),
        ("DECIDE {e} {o1} {o3}", "DECIDE {e} {o1} {o3}"),
        ("reopen", "REOPEN {e}"),
        ("cancel yes", "CANCEL {e}"),
        ("cancel dinner confirm", "CANCEL {e}"),
        ("my events", "EVENTS"),
        ("events", "EVENTS"),
        ("ls", "EVENTS"),
        ("settings", "USER"),
        ("me", "USER"),
        ("my settings", "USER"),
        ("digest", "USER"),
        ("digest weekly", "USER SET digest weekly"),
        ("digest never", "USER SET digest off"),
        ("digest at 19:30", "USER SET digest_at 19:30"),
        ("digest at 7pm", "USER SET digest_at 19:00"),
        ("Digest AT 6h05", "USER SET digest_at 06:05"),
        ("digest 0:00", "USER SET digest_at 00:00"),
        ("digest at usual", "USER UNSET digest_at"),
        ("digest at auto", "USER UNSET digest_at"),
        ("quiet 22:00-07:00", "USER SET quiet 22:00-07:00"),
        ("quiet hours 22-7", "USER SET quiet 22:00-07:00"),
        ("quiet 10pm to 7:30am", "USER SET quiet 22:00-07:30"),
        ("quiet off", "USER UNSET quiet"),
        ("unsubscribe", "USER SET channels email,line"),
        ("stop", "USER SET channels email,line"),
        ("unsubscribe email", "USER SET channels line,xmpp"),
        ("unsubscribe all", "USER SET channels none"),
        ("subscribe", "USER SET channels email,line,xmpp"),
        ("timezone europe/london", "USER SET tz Europe/London"),
        ("tz America/New York", "USER SET tz America/New_York"),
        ("tz auto", "USER UNSET tz"),
    ],
)
def test_commands_become_planning_lines(dinner: Server, text: str, line: str) -> None:
    expected = line.format(**ids(dinner)).encode()
    assert dinner.line("alice", text.format(**ids(dinner))) == expected
    assert parse_planning_line(expected) is not None


@pytest.mark.parametrize(
    "text",
    [
        "here 48.8566, 2.3522",
        "here +48.8566+002.3522",
        "HERE 48.8566 2.3522",
        "geo:48.8566,2.3522;u=35",
    ],
)
def test_here_sets_the_position(server: Server, text: str) -> None:
    step = server.step("alice", text)
    assert isinstance(step, SetPosition)
    assert (step.lat, step.lon, step.position) == (48.8566, 2.3522, "+48.856600+2.352200")
    assert (
        step.reply
        == "Thanks, noted: you are at 48.85660, 2.35220. Say where for places near everyone."
    )


def test_help_and_greetings(server: Server) -> None:
    text = server.chat("alice", "help")
    assert text.startswith("Planning (on your current event; status shows it): plan Dinner")
    assert "vote yes 2" in text and "quiet 22:00-07:00" in text
    assert server.chat("alice", "?") == text
    assert server.chat("alice", "help time").startswith(
        "time <when>: propose a time. For example: time fri 19:00\nTimes are in your zone"
    )
    assert "Also known as: event, info, show" in server.chat("alice", "help status")
    assert server.chat("alice", "Hi!") == (
        "Hi alice! Try plan Dinner on Friday, my events or status. "
        "Say help for everything I understand."
    )
    assert server.lines == []


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("stauts", "I don't know “stauts”. Did you mean status? For example: status"),
        ("invte bob", "I don't know “invte”. Did you mean invite? For example: invite bob carol"),
        ("vot yes 2", "I don't know “vot”. Did you mean vote? For example: vote yes 2"),
        ("hlep", "I don't know “hlep”. Did you mean help? For example: help time"),
        ("help frobnicate", "Sorry, I didn't get “frobnicate”. Say help to see what I understand."),
        ("blorp", "Sorry, I didn't get “blorp”. Say help to see what I understand."),
        ("my dog", "Sorry, I didn't get “my dog”. Say help to see what I understand."),
    ],
)
def test_misspellings_get_a_suggestion_not_a_guess(server: Server, text: str, answer: str) -> None:
    assert server.chat("alice", text) == answer
    assert server.lines == []


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("plan", "What is it called? For example: plan Dinner on Friday"),
        ("invite", "Whom? For example: invite bob carol"),
        ("time someday", "I don't understand “someday” in a time"),
        ("time fri", "At what time? e.g. fri 19:00"),
        ("time 5/12 19:00", "reads differently in different countries"),
        ("propose the usual", "A time or a place? For example: time fri 19:00 or place Chez Paul"),
        ("place", "What is the place called? For example: place Chez Paul +48.8566+002.3522"),
        ("place Nowhere +95.0+2.0", "That position is off the map."),
        ("place Nowhere 95.1, 2.0", "That position is off the map."),
        ("vote 2", "Yes, maybe or no? For example: vote yes 2"),
        ("yes", "Yes to which one? status shows the numbers. For example: vote yes 2"),
        ("yes 1 2", "One option at a time. status shows the numbers. For example: vote yes 2"),
        ("vote yes 9", "“Dinner” has options 1 to 4. For example: status"),
        ("vote no B.999", "I can't find option “b.999”; status shows the numbers."),
        ("comment", "What would you like to say? For example: comment I'll bring wine"),
        ("where far", "How far, in km? For example: where 2"),
        ("decide 1", "Decide takes one time and one place; status shows the numbers. "),
        ("decide 1 2", "For example: decide 1 3"),
        ("status 7", "You have one event; my events lists them. For example: status 1"),
        ("status the picnic", "I can't find an event “the picnic”; my events lists yours."),
        ("digest hourly", "Digests are daily, weekly or off. For example: digest weekly"),
        ("digest at", "At what time? A clock time, in your zone. For example: digest at 19:30"),
        ("digest at 25:00", "At what time? A clock time, in your zone."),
        ("digest at dawn", "At what time? A clock time, in your zone."),
        ("quiet 22:00", "Quiet hours go from one time to another. For example: quiet 22:00-07:00"),
        ("quiet 7-7", "Quiet hours go from one time to another."),
        (
            "unsubscribe sms",
            "From what? Here (xmpp), email, line or all. For example: unsubscribe email",
        ),
        ("timezone Mars/Olympus", "I don't know the time zone “Mars/Olympus”."),
        ("here", "Where are you? Latitude then longitude. For example: here 48.8566, 2.3522"),
        ("here 91, 2", "Where are you?"),
        ("link alice abcd1234", "This address is already linked to alice on Renga."),
        ("comment " + "x" * 2600, "That is too long for me: at most 2500 characters."),
        ("comment bell\x07", "I can't read that message. For example: help"),
        ("comment \ud800", "I can't read that message."),
    ],
)
def test_mistakes_are_explained_with_an_example(dinner: Server, text: str, answer: str) -> None:
    before = list(dinner.lines)
    step = dinner.step("alice", text)
    assert isinstance(step, Reply), step
    assert answer in step.text and "\n" not in step.text
    assert dinner.lines == before


def test_free_text_is_one_line_whatever_was_typed(dinner: Server) -> None:
    line = dinner.line("bob", "comment first line\nsecond\r\n\tthird\u2028fourth")
    assert line == f"COMMENT {ids(dinner)['e']} first line second third fourth".encode()


# --- the current event --------------------------------------------------------------------------


def test_no_event_yet(server: Server) -> None:
    for text in ("status", "invite bob", "vote yes 1", "time fri 19:00", "where", "cancel"):
        assert server.chat("alice", text) == (
            "You have no event going on yet. For example: plan Dinner on Friday"
        )


def test_the_planned_event_becomes_current(dinner: Server) -> None:
    assert dinner.chat("alice", "plan Picnic").startswith("Planned “Picnic”; it is your current")
    picnic = dinner.event_id("Picnic")
    assert dinner.conversations["alice"] == Conversation(picnic)
    assert (
        dinner.line("alice", "time sat 12:00")
        == f"PROPOSE {picnic} TIME 2026-12-05T11:00:00Z".encode()
    )
    dinner.chat("alice", "status 1")
    assert dinner.conversations["alice"] == Conversation(ids(dinner)["e"])
    assert dinner.line("alice", "comment hi").startswith(f"COMMENT {ids(dinner)['e']}".encode())


def test_without_a_current_event_the_newest_open_one_is_used(dinner: Server) -> None:
    """bob never touched anything: his newest event that is not cancelled is the current one."""
    e = ids(dinner)["e"]
    assert dinner.line("bob", "yes 1") == f"VOTE {e} {ids(dinner)['o1']} YES".encode()
    dinner.chat("bob", "plan Picnic")
    dinner.chat("bob", "cancel yes")
    del dinner.conversations["bob"]
    assert dinner.line("bob", "status") == f"EVENT {e}".encode()


def test_errors_and_settings_do_not_change_the_current_event(dinner: Server) -> None:
    e = ids(dinner)["e"]
    dinner.chat("alice", "status nosuchevent")
    dinner.chat("alice", "digest weekly")
    dinner.chat("alice", "my events")
    assert dinner.conversations["alice"] == Conversation(e)
    dinner.chat("alice", "here 48.85, 2.35")
    dinner.chat("alice", "where")
    assert dinner.conversations["alice"] == Conversation(e)


def test_an_event_left_behind_is_not_current(dinner: Server) -> None:
    """carol was uninvited from the event she looked at last: she is back to her own."""
    dinner.chat("carol", "status 1")
    dinner.chat("carol", "plan Brunch")
    dinner.chat("carol", "status 1")
    dinner.chat("alice", "uninvite carol")
    assert (
        dinner.line("carol", "status") == f"EVENT {dinner.state.events_of('carol')[-1].id}".encode()
    )


def test_a_full_option_id_picks_its_own_event(dinner: Server) -> None:
    option = ids(dinner)["o2"]
    dinner.chat("bob", "plan Picnic")
    assert (
        dinner.line("bob", f"vote yes {option}") == f"VOTE {ids(dinner)['e']} {option} YES".encode()
    )


# --- option numbers -----------------------------------------------------------------------------


def test_options_are_numbered_times_then_places(dinner: Server) -> None:
    """Even when a place was proposed before a time: the numbers follow the event view."""
    dinner.chat("alice", "place Bar X")
    dinner.chat("alice", "time sun 12:00")
    status = dinner.chat("alice", "status")
    assert re.findall(r"^(\d)\. (.*?): ", status, re.M) == [
        ("1", "Fri 4 Dec 19:00 CET"),
        ("2", "Sat 5 Dec 12:30 CET"),
        ("3", "Sun 6 Dec 12:00 CET"),
        ("4", "Chez Paul"),
        ("5", "Le Train Bleu"),
        ("6", "Bar X"),
    ]


def test_decide_fills_in_a_lone_option(server: Server) -> None:
    server.chat("alice", "plan Lunch")
    server.chat("alice", "time sat 12:00")
    server.chat("alice", "time sun 12:00")
    server.chat("alice", "place Canteen")
    event = server.state.events_of("alice")[-1]
    assert (
        server.line("alice", "decide 2")
        == f"DECIDE {event.id} {event.times[1].id} {event.places[0].id}".encode()
    )
    assert server.chat("alice", "decide 2") == (
        "Decided: “Lunch” is on Sun 6 Dec 12:00 CET at Canteen. I'll tell everyone."
    )


def test_no_options_yet(server: Server) -> None:
    server.chat("alice", "plan Lunch")
    assert (
        server.chat("alice", "vote yes 1")
        == "“Lunch” has no options yet. For example: time fri 19:00"
    )


def test_decide_options_of_two_events(dinner: Server) -> None:
    dinner.chat("alice", "plan Lunch")
    dinner.chat("alice", "time sat 12:00")
    lunch_time = dinner.state.events_of("alice")[-1].times[0].id
    assert dinner.chat("alice", f"decide {lunch_time} {ids(dinner)['o3']}") == (
        "Those options are from different events. For example: decide 1 3"
    )


# --- replies ------------------------------------------------------------------------------------


def test_a_planning_session(dinner: Server) -> None:
    e = ids(dinner)["e"]
    assert dinner.chat("alice", "invite dave") == (
        "There is no Renga user “dave”. For example: invite bob carol"
    )
    assert dinner.chat("alice", "place Chez Maxim 48.86, 2.32") == (
        "Added option 5 to “Dinner”: Chez Maxim. Vote with: vote yes 5"
    )
    assert dinner.chat("alice", "time dec 24 20:00") == (
        "Added option 3 to “Dinner”: Thu 24 Dec 20:00 CET. Vote with: vote yes 3"
    )
    assert dinner.chat("bob", "yes 1") == (
        "You said yes to 1. Fri 4 Dec 19:00 CET in “Dinner”. So far: yes bob."
    )
    dinner.chat("alice", "vote yes 1")
    dinner.chat("carol", "vote maybe 1")
    dinner.chat("carol", "no 4")
    dinner.chat("bob", "comment I'll bring wine")
    assert dinner.chat("carol", "status 1") == "\n".join(
        [
            f"“Dinner” ({e}), planning, organised by alice with bob, carol.",
            "Times:",
            "1. Fri 4 Dec 10:00 PST: yes alice, bob; maybe carol (leading)",
            "2. Sat 5 Dec 03:30 PST: no votes yet [you: not yet]",
            "3. Thu 24 Dec 11:00 PST: no votes yet [you: not yet]",
            "Places:",
            "4. Chez Paul: no carol",
            "5. Le Train Bleu: no votes yet [you: not yet]",
            "6. Chez Maxim: no votes yet [you: not yet]",
            "bob: I'll bring wine",
            "Vote with vote yes 1",
        ]
    )
    assert dinner.chat("bob", "decide 1 5") == (
        "Only alice, who organises “Dinner”, can do that; you can vote and comment. "
        "For example: comment How about Saturday?"
    )
    assert dinner.chat("alice", "decide 1 4") == (
        "Decided: “Dinner” is on Fri 4 Dec 19:00 CET at Chez Paul. I'll tell everyone."
    )
    assert dinner.chat("alice", "time sat 20:00") == (
        "“Dinner” is decided; reopen it first to change it. For example: reopen"
    )
    status = dinner.chat("bob", "status")
    assert "Decided: Fri 4 Dec 19:00 CET at Chez Paul. Coming: alice, bob." in status
    assert "[you: not yet]" not in status and "(leading)" not in status
    assert dinner.chat("alice", "reopen") == (
        "“Dinner” is open again: the decision is dropped, so vote and decide anew."
    )
    assert dinner.chat("alice", "reopen") == (
        "“Dinner” is not decided, so there is nothing to reopen. For example: decide 1 3"
    )


def test_status_for_the_organiser_suggests_the_leading_decision(dinner: Server) -> None:
    dinner.chat("bob", "yes 2")
    dinner.chat("bob", "yes 4")
    status = dinner.chat("alice", "status")
    assert "Not answered yet: carol" in status
    assert status.endswith("Vote with vote yes 1; decide with decide 2 4")


def test_past_times_are_marked(dinner: Server) -> None:
    step = dinner.step("alice", "status")
    assert isinstance(step, RunLine)
    reply = dinner.run_as("alice", step.line)
    alice = dinner.state.user("alice")
    assert alice is not None
    text = render_reply(
        ENVIRONMENT, step, reply, dinner.state, alice, "Europe/Paris", NOW_NS + 86400 * 10**9
    )
    assert "1. Fri 4 Dec 19:00 CET: no votes yet (past) [you: not yet]" in text


def test_a_time_that_happens_twice_is_noted(server: Server) -> None:
    server.chat("alice", "plan Late")
    answer = server.chat("alice", "time 2027-10-31 2:30")
    assert answer == (
        "Added option 1 to “Late”: Sun 31 Oct 2027 02:30 CEST. Vote with: vote yes 1\n"
        "02:30 on Sun 31 Oct 2027 happens twice in Europe/Paris (the clocks go back); "
        "I took the first, UTC+02:00"
    )


def test_cancel_asks_the_organiser_first(dinner: Server) -> None:
    before = list(dinner.lines)
    assert dinner.chat("alice", "cancel") == (
        "That calls “Dinner” off for everyone, for good. Sure? Then say: cancel yes"
    )
    assert dinner.chat("alice", "cancel Din") == (
        "That calls “Dinner” off for everyone, for good. Sure? Then say: cancel Din yes"
    )
    assert dinner.lines == before
    assert dinner.chat("bob", "cancel") == (
        "Only alice, who organises “Dinner”, can do that; you can vote and comment. "
        "For example: comment How about Saturday?"
    )
    assert dinner.chat("alice", "cancel yes") == "“Dinner” is called off. I'll tell everyone."
    assert dinner.chat("alice", "comment oh well") == (
        "“Dinner” is called off: it takes no more changes. For example: plan Dinner on Friday"
    )


def test_my_events(dinner: Server) -> None:
    dinner.chat("bob", "plan Picnic")
    dinner.chat("bob", "status 1")
    assert dinner.chat("bob", "my events") == (
        "Your events:\n1. Dinner: planning, by alice (current)\n2. Picnic: planning, yours\n"
        "Say status <number> to open one."
    )
    assert dinner.chat("carol", "plan Brunch").startswith("Planned")
    assert dinner.chat("carol", "status 2").startswith("“Brunch”")


def test_my_events_lists_the_newest_twenty_with_their_numbers(server: Server) -> None:
    for n in range(1, 23):
        server.chat("alice", f"plan Event {n}")
    text = server.chat("alice", "my events")
    assert text.startswith("Your events (the newest 20 of 22):\n3. Event 3: planning, yours\n")
    assert "22. Event 22: planning, yours (current)\n" in text
    assert "Event 2:" not in text


def test_no_events(server: Server) -> None:
    assert server.chat("bob", "my events") == (
        "You have no events yet. Start one: plan Dinner on Friday"
    )


def test_where(dinner: Server) -> None:
    assert dinner.chat("alice", "where") == (
        "Nobody in “Dinner” has said where they are yet. For example: here 48.8566, 2.3522"
    )
    dinner.chat("alice", "here 48.8566, 2.3522")
    dinner.chat("bob", "here 48.8600, 2.3600")
    dinner.chat("bob", "yes 3")
    assert dinner.chat("alice", "where 3") == "\n".join(
        [
            "Places near alice, bob for “Dinner” (within 3 km of the middle):",
            "1. Café A: 0.767 km in all, at most 0.678 km for anyone",
            "2. Le Train Bleu: 4.002 km in all, at most 2.039 km for anyone",
            "To propose one: place Café A +48.856000+2.353000",
            "Near the leading place, Chez Paul, now: alice, bob",
        ]
    )
    assert dinner.chat("alice", "where 99") == (
        "The distance is in km, more than 0 and at most 50. For example: where 2"
    )


def test_settings(server: Server) -> None:
    assert server.chat("alice", "settings") == (
        "Settings for alice: notifications by email, line, xmpp; digest daily; quiet hours none; "
        "time zone UTC (from where you are)."
    )
    assert server.chat("alice", "digest off").startswith("OK: no digests.\n")
    assert server.chat("alice", "digest weekly").startswith("OK: digests come weekly.\n")
    assert server.chat("alice", "quiet 22-7").startswith("OK: quiet from 22:00 to 07:00 (UTC).\n")
    assert server.chat("alice", "quiet off").startswith("OK: no quiet hours.\n")
    assert server.chat("alice", "digest at 7pm") == (
        "OK: your digest comes at 19:00 (UTC).\nSettings for alice: notifications by email, "
        "line, xmpp; digest weekly at 19:00; quiet hours none; time zone UTC (from where you are)."
    )
    assert server.chat("alice", "digest at usual").startswith(
        "OK: your digest comes at the usual hour.\nSettings for alice: notifications by email, "
        "line, xmpp; digest weekly; quiet"
    )
    assert server.chat("alice", "unsubscribe").startswith("OK: I'll notify you by email, line.\n")
    assert server.chat("alice", "timezone Europe/Paris").startswith(
        "OK: times are in Europe/Paris.\nSettings for alice: notifications by email, line; "
        "digest weekly; quiet hours none; time zone Europe/Paris."
    )
    server.chat("alice", "unsubscribe all")
    assert server.chat("alice", "settings").startswith(
        "Settings for alice: notifications by nothing;"
    )
    assert server.state.user("alice") is not None


ERRORS = {
    b"ERR not-invited: only invitees of X may see it\n": (
        "You are not taking part in “Dinner”. For example: my events"
    ),
    b"ERR no-such-event: no event X\n": "I can't find that event. For example: my events",
    b"ERR already-invited: they already take part\n": (
        "They are already taking part in “Dinner”. For example: status"
    ),
    b"ERR no-such-option: B.1 has no option x\n": (
        "“Dinner” has no such option; status shows the numbers. For example: vote yes 1"
    ),
    b"ERR duplicate-option: x is already option B.3\n": (
        "That is already an option of “Dinner”. For example: status"
    ),
    b"ERR rejected: every invitee voted NO\n": (
        "Everyone said no to that option; pick another. For example: decide 1 3"
    ),
    b"ERR past-time: x is in the past\n": (
        "That time has passed. For example: time tomorrow 19:00"
    ),
    b"ERR bad-text: titles are 1-200 characters\n": (
        "That text is too long or has odd characters in it. For example: comment See you there!"
    ),
    b"ERR bad-position: +91.0+0.0 is not\n": (
        "That position is out of range. For example: place Chez Paul 48.8566, 2.3522"
    ),
    b"ERR too-many: B.1 has 50 times already": "B.1 has 50 times already. For example: status",
    b"ERR no-such-invitee: zed is not an invitee of B.1\n": (
        "Zed is not an invitee of B.1. For example: status shows who is invited"
    ),
    b"ERR bad-value: quiet hours are HH:MM-HH:MM, e.g. 22:00-07:00\n": (
        "Quiet hours are HH:MM-HH:MM, e.g. 22:00-07:00. For example: help"
    ),
    b"? EVENT\n": "Sorry, something went wrong on my side with that. Try again, or say help.",
}


@pytest.mark.parametrize(("reply", "text"), ERRORS.items())
def test_error_codes_become_one_line_explanations(dinner: Server, reply: bytes, text: str) -> None:
    alice = dinner.state.user("alice")
    assert alice is not None
    step = RunLine(b"EVENT " + ids(dinner)["e"].encode(), Say.STATUS, ids(dinner)["e"])
    assert (
        render_reply(ENVIRONMENT, step, reply, dinner.state, alice, "Europe/Paris", NOW_NS) == text
    )


def test_an_unknown_event_in_an_error_is_that_event(server: Server) -> None:
    alice = server.state.user("alice")
    assert alice is not None
    step = RunLine(b"CANCEL nope", Say.CANCELLED, "nope")
    assert render_reply(
        ENVIRONMENT, step, b"ERR cancelled: nope is cancelled\n", server.state, alice, "UTC", NOW_NS
    ) == ("That event is called off: it takes no more changes. For example: plan Dinner on Friday")


def test_a_reply_of_an_unexpected_kind_is_a_bug_not_a_message(server: Server) -> None:
    alice = server.state.user("alice")
    assert alice is not None
    with pytest.raises(ValueError, match="no rendering"):
        render_reply(
            ENVIRONMENT,
            RunLine(b"USER", Say.SETTINGS),
            b"AT x\n",
            server.state,
            alice,
            "UTC",
            NOW_NS,
        )


# --- strangers and link codes -------------------------------------------------------------------


def test_strangers_get_one_polite_line(server: Server) -> None:
    for text in ("hello?", "help", "link", "link bob", "status 1"):
        assert interpret_stranger(
            ENVIRONMENT, text, "bob@example.org", SECRET, NOW_NS, server.state
        ) == Reply(STRANGER)


def test_linking_with_a_code(server: Server) -> None:
    code, expires = issue_link_code(SECRET, "bob", "bob@example.org", NOW_NS)
    assert re.fullmatch(r"[0-9a-hjkmnp-tv-z]{8}", code)
    window = NOW // LINK_WINDOW
    assert expires == (window + 2) * LINK_WINDOW and NOW + 600 < expires <= NOW + 1200
    step = interpret_stranger(
        ENVIRONMENT,
        f"  LINK  Bob  {code.upper()} ",
        "bob@example.org",
        SECRET,
        NOW_NS,
        server.state,
    )
    assert step == LinkJid("bob", "bob@example.org")
    assert isinstance(step, LinkJid)
    reply = server.run_as("bob", step.run.line)
    assert step.run.line == b"USER SET jid bob@example.org"
    bob = server.state.user("bob")
    assert bob is not None and bob.jid == "bob@example.org"
    assert render_reply(ENVIRONMENT, step.run, reply, server.state, bob, "UTC", NOW_NS) == (
        "Linked: this address is bob's on Renga now. Say help to see what I can do."
    )
    assert user_of_jid(server.state, "BOB@example.org") == bob


@pytest.mark.parametrize(
    ("user", "jid", "later_s"),
    [
        ("bob", "eve@example.org", 0),  # made for another JID
        ("carol", "bob@example.org", 0),  # made for another user
        ("nobody", "bob@example.org", 0),  # no such user: the same answer as a wrong code
        ("bob", "bob@example.org", 2 * LINK_WINDOW),  # two windows later: expired
    ],
)
def test_link_codes_that_do_not_check_out(
    server: Server, user: str, jid: str, later_s: int
) -> None:
    code, _ = issue_link_code(SECRET, "bob", "bob@example.org", NOW_NS)
    step = interpret_stranger(
        ENVIRONMENT, f"link {user} {code}", jid, SECRET, NOW_NS + later_s * 10**9, server.state
    )
    assert isinstance(step, Reply)
    assert step.text.startswith(
        "That code does not work for this address (codes last 10 to 20 minutes)."
    )
    assert step.text.endswith("then send me `link <user> <code>`.")


def test_user_of_jid(server: Server) -> None:
    alice = server.state.user("alice")
    assert user_of_jid(server.state, "alice@example.org") == alice
    assert user_of_jid(server.state, "bob@example.org") is None


# --- anything typed -----------------------------------------------------------------------------

COMMAND_WORDS = st.sampled_from(
    ["plan", "invite", "uninvite", "time", "place", "propose", "vote", "yes", "maybe", "no",
     "comment", "status", "where", "decide", "reopen", "cancel", "my", "events", "settings",
     "digest", "quiet", "unsubscribe", "subscribe", "timezone", "here", "help", "link", "geo:1,2"]
)  # fmt: skip
TAILS = st.lists(
    st.one_of(
        st.sampled_from(
            ["1", "3", "#2", "yes", "fri", "19:00", "+1.5+2.5", "48.1,", "2.2", "km", "all"]
        ),
        st.text(max_size=8),
    ),
    max_size=5,
).map(" ".join)


@settings(max_examples=400, deadline=None)
@given(word=COMMAND_WORDS, tail=TAILS)
def test_anything_typed_is_a_well_formed_line_or_a_reply(word: str, tail: str) -> None:
    step = shared_dinner().step("alice", f"{word} {tail}")
    if isinstance(step, RunLine):
        assert b"\n" not in step.line and b"\r" not in step.line
        assert parse_planning_line(step.line) is not None
    elif isinstance(step, Reply):
        assert step.text
    else:
        assert abs(step.lat) <= 90 and abs(step.lon) <= 180


# --- phrases: what people type, read on its own ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+48.8566+002.3522", (48.8566, 2.3522)),
        ("+48.8566+002.3522/", (48.8566, 2.3522)),
        ("+48+2", (48.0, 2.0)),
        ("48.8566, 2.3522", (48.8566, 2.3522)),
        ("48.8566 2.3522", (48.8566, 2.3522)),
        ("-33.9;18.4", (-33.9, 18.4)),
        ("geo:48.8566,2.3522;u=35", (48.8566, 2.3522)),
        ("+91.0+002.0", None),
        ("48.8566", None),
        ("Paris", None),
    ],
)
def test_positions_are_read_in_four_spellings_in_range(
    text: str, expected: tuple[float, float] | None
) -> None:
    assert position(text) == expected


def test_iso6709_is_read_by_shape_and_range_checked_after() -> None:
    assert iso6709_degrees("+91.5-200.25") == (91.5, -200.25)
    assert iso6709_degrees("48.8566, 2.3522") is None
    assert iso6709(48.8566, 2.3522) == "+48.856600+2.352200"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Chez Paul", ("Chez Paul", None)),
        ("Chez Paul +48.8566+002.3522", ("Chez Paul", (48.8566, 2.3522))),
        ("+48.8566+002.3522 Chez Paul", ("Chez Paul", (48.8566, 2.3522))),
        ("Chez Paul at 48.8566, 2.3522", ("Chez Paul", (48.8566, 2.3522))),
        ("Chez Paul @ 48.8566; 2.3522", ("Chez Paul", (48.8566, 2.3522))),
        ("Chez Paul +95.0+002.0", None),
        ("Chez Paul at 95.5, 2.5", None),
    ],
)
def test_a_place_is_its_name_and_perhaps_a_position(
    text: str, expected: tuple[str, tuple[float, float] | None] | None
) -> None:
    assert place_and_position(text) == expected


def test_lists_drop_separators_and_filler() -> None:
    assert listed("bob, carol and @dave;eve") == ["bob", "carol", "@dave", "eve"]
    assert listed("yes to option 2") == ["yes", "2"]
    assert listed(" , ") == []


def test_small_readers() -> None:
    assert command_word("/Status?") == "status"
    assert command_word("?") == "?"
    assert [choice_named(word) for word in ("yeah", "perhaps", "nope", "2")] == [
        Choice.YES,
        Choice.MAYBE,
        Choice.NO,
        None,
    ]
    assert (digest_named("Week"), digest_named("hourly")) == ("weekly", None)
    assert channels_named("") == ("xmpp",)
    assert channels_named("All") == ("email", "line", "xmpp")
    assert channels_named("fax") is None
    assert (radius_km("within 2,5 km"), radius_km("far")) == ("2.5", None)
    assert (zone_named("america/new york"), zone_named("Mars/Olympus")) == (
        "America/New_York",
        None,
    )
    assert turns_off("Auto") and not turns_off("on")
    assert confirms("YES") and not confirms("no")
    assert readable("café 19:00") and not readable("a\x00b") and not readable("\ud800")


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        ("22:00-07:00", "22:00-07:00"),
        ("22-7", "22:00-07:00"),
        ("22:30 to 6", "22:30-06:00"),
        ("22 until 22", None),
        ("22", None),
        ("22-7-9", None),
    ],
)
def test_quiet_hours(span: str, expected: str | None) -> None:
    assert quiet_hours(span) == expected


def test_a_user_id_in_another_case_is_theirs(server: Server) -> None:
    state = server.state
    assert user_id_as_typed(state, "ALICE") == "alice"
    assert user_id_as_typed(state, "nobody") == "nobody"
