"""The durable outbox: at-least-once delivery of rendered messages, with retries and dead letters.

Rows live in the herd server's own SQLite file (`notifier.outbox_table`). The herd store inserts
them with `enqueue` inside the transaction of the change that causes them, so a change is never
durable without its notifications, nor the reverse. `Outbox` then delivers them on the reactor
through the channel registry, using its own connection on its own single thread:

- a *cycle* on that thread writes the outcomes gathered since the last one and claims due rows,
  at most as many per channel as that channel has free delivery slots, in one transaction;
- a claimed row is `sending` with its attempt counted, so a row being delivered when the process
  dies is found at the next start, made due again and flagged `possible_duplicate`;
- a transient failure retries with exponential backoff and jitter until `max_attempts` attempts
  or `max_age` seconds, then becomes a dead letter; a permanent one is a dead letter at once;
- delivered rows are kept `retention` seconds so a repeated `enqueue` of the same key (the
  idempotency key) is ignored, then pruned;
- a row may be due later than its enqueue (quiet hours), and a row still pending under a
  coalesce key takes the content of newer items enqueued under it (bursts become one message).

Rows for a channel that is not in the registry are never claimed and stay pending, marked with
the reason at start: the message is fine and the fix is configuration, after which they go out
without an operator replaying them (dead letters are for what the far side refused).

`herd outbox list|dead|retry` works on the file directly (`notifier.outbox_admin`); a running
server picks replayed rows up at its next poll.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.api import Backoff, RunBlocking
from notifier.channels import Channel
from notifier.errors import PermanentDeliveryError, TransientDeliveryError, UncertainDeliveryError
from notifier.outbox_table import Claimed, Cycle, OutboxBook, Outcome, RowState

_log = Logger()

PRUNE_EVERY = 3600.0


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """Retry policy and bounds.  Delays and ages are in seconds."""

    base_delay: float = 1.0
    max_delay: float = 300.0
    max_attempts: int = 50
    max_age: float = 86400.0
    concurrency: int = 10  # deliveries in flight per channel, unless given per channel
    deliver_timeout: float = 120.0  # a delivery with no outcome by then is retried
    poll_interval: float = 5.0  # also finds rows replayed by `herd outbox retry`
    stop_grace: float = 5.0  # deliveries still running this long after stop are cancelled
    retention: float = 7 * 86400.0  # delivered rows are kept this long for idempotency

    @property
    def backoff(self) -> Backoff:
        """After the n-th failed attempt: base_delay doubling, capped at max_delay, of which the
        first half is always waited and the second at random, so retries spread out yet never
        come sooner than half the nominal delay."""
        return Backoff(initial=self.base_delay / 2, factor=2.0, cap=self.max_delay / 2, jitter=1.0)


class _Phase(Enum):
    """Where an `Outbox` is in its life."""

    STARTING = "starting"  # recovering interrupted rows; nothing is claimed yet
    RUNNING = "running"  # claiming due rows and delivering them
    STOPPED = "stopped"  # claims nothing more; deliveries in flight finish (or are cancelled)


class Outbox:
    """Delivers the outbox's rows through the channels, on the reactor.

    `start()` recovers interrupted rows and begins; `wake()` after a commit that enqueued rows
    delivers them at once instead of at the next poll; `stop()` lets running deliveries finish
    (cancelling them after `stop_grace`), writes their outcomes and closes the connection.
    """

    def __init__(
        self,
        path: Path,
        channels: Mapping[str, Channel],
        clock: IReactorTime,
        run_blocking: RunBlocking,
        jitter: Callable[[], float],
        settings: OutboxSettings = OutboxSettings(),
        concurrency: Mapping[str, int] | None = None,
    ) -> None:
        self._book = OutboxBook(path)
        self._channels = dict(channels)
        self._clock = clock
        self._run = run_blocking
        self._jitter = jitter
        self._settings = settings
        self._backoff = settings.backoff
        given = concurrency or {}
        self._limits = {name: given.get(name, settings.concurrency) for name in self._channels}
        self._in_flight = dict.fromkeys(self._channels, 0)
        self._deliveries: set[Deferred[None]] = set()
        self._outcomes: list[Outcome] = []
        self._phase = _Phase.STARTING
        self._busy = False  # a cycle is running on the outbox thread
        self._again = False  # something happened during that cycle: run another
        self._timer: IDelayedCall | None = None
        self._next_prune = 0.0
        self._drained: list[Deferred[None]] = []

    def in_flight(self, channel: str) -> int:
        """Deliveries currently running on `channel`."""
        return self._in_flight[channel]

    def start(self) -> Deferred[None]:
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        now = self._clock.seconds()
        opened = await self._run(partial(self._book.open, list(self._channels), now))
        if opened.recovered:
            _log.warn(
                "outbox: {count} deliveries were interrupted by the last stop; retrying them",
                count=opened.recovered,
            )
        for channel, count in sorted(opened.unconfigured.items()):
            _log.warn(
                "outbox: {count} messages wait for channel {channel}, which is not configured",
                count=count,
                channel=channel,
            )
        if self._phase is _Phase.STARTING:
            self._phase = _Phase.RUNNING
            self._pump()

    def wake(self) -> None:
        """Rows were just committed: look for due work now."""
        if self._phase is _Phase.RUNNING:
            self._pump()

    def stop(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._phase = _Phase.STOPPED
        self._cancel_timer()
        grace = self._clock.callLater(self._settings.stop_grace, self._cancel_deliveries)
        waiter: Deferred[None] = Deferred()
        self._drained.append(waiter)
        self._check_drained()
        await waiter
        if grace.active():
            grace.cancel()
        await self._run(self._book.close)

    def _cancel_deliveries(self) -> None:
        for delivery in list(self._deliveries):
            delivery.cancel()

    def _pump(self) -> None:
        """Run a cycle now, or right after the one running: write outcomes, claim due rows."""
        if self._busy:
            self._again = True
            return
        free = {}
        if self._phase is _Phase.RUNNING:
            free = {
                name: self._limits[name] - count
                for name, count in self._in_flight.items()
                if count < self._limits[name]
            }
        outcomes, self._outcomes = self._outcomes, []
        if not free and not outcomes:
            self._check_drained()
            return
        self._busy = True
        self._again = False
        now = self._clock.seconds()
        prune_before = None
        if self._phase is _Phase.RUNNING and now >= self._next_prune:
            prune_before = now - self._settings.retention
            self._next_prune = now + PRUNE_EVERY
        done = self._run(partial(self._book.cycle, outcomes, free, now, prune_before))
        done.addCallbacks(self._cycled, self._cycle_failed, errbackArgs=(outcomes,))
        done.addErrback(self._bug, "after an outbox cycle")

    def _cycled(self, cycle: Cycle) -> None:
        for item in cycle.claimed:
            self._deliver(item)
        self._busy = False
        if self._phase is _Phase.RUNNING:
            self._schedule(cycle.next_due)
        if self._again or self._outcomes:
            self._pump()
        else:
            self._check_drained()

    def _cycle_failed(self, failure: Failure, outcomes: list[Outcome]) -> None:
        """The database refused (disk full, locked too long).  Nothing was claimed; keep the
        outcomes and try again at the next poll.  When stopping, give up: their rows stay
        `sending` and are retried, flagged, after the next start."""
        _log.failure("outbox: a cycle failed", failure)
        self._busy = False
        if self._phase is _Phase.RUNNING:
            self._outcomes[:0] = outcomes
            self._schedule(None)
        else:
            _log.error(
                "outbox: {count} outcomes not written; retried after the next start",
                count=len(outcomes),
            )
            self._check_drained()

    def _schedule(self, next_due: float | None) -> None:
        self._cancel_timer()
        delay = self._settings.poll_interval
        if next_due is not None:
            delay = max(0.0, min(delay, next_due - self._clock.seconds()))
        self._timer = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._pump()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _deliver(self, item: Claimed) -> None:
        channel = item.message.channel
        self._in_flight[channel] += 1
        delivery = maybeDeferred(self._channels[channel].deliver, item.message)
        delivery.addTimeout(self._settings.deliver_timeout, self._clock)
        self._deliveries.add(delivery)
        delivery.addBoth(self._settled, item, delivery)
        delivery.addErrback(self._bug, "after a delivery")

    def _settled(self, outcome: Failure | None, item: Claimed, delivery: Deferred[None]) -> None:
        self._deliveries.discard(delivery)
        self._in_flight[item.message.channel] -= 1
        judged = self._judge(outcome, item)
        if judged.state is RowState.DEAD:
            _log.warn(
                "outbox: dead letter {key} for {recipient} on {channel}: {reason}",
                key=judged.key,
                recipient=item.message.recipient,
                channel=item.message.channel,
                reason=judged.error,
            )
        self._outcomes.append(judged)
        self._pump()

    def _judge(self, outcome: Failure | None, item: Claimed) -> Outcome:
        key = item.message.key
        now = self._clock.seconds()
        if outcome is None:
            return Outcome(key, RowState.DELIVERED, now)
        if outcome.check(PermanentDeliveryError):
            return Outcome(key, RowState.DEAD, now, _describe(outcome))
        if outcome.check(CancelledError):
            return Outcome(key, RowState.PENDING, now, "interrupted by a stop", True)
        duplicate = False
        if outcome.check(TransientDeliveryError):
            reason = _describe(outcome)
            duplicate = outcome.check(UncertainDeliveryError) is not None
        elif outcome.check(defer.TimeoutError):
            reason = f"no outcome within {self._settings.deliver_timeout:g} s"
            duplicate = True
        else:
            _log.failure(
                "outbox: channel {channel} failed unexpectedly on {key}",
                outcome,
                channel=item.message.channel,
                key=key,
            )
            reason = f"unexpected {_describe(outcome)}"
        if item.attempts >= self._settings.max_attempts:
            return Outcome(
                key, RowState.DEAD, now, f"gave up after {item.attempts} attempts: {reason}"
            )
        if now - item.since >= self._settings.max_age:
            return Outcome(
                key, RowState.DEAD, now, f"gave up after {now - item.since:.0f} s: {reason}"
            )
        delay = self._backoff.delay(item.attempts, self._jitter())
        return Outcome(key, RowState.PENDING, now + delay, reason, duplicate)

    def _check_drained(self) -> None:
        if self._phase is _Phase.RUNNING or self._busy or self._deliveries or self._outcomes:
            return
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            waiter.callback(None)

    def _bug(self, failure: Failure, where: str) -> None:
        _log.failure("outbox: bug {where}", failure, where=where)


def _describe(failure: Failure) -> str:
    value = failure.value
    text = str(value)
    if isinstance(value, TransientDeliveryError | PermanentDeliveryError):
        return text or type(value).__name__
    return f"{type(value).__name__}: {text}" if text else type(value).__name__
