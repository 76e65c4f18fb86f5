"""Routing (pure): who hears about each change, what, on which channel, and when.

Times are written as local wall-clock times in a named zone (`at`), so quiet hours and DST
cases read as what the user sees.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from herd.changes import Change
from herd.ops import (
    OPERATOR,
    AddComment,
    AddPlace,
    AddTime,
    AddUser,
    Body,
    Cancel,
    CastVote,
    Choice,
    CreateEvent,
    Decide,
    Invite,
    Op,
    Reopen,
    SetUserField,
    Uninvite,
    UserField,
)
from herd.state import PlanningState
from herd.views import User
from notifier.message import Digest, Kind, Medium, QuietHours, Recipient, Routed
from notifier.outbox_table import OUTBOX_SCHEMA, enqueue
from notifier.render import RenderCache, Templates, Unsubscribe, render
from notifier.routing import (
    COALESCE_WINDOW_NS,
    NUDGE_LEAD_NS,
    REMINDER_LEAD_NS,
    Presence,
    due_reminders,
    offline,
    route,
)

S = 10**9
DINNER = 1_796_493_600  # 2026-12-05T18:00:00Z, a Saturday
LUNCH = DINNER + 86_400 - 5 * 3600  # Sunday 13:00Z


def at(text: str, tz: str = "UTC") -> int:
    """`2026-12-04 23:30` on the wall clock of `tz`, in ns."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()) * S


NOW = at("2026-12-04 12:00")


class Herd:
    """A planning state fed one op at a time, remembering each op's changes."""

    def __init__(self) -> None:
        self.state = PlanningState()
        self.clock = NOW - 1000 * S
        self.count = 0

    def op(self, actor: str, body: Body) -> list[Change]:
        self.count += 1
        self.clock += S
        return self.state.apply(Op(f"o{self.count}", self.clock, actor, body))

    def user(self, name: str, **fields: str) -> None:
        self.op(OPERATOR, AddUser(name))
        for field, value in fields.items():
            self.op(OPERATOR, SetUserField(name, UserField(field), value))

    def route(
        self, changes: list[Change], now: int = NOW, presence: Presence = offline
    ) -> list[Routed]:
        return [r for change in changes for r in route(change, self.state, now, presence)]


def by_email(name: str, **fields: str) -> dict[str, str]:
    """Email only, no digest: every notification is one immediate email."""
    return {"email": f"{name}@example.org", "channels": "email", "digest": "off", **fields}


@pytest.fixture
def herd() -> Herd:
    """alice organises e1 (o9) with bob, carol and dave; t1 Saturday, t2 Sunday, p1 a place."""
    made = Herd()
    for name in ("alice", "bob", "carol", "dave"):
        made.user(name, **by_email(name))
    assert made.count == 16
    made.op("alice", CreateEvent("Dinner"))  # o17
    made.op("alice", Invite("o17", ("bob", "carol", "dave")))  # o18
    made.op("alice", AddTime("o17", DINNER))  # o19
    made.op("alice", AddTime("o17", LUNCH))  # o20
    made.op("bob", AddPlace("o17", "Chez Paul", 48.85, 2.35))  # o21
    return made


def told(routed: list[Routed]) -> set[tuple[str, Kind]]:
    return {(r.notification.recipient.user, r.notification.kind) for r in routed}


# --- who hears what -------------------------------------------------------------------------


def everyone_but(actor: str, kind: Kind) -> set[tuple[str, Kind]]:
    return {(user, kind) for user in ("alice", "bob", "carol", "dave") if user != actor}


def test_each_change_reaches_the_people_it_matters_to_but_not_its_actor(herd: Herd) -> None:
    assert told(herd.route(herd.op("alice", AddTime("o17", LUNCH + 3600)))) == everyone_but(
        "alice", Kind.NEW_OPTION
    )
    assert told(herd.route(herd.op("carol", AddComment("o17", "wine?")))) == everyone_but(
        "carol", Kind.COMMENT
    )
    assert told(herd.route(herd.op("bob", CastVote("o17", "o19", Choice.NO)))) == {
        ("alice", Kind.VOTES)
    }
    assert told(herd.route(herd.op("alice", Decide("o17", "o19", "o21")))) == everyone_but(
        "alice", Kind.DECIDED
    )
    assert told(herd.route(herd.op("alice", Reopen("o17")))) == everyone_but("alice", Kind.CHANGED)
    assert told(herd.route(herd.op("alice", Cancel("o17")))) == everyone_but(
        "alice", Kind.CANCELLED
    )


