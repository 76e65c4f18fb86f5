"""The change feed: every listener hears every published change, until it unsubscribes.

Pure.
"""

from __future__ import annotations

from herd.events import Change, ChangeFeed
from herd.ops import CreateEvent, Op
from herd.state import PlanningState

T0 = 1_780_000_000_000_000_000  # ns, 2026-05-28


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []

    def changed(self, change: Change) -> None:
        self.changes.append(change)


def test_change_feed_reaches_every_listener() -> None:
    feed, first, second = ChangeFeed(), Recorder(), Recorder()
    feed.subscribe(first)
    feed.subscribe(second)
    changes = PlanningState().apply(Op("e1", T0, "alice", CreateEvent("Dinner")))
    feed.publish(changes)
    feed.unsubscribe(second)
    feed.publish(changes)
    assert first.changes == changes * 2
    assert second.changes == changes
