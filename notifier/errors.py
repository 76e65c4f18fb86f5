"""The notifier's errors: every failure the notifier reports on purpose derives from
`NotifierError`; a delivery failure says by its type whether to retry, and carries what the far
side answered (an SMTP reply code, enhanced status and text) as attributes, not only in its message.
"""

from __future__ import annotations


class NotifierError(Exception):
    """Root of the errors the notifier raises on purpose."""


class DeliveryError(NotifierError):
    """A delivery failed; the subclass says whether trying again can help.

    The message is what the outbox records (`last_error`). When the failure was an SMTP reply,
    `code` is its reply code (e.g. 550), `enhanced_status` its RFC 3463 status if it gave one
    (e.g. "5.1.1") and `server_message` its text; otherwise they are None.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        enhanced_status: str | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.enhanced_status = enhanced_status
        self.server_message = server_message


class TransientDeliveryError(DeliveryError):
    """Try again later: server down, SMTP 4xx, timeout, disconnect."""


class UncertainDeliveryError(TransientDeliveryError):
    """The attempt failed after the message may already have been delivered (the connection
    dropped after the data went out): try again, and count the delivery a possible duplicate."""


class PermanentDeliveryError(DeliveryError):
    """Trying again cannot help (SMTP 5xx, unknown recipient, unusable message): dead letter."""
