"""The notifier's pure types: who is told (`Recipient`), what (`Notification` of a `Kind`), how
routing placed it (`Routed`), and the rendered message a channel sends (`Outgoing`).

A notification's id is a hash of what caused it, whom it is for and its kind, so every retry and
every replica that routes the same change computes the same id: the outbox's idempotency key is
that id plus the channel, and a repeat is ignored.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Final

from herd.api import User

__all__ = [
    "FOLDABLE",
    "URGENT",
    "Attachment",
    "Digest",
    "Kind",
    "Medium",
    "Notification",
    "Outgoing",
    "QuietHours",
    "Recipient",
    "Routed",
    "notification_id",
]


class Kind(StrEnum):
    """What a notification says; the value names its templates (`<channel>/<kind>.<part>.j2`)."""

    INVITED = "invited"
    UNINVITED = "uninvited"
    NEW_OPTION = "new_option"
    VOTES = "votes"  # votes coming in, to the organiser: one message with the current tally
    QUORUM = "quorum"  # a time has YES from a majority of the participants
    COMMENT = "comment"
    DECIDED = "decided"
    CHANGED = "changed"  # reopened after being decided (or cancelled): nothing is fixed now
    CANCELLED = "cancelled"
    REMINDER = "reminder"  # before a decided event
    NUDGE = "nudge"  # to invitees who have not voted, before the earliest proposed time


URGENT: Final = frozenset(
    {
        Kind.INVITED,
        Kind.QUORUM,
        Kind.DECIDED,
        Kind.CHANGED,
        Kind.CANCELLED,
        Kind.REMINDER,
        Kind.NUDGE,
    }
)
"""Never folded into a digest: each changes where someone will be, asks them to act, or is
bound to a time that a digest could miss."""

FOLDABLE: Final = frozenset(Kind) - URGENT
"""Progress a digest reader can learn about later: new options, votes, comments, removals."""


class Medium(StrEnum):
    """The delivery channels, by the names users choose in `USER SET channels`."""

    EMAIL = "email"
    LINE = "line"
    XMPP = "xmpp"


class Digest(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    OFF = "off"


_QUIET: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])\Z")


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily span of local wall-clock time, in minutes after midnight; `start > end` spans
    midnight (`22:00-07:00`)."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str | None) -> QuietHours | None:
        """`HH:MM-HH:MM`; None when unset or malformed (a peer's op is not validated as a
        command is, and a bad value must not stop notifications)."""
        match = _QUIET.match(text or "")
        if match is None:
            return None
        hour, minute, end_hour, end_minute = map(int, match.groups())
        start, end = hour * 60 + minute, end_hour * 60 + end_minute
        return None if start == end else cls(start, end)

    def contains(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def end_after(self, local: datetime) -> datetime:
        """The first end of quiet hours at or after `local` (aware), as an aware local time.
        An end inside a DST gap resolves to just after it (zoneinfo's fold=0 reading)."""
        end = time(self.end // 60, self.end % 60)
        day = local.date()
        if local.hour * 60 + local.minute >= self.end:
            day += timedelta(days=1)
        return datetime.combine(day, end, tzinfo=local.tzinfo)


@dataclass(frozen=True, slots=True)
class Recipient:
    """A user as the notifier needs them: addresses, preferences and effective time zone."""

    user: str
    email: str | None
    jid: str | None
    channels: frozenset[Medium]
    digest: Digest
    quiet: QuietHours | None
    tz: str
    digest_at: time | None = None  # their own digest hour (local); None: the herd's

    @classmethod
    def of(cls, user: User, tz: str) -> Recipient:
        """From the merged user and their effective zone (set, or from their position).
        Unknown channel names, digest values and zones fall back to safe defaults."""
        return cls(
            user=user.id,
            email=user.email,
            jid=user.jid,
            channels=_channels(user.channels),
            digest=_DIGESTS.get(user.digest, Digest.DAILY),
            quiet=_quiet(user.quiet),
            tz=tz if _is_zone(tz) else "UTC",
            digest_at=_clock_time(user.digest_at),
        )

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.tz)

    @property
    def by_email(self) -> bool:
        return Medium.EMAIL in self.channels and bool(self.email)

    @property
    def by_xmpp(self) -> bool:
        return Medium.XMPP in self.channels and bool(self.jid)

    def out_of_quiet(self, at_ns: int) -> int:
        """`at_ns`, or the end of quiet hours (in the user's zone) if it falls inside them."""
        if self.quiet is None:
            return at_ns
        local = datetime.fromtimestamp(at_ns // 10**9, self.zone)
        if not self.quiet.contains(local):
            return at_ns
        return max(at_ns, int(self.quiet.end_after(local).timestamp()) * 10**9)


_MEDIA: Final = {medium.value: medium for medium in Medium}
_DIGESTS: Final = {digest.value: digest for digest in Digest}

# A change to an event of n people builds n recipients out of a few distinct settings.


@functools.lru_cache(maxsize=1024)
def _is_zone(tz: str) -> bool:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _channels(names: tuple[str, ...]) -> frozenset[Medium]:
    return frozenset(_MEDIA[name] for name in names if name in _MEDIA)


@functools.lru_cache(maxsize=1024)
def _quiet(text: str | None) -> QuietHours | None:
    return QuietHours.parse(text)


_CLOCK_TIME: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])\Z")


def _clock_time(text: str | None) -> time | None:
    """A user's `HH:MM` digest hour; None (the herd's hour) when unset or not of that form
    (the rules check it, but a bad value must not stop the digest)."""
    match = _CLOCK_TIME.match(text or "")
    return None if match is None else time(int(match[1]), int(match[2]))


def notification_id(cause: str, user: str, kind: Kind) -> str:
    """Deterministic: 32 hex digits of SHA-256 over the cause (an op id, or what a time-driven
    notification is about), the recipient and the kind."""
    digest = hashlib.sha256(f"{cause}\n{user}\n{kind.value}".encode()).hexdigest()
    return digest[:32]


@dataclass(frozen=True, slots=True)
class Notification:
    """One thing to tell one user about one event.  `option_id` is the option it is about
    (new, voted on, at quorum, decided time for reminders, earliest time for nudges);
    `at_ns` is when its cause happened."""

    id: str
    kind: Kind
    recipient: Recipient
    event_id: str
    cause: str
    actor: str | None
    option_id: str | None
    at_ns: int


@dataclass(frozen=True, slots=True)
class Routed:
    """Where and when a notification goes.  `digest`: folded into the next digest instead of
    sent (then `deliver_at` is that digest's time).  `coalesce`: pending messages with the same
    key (and channel) are replaced by the newer rendering rather than joined by it."""

    notification: Notification
    channels: tuple[Medium, ...]
    deliver_at: int
    digest: bool = False
    coalesce: str | None = None


# --- what a channel sends -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file sent along with an email, e.g. `invite.ics` as `text/calendar; method=REQUEST`."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One rendered message for one recipient on one channel."""

    key: str  # idempotency key: notification id + channel; unique in the outbox
    channel: str  # "email" | "xmpp" | "line"
    recipient: str  # email address / JID / user id
    subject: str  # email only ("" otherwise)
    text: str
    html: str | None = None
    thread: str | None = None  # e.g. an event id: mails about one event thread together
    headers: tuple[tuple[str, str], ...] = ()  # e.g. List-Unsubscribe
    attachments: tuple[Attachment, ...] = ()