def test_invitations_and_removals_reach_only_those_invited_or_removed(herd: Herd) -> None:
    herd.user("erin", **by_email("erin"))
    assert told(herd.route(herd.op("alice", Invite("o17", ("erin",))))) == {("erin", Kind.INVITED)}
    assert told(herd.route(herd.op("alice", Uninvite("o17", ("bob",))))) == {
        ("bob", Kind.UNINVITED)
    }


def test_the_organisers_own_vote_tells_nobody(herd: Herd) -> None:
    assert herd.route(herd.op("alice", CastVote("o17", "o19", Choice.YES))) == []


def test_user_changes_and_unknown_recipients_tell_nobody(herd: Herd) -> None:
    assert herd.route(herd.op(OPERATOR, SetUserField("bob", UserField.QUIET, "22:00-07:00"))) == []
    assert herd.route(herd.op("alice", CreateEvent("Lunch"))) == []
    ghost_invite = herd.op("alice", Invite("o17", ("ghost",)))  # a user not known here yet
    assert herd.route(ghost_invite) == []


def test_a_majority_yes_on_a_time_tells_the_organiser_once(herd: Herd) -> None:
    """Four participants: the third YES on t1 is a majority; the fourth is just a vote."""
    herd.op("alice", CastVote("o17", "o19", Choice.YES))
    assert told(herd.route(herd.op("bob", CastVote("o17", "o19", Choice.YES)))) == {
        ("alice", Kind.VOTES)
    }
    [quorum] = herd.route(herd.op("carol", CastVote("o17", "o19", Choice.YES)))
    assert (quorum.notification.kind, quorum.notification.option_id) == (Kind.QUORUM, "o19")
    assert quorum.coalesce is None and quorum.deliver_at == NOW  # urgent, no window
    assert told(herd.route(herd.op("dave", CastVote("o17", "o19", Choice.YES)))) == {
        ("alice", Kind.VOTES)
    }
    # carol says NO then YES again: quorum "again", with the same id, which the outbox ignores
    herd.op("carol", CastVote("o17", "o19", Choice.NO))
    herd.op("dave", CastVote("o17", "o19", Choice.NO))
    [again] = herd.route(herd.op("carol", CastVote("o17", "o19", Choice.YES)))
    assert again.notification.id == quorum.notification.id


def test_places_and_second_times_make_no_quorum(herd: Herd) -> None:
    for voter in ("alice", "bob", "carol"):
        herd.op(voter, CastVote("o17", "o19", Choice.YES))
    assert told(herd.route(herd.op("dave", CastVote("o17", "o21", Choice.YES)))) == {
        ("alice", Kind.VOTES)
    }
    herd.op("alice", CastVote("o17", "o20", Choice.YES))
    herd.op("bob", CastVote("o17", "o20", Choice.YES))
    kinds = told(herd.route(herd.op("dave", CastVote("o17", "o20", Choice.YES))))
    assert kinds == {("alice", Kind.VOTES)}  # t1 had its quorum first


def test_ids_are_the_same_on_every_replica_and_differ_per_recipient(herd: Herd) -> None:
    changes = herd.op("alice", Decide("o17", "o19", "o21"))
    first, again = herd.route(changes), herd.route(changes, now=NOW + 5 * S)
    assert [r.notification.id for r in first] == [r.notification.id for r in again]
    assert len({r.notification.id for r in first}) == 3


# --- bursts ---------------------------------------------------------------------------------


def test_votes_wait_a_window_under_one_coalesce_key(herd: Herd) -> None:
    routed = [
        r
        for voter in ("bob", "carol", "dave")
        for r in herd.route(herd.op(voter, CastVote("o17", "o20", Choice.MAYBE)))
    ]
    assert {r.coalesce for r in routed} == {"votes/o17/alice"}
    assert {r.deliver_at for r in routed} == {NOW + COALESCE_WINDOW_NS}
    assert len({r.notification.id for r in routed}) == 3


