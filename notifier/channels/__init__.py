"""The one small interface every delivery channel implements.

The outbox knows channels only through `Channel`: it hands over one rendered `Outgoing` at a time
and learns from the failure type whether to retry later (`TransientDeliveryError`) or give up and
keep a dead letter (`PermanentDeliveryError`).  Each channel lives in its own module and is put
into the outbox's registry (`dict[str, Channel]`) explicitly by the wiring.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred

from notifier.message import Outgoing


class DeliveryError(Exception):
    """A delivery failed; the subclass says whether trying again can help."""


class TransientDeliveryError(DeliveryError):
    """Try again later: server down, SMTP 4xx, timeout, disconnect."""


class UncertainDeliveryError(TransientDeliveryError):
    """The attempt failed after the message may already have been delivered (the connection
    dropped after the data went out): try again, and count the delivery a possible duplicate."""


class PermanentDeliveryError(DeliveryError):
    """Trying again cannot help (SMTP 5xx, unknown recipient, unusable message): dead letter."""


class Channel(Protocol):
    """A way to reach people.  `deliver` fails only with one of the two errors above."""

    name: str

    def deliver(self, message: Outgoing) -> Deferred[None]: ...

    def close(self) -> Deferred[None]: ...
