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


class Channel(Protocol):
    """A way to reach people.  `deliver` fails only with a `notifier.errors.DeliveryError`."""

    name: str

    def deliver(self, message: Outgoing) -> Deferred[None]: ...

    def close(self) -> Deferred[None]: ...
