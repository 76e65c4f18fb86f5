"""The line hub: order, replay by checkpoint, resuming on another server, bounds, fan-out."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from twisted.logger import capturedLogs

from notifier.channels.line import LineHub, LinePush, checkpoint

NS = 1_700_000_000_000_000_000


def mark(seconds: int, name: str = "n") -> str:
    return checkpoint(NS + seconds * 10**9, f"{name}{seconds}")


def push(at: str, line: str) -> bytes:
    return f"PUSH {at} {line}\n".encode()


def test_checkpoints_sort_as_time() -> None:
    assert checkpoint(9, "b") < checkpoint(10, "a") < checkpoint(10, "b")
    assert checkpoint(NS, "x") == "01700000000000000000.x"


def test_live_pushes_in_the_wire_format() -> None:
    hub = LineHub()
    got: list[bytes] = []
    hub.subscribe("alice", None, got.append)
    hub.publish("alice", mark(1), 'votes E.1 "Dinner": T.1 yes 1')
    hub.publish("bob", mark(2), "for bob")
    assert got == [push(mark(1), 'votes E.1 "Dinner": T.1 yes 1')]
    assert hub.latest("alice") == mark(1)
    assert hub.latest("carol") is None


def test_replay_after_a_checkpoint_in_one_write_then_live() -> None:
    hub = LineHub()
    for second in (3, 1, 2):
        hub.publish("alice", mark(second), f"line {second}")
    got: list[bytes] = []
    hub.subscribe("alice", mark(1), got.append)
    assert got == [push(mark(2), "line 2") + push(mark(3), "line 3")]
    hub.publish("alice", mark(4), "line 4")
    assert got[1:] == [push(mark(4), "line 4")]
    assert hub.latest("alice") == mark(4)


def test_no_replay_without_a_checkpoint_and_none_after_the_latest() -> None:
    hub = LineHub()
    hub.publish("alice", mark(1), "line 1")
    fresh: list[bytes] = []
    hub.subscribe("alice", None, fresh.append)
    current: list[bytes] = []
    hub.subscribe("alice", mark(1), current.append)
    assert fresh == current == []


def test_a_late_notification_is_filed_in_order_and_pushed_live() -> None:
    hub = LineHub()
    got: list[bytes] = []
    hub.subscribe("alice", None, got.append)
    hub.publish("alice", mark(5), "line 5")
    hub.publish("alice", mark(3), "late 3")
    assert got == [push(mark(5), "line 5"), push(mark(3), "late 3")]
    assert hub.latest("alice") == mark(5)
    replayed: list[bytes] = []
    hub.subscribe("alice", mark(2), replayed.append)
    assert replayed == [push(mark(3), "late 3") + push(mark(5), "line 5")]


def test_a_checkpoint_already_held_is_not_pushed_again() -> None:
    hub = LineHub()
    got: list[bytes] = []
    hub.subscribe("alice", None, got.append)
    hub.publish("alice", mark(1), "line 1")
    hub.publish("alice", mark(1), "line 1 rendered again")
    assert got == [push(mark(1), "line 1")]


def test_resume_on_another_hub_with_the_same_history() -> None:
    """Every server publishes the same notifications, perhaps in another order: a subscriber
    resumes on B from the last checkpoint A pushed, without gaps or repeats."""
    a, b = LineHub(), LineHub()
    history = [(mark(s), f"line {s}") for s in range(1, 7)]
    for at, line in history:
        a.publish("alice", at, line)
    for at, line in reversed(history):
        b.publish("alice", at, line)
    on_a: list[bytes] = []
    a.subscribe("alice", mark(2), on_a.append)
    last = on_a[-1].splitlines()[-1].split()[1].decode()
    assert last == mark(6)
    on_b: list[bytes] = []
    b.subscribe("alice", mark(4), on_b.append)
    assert on_b == [push(mark(5), "line 5") + push(mark(6), "line 6")]
    assert a.latest("alice") == b.latest("alice")


def test_history_is_bounded_per_user_keeping_the_newest() -> None:
    hub = LineHub(history=3)
    for second in range(1, 6):
        hub.publish("alice", mark(second), f"line {second}")
    hub.publish("alice", mark(0), "older than everything kept")
    got: list[bytes] = []
    hub.subscribe("alice", "", got.append)
    assert got == [b"".join(push(mark(s), f"line {s}") for s in (3, 4, 5))]
    with pytest.raises(ValueError):
        LineHub(history=0)


def test_unsubscribe_stops_pushes_and_frees_an_unused_feed() -> None:
    hub = LineHub()
    got: list[bytes] = []
    stop = hub.subscribe("alice", None, got.append)
    hub.publish("alice", mark(1), "line 1")
    stop()
    stop()  # twice is harmless (a connection lost after an explicit UNSUBSCRIBE)
    hub.publish("alice", mark(2), "line 2")
    assert got == [push(mark(1), "line 1")]
    idle = hub.subscribe("nobody", None, got.append)
    idle()
    assert hub.latest("nobody") is None
    assert "nobody" not in hub._feeds


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    hub = LineHub()
    got: list[bytes] = []

    def broken(data: bytes) -> None:
        raise ConnectionError("gone")

    hub.subscribe("alice", None, broken)
    hub.subscribe("alice", None, got.append)
    with capturedLogs() as events:
        hub.publish("alice", mark(1), "line 1")
    assert got == [push(mark(1), "line 1")]
    assert [event["log_failure"].type for event in events] == [ConnectionError]


def test_a_subscriber_may_unsubscribe_while_being_pushed() -> None:
    hub = LineHub()
    got: list[bytes] = []
    stops: list[Callable[[], None]] = []

    def once(data: bytes) -> None:
        got.append(data)
        stops[0]()

    stops.append(hub.subscribe("alice", None, once))
    hub.subscribe("alice", None, got.append)
    hub.publish("alice", mark(1), "one")
    hub.publish("alice", mark(2), "two")
    assert got == [push(mark(1), "one"), push(mark(1), "one"), push(mark(2), "two")]


@pytest.mark.parametrize(
    ("at", "line"), [("", "x"), ("a b", "x"), (mark(1), "two\nlines"), (mark(1), "cr\r")]
)
def test_what_would_break_the_framing_is_refused(at: str, line: str) -> None:
    with pytest.raises(ValueError):
        LineHub().publish("alice", at, line)


def test_fan_out_to_a_thousand_subscribers_is_fast() -> None:
    hub: LinePush = LineHub()
    inboxes: list[list[bytes]] = [[] for _ in range(1000)]
    for inbox in inboxes:
        hub.subscribe("alice", None, inbox.append)
    started = time.perf_counter()
    hub.publish("alice", mark(1), 'comment E.1 bob on "Dinner": ' + "x" * 200)
    elapsed = time.perf_counter() - started
    assert all(len(inbox) == 1 for inbox in inboxes)
    assert inboxes[0][0] is inboxes[-1][0]  # formatted once, the same bytes for everyone
    assert elapsed < 0.1
