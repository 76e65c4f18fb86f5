"""Who is told what, on which channel, and when: pure functions of a change (or the clock), the
merged planning state and the recipients' preferences.

Change-driven (`route`, called for each change of the change feed):

| change      | kind        | who                                   |
|-------------|-------------|---------------------------------------|
| invited     | INVITED     | the users the op invited              |
| uninvited   | UNINVITED   | the users the op removed              |
| option      | NEW_OPTION  | every participant                     |
| voted       | VOTES       | the organiser (coalesced per event)   |
|             | QUORUM      | the organiser, instead, when this YES |
|             |             | gives a time its first majority       |
| commented   | COMMENT     | every participant                     |
| decided     | DECIDED     | every participant                     |
| reopened    | CHANGED     | every participant                     |
| cancelled   | CANCELLED   | every participant                     |

The actor of a change is never told about it.  Time-driven (`due_reminders`, called by a
periodic loop): REMINDER to the participants who did not vote NO on the decided time, a day
before it; NUDGE to invitees who have not voted at all, two days before the earliest time still
ahead.

Channels: a user's personal channel is XMPP while they are online there and not busy, else
email, else XMPP (the server keeps chat messages for offline users).  The line protocol is a
feed the user subscribed to (`line` in their channels): it gets every notification at once, is
never folded into a digest and ignores quiet hours, because a program reads it, not a person
woken up.  The personal channel keeps quiet hours (delivery waits until they end, in the
user's zone), and for digest readers it carries only `URGENT` kinds: the rest is folded into
the digest, which is an email.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import time
from typing import Final

from herd.api import (
    AddComment,
    AddPlace,
    AddTime,
    CastVote,
    Change,
    ChangeKind,
    Choice,
    Event,
    Invite,
    StateView,
    Status,
    Uninvite,
    User,
)
from notifier.digest import DIGEST_AT, next_digest_at
from notifier.message import (
    URGENT,
    Digest,
    Kind,
    Medium,
    Notification,
    Recipient,
    Routed,
    notification_id,
)

__all__ = [
    "COALESCE_WINDOW_NS",
    "NUDGE_LEAD_NS",
    "REMINDER_LEAD_NS",
    "Presence",
    "Timing",
    "Watching",
    "ZoneOf",
    "due_reminders",
    "nobody_watching",
    "offline",
    "route",
    "utc_unless_set",
]

SECOND: Final = 10**9
COALESCE_WINDOW_NS: Final = 60 * SECOND
"""A coalesced message waits this long for later ones to replace it."""
REMINDER_LEAD_NS: Final = 24 * 3600 * SECOND
NUDGE_LEAD_NS: Final = 48 * 3600 * SECOND

Presence = Callable[[str], str | None]
"""A bare JID's XMPP presence: None when offline or unknown, else its show value
(`""` or `"available"`, `"chat"`, `"away"`, `"xa"`, `"dnd"`)."""

Watching = Callable[[str, str], bool]
"""Whether a user (first) has an event (second) open live on this server: the web's live streams
tell it, through the wiring (the notifier does not import the web)."""

ZoneOf = Callable[[User], str]
"""A user's effective IANA zone; the wiring passes `timezone_of(user.tz, position_of(user.id))`."""


@dataclass(frozen=True, slots=True)
class Timing:
    """The operator's `[notifications]` times: the coalescing window and the digest hour."""

    coalesce_ns: int = COALESCE_WINDOW_NS
    digest_at: time = DIGEST_AT


_ONLINE: Final = frozenset({"", "available", "chat"})
_COALESCED: Final = frozenset({Kind.VOTES})


def offline(jid: str) -> str | None:
    """The presence of everyone when nobody tracks it."""
    return None


def nobody_watching(user: str, event_id: str) -> bool:
    """Nobody watches a page live where no web runs."""
    return False


def utc_unless_set(user: User) -> str:
    """The zone a user set, else UTC (for callers that know no positions)."""
    return user.tz or "UTC"


def route(
    change: Change,
    state: StateView,
    now_ns: int,
    presence: Presence = offline,
    *,
    zone_of: ZoneOf = utc_unless_set,
    timing: Timing = Timing(),
) -> list[Routed]:
    """The notifications one applied change causes, placed on channels and in time."""
    event = None if change.event_id is None else state.event(change.event_id)
    if event is None:
        return []
    op = change.op
    targets: list[tuple[Kind, str, str | None, str]] = []  # kind, user, option id, cause
    match change.kind, op.body:
        case ChangeKind.INVITED, Invite(users=users):
            targets = [(Kind.INVITED, u, None, op.op_id) for u in users if u in event.invitees]
        case ChangeKind.UNINVITED, Uninvite(users=users):
            gone = [u for u in users if u not in event.participants]
            targets = [(Kind.UNINVITED, u, None, op.op_id) for u in gone]
        case ChangeKind.OPTION_ADDED, AddTime() | AddPlace():
            targets = _everyone(event, Kind.NEW_OPTION, op.op_id, op.op_id)
        case ChangeKind.VOTED, CastVote(option=option, choice=choice):
            if op.actor in event.participants:
                if choice is Choice.YES and _reaches_quorum(event, option):
                    targets = [(Kind.QUORUM, event.organiser, option, f"{event.id}/{option}")]
                else:
                    targets = [(Kind.VOTES, event.organiser, option, op.op_id)]
        case ChangeKind.COMMENTED, AddComment():
            targets = _everyone(event, Kind.COMMENT, None, op.op_id)
        case ChangeKind.DECIDED, _:
            targets = _everyone(event, Kind.DECIDED, None, op.op_id)
        case ChangeKind.REOPENED, _:
            targets = _everyone(event, Kind.CHANGED, None, op.op_id)
        case ChangeKind.CANCELLED, _:
            targets = _everyone(event, Kind.CANCELLED, None, op.op_id)
    routed: list[Routed] = []
    for kind, user_id, option_id, cause in targets:
        user = state.user(user_id)
        if user is None or user_id == op.actor:
            continue
        recipient = Recipient.of(user, zone_of(user))
        notification = Notification(
            notification_id(cause, user_id, kind),
            kind,
            recipient,
            event.id,
            cause,
            op.actor,
            option_id,
            op.time_ns,
        )
        routed.extend(_place(notification, now_ns, presence, timing))
    return routed


