"""The notifier's errors: every failure the notifier reports on purpose derives from
`NotifierError`; a delivery failure says whether to retry and what the far side answered.
"""

from __future__ import annotations


class NotifierError(Exception):
    """Root of the errors the notifier raises on purpose."""


class DeliveryError(NotifierError):
    """A delivery failed; the subclass says whether trying again can help."""


class TransientDeliveryError(DeliveryError):
    """Try again later: server down, SMTP 4xx, timeout, disconnect."""


class UncertainDeliveryError(TransientDeliveryError):
    """The attempt failed after the message may already have been delivered (the connection
    dropped after the data went out): try again, and count the delivery a possible duplicate."""


class PermanentDeliveryError(DeliveryError):
    """Trying again cannot help (SMTP 5xx, unknown recipient, unusable message): dead letter."""
