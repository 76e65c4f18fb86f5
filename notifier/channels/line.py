"""Line-protocol pushes: each user's recent notifications, and the connections that subscribed.

Unlike email and XMPP, the line is not an outbox channel: every server routes every change (its
own and its peers') and publishes the line notifications to its own `LineHub`, so a program
subscribed on any server hears about everything.  Each notification has a *checkpoint* that is
the same on every server (`checkpoint(...)`: zero-padded time, then the notification id), so the
checkpoints' text order is their time order and a subscriber can resume on another server from
the last checkpoint it saw.

A hub keeps the newest `history` notifications per user, in checkpoint order; one that arrives
late (an operation flooded after a partition heals) is filed in its place and pushed live at
once.  Subscribers should resume from the greatest checkpoint they received.
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from twisted.logger import Logger

from herd.api import LinePush as ServerLinePush

__all__ = ["HISTORY", "LineHub", "LinePush", "checkpoint"]

_ONE_FIELD: Final = re.compile(r"\S+")
HISTORY: Final = 1000
"""Notifications kept per user for replay."""

_log = Logger()


class LinePush(ServerLinePush, Protocol):
    """What the server calls to serve SUBSCRIBE (`herd.api.LinePush`), plus `publish`,
    which the notifier calls."""

    def publish(self, user: str, checkpoint: str, line: str) -> None: ...


def checkpoint(at_ns: int, notification_id: str) -> str:
    """`<20-digit ns>.<notification id>`: equal on every server for the same notification, and
    ordered by time as text."""
    return f"{at_ns:020d}.{notification_id}"


@dataclass(slots=True)
class _Feed:
    """One user's retained pushes (two parallel lists sorted by checkpoint) and listeners."""

    checkpoints: list[str] = field(default_factory=list)
    pushes: list[bytes] = field(default_factory=list)
    subscribers: dict[int, Callable[[bytes], None]] = field(default_factory=dict)


class LineHub:
    """Implements `LinePush` in memory: bounded per user, replay by checkpoint, fan-out that
    formats each push once and hands the same bytes to every subscriber."""

    def __init__(self, history: int = HISTORY) -> None:
        if history < 1:
            raise ValueError("history must keep at least one notification")
        self._history = history
        self._feeds: dict[str, _Feed] = {}
        self._tokens = itertools.count()

    def subscribe(
        self, user: str, since: str | None, push: Callable[[bytes], None]
    ) -> Callable[[], None]:
        """`since` None: live pushes only; else first, in one write, every retained push with a
        checkpoint after `since`."""
        feed = self._feeds.setdefault(user, _Feed())
        if since is not None:
            backlog = b"".join(feed.pushes[bisect_right(feed.checkpoints, since) :])
            if backlog:
                push(backlog)
        token = next(self._tokens)
        feed.subscribers[token] = push

        def unsubscribe() -> None:
            feed.subscribers.pop(token, None)
            if not feed.subscribers and not feed.pushes and self._feeds.get(user) is feed:
                del self._feeds[user]  # a subscriber of a user nobody writes to leaves nothing

        return unsubscribe

    def latest(self, user: str) -> str | None:
        feed = self._feeds.get(user)
        return feed.checkpoints[-1] if feed is not None and feed.checkpoints else None

    def publish(self, user: str, checkpoint: str, line: str) -> None:
        """File `PUSH <checkpoint> <line>` in order and push it to the user's subscribers; a
        checkpoint already held is not pushed again."""
        if not _ONE_FIELD.fullmatch(checkpoint):
            raise ValueError(f"a checkpoint is one field, not {checkpoint!r}")
        text = line.encode("utf-8", "surrogateescape")
        if b"\n" in text or b"\r" in text:
            raise ValueError("a pushed line must be one line")
        data = b"PUSH " + checkpoint.encode() + b" " + text + b"\n"
        feed = self._feeds.setdefault(user, _Feed())
        index = bisect_left(feed.checkpoints, checkpoint)
        if index < len(feed.checkpoints) and feed.checkpoints[index] == checkpoint:
            return
        feed.checkpoints.insert(index, checkpoint)
        feed.pushes.insert(index, data)
        if len(feed.checkpoints) > self._history:
            del feed.checkpoints[0], feed.pushes[0]
        for push in tuple(feed.subscribers.values()):
            try:
                push(data)
            except Exception:
                # One broken connection must not keep the push from the others.
                _log.failure("line push to a subscriber of {user} failed", user=user)
