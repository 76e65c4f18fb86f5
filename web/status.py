"""The operator's figures of one herd server (pure): what the status page and `/metrics` show
(docs/web.md, "Operator status and /metrics"), and the small interface through which the
wiring hands them in (`StatusSource`), so the web reads nothing of the herd's insides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["OUTBOX_STATES", "PeerLink", "ServerEntry", "StatusFigures", "StatusSource"]

OUTBOX_STATES: Final = ("pending", "sending", "dead")
"""The outbox rows counted: waiting for delivery (or a retry), being delivered, given up on."""


@dataclass(frozen=True, slots=True)
class PeerLink:
    """One configured link of this server: its peer and the link's state (`syncing`,
    `flooding`: up; `down`: not connected now)."""

    peer: str
    state: str

    @property
    def up(self) -> bool:
        return self.state != "down"


@dataclass(frozen=True, slots=True)
class ServerEntry:
    """A server of the herd as this server sees it: itself, a neighbour (with its link) or a
    server it reaches only through others."""

    name: str
    relation: str  # "this server", "neighbour", "through others"
    link: PeerLink | None


@dataclass(frozen=True, slots=True)
class StatusFigures:
    """Everything the status page and `/metrics` show, read at one moment."""

    server: str
    servers: tuple[ServerEntry, ...]
    links: tuple[PeerLink, ...]
    outbox: Mapping[tuple[str, str], int]  # (channel, state) -> rows, for every channel
    channels: tuple[str, ...]
    line_connections: int
    web_streams: int | None  # None: the server has no live streams to count
    uptime_seconds: float
    ops_stored: int
    outbox_error: str | None = None  # why the outbox could not be read, if it could not

    def outbox_rows(self, channel: str, state: str) -> int:
        return self.outbox.get((channel, state), 0)


class StatusSource(Protocol):
    """What the wiring passes to the status listener."""

    def refresh(self) -> Deferred[None]:
        """Read the figures that need I/O (the outbox's counts, off the reactor); fires once
        they are current.  Calls while one is running share it."""
        ...

    def figures(self) -> StatusFigures:
        """The figures now, from memory (the outbox's as of the last `refresh`)."""
        ...
