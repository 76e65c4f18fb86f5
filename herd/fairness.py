"""Fair queues: work from many sources taken round robin, so no one source can crowd out another.

Pure (no I/O, no time).  Used for the token checks of `AUTH`: each client address has its own
FIFO, the queue takes one item from each address in turn, and an address may have at most
`per_key` items waiting, so a flood from one address delays another address's login by at most
one check per flooding address.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Round robin over keys (say, client addresses), first in first out within a key."""

    def __init__(self, per_key: int) -> None:
        if per_key < 1:
            raise ValueError(f"per_key must be at least 1, got {per_key}")
        self.per_key = per_key
        self._queues: dict[str, deque[T]] = {}  # in turn order: the next key comes first
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def waiting(self, key: str) -> int:
        queue = self._queues.get(key)
        return 0 if queue is None else len(queue)

    def push(self, key: str, item: T) -> bool:
        """Queue `item` under `key`; False (and nothing queued) if `key` already has
        `per_key` items waiting."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        elif len(queue) >= self.per_key:
            return False
        queue.append(item)
        self._length += 1
        return True

    def pop(self) -> T | None:
        """The oldest item of the key whose turn it is (that key then goes last), or None."""
        for key in self._queues:
            queue = self._queues.pop(key)
            item = queue.popleft()
            if queue:
                self._queues[key] = queue
            self._length -= 1
            return item
        return None
