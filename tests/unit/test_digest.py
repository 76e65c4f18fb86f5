"""Digests (pure): their schedule on the user's wall clock, what one says, and what is held for
each reader until theirs is due."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from herd.api import User
from herd.ops import (
    OPERATOR,
    AddComment,
    AddTime,
    Cancel,
    CastVote,
    Choice,
    CreateEvent,
    Decide,
    DigestSent,
    Invite,
    SetUserField,
    Uninvite,
    UserField,
)
from notifier.digest import DIGEST_AT, DigestItem, compose_digest, next_digest_at
from notifier.held_digests import HeldDigests
from notifier.message import Digest, Kind, Medium, QuietHours, Recipient
from notifier.routing import route
from tests.unit.test_render import (
    DINNER,
    GOLDEN,
    LUNCH,
    UNSUBSCRIBE,
    Story,
    assert_golden,
    fresh,
)

S = 10**9


def at(text: str, tz: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()) * S


def reader(
    digest: Digest = Digest.DAILY,
    tz: str = "Europe/Paris",
    quiet: QuietHours | None = None,
    digest_at: time | None = None,
) -> Recipient:
    return Recipient("bob", "bob@example.org", None, frozenset(), digest, quiet, tz, digest_at)


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * S


# --- schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digest", "after", "expected"),
    [
        (Digest.DAILY, "2026-12-04 07:59", "2026-12-04 08:00"),
        (Digest.DAILY, "2026-12-04 08:00", "2026-12-05 08:00"),  # strictly after
        (Digest.WEEKLY, "2026-12-04 12:00", "2026-12-07 08:00"),  # Friday: next Monday
        (Digest.WEEKLY, "2026-12-07 07:00", "2026-12-07 08:00"),
        (Digest.WEEKLY, "2026-12-07 08:00", "2026-12-14 08:00"),
        # DST starts on Sunday 28 March 2027: 08:00 on the wall clock, an hour earlier in UTC
        (Digest.DAILY, "2027-03-27 09:00", "2027-03-28 08:00"),
        (Digest.WEEKLY, "2027-03-27 09:00", "2027-03-29 08:00"),
        (Digest.DAILY, "2026-10-25 01:00", "2026-10-25 08:00"),  # and on the day it ends
    ],
)
def test_digests_are_due_at_eight_on_the_users_wall_clock(
    digest: Digest, after: str, expected: str
) -> None:
    tz = "Europe/Paris"
    assert next_digest_at(reader(digest, tz), at(after, tz)) == at(expected, tz)


def test_the_eight_oclock_digest_waits_for_the_end_of_quiet_hours() -> None:
    late_riser = reader(tz="Asia/Tokyo", quiet=QuietHours(23 * 60, 9 * 60 + 30))
    after = at("2026-12-04 12:00", "Asia/Tokyo")
    assert next_digest_at(late_riser, after) == at("2026-12-05 09:30", "Asia/Tokyo")


@pytest.mark.parametrize(
    ("tz", "hour", "digest", "after", "expected_utc"),
    [
        ("Europe/Paris", time(19, 30), Digest.DAILY, "2026-12-04 09:00", "2026-12-04 18:30"),
        ("Asia/Tokyo", time(19, 30), Digest.DAILY, "2026-12-04 20:00", "2026-12-05 10:30"),
        ("America/New_York", time(6, 0), Digest.DAILY, "2026-12-04 05:00", "2026-12-04 11:00"),
        ("America/New_York", time(0, 0), Digest.WEEKLY, "2026-12-04 05:00", "2026-12-07 05:00"),
        ("UTC", time(23, 59), Digest.DAILY, "2026-12-04 23:59", "2026-12-05 23:59"),
        # New York's DST starts Sunday 14 March 2027: 19:30 on the wall clock both days
        ("America/New_York", time(19, 30), Digest.DAILY, "2027-03-13 20:00", "2027-03-14 23:30"),
        ("America/New_York", time(19, 30), Digest.DAILY, "2027-03-13 12:00", "2027-03-14 00:30"),
        # 02:30 does not exist in Paris on 28 March 2027: read before the gap, 03:30 CEST
        ("Europe/Paris", time(2, 30), Digest.DAILY, "2027-03-27 12:00", "2027-03-28 01:30"),
        # 02:30 happens twice in Paris on 25 October 2026: the first, still CEST
        ("Europe/Paris", time(2, 30), Digest.DAILY, "2026-10-24 12:00", "2026-10-25 00:30"),
    ],
)
def test_a_users_own_digest_hour_on_their_wall_clock(
    tz: str, hour: time, digest: Digest, after: str, expected_utc: str
) -> None:
    own = reader(digest, tz, digest_at=hour)
    assert next_digest_at(own, at(after, tz)) == utc(expected_utc)
    assert next_digest_at(own, at(after, tz), time(8, 0)) == utc(expected_utc)  # not the herd's


def test_without_an_hour_of_their_own_a_user_gets_the_herds() -> None:
    after = at("2026-12-04 09:00", "Europe/Paris")
    assert next_digest_at(reader(), after, time(21, 15)) == at("2026-12-04 21:15", "Europe/Paris")
    user = User("bob", None, None, ("email",), "daily", None, None, (), None, digest_at="7:30")
    assert Recipient.of(user, "UTC").digest_at is None  # not HH:MM: the herd's, not a crash
    user = replace(user, digest_at="19:05")
    assert Recipient.of(user, "UTC").digest_at == time(19, 5)


PARIS = "Europe/Paris"


@pytest.mark.parametrize(
    ("hour", "last", "after", "expected", "why"),
    [
        # the 08:00 digest went out; moved to 19:30 the same morning: tomorrow's, not a second
        ("19:30", "2026-12-04 08:00", "2026-12-04 09:00", "2026-12-05 19:30", "one a day"),
        # yesterday's 19:30 went out; moved to 07:00 at 10:00 today: today's is due at once
        ("07:00", "2026-12-03 19:30", "2026-12-03 20:00", "2026-12-04 07:00", "not skipped"),
        # moved later on a day that had no digest yet: today at the new hour
        ("21:00", "2026-12-03 08:00", "2026-12-03 09:00", "2026-12-04 21:00", "today"),
        # moved to a later hour the day after a digest: that day's, as usual
        ("19:30", "2026-12-03 08:00", "2026-12-04 09:00", "2026-12-04 19:30", "as usual"),
        # a digest sent just before midnight, hour moved to just after: the next day's is fine
        ("00:05", "2026-12-03 23:59", "2026-12-03 23:59", "2026-12-04 00:05", "next day"),
    ],
)
def test_one_digest_a_day_whatever_hour_the_user_moves_to(
    hour: str, last: str, after: str, expected: str, why: str
) -> None:
    moved = reader(digest_at=time.fromisoformat(hour))
    due = next_digest_at(moved, at(after, PARIS), last_ns=at(last, PARIS))
    assert due == at(expected, PARIS), why


def test_one_a_day_counts_the_day_a_digest_went_out_after_quiet_hours() -> None:
    """23:30 in quiet hours 23:00-01:00: each goes out at 01:00 the next day, every day."""
    owl = reader(quiet=QuietHours(23 * 60, 60), digest_at=time(23, 30))
    first = next_digest_at(owl, at("2026-12-03 12:00", PARIS))
    assert first == at("2026-12-04 01:00", PARIS)
    second = next_digest_at(owl, first, last_ns=first)
    assert second == at("2026-12-05 01:00", PARIS)


def test_no_schedule_without_a_digest() -> None:
    with pytest.raises(ValueError, match="no digest"):
        next_digest_at(reader(Digest.OFF), 0)


# --- composing ------------------------------------------------------------------------------


def digest_story() -> tuple[Story, Recipient]:
    """The dinner story, bob a daily-digest reader by email; nothing folded yet."""
    story = Story()
    story.apply(OPERATOR, SetUserField("bob", UserField.CHANNELS, "email"), "bob-channels")
    story.changes.clear()
    user = story.state.user("bob")
    assert user is not None and user.tz is not None
    return story, Recipient.of(user, user.tz)


def folded(story: Story) -> list[DigestItem]:
    """What routing folded for bob from the story's changes since the last call."""
    items = [
        DigestItem.of(routed)
        for change in story.changes
        for routed in route(change, story.state, story.clock)
        if routed.digest and routed.notification.recipient.user == "bob"
    ]
    story.changes.clear()
    return items


