"""Rendering: golden files for every template, hostile titles, the calendar entry, unsubscribing.

Golden files live in `golden/<channel>/<kind>.<part>` and are compared exactly; they were
written once from the output and read by a person.  After changing a template on purpose,
delete the file concerned, run `RENGA_GOLDEN=write pytest tests/unit/test_render.py`, and
read the new file before committing it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import icalendar
import pytest
from jinja2 import UndefinedError

from herd.api import StateView
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
from herd.tokens import unsubscribe_token
from notifier.event_views import local_time
from notifier.message import (
    Kind,
    Medium,
    Notification,
    Outgoing,
    Recipient,
    Routed,
    notification_id,
)
from notifier.render import (
    NAMES_SHOWN,
    TEMPLATES,
    RenderCache,
    Templates,
    Unsubscribe,
    names,
    one_line,
    render,
)

GOLDEN = Path(__file__).parent / "golden"
S = 10**9
T0 = 1_796_385_600 * S  # 2026-12-04T12:00:00Z, a Friday
DINNER = 1_796_493_600  # 2026-12-05T18:00:00Z: 19:00 in Paris, 13:00 in New York
LUNCH = 1_796_562_000  # 2026-12-06T13:00:00Z
FAR = 4_083_998_400  # 2099-06-01T12:00:00Z, a Monday
ENVIRONMENT = Templates()


def fresh(state: StateView) -> RenderCache:
    """A cache of its own, as for one change."""
    return RenderCache(ENVIRONMENT, state, T0)


UNSUBSCRIBE = Unsubscribe(
    b"server secret", "mailto:renga@example.org?subject=unsubscribe%20{user}%20{token}"
)
PARTS = {
    Medium.EMAIL: ("subject.txt", "body.txt", "body.html"),
    Medium.XMPP: ("body.txt",),
    Medium.LINE: ("line.txt",),
}


class Story:
    """The dinner every golden file tells about.  alice (New York) organises; bob (Paris)
    is invited with carol and dave.  Times t1 (Saturday) and t2 (Sunday), places p1 and p2."""

    def __init__(self, title: str = "Dinner & drinks") -> None:
        self.state = PlanningState()
        self.clock = T0
        self.changes: list[Change] = []
        for name, tz in (("alice", "America/New_York"), ("bob", "Europe/Paris")):
            self.apply(OPERATOR, AddUser(name), name)
            for field, value in (
                (UserField.EMAIL, f"{name}@example.org"),
                (UserField.JID, f"{name}@chat.example.org"),
                (UserField.TZ, tz),
            ):
                self.apply(OPERATOR, SetUserField(name, field, value), f"{name}-{field}")
        for name in ("carol", "dave"):
            self.apply(OPERATOR, AddUser(name), name)
        self.apply("alice", CreateEvent(title), "e1")
        self.apply("alice", Invite("e1", ("bob", "carol", "dave")), "i1")
        self.apply("alice", AddTime("e1", DINNER), "t1")
        self.apply("alice", AddTime("e1", LUNCH), "t2")
        self.apply("carol", AddPlace("e1", "Chez Paul", 48.8534, 2.3488), "p1")
        self.apply("dave", AddPlace("e1", "Le <Train> Bleu", None, None), "p2")
        self.apply("alice", CastVote("e1", "t1", Choice.YES), "va")
        self.apply("carol", CastVote("e1", "t1", Choice.YES), "vc")
        self.apply("carol", CastVote("e1", "p1", Choice.MAYBE), "vc2")
        self.apply("dave", CastVote("e1", "t2", Choice.NO), "vd")

    def apply(self, actor: str, body: Body, op_id: str) -> None:
        self.clock += 60 * S
        self.changes += self.state.apply(Op(op_id, self.clock, actor, body))

    def routed(
        self, kind: Kind, user: str, cause: str, actor: str | None, option: str | None = None
    ) -> Routed:
        found = self.state.user(user)
        assert found is not None and found.tz is not None
        recipient = Recipient.of(found, found.tz)
        notification = Notification(
            notification_id(cause, user, kind), kind, recipient, "e1", cause, actor, option, T0
        )
        return Routed(notification, (Medium.EMAIL, Medium.XMPP, Medium.LINE), T0)


def scene(kind: Kind, title: str = "Dinner & drinks") -> tuple[PlanningState, Routed]:
    """The state just after the change of `kind`, and its notification to one recipient."""
    story = Story(title)
    match kind:
        case Kind.INVITED:
            return story.state, story.routed(kind, "bob", "i1", "alice")
        case Kind.UNINVITED:
            story.apply("alice", Uninvite("e1", ("bob",)), "u1")
            return story.state, story.routed(kind, "bob", "u1", "alice")
        case Kind.NEW_OPTION:
            return story.state, story.routed(kind, "bob", "p2", "dave", "p2")
        case Kind.VOTES:
            return story.state, story.routed(kind, "alice", "vd", "dave", "t2")
        case Kind.QUORUM:
            story.apply("bob", CastVote("e1", "t1", Choice.YES), "vb")
            return story.state, story.routed(kind, "alice", "e1/t1", "bob", "t1")
        case Kind.COMMENT:
            story.apply("carol", AddComment("e1", "I'll bring wine <and> cheese"), "c1")
            return story.state, story.routed(kind, "bob", "c1", "carol")
        case Kind.DECIDED:
            story.apply("alice", Decide("e1", "t1", "p1"), "d1")
            return story.state, story.routed(kind, "bob", "d1", "alice")
        case Kind.CHANGED:
            story.apply("alice", Decide("e1", "t1", "p1"), "d1")
            story.apply("alice", Reopen("e1"), "r1")
            return story.state, story.routed(kind, "bob", "r1", "alice")
        case Kind.CANCELLED:
            story.apply("alice", Cancel("e1"), "x1")
            return story.state, story.routed(kind, "bob", "x1", "alice")
        case Kind.REMINDER:
            story.apply("alice", Decide("e1", "t1", "p1"), "d1")
            return story.state, story.routed(kind, "bob", f"e1/t1@{DINNER}", None, "t1")
        case Kind.NUDGE:
            return story.state, story.routed(kind, "bob", f"e1/t1@{DINNER}", None, "t1")


def part_of(message: Outgoing, part: str) -> str:
    match part:
        case "subject.txt":
            return message.subject
        case "body.txt" | "line.txt":
            return message.text
        case _:
            assert message.html is not None
            return message.html


def assert_golden(path: Path, actual: str) -> None:
    if not path.exists() and os.environ.get("RENGA_GOLDEN") == "write":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.read_text() == actual, path


@pytest.mark.parametrize("kind", list(Kind))
def test_golden(kind: Kind) -> None:
    state, routed = scene(kind)
    messages = render(routed, state, UNSUBSCRIBE, fresh(state))
    assert [m.channel for m in messages] == list(PARTS)
    for message in messages:
        for part in PARTS[Medium(message.channel)]:
            assert_golden(GOLDEN / message.channel / f"{kind}.{part}", part_of(message, part))


def test_every_kind_has_every_template() -> None:
    names = {p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*.j2")}
    for kind in Kind:
        for channel, parts in PARTS.items():
            assert {f"{channel}/{kind}.{part}.j2" for part in parts} <= names


def test_messages_are_addressed_keyed_and_threaded() -> None:
    state, routed = scene(Kind.DECIDED)
    email, xmpp, line = render(routed, state, UNSUBSCRIBE, fresh(state))
    nid = routed.notification.id
    assert (email.key, email.recipient, email.thread) == (f"{nid}.email", "bob@example.org", "e1")
    assert (xmpp.key, xmpp.recipient, xmpp.thread) == (f"{nid}.xmpp", "bob@chat.example.org", "e1")
    assert (line.key, line.recipient, line.subject) == (f"{nid}.line", "bob", "")
    token = unsubscribe_token(b"server secret", "bob")
    assert email.headers == (
        ("List-Unsubscribe", f"<mailto:renga@example.org?subject=unsubscribe%20bob%20{token}>"),
    )
    assert [a.filename for a in email.attachments] == ["event.ics"]
    assert render(replace(routed, channels=(Medium.XMPP,)), state, UNSUBSCRIBE, fresh(state)) == [
        xmpp
    ]


def test_only_the_decision_carries_a_calendar_entry() -> None:
    for kind in set(Kind) - {Kind.DECIDED}:
        state, routed = scene(kind)
        assert all(m.attachments == () for m in render(routed, state, UNSUBSCRIBE, fresh(state)))


def test_hostile_title_keeps_headers_intact_and_html_escaped() -> None:
    title = "Party\r\nBcc: all@example.org\u2028<script>alert(1)</script>"
    state, routed = scene(Kind.DECIDED, title)
    email, xmpp, line = render(routed, state, UNSUBSCRIBE, fresh(state))
    assert email.subject == (
        "Decided: Party Bcc: all@example.org <script>alert(1)</script>,"
        " Sat 5 Dec 19:00 CET, Chez Paul"
    )
    assert email.html is not None
    assert "<script>" not in email.html
    assert "Party\r\nBcc: all@example.org\u2028&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert f'decided "{title}"' in email.text and f'"{title}" (e1)' in xmpp.text
    assert "\n" not in line.text and "\r" not in line.text
    assert line.text.startswith('decided e1 "Party Bcc: all@example.org <script>')
    calendar = icalendar.Calendar.from_ical(email.attachments[0].data)
    [entry] = calendar.walk("VEVENT")
    assert str(entry["SUMMARY"]) == "Party Bcc: all@example.org <script>alert(1)</script>"
    assert set(entry) == {
        *("UID", "SEQUENCE", "DTSTAMP", "DTSTART", "DTEND", "SUMMARY", "LOCATION", "GEO"),
        *("DESCRIPTION", "STATUS"),
    }


def test_the_calendar_entry_is_the_decision_in_utc_without_attendees() -> None:
    state, routed = scene(Kind.DECIDED)
    [email] = render(replace(routed, channels=(Medium.EMAIL,)), state, UNSUBSCRIBE, fresh(state))
    [attachment] = email.attachments
    assert attachment.content_type == 'text/calendar; charset="utf-8"; method=PUBLISH'
    calendar = icalendar.Calendar.from_ical(attachment.data)
    assert str(calendar["METHOD"]) == "PUBLISH"
    [entry] = calendar.walk("VEVENT")
    start = entry.decoded("DTSTART")
    assert start == datetime(2026, 12, 5, 18, 0, tzinfo=UTC)
    assert b"DTSTART:20261205T180000Z" in attachment.data
    assert str(entry["UID"]) == "e1@renga"
    assert str(entry["LOCATION"]) == "Chez Paul"
    assert "ATTENDEE" not in entry and "ORGANIZER" not in entry
    assert b"ATTENDEE" not in attachment.data and b"@example.org" not in attachment.data


def test_a_later_decision_updates_the_calendar_entry() -> None:
    state, routed = scene(Kind.DECIDED)
    first = render(routed, state, UNSUBSCRIBE, fresh(state))[0].attachments[0].data
    later = replace(routed, notification=replace(routed.notification, at_ns=T0 + 3600 * S))
    second = render(later, state, UNSUBSCRIBE, fresh(state))[0].attachments[0].data
    sequence = [
        int(icalendar.Calendar.from_ical(d).walk("VEVENT")[0].decoded("SEQUENCE"))
        for d in (first, second)
    ]
    assert sequence[1] == sequence[0] + 3600


def test_folded_notifications_and_vanished_events_render_nothing() -> None:
    state, routed = scene(Kind.VOTES)
    with pytest.raises(ValueError, match="DigestItem"):
        render(replace(routed, digest=True), state, UNSUBSCRIBE, fresh(state))
    gone = replace(routed.notification, event_id="nope")
    assert render(replace(routed, notification=gone), state, UNSUBSCRIBE, fresh(state)) == []


def test_times_are_shown_on_the_recipients_wall_clock() -> None:
    now = T0 // S
    assert local_time(DINNER, "Europe/Paris", now) == "Sat 5 Dec 19:00 CET"
    assert local_time(DINNER, "America/New_York", now) == "Sat 5 Dec 13:00 EST"
    assert local_time(1_782_000_000, "Europe/Paris", now) == "Sun 21 Jun 02:00 CEST"
    assert local_time(DINNER, "Asia/Kolkata", now) == "Sat 5 Dec 23:30 IST"


def test_a_time_in_another_year_than_now_shows_the_year() -> None:
    """Later years and earlier ones; the year is that of the recipient's zone, for the time
    and for now alike."""
    assert local_time(FAR, "UTC", T0 // S) == "Mon 1 Jun 2099 12:00 UTC"
    assert local_time(DINNER, "Europe/Paris", FAR) == "Sat 5 Dec 2026 19:00 CET"
    eve = 1_798_759_800  # 2026-12-31T23:30:00Z
    new_year = eve + 3600  # 2027-01-01T00:30:00Z
    assert local_time(new_year, "UTC", eve) == "Fri 1 Jan 2027 00:30 UTC"
    assert local_time(new_year, "Europe/Paris", eve) == "Fri 1 Jan 01:30 CET"  # 2027 there too
    assert local_time(new_year, "America/New_York", eve) == "Thu 31 Dec 19:30 EST"
    # now is 2027-01-01 08:30 in Tokyo: a year ago there is last year
    assert local_time(eve - 86400 * 365, "Asia/Tokyo", eve) == "Thu 1 Jan 2026 08:30 JST"


def test_an_option_in_another_year_is_labelled_with_its_year() -> None:
    story = Story()
    story.apply("alice", AddTime("e1", FAR), "t3")
    routed = story.routed(Kind.NEW_OPTION, "bob", "t3", "alice", "t3")
    [xmpp] = [
        m
        for m in render(routed, story.state, UNSUBSCRIBE, fresh(story.state))
        if m.channel == "xmpp"
    ]
    assert 'a new time for "Dinner & drinks" (e1): Mon 1 Jun 2099 14:00 CEST' in xmpp.text
    assert "t1 Sat 5 Dec 19:00 CET: " in xmpp.text  # this year's: no year


def test_one_line_collapses_every_kind_of_line_break() -> None:
    assert one_line(" a\r\nb\x0b\x0cc\x85d\u2028e\u2029f\x00g\t ") == "a b c d e f g"


def test_the_environment_is_strict_and_escapes_html_only() -> None:
    env = ENVIRONMENT
    with pytest.raises(UndefinedError):
        env.get_template("line/invited.line.txt.j2").render({})
    assert env.from_string("{{ x }}").render(x="<b>") == "<b>"
    assert env.autoescape("email/x.body.html.j2") is True  # type: ignore[operator]
    assert env.autoescape("email/x.body.txt.j2") is False  # type: ignore[operator]


def test_unsubscribe_urls_carry_the_token_of_their_user() -> None:
    token = unsubscribe_token(b"secret", "bob")
    web = Unsubscribe(b"secret", "https://renga.example.org/unsubscribe/{user}/{token}")
    assert web.headers("bob") == (
        ("List-Unsubscribe", f"<https://renga.example.org/unsubscribe/bob/{token}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )
    for bad in ("http://x.org/{token}", "mailto:x@y.org", "https://x.org/{token}/{other}"):
        with pytest.raises(ValueError, match="unsubscribe URL"):
            Unsubscribe(b"secret", bad)


@pytest.mark.parametrize("kind", [Kind.COMMENT, Kind.DECIDED, Kind.NEW_OPTION])
def test_one_cache_for_many_recipients_renders_what_each_would_get_alone(kind: Kind) -> None:
    """The cache renders a template once per zone when it does not name the recipient, and
    each event's block once per zone: every recipient still gets exactly their own message."""
    state, routed = scene(kind)
    recipients = [
        replace(routed.notification.recipient, user=user, tz=tz)
        for user in ("bob", "carol", "dave")
        for tz in ("Europe/Paris", "America/New_York")
    ]
    shared = RenderCache(ENVIRONMENT, state, T0)
    for recipient in recipients:
        one = replace(routed, notification=replace(routed.notification, recipient=recipient))
        assert render(one, state, UNSUBSCRIBE, shared) == render(
            one, state, UNSUBSCRIBE, fresh(state)
        )


