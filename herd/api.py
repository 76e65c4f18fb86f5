"""The herd's public interface for the notifier and the web: the listener interface the
herd defines (`ChangeListener`, told a `Change` with a `ChangeContext`), the read-only views of the
planning state and the few names a listener needs.  No notifier module imports another herd
module (but `herd.config`, for the wiring: `tests/unit/test_import_graph.py`); everything here is
pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

from herd.backoff import Backoff
from herd.changes import (
    Change,
    ChangeContext,
    ChangeKind,
    ChangeListener,
    DurableWrite,
    StateView,
    op_server,
)
from herd.clock import Clock
from herd.leases import Leases, LeaseSettings
from herd.offload import RunBlocking
from herd.ops import (
    MAX_POSIX,
    AddComment,
    AddPlace,
    AddTime,
    AddUser,
    Body,
    CastVote,
    Choice,
    DigestSent,
    Invite,
    Op,
    Stamp,
    Uninvite,
    UserField,
    client_bytes,
    client_text,
    is_id,
)
from herd.tokens import (
    USER_SCOPE,
    WebClaim,
    check_csrf,
    check_link_code,
    csrf_token,
    link_token,
    open_link,
    open_session,
    session_token,
    unsubscribe_token,
    verify_unsubscribe,
)
from herd.views import Comment, Event, PlaceOption, Status, TimeOption, User, format_utc
from herd.wire.grammar import WireError
from herd.wire.planning import CommentOn, OptOut, RevokeLinks, SetUser, UnsetUser, VoteOn
from herd.zones import Position, PositionOf, timezone_of

__all__ = [
    "MAX_POSIX",
    "USER_SCOPE",
    "AddComment",
    "AddPlace",
    "AddTime",
    "AddUser",
    "Backoff",
    "Body",
    "CastVote",
    "Change",
    "ChangeContext",
    "ChangeKind",
    "ChangeListener",
    "Choice",
    "Clock",
    "Comment",
    "CommentOn",
    "DigestSent",
    "DurableWrite",
    "Event",
    "Invite",
    "LeaseSettings",
    "Leases",
    "LinePush",
    "Op",
    "OptOut",
    "PlaceOption",
    "Position",
    "PositionOf",
    "RevokeLinks",
    "RunBlocking",
    "SetUser",
    "Stamp",
    "StateView",
    "Status",
    "TimeOption",
    "Uninvite",
    "UnsetUser",
    "User",
    "UserField",
    "VoteOn",
    "WebClaim",
    "WireError",
    "check_csrf",
    "check_link_code",
    "client_bytes",
    "client_text",
    "csrf_token",
    "format_utc",
    "is_id",
    "link_token",
    "op_server",
    "open_link",
    "open_session",
    "session_token",
    "timezone_of",
    "unsubscribe_token",
    "user_additions",
    "verify_unsubscribe",
]

_USER_ADD: Final = b'"kind":"user_add"'  # as `Op.to_json` writes it: no op of another kind has it


def user_additions(op_lines: Iterable[bytes]) -> Iterator[Op]:
    """The `user_add` ops among the op log's JSON lines, for a listener that starts after the
    state was restored and so saw no `USER_ADDED` change for them.  Only those lines are
    decoded (a log holds far more votes than users); a line the herd could not decode is
    skipped, as the herd skipped it when it restored its state."""
    for line in op_lines:
        if _USER_ADD in line:
            try:
                yield Op.from_json(line)
            except WireError:
                continue


class LinePush(Protocol):
    """Line notifications for subscribed connections (the notifier's `LineHub` implements it;
    the core only routes SUBSCRIBE to it, so it does not import the notifier)."""

    def subscribe(
        self, user: str, since: str | None, push: Callable[[bytes], None]
    ) -> Callable[[], None]:
        """Push `user`'s notifications after checkpoint `since`, then live; returns the
        function that stops it."""
        ...

    def latest(self, user: str) -> str | None:
        """The newest checkpoint for `user`, if any."""
        ...
