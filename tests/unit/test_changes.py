"""The change feed: every listener is told each change, with the state, the change's transaction
and whether the op was accepted here."""

from __future__ import annotations

import sqlite3

from herd.changes import Change, ChangeContext, ChangeFeed, DurableWrite, op_server
from herd.ops import CreateEvent, Op
from herd.state import PlanningState


class Recorder:
    def __init__(self) -> None:
        self.told: list[tuple[Change, ChangeContext]] = []

    def changed(self, change: Change, context: ChangeContext) -> None:
        self.told.append((change, context))


def dinner() -> Op:
    return Op("A.abcdef.1", 1_700_000_000 * 10**9, "alice", CreateEvent("Dinner"))


def test_change_feed_reaches_every_listener() -> None:
    state, writes = PlanningState(), list[DurableWrite]()
    feed, first, second = ChangeFeed(state, writes.append), Recorder(), Recorder()
    feed.subscribe(first)
    feed.subscribe(second)
    changes = state.apply(dinner())
    feed.publish(changes, accepted_here=True)
    feed.unsubscribe(second)
    feed.publish(changes, accepted_here=False)
    assert [change for change, _ in first.told] == changes * 2
    assert [change for change, _ in second.told] == changes
    assert [context.accepted_here for _, context in first.told] == [True, False]
    assert all(context.state is state for _, context in first.told)


def test_a_listener_writes_in_the_change_transaction() -> None:
    writes: list[DurableWrite] = []
    feed, recorder = ChangeFeed(PlanningState(), writes.append), Recorder()
    feed.subscribe(recorder)
    feed.publish(PlanningState().apply(dinner()), accepted_here=True)
    [(_, context)] = recorder.told

    def note(db: sqlite3.Connection) -> None:
        db.execute("SELECT 1")

    context.add_write(note)
    assert writes == [note]


def test_op_server_is_the_first_part_of_an_op_id_even_with_dots() -> None:
    assert op_server("A.abcdef.12") == "A"
    assert op_server("eu.west.q1w2e3.7") == "eu.west"