def test_nothing_changed_no_digest() -> None:
    story, bob = digest_story()
    assert (
        compose_digest(bob, story.state, [], story.clock, UNSUBSCRIBE, fresh(story.state)) is None
    )
    story.apply("alice", Decide("e1", "t1", "p1"), "d1")  # urgent: sent at once, not folded
    assert folded(story) == []


def test_a_digest_tells_what_changed_and_where_each_event_stands() -> None:
    story, bob = digest_story()
    story.apply("alice", CreateEvent("Lunch"), "e2")
    story.apply("alice", Invite("e2", ("bob",)), "i2")
    story.apply("alice", AddTime("e2", LUNCH), "t3")
    story.apply("alice", CreateEvent("Picnic"), "e3")
    story.apply("alice", Invite("e3", ("bob",)), "i3")
    story.apply("alice", Cancel("e3"), "x3")  # cancelled: not among "your events now"
    story.changes.clear()
    story.apply("carol", AddTime("e1", DINNER + 3600), "t4")
    story.apply("carol", CastVote("e1", "t4", Choice.YES), "v1")  # to alice, not bob
    story.apply("carol", AddComment("e1", "Or 20:00? <b>later</b> is better"), "c1")
    story.apply("dave", AddComment("e1", "Fine by me"), "c2")
    story.apply("alice", CastVote("e2", "t3", Choice.MAYBE), "v2")
    story.apply("alice", Uninvite("e2", ("bob",)), "u2")
    items = folded(story)
    assert [i.kind for i in items] == [
        Kind.NEW_OPTION,
        Kind.COMMENT,
        Kind.COMMENT,
        Kind.UNINVITED,
    ]
    digest = compose_digest(
        bob,
        story.state,
        items + items[:1],
        story.clock,
        UNSUBSCRIBE,
        fresh(story.state),
    )
    assert digest is not None
    assert (digest.channel, digest.recipient, digest.thread) == ("email", "bob@example.org", None)
    assert digest.key.startswith("digest-") and digest.key.endswith(".email")
    assert digest.headers == UNSUBSCRIBE.headers("bob")
    for part, text in (
        ("subject.txt", digest.subject),
        ("body.txt", digest.text),
        ("body.html", digest.html),
    ):
        assert text is not None
        assert_golden(GOLDEN / "email" / f"digest.{part}", text)
    again = compose_digest(
        bob,
        story.state,
        list(reversed(items)),
        story.clock,
        UNSUBSCRIBE,
        fresh(story.state),
    )
    assert again is not None and again.key == digest.key  # same items, same key
    fewer = compose_digest(
        bob, story.state, items[:2], story.clock, UNSUBSCRIBE, fresh(story.state)
    )
    assert fewer is not None and fewer.key != digest.key


