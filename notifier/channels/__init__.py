"""The one small interface every delivery channel implements.

The outbox knows channels only through `Channel`: it hands over one rendered `Outgoing` at a time
and learns from the failure type whether to retry later (`TransientDeliveryError`) or give up and
keep a dead letter (`PermanentDeliveryError`).  Each channel lives in its own module and is put
into the outbox's registry (`dict[str, Channel]`) explicitly by the wiring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred


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


class Channel(Protocol):
    """A way to reach people.  `deliver` fails only with a `notifier.errors.DeliveryError`."""

    name: str

    def deliver(self, message: Outgoing) -> Deferred[None]: ...

    def close(self) -> Deferred[None]: ...
