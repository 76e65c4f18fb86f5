"""The change feed: what an applied op changed (`Change`), and the listeners told of it, so the
notifier can follow the herd without the core importing it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from herd.events import Op


class ChangeKind(StrEnum):
    USER_ADDED = "user_added"
    USER_UPDATED = "user_updated"
    CREATED = "created"
    INVITED = "invited"
    UNINVITED = "uninvited"
    OPTION_ADDED = "option_added"
    VOTED = "voted"
    COMMENTED = "commented"
    DECIDED = "decided"
    REOPENED = "reopened"
    CANCELLED = "cancelled"
    DIGEST_SENT = "digest_sent"


@dataclass(frozen=True, slots=True)
class Change:
    """One applied op, as the notification layer needs it: what changed (`kind`, `event_id`
    or None for user changes, the `op` itself) and for whom (`users`: the event's participants
    after the change plus anyone it removed, or the users a user op touched; sorted)."""

    kind: ChangeKind
    event_id: str | None
    users: tuple[str, ...]
    op: Op


class ChangeListener(Protocol):
    def changed(self, change: Change) -> None: ...


class ChangeFeed:
    """Listeners of applied changes, so the notifier can subscribe without the core importing
    it.  The wiring publishes after the op is durable."""

    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: ChangeListener) -> None:
        self._listeners.remove(listener)

    def publish(self, changes: list[Change]) -> None:
        for change in changes:
            for listener in tuple(self._listeners):
                listener.changed(change)