def test_votes_fold_into_one_line_per_event() -> None:
    story, bob = digest_story()
    votes = [
        DigestItem(f"n{i}", Kind.VOTES, "e1", voter, "t1", f"v{i}", story.clock + i)
        for i, voter in enumerate(("carol", "dave", "carol"))
    ]
    digest = compose_digest(bob, story.state, votes, story.clock, UNSUBSCRIBE, fresh(story.state))
    assert digest is not None
    assert "  - 3 votes from carol, dave\n" in digest.text
    assert digest.text.count("votes from") == 1


def test_items_about_vanished_things_are_left_out() -> None:
    story, bob = digest_story()
    ghosts = [
        DigestItem("n1", Kind.COMMENT, "e1", "carol", None, "no-such-comment", 1),
        DigestItem("n2", Kind.NEW_OPTION, "e1", "carol", "no-such-option", "x", 2),
        DigestItem("n3", Kind.COMMENT, "no-such-event", "carol", None, "c", 3),
        DigestItem("n4", Kind.DECIDED, "e1", "alice", None, "d", 4),  # never folded
    ]
    assert (
        compose_digest(bob, story.state, ghosts, story.clock, UNSUBSCRIBE, fresh(story.state))
        is None
    )


def test_a_reader_who_dropped_email_gets_the_digest_by_chat_or_not_at_all() -> None:
    story, bob = digest_story()
    story.apply("carol", AddComment("e1", "hello"), "c1")
    items = folded(story)
    by_chat = replace(bob, email=None, channels=frozenset({Medium.XMPP}))
    digest = compose_digest(
        by_chat, story.state, items, story.clock, UNSUBSCRIBE, fresh(story.state)
    )
    assert digest is not None
    assert (digest.channel, digest.recipient, digest.subject) == (
        "xmpp",
        "bob@chat.example.org",
        "",
    )
    assert_golden(GOLDEN / "xmpp" / "digest.body.txt", digest.text)
    unreachable = replace(bob, email=None)
    assert (
        compose_digest(
            unreachable,
            story.state,
            items,
            story.clock,
            UNSUBSCRIBE,
            fresh(story.state),
        )
        is None
    )


# --- held until due -------------------------------------------------------------------------