def test_a_cache_kept_past_a_change_renders_the_new_state() -> None:
    story = Story()
    routed = story.routed(Kind.NEW_OPTION, "bob", "p2", "dave", "p2")
    cache = RenderCache(ENVIRONMENT, story.state, T0)
    before = render(routed, story.state, UNSUBSCRIBE, cache)
    story.apply("bob", CastVote("e1", "p2", Choice.YES), "vb")
    after = render(routed, story.state, UNSUBSCRIBE, cache)
    assert after == render(routed, story.state, UNSUBSCRIBE, fresh(story.state))
    assert after != before
    [xmpp] = [message for message in after if message.channel == "xmpp"]
    assert "p2 Le <Train> Bleu: 1 yes" in xmpp.text


def test_a_full_cache_starts_again_and_still_renders_right() -> None:
    state, routed = scene(Kind.COMMENT)
    tiny = RenderCache(ENVIRONMENT, state, T0, views=1, block_chars=10)
    for tz in ("Europe/Paris", "Asia/Tokyo", "Europe/Paris"):
        recipient = replace(routed.notification.recipient, tz=tz)
        one = replace(routed, notification=replace(routed.notification, recipient=recipient))
        assert render(one, state, UNSUBSCRIBE, tiny) == render(
            one, state, UNSUBSCRIBE, fresh(state)
        )


def test_long_lists_of_names_are_cut_short() -> None:
    crowd = [f"user{n:04d}" for n in range(1000)]
    assert names(crowd[:NAMES_SHOWN]) == ", ".join(crowd[:NAMES_SHOWN])
    shown = names(crowd)
    assert shown.startswith("user0000, user0001, ") and shown.endswith(", user0019 and 980 more")
    assert names([], "nobody") == "nobody"
