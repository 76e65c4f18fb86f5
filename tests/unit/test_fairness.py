"""The fair queue behind AUTH checks: round robin over addresses, bounded per address."""

from __future__ import annotations

import pytest

from herd.fairness import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    taken = []
    while (item := queue.pop()) is not None:
        taken.append(item)
    return taken


def test_keys_take_turns_and_each_key_is_first_in_first_out() -> None:
    queue: FairQueue[str] = FairQueue(per_key=10)
    for index in range(4):
        assert queue.push("flooder", f"f{index}")
    assert queue.push("alice", "a0")
    assert queue.push("bob", "b0")
    assert queue.push("alice", "a1")
    assert len(queue) == 7
    assert drain(queue) == ["f0", "a0", "b0", "f1", "a1", "f2", "f3"]
    assert len(queue) == 0


def test_a_key_with_its_share_waiting_is_refused() -> None:
    queue: FairQueue[str] = FairQueue(per_key=2)
    assert queue.push("x", "1") and queue.push("x", "2")
    assert not queue.push("x", "3")
    assert queue.push("y", "1")
    assert queue.waiting("x") == 2 and queue.waiting("z") == 0
    queue.pop()
    assert queue.push("x", "3")


def test_an_item_waits_for_at_most_one_turn_of_every_other_key() -> None:
    queue: FairQueue[str] = FairQueue(per_key=100)
    for key in ("a", "b", "c"):
        for index in range(50):
            queue.push(key, f"{key}{index}")
    queue.push("late", "mine")
    taken = drain(queue)
    assert taken.index("mine") <= 3


def test_per_key_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairQueue(per_key=0)