def test_a_burst_of_votes_becomes_one_message_with_the_final_tally() -> None:
    """Route, render and enqueue ten votes as the wiring does: one pending row remains."""
    herd = Herd()
    herd.user("alice", **by_email("alice"))
    voters = [f"v{i}" for i in range(10)]
    for voter in voters:
        herd.user(voter)
    herd.op("alice", CreateEvent("Party"))
    event = f"o{herd.count}"
    herd.op("alice", Invite(event, tuple(voters)))
    herd.op("alice", AddTime(event, DINNER))
    option = f"o{herd.count}"
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(OUTBOX_SCHEMA)
    unsubscribe = Unsubscribe(b"k", "mailto:u@example.org?subject={token}")
    templates = Templates()
    for second, voter in enumerate(voters):
        now = NOW + second * S
        for routed in herd.route(herd.op(voter, CastVote(event, option, Choice.MAYBE)), now=now):
            db.execute("BEGIN")
            cache = RenderCache(templates, herd.state, now)
            messages = render(routed, herd.state, unsubscribe, cache)
            enqueue(db, messages, now / S, due=routed.deliver_at / S, coalesce=routed.coalesce)
            db.execute("COMMIT")
    rows = db.execute("SELECT channel, state, due, text FROM outbox").fetchall()
    assert len(rows) == 1
    [(channel, state, due, text)] = rows
    assert (channel, state, due) == ("email", "pending", (NOW + COALESCE_WINDOW_NS) / S)
    assert "maybe: v0, v1, v2, v3, v4, v5, v6, v7, v8, v9;" in text


# --- channels -------------------------------------------------------------------------------


def routes_for(
    herd: Herd, name: str, presence: Presence = offline
) -> list[tuple[tuple[Medium, ...], bool]]:
    herd.op(OPERATOR, SetUserField(name, UserField.DIGEST, "off"))
    changes = herd.op("alice", Decide("o17", "o19", "o21"))
    routed = [
        r for r in herd.route(changes, presence=presence) if r.notification.recipient.user == name
    ]
    herd.op("alice", Reopen("o17"))
    return [(r.channels, r.digest) for r in routed]


def test_xmpp_while_online_else_email_else_xmpp_kept_for_later(herd: Herd) -> None:
    herd.user("erin", jid="erin@example.org", email="erin@example.org", channels="email,xmpp")
    herd.op("alice", Invite("o17", ("erin",)))
    shows = {"erin@example.org": "chat"}
    online = routes_for(herd, "erin", presence=shows.get)
    assert online == [((Medium.XMPP,), False)]
    for away in ("away", "xa", "dnd"):
        assert routes_for(herd, "erin", presence={"erin@example.org": away}.get) == [
            ((Medium.EMAIL,), False)
        ]
    herd.op(OPERATOR, SetUserField("erin", UserField.CHANNELS, "xmpp"))
    assert routes_for(herd, "erin") == [((Medium.XMPP,), False)]  # offline: stored by the server


def test_line_subscribers_get_a_line_too_and_no_channel_means_no_message(herd: Herd) -> None:
    herd.user("erin", email="erin@example.org", channels="email,line")
    herd.user("fred", email="fred@example.org", jid="fred@example.org", channels="")
    herd.user("gus", channels="email,xmpp")  # no address for either
    herd.op("alice", Invite("o17", ("erin", "fred", "gus")))
    assert routes_for(herd, "erin") == [((Medium.EMAIL,), False), ((Medium.LINE,), False)]
    assert routes_for(herd, "fred") == routes_for(herd, "gus") == []


def test_bad_preferences_from_a_peer_fall_back_to_defaults() -> None:
    user = User("bob", None, "b@x.org", ("email", "fax"), "hourly", "25:00-07:00", None, (), None)
    recipient = Recipient.of(user, "Mars/Olympus")
    assert recipient.channels == frozenset({Medium.EMAIL})
    assert (recipient.digest, recipient.quiet, recipient.tz) == (Digest.DAILY, None, "UTC")
    assert QuietHours.parse("07:00-07:00") is None


# --- digests --------------------------------------------------------------------------------


