"""The change feed: what an applied op changed (`Change`), and the listeners told of it with what
they may use (`ChangeContext`: a read-only view of the state, a durable write in the change's
transaction, whether the change was accepted here), so the notifier follows the herd without the
core importing it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import sqlite3

    from herd.ops import Op
    from herd.views import Event, User

DurableWrite = Callable[["sqlite3.Connection"], None]
"""Work run on the store's thread inside the transaction that commits the changes added with
it: done together with them, or not at all."""


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


def op_server(op_id: str) -> str:
    """The server that accepted an op: its id is `<server>.<store instance>.<n>` (a server name
    may hold dots, the other two parts do not)."""
    return op_id.rsplit(".", 2)[0]


class StateView(Protocol):
    """What a listener may read of the planning state (`PlanningState` is one); it never
    changes the state: only ops do."""

    def user(self, user_id: str) -> User | None: ...

    def users(self) -> list[str]: ...

    def user_of_jid(self, jid: str) -> str | None: ...

    def event(self, event_id: str) -> Event | None: ...

    def event_ids(self) -> list[str]: ...

    def events_of(self, user_id: str) -> list[Event]: ...

    def digest_sent(self, user_id: str) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class ChangeContext:
    """What a listener is told along with each change: the state as the change left it, how to
    add a durable write to the change's own transaction (the change and the write commit
    together or not at all), and whether this server accepted the op (a client's line or its
    own record) rather than applied it from a peer."""

    state: StateView
    add_write: Callable[[DurableWrite], None]
    accepted_here: bool


class ChangeListener(Protocol):
    def changed(self, change: Change, context: ChangeContext) -> None: ...


class ChangeFeed:
    """Listeners of applied changes, so the notifier can subscribe without the core importing
    it.  The server publishes each op's changes once the op is added to the store's open
    transaction, so a listener's writes join it."""

    def __init__(self, state: StateView, add_write: Callable[[DurableWrite], None]) -> None:
        self._listeners: list[ChangeListener] = []
        self._accepted = ChangeContext(state, add_write, accepted_here=True)
        self._from_peer = ChangeContext(state, add_write, accepted_here=False)

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: ChangeListener) -> None:
        self._listeners.remove(listener)

    def publish(self, changes: list[Change], *, accepted_here: bool) -> None:
        context = self._accepted if accepted_here else self._from_peer
        for change in changes:
            for listener in tuple(self._listeners):
                listener.changed(change, context)