def _everyone(
    event: Event, kind: Kind, option_id: str | None, cause: str
) -> list[tuple[Kind, str, str | None, str]]:
    return [(kind, user, option_id, cause) for user in sorted(event.participants)]


def _has_quorum(event: Event, option_id: str) -> bool:
    """YES from a strict majority of the participants (organiser included)."""
    return len(event.tally(option_id)[Choice.YES]) > len(event.participants) // 2


def _reaches_quorum(event: Event, option_id: str) -> bool:
    """Whether a YES just cast on `option_id` gave the event its first time with a quorum: the
    option has one now, would not have without that YES, and no other time has one.  Its id
    is keyed on the option, so a repeated YES cannot announce it twice."""
    if event.time(option_id) is None or not _has_quorum(event, option_id):
        return False
    yes = len(event.tally(option_id)[Choice.YES])
    if yes - 1 > len(event.participants) // 2:
        return False
    return not any(_has_quorum(event, t.id) for t in event.times if t.id != option_id)


def _place(
    notification: Notification, now_ns: int, presence: Presence, timing: Timing
) -> Iterator[Routed]:
    """The Routed of one notification: the personal channel (if any) and the line feed."""
    recipient, kind = notification.recipient, notification.kind
    coalesce = f"{kind}/{notification.event_id}/{recipient.user}" if kind in _COALESCED else None
    personal = _personal_channel(recipient, presence)
    if personal is not None:
        if kind not in URGENT and recipient.digest is not Digest.OFF and recipient.by_email:
            yield Routed(
                notification,
                (Medium.EMAIL,),
                next_digest_at(recipient, now_ns, timing.digest_at),
                digest=True,
            )
        else:
            wait = timing.coalesce_ns if coalesce is not None else 0
            at = recipient.out_of_quiet(now_ns + wait)
            yield Routed(notification, (personal,), at, coalesce=coalesce)
    if Medium.LINE in recipient.channels:
        wait = timing.coalesce_ns if coalesce is not None else 0
        yield Routed(notification, (Medium.LINE,), now_ns + wait, coalesce=coalesce)


def _personal_channel(recipient: Recipient, presence: Presence) -> Medium | None:
    if recipient.by_xmpp:
        assert recipient.jid is not None
        if presence(recipient.jid) in _ONLINE:
            return Medium.XMPP
    if recipient.by_email:
        return Medium.EMAIL
    return Medium.XMPP if recipient.by_xmpp else None


def due_reminders(
    state: StateView,
    now_ns: int,
    last_run_ns: int,
    presence: Presence = offline,
    *,
    zone_of: ZoneOf = utc_unless_set,
    timing: Timing = Timing(),
) -> list[Routed]:
    """The reminders and nudges that fell due in `(last_run_ns, now_ns]`.  Their ids are keyed
    on the event and option, so overlapping runs repeat only what the outbox ignores.  One that
    quiet hours would hold past the time it is about is dropped: it could only arrive late."""
    routed: list[Routed] = []
    for event in _all_events(state):
        for kind, users, option_id, starts in _time_driven(event, now_ns):
            due = starts * SECOND - (REMINDER_LEAD_NS if kind is Kind.REMINDER else NUDGE_LEAD_NS)
            if not last_run_ns < due <= now_ns < starts * SECOND:
                continue
            cause = f"{event.id}/{option_id}@{starts}"
            for user_id in users:
                user = state.user(user_id)
                if user is None:
                    continue
                recipient = Recipient.of(user, zone_of(user))
                notification = Notification(
                    notification_id(cause, user_id, kind),
                    kind,
                    recipient,
                    event.id,
                    cause,
                    None,
                    option_id,
                    due,
                )
                routed.extend(
                    r
                    for r in _place(notification, now_ns, presence, timing)
                    if r.deliver_at < starts * SECOND
                )
    return routed


def _all_events(state: StateView) -> list[Event]:
    events = (state.event(event_id) for event_id in state.event_ids())
    return [event for event in events if event is not None]


def _time_driven(event: Event, now_ns: int) -> Iterator[tuple[Kind, list[str], str, int]]:
    """(kind, recipients, option id, the option's time) of the event's reminder or nudge."""
    if event.status is Status.DECIDED and event.decision is not None:
        time = event.time(event.decision[0])
        if time is not None:
            refused = event.tally(time.id)[Choice.NO]
            users = [u for u in sorted(event.participants) if u not in refused]
            yield Kind.REMINDER, users, time.id, time.at
    elif event.status is Status.PLANNING:
        ahead = [t for t in event.times if t.at * SECOND > now_ns]
        voted = {voter for votes in event.votes.values() for voter in votes}
        silent = [u for u in event.invitees if u not in voted]
        if ahead and silent:
            earliest = min(ahead, key=lambda t: (t.at, t.stamp))
            yield Kind.NUDGE, silent, earliest.id, earliest.at