def test_digest_readers_get_progress_folded_and_urgent_news_at_once(herd: Herd) -> None:
    herd.user("erin", email="erin@example.org", jid="erin@example.org", tz="Europe/Paris")
    herd.op("alice", Invite("o17", ("erin",)))  # digest daily (the default), every channel

    def erin(changes: list[Change]) -> list[tuple[tuple[Medium, ...], int, bool]]:
        routed = herd.route(changes)
        return [
            (r.channels, r.deliver_at, r.digest)
            for r in routed
            if r.notification.recipient.user == "erin"
        ]

    eight = at("2026-12-05 08:00", "Europe/Paris")
    assert erin(herd.op("bob", AddTime("o17", LUNCH + 7200))) == [
        ((Medium.EMAIL,), eight, True),
        ((Medium.LINE,), NOW, False),  # the line feed is never folded
    ]
    assert erin(herd.op("bob", AddComment("o17", "hi"))) == [
        ((Medium.EMAIL,), eight, True),
        ((Medium.LINE,), NOW, False),
    ]
    for urgent in (Decide("o17", "o19", "o21"), Reopen("o17"), Cancel("o17")):
        assert erin(herd.op("alice", urgent)) == [
            ((Medium.EMAIL,), NOW, False),
            ((Medium.LINE,), NOW, False),
        ]
    herd.op(OPERATOR, SetUserField("erin", UserField.EMAIL, None))
    assert erin(herd.op("bob", AddComment("o17", "again"))) == [
        ((Medium.XMPP,), NOW, False),  # no email, no digest: the news comes by chat
        ((Medium.LINE,), NOW, False),
    ]


def test_weekly_digest_readers_wait_for_monday(herd: Herd) -> None:
    herd.op(OPERATOR, SetUserField("bob", UserField.DIGEST, "weekly"))
    routed = herd.route(herd.op("carol", AddComment("o17", "hi")))  # on Friday
    assert {(r.notification.recipient.user, r.deliver_at) for r in routed if r.digest} == {
        ("bob", at("2026-12-07 08:00"))
    }


# --- quiet hours ----------------------------------------------------------------------------


def deliver_at(herd: Herd, now: int, **fields: str | None) -> list[int]:
    for field, value in fields.items():
        herd.op(OPERATOR, SetUserField("bob", UserField(field), value))
    routed = herd.route(herd.op("alice", Decide("o17", "o19", "o21")), now=now)
    herd.op("alice", Reopen("o17"))
    return [r.deliver_at for r in routed if r.notification.recipient.user == "bob"]


@pytest.mark.parametrize(
    ("quiet", "tz", "now", "expected"),
    [
        ("22:00-07:00", "Europe/Paris", "2026-12-04 21:59", "2026-12-04 21:59"),
        ("22:00-07:00", "Europe/Paris", "2026-12-04 22:00", "2026-12-05 07:00"),
        ("22:00-07:00", "Europe/Paris", "2026-12-05 03:00", "2026-12-05 07:00"),
        ("22:00-07:00", "Europe/Paris", "2026-12-05 07:00", "2026-12-05 07:00"),
        ("13:00-14:00", "Europe/Paris", "2026-12-05 13:30", "2026-12-05 14:00"),
        # in New York, 22:00 is 03:00 UTC the next day: quiet until 07:00 EST (12:00 UTC)
        ("22:00-07:00", "America/New_York", "2026-12-04 22:00", "2026-12-05 07:00"),
        # DST starts in Paris at 02:00 on 28 March 2027: 07:00 is then 05:00 UTC, not 06:00
        ("22:00-07:00", "Europe/Paris", "2027-03-27 23:00", "2027-03-28 07:00"),
        # and ends at 03:00 on 25 October 2026: 07:00 is 06:00 UTC again
        ("22:00-07:00", "Europe/Paris", "2026-10-24 23:00", "2026-10-25 07:00"),
        # an end inside the skipped hour (02:30 does not exist) is just after it: 03:30 CEST
        ("00:00-02:30", "Europe/Paris", "2027-03-28 01:30", "2027-03-28 03:30"),
    ],
)
def test_quiet_hours_in_the_users_zone(
    herd: Herd, quiet: str, tz: str, now: str, expected: str
) -> None:
    assert deliver_at(herd, at(now, tz), quiet=quiet, tz=tz) == [at(expected, tz)]