def held_for_bob() -> tuple[Story, HeldDigests, list[DigestItem]]:
    """The dinner story's folded items held for bob (Paris, daily), none sent yet."""
    story, _ = digest_story()
    story.apply("carol", AddComment("e1", "Count me in"), "c9")
    story.apply("dave", AddComment("e1", "Me too"), "c10")
    items = folded(story)
    assert len({item.at_ns for item in items}) == 2
    held = HeldDigests(story.state, zone_of, DIGEST_AT, {}, {})
    assert all(held.hold("bob", item) for item in items)
    return story, held, items


def zone_of(user: User) -> str:
    return user.tz or "UTC"


def test_held_items_wait_for_the_digest_hour_and_count_as_sent_once_taken() -> None:
    _, held, items = held_for_bob()
    eight = at("2026-12-05 08:00", "Europe/Paris")  # the first 08:00 after the items
    assert held.take_due("bob", eight - 1) is None
    due = held.take_due("bob", eight)
    assert due is not None
    recipient, covered = due
    assert recipient.user == "bob" and sorted(covered, key=str) == sorted(items, key=str)
    assert held.take_due("bob", eight + 60 * S) is None  # made now: the next is tomorrow's
    assert held.take_due("bob", at("2026-12-06 08:00", "Europe/Paris")) is not None


def test_an_item_is_held_once() -> None:
    _, held, items = held_for_bob()
    assert not held.hold("bob", items[0])


def test_a_digest_op_drops_what_it_covered() -> None:
    story, held, items = held_for_bob()
    newest = max(item.at_ns for item in items)
    story.apply(OPERATOR, DigestSent("bob", newest), "d1")
    assert sorted(held.drop_covered(["bob", "carol"])) == sorted(("bob", i.id) for i in items)
    assert held.take_due("bob", at("2026-12-09 08:00", "Europe/Paris")) is None
    assert held.maybe_due(at("2026-12-09 08:00", "Europe/Paris"), lambda user: True) == []


def test_saved_items_a_digest_op_covered_are_not_held_again() -> None:
    story, _, items = held_for_bob()
    oldest = min(item.at_ns for item in items)
    story.apply(OPERATOR, DigestSent("bob", oldest), "d1")
    saved = {"bob": {item.id: item for item in items}}
    held = HeldDigests(story.state, zone_of, DIGEST_AT, saved, {})
    due = held.take_due("bob", at("2026-12-06 08:00", "Europe/Paris"))
    assert due is not None
    assert {item.id for item in due[1]} == {i.id for i in items if i.at_ns > oldest} != set()


def test_who_may_be_due_is_asked_of_the_duties_and_goes_by_zone() -> None:
    _, held, items = held_for_bob()
    for item in items:
        held.hold("alice", item)
    later = at("2026-12-09 08:00", "Europe/Paris")
    assert held.maybe_due(later, lambda user: True) == ["alice", "bob"]  # New York < Paris
    assert held.maybe_due(later, lambda user: user == "bob") == ["bob"]


def test_a_moved_digest_hour_gives_one_digest_a_day_neither_two_nor_none() -> None:
    story, held, _ = held_for_bob()
    eight = at("2026-12-05 08:00", PARIS)
    assert held.take_due("bob", eight) is not None  # the 08:00 digest of the 5th
    story.apply("dave", AddComment("e1", "See you"), "c11")
    for item in folded(story):
        held.hold("bob", item)
    story.apply("bob", SetUserField("bob", UserField.DIGEST_AT, "19:30"), "bob-1930")
    held.reschedule("bob")
    assert held.take_due("bob", at("2026-12-05 19:30", PARIS)) is None  # not twice on the 5th
    assert held.take_due("bob", at("2026-12-06 19:29", PARIS)) is None
    assert held.take_due("bob", at("2026-12-06 19:30", PARIS)) is not None  # the 6th's
    story.apply("carol", AddComment("e1", "Late"), "c12")
    for item in folded(story):
        held.hold("bob", item)
    story.apply("bob", SetUserField("bob", UserField.DIGEST_AT, "07:00"), "bob-0700")
    held.reschedule("bob")
    ten = at("2026-12-07 10:00", PARIS)
    assert held.take_due("bob", ten) is not None  # 07:00 passed with none on the 7th: now


def test_items_held_for_a_user_who_turned_digests_off_go_out_daily() -> None:
    story, held, _ = held_for_bob()
    story.apply(OPERATOR, SetUserField("bob", UserField.DIGEST, "off"), "bob-off")
    held.reschedule("bob")
    due = held.take_due("bob", at("2026-12-05 08:00", "Europe/Paris"))
    assert due is not None and due[0].digest is Digest.DAILY
