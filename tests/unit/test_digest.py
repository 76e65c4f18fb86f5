"""Digests (pure): their schedule on the user's wall clock, what one says, and what is held for
each reader until theirs is due."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
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
    digest: Digest = Digest.DAILY, tz: str = "Europe/Paris", quiet: QuietHours | None = None
) -> Recipient:
    return Recipient("bob", "bob@example.org", None, frozenset(), digest, quiet, tz)


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


def test_items_held_for_a_user_who_turned_digests_off_go_out_daily() -> None:
    story, held, _ = held_for_bob()
    story.apply(OPERATOR, SetUserField("bob", UserField.DIGEST, "off"), "bob-off")
    held.reschedule("bob")
    due = held.take_due("bob", at("2026-12-05 08:00", "Europe/Paris"))
    assert due is not None and due[0].digest is Digest.DAILY