def test_quiet_hours_hold_the_person_not_the_line_feed(herd: Herd) -> None:
    herd.op(OPERATOR, SetUserField("bob", UserField.CHANNELS, "email,line"))
    night = at("2026-12-04 23:00")
    assert deliver_at(herd, night, quiet="22:00-07:00") == [at("2026-12-05 07:00"), night]


def test_a_coalescing_window_ending_in_quiet_hours_waits_for_their_end(herd: Herd) -> None:
    herd.op(OPERATOR, SetUserField("alice", UserField.QUIET, "22:00-07:00"))
    now = at("2026-12-04 21:59:30")
    [routed] = herd.route(herd.op("bob", CastVote("o17", "o19", Choice.YES)), now=now)
    assert (routed.deliver_at, routed.coalesce) == (at("2026-12-05 07:00"), "votes/o17/alice")


# --- reminders and nudges -------------------------------------------------------------------


def test_a_reminder_a_day_before_to_all_but_those_who_said_no(herd: Herd) -> None:
    herd.op("dave", CastVote("o17", "o19", Choice.NO))
    herd.op("alice", Decide("o17", "o19", "o21"))
    due = DINNER * S - REMINDER_LEAD_NS
    routed = due_reminders(herd.state, due + 30 * S, due - 30 * S)
    assert told(routed) == {(u, Kind.REMINDER) for u in ("alice", "bob", "carol")}
    assert {r.notification.option_id for r in routed} == {"o19"}
    assert {r.deliver_at for r in routed} == {due + 30 * S}
    overlapping = due_reminders(herd.state, due + 60 * S, due - 60 * S)
    assert {r.notification.id for r in overlapping} == {r.notification.id for r in routed}
    assert due_reminders(herd.state, due + 90 * S, due + 30 * S) == []  # already done
    assert due_reminders(herd.state, due - 30 * S, due - 90 * S) == []  # not yet


def test_no_reminder_after_the_event_or_past_it_in_quiet_hours(herd: Herd) -> None:
    herd.op("alice", Decide("o17", "o19", "o21"))
    long_down = due_reminders(herd.state, DINNER * S + S, DINNER * S - 2 * REMINDER_LEAD_NS)
    assert long_down == []  # the server was down across the event: too late
    herd.op(OPERATOR, SetUserField("bob", UserField.QUIET, "17:00-19:30"))  # UTC: DINNER is 18:00
    late = DINNER * S - 3600 * S
    routed = due_reminders(herd.state, late, late - 2 * REMINDER_LEAD_NS)
    assert "bob" not in {r.notification.recipient.user for r in routed}
    assert {"alice", "carol", "dave"} <= {r.notification.recipient.user for r in routed}


def test_nudges_go_to_invitees_who_have_not_voted_before_the_earliest_time(herd: Herd) -> None:
    herd.op("bob", CastVote("o17", "o21", Choice.MAYBE))
    due = DINNER * S - NUDGE_LEAD_NS
    routed = due_reminders(herd.state, due, due - S)
    assert told(routed) == {("carol", Kind.NUDGE), ("dave", Kind.NUDGE)}
    assert {r.notification.option_id for r in routed} == {"o19"}
    # Sunday's nudge time passes while Saturday is still the earliest time: nothing then
    sunday_due = LUNCH * S - NUDGE_LEAD_NS
    assert due_reminders(herd.state, sunday_due, sunday_due - S) == []
    herd.op("carol", CastVote("o17", "o20", Choice.NO))
    herd.op("dave", CastVote("o17", "o19", Choice.YES))
    assert due_reminders(herd.state, due, due - S) == []  # everyone has answered


def test_no_nudge_once_decided_or_cancelled(herd: Herd) -> None:
    due = DINNER * S - NUDGE_LEAD_NS
    herd.op("alice", Decide("o17", "o19", "o21"))
    assert due_reminders(herd.state, due, due - S) == []
    herd.op("alice", Cancel("o17"))
    assert due_reminders(herd.state, due, due - S) == []
    reminder_due = DINNER * S - REMINDER_LEAD_NS
    assert due_reminders(herd.state, reminder_due, reminder_due - S) == []
