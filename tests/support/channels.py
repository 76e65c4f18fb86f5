"""An in-memory delivery channel: a real implementation of notifier's `Channel` that records
what it is given and fails, transiently or permanently, when the test says so.

`tests/integration/test_channel_contract.py` checks that it behaves as the real channels do, so
tests that use it in their place (the outbox's, the notifier's) test against the interface.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed

from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.message import Outgoing

HOLD = "hold"
Step = Exception | str | None  # an error to fail with, HOLD, or None for success


class RecordingChannel:
    """Implements `Channel`.  Every attempt is in `calls`, every success in `sent`.

    By default each delivery succeeds at once.  `refuse(recipient)` fails that recipient's
    deliveries permanently; `fail_transiently(n)` fails the next `n` transiently; `script(key,
    *steps)` gives one key's deliveries their outcomes in turn (an error, `HOLD`, or None for
    success; success once none is left).  `HOLD` (or `hold_all`) keeps a delivery running until
    `release()`.  A closed channel fails every delivery transiently, as a channel that is down.
    """

    def __init__(self, name: str = "email") -> None:
        self.name = name
        self.calls: list[Outgoing] = []
        self.sent: list[Outgoing] = []
        self.steps: dict[str, list[Step]] = {}
        self.refused: set[str] = set()
        self.transient_failures = 0
        self.held: list[Deferred[None]] = []
        self.running = 0
        self.most_running = 0
        self.hold_all = False
        self.closed = False

    def script(self, key: str, *steps: Step) -> None:
        self.steps[key] = list(steps)

    def refuse(self, recipient: str) -> None:
        self.refused.add(recipient)

    def fail_transiently(self, times: int = 1) -> None:
        self.transient_failures += times

    def deliver(self, message: Outgoing) -> Deferred[None]:
        self.calls.append(message)
        if self.closed:
            return fail(TransientDeliveryError(f"{self.name} channel closed"))
        if message.recipient in self.refused:
            return fail(PermanentDeliveryError(f"{message.recipient} refused"))
        if self.transient_failures:
            self.transient_failures -= 1
            return fail(TransientDeliveryError(f"{self.name} is failing for now"))
        steps = self.steps.get(message.key, [])
        step = steps.pop(0) if steps else (HOLD if self.hold_all else None)
        if isinstance(step, Exception):
            return fail(step)
        if step == HOLD:
            held: Deferred[None] = Deferred()
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            held.addBoth(self._finished, message)
            self.held.append(held)
            return held
        self.sent.append(message)
        return succeed(None)

    def _finished(self, result: object, message: Outgoing) -> object:
        self.running -= 1
        if result is None:
            self.sent.append(message)
        return result

    def release(self, count: int | None = None) -> None:
        """Let `count` held deliveries (all by default) succeed, oldest first."""
        for _ in range(len(self.held) if count is None else count):
            self.held.pop(0).callback(None)

    def keys(self) -> list[str]:
        """The key of every attempt, in order."""
        return [message.key for message in self.calls]

    def to(self, recipient: str) -> list[Outgoing]:
        """What was delivered to `recipient`."""
        return [message for message in self.sent if message.recipient == recipient]

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)
