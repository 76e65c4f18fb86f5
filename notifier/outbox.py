"""The durable outbox: at-least-once delivery of rendered messages, with retries and dead letters.

Rows live in the herd server's own SQLite file.  The herd store inserts them with `enqueue`
inside the transaction of the change that causes them, so a change is never durable without its
notifications, nor the reverse.  `Outbox` then delivers them on the reactor through the channel
registry, using its own connection on its own single thread:

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

`list_pending`, `list_dead` and `retry_dead` work on the file directly, for `herd outbox` with or
without the server running; a running server picks replayed rows up at its next poll.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from functools import partial
from pathlib import Path
from typing import TypeVar

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.api import Backoff, RunBlocking
from notifier.channels import Channel
from notifier.errors import PermanentDeliveryError, TransientDeliveryError, UncertainDeliveryError
from notifier.message import Attachment, Outgoing

T = TypeVar("T")
_log = Logger()

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,                   -- idempotency key: notification id + channel
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    text TEXT NOT NULL,
    html TEXT,
    thread TEXT,
    headers TEXT NOT NULL,                  -- JSON [[name, value], ...]
    attachments TEXT NOT NULL,              -- JSON [[filename, content type, base64], ...]
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sending', 'delivered', 'dead')),
    created REAL NOT NULL,                  -- enqueued at
    since REAL NOT NULL,                    -- this round of attempts began (enqueue or replay)
    due REAL NOT NULL,                      -- next attempt not before
    attempts INTEGER NOT NULL DEFAULT 0,    -- attempts started in this round
    possible_duplicate INTEGER NOT NULL DEFAULT 0,  -- an earlier attempt may have got through
    last_error TEXT NOT NULL DEFAULT '',
    finished REAL,                          -- delivered or dead-lettered at
    coalesce_key TEXT                       -- while pending, newer renderings replace this one
);
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox (state, channel, due);
CREATE INDEX IF NOT EXISTS outbox_coalesce ON outbox (coalesce_key, channel)
    WHERE coalesce_key IS NOT NULL AND state = 'pending';
"""

_INSERT = """
INSERT OR IGNORE INTO outbox
    (key, channel, recipient, subject, text, html, thread, headers, attachments,
     created, since, due, coalesce_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_REPLACE_PENDING = """
UPDATE outbox SET recipient = ?, subject = ?, text = ?, html = ?, thread = ?, headers = ?,
    attachments = ?
WHERE coalesce_key = ? AND channel = ? AND state = 'pending'
"""

_CLAIM = """
UPDATE outbox SET state = 'sending', attempts = attempts + 1
WHERE key IN (
    SELECT key FROM outbox
    WHERE state = 'pending' AND channel = ? AND due <= ?
    ORDER BY due LIMIT ?
)
RETURNING key, channel, recipient, subject, text, html, thread, headers, attachments,
    attempts, since, due
"""

_DELIVERED = """
UPDATE outbox SET state = 'delivered', finished = ?, last_error = ''
WHERE key = ? AND state = 'sending'
"""

_RETRY = """
UPDATE outbox SET state = 'pending', due = ?, last_error = ?,
    possible_duplicate = possible_duplicate OR ?
WHERE key = ? AND state = 'sending'
"""

_DEAD = """
UPDATE outbox SET state = 'dead', finished = ?, last_error = ?
WHERE key = ? AND state = 'sending'
"""

_ENTRY_COLUMNS = """
key, channel, recipient, subject, state, attempts, possible_duplicate, created, due, finished,
last_error
"""

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


def enqueue(
    db: sqlite3.Connection,
    items: Sequence[Outgoing],
    now: float,
    *,
    due: float | None = None,
    coalesce: str | None = None,
) -> None:
    """Insert `items` as pending rows due `now` (or not before `due`: quiet hours, a
    coalescing window), ignoring keys already in the outbox.

    With `coalesce`, an item whose channel has a row still pending under that key replaces
    that row's content instead of adding a row: a burst (votes coming in) becomes one message
    showing the latest state, sent when the first was due.  The row keeps its key, so a repeat
    of the first item is still ignored.

    Only writes on the caller's connection and inside the caller's open transaction, so the
    rows commit (or roll back) with the change that caused them.
    """
    if not db.in_transaction:
        raise RuntimeError("enqueue must run inside the transaction of the change")
    rows = [_to_row(item, now, now if due is None else max(now, due), coalesce) for item in items]
    if coalesce is None:
        db.executemany(_INSERT, rows)
        return
    for row in rows:
        if db.execute("SELECT 1 FROM outbox WHERE key = ?", row[:1]).fetchone() is not None:
            continue
        content = row[2:9]  # recipient … attachments
        if db.execute(_REPLACE_PENDING, (*content, coalesce, row[1])).rowcount == 0:
            db.execute(_INSERT, row)


def _to_row(item: Outgoing, now: float, due: float, coalesce: str | None) -> tuple[object, ...]:
    headers = json.dumps([[name, value] for name, value in item.headers])
    attachments = json.dumps(
        [
            [a.filename, a.content_type, base64.b64encode(a.data).decode("ascii")]
            for a in item.attachments
        ]
    )
    texts = (item.key, item.channel, item.recipient, item.subject, item.text)
    optional = (item.html, item.thread)
    return (
        *(_storable(text) for text in texts),
        *(None if text is None else _storable(text) for text in optional),
        headers,
        attachments,
        now,
        due,  # a round of attempts begins when the row is due: max_age counts from there
        due,
        coalesce,
    )


def _storable(text: str) -> str | bytes:
    """SQLite takes only valid Unicode as TEXT.  A string carrying raw bytes from the wire
    (decoded with surrogateescape) is kept exactly, as its bytes; `_text` turns it back."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")


def _from_row(
    key: str | bytes,
    channel: str | bytes,
    recipient: str | bytes,
    subject: str | bytes,
    text: str | bytes,
    html: str | bytes | None,
    thread: str | bytes | None,
    headers: str,
    attachments: str,
) -> Outgoing:
    return Outgoing(
        key=_text(key),
        channel=_text(channel),
        recipient=_text(recipient),
        subject=_text(subject),
        text=_text(text),
        html=None if html is None else _text(html),
        thread=None if thread is None else _text(thread),
        headers=tuple((name, value) for name, value in json.loads(headers)),
        attachments=tuple(
            Attachment(filename, content_type, base64.b64decode(data))
            for filename, content_type, data in json.loads(attachments)
        ),
    )


class _State(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class _Claimed:
    """A row claimed for one attempt."""

    message: Outgoing
    attempts: int  # including this one
    since: float


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What became of one attempt: delivered, retry at `at`, or dead at `at`."""

    key: str
    state: _State
    at: float
    error: str = ""
    possible_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class _Cycle:
    claimed: list[_Claimed]
    next_due: float | None  # earliest pending row of a channel that still has free slots


@dataclass(frozen=True, slots=True)
class _Opened:
    recovered: int  # rows that were being delivered when the process last stopped
    unconfigured: dict[str, int]  # pending rows per channel missing from the registry


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(OUTBOX_SCHEMA)
    return db


class _Book:
    """The outbox's own connection.  Blocking; used only on the outbox thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self, channels: Collection[str], now: float) -> _Opened:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db = _connect(self.path)
        with _transaction(db):
            recovered = db.execute(
                "UPDATE outbox SET state = 'pending', due = ?, possible_duplicate = 1,"
                " last_error = 'the server stopped during an attempt'"
                " WHERE state = 'sending'",
                (now,),
            ).rowcount
            waiting = f"WHERE state = 'pending' AND channel NOT IN ({_marks(channels)})"
            unconfigured = dict(
                db.execute(
                    f"SELECT channel, COUNT(*) FROM outbox {waiting} GROUP BY channel",
                    tuple(channels),
                ).fetchall()
            )
            db.execute(
                f"UPDATE outbox SET last_error = 'channel ' || channel || ' is not configured'"
                f" {waiting}",
                tuple(channels),
            )
        return _Opened(recovered, unconfigured)

    def cycle(
        self,
        outcomes: Sequence[_Outcome],
        free: Mapping[str, int],
        now: float,
        prune_before: float | None,
    ) -> _Cycle:
        """Write `outcomes`, claim up to `free[channel]` due rows per channel: one transaction."""
        db = self._require()
        claimed: list[tuple[float, _Claimed]] = []
        next_due: float | None = None
        with _transaction(db):
            db.executemany(
                _DELIVERED,
                [(o.at, _storable(o.key)) for o in outcomes if o.state is _State.DELIVERED],
            )
            db.executemany(
                _RETRY,
                [
                    (o.at, o.error, o.possible_duplicate, _storable(o.key))
                    for o in outcomes
                    if o.state is _State.PENDING
                ],
            )
            db.executemany(
                _DEAD,
                [(o.at, o.error, _storable(o.key)) for o in outcomes if o.state is _State.DEAD],
            )
            for channel, limit in free.items():
                rows = db.execute(_CLAIM, (channel, now, limit)).fetchall()
                for *fields, attempts, since, due in rows:
                    claimed.append((due, _Claimed(_from_row(*fields), attempts, since)))
                if len(rows) < limit:
                    (due,) = db.execute(
                        "SELECT MIN(due) FROM outbox WHERE state = 'pending' AND channel = ?",
                        (channel,),
                    ).fetchone()
                    if due is not None and (next_due is None or due < next_due):
                        next_due = due
            if prune_before is not None:
                db.execute(
                    "DELETE FROM outbox WHERE state = 'delivered' AND finished < ?",
                    (prune_before,),
                )
        claimed.sort(key=lambda pair: pair[0])
        return _Cycle([item for _, item in claimed], next_due)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is not open")
        return self._db


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """`BEGIN IMMEDIATE` … `COMMIT`, or `ROLLBACK` on error.  IMMEDIATE takes the write lock
    up front, so a busy database waits (busy timeout) instead of failing mid-transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _marks(values: Collection[object]) -> str:
    return ", ".join("?" * len(values))


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
        self._book = _Book(path)
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
        self._outcomes: list[_Outcome] = []
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

    def _cycled(self, cycle: _Cycle) -> None:
        for item in cycle.claimed:
            self._deliver(item)
        self._busy = False
        if self._phase is _Phase.RUNNING:
            self._schedule(cycle.next_due)
        if self._again or self._outcomes:
            self._pump()
        else:
            self._check_drained()

    def _cycle_failed(self, failure: Failure, outcomes: list[_Outcome]) -> None:
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

    def _deliver(self, item: _Claimed) -> None:
        channel = item.message.channel
        self._in_flight[channel] += 1
        delivery = maybeDeferred(self._channels[channel].deliver, item.message)
        delivery.addTimeout(self._settings.deliver_timeout, self._clock)
        self._deliveries.add(delivery)
        delivery.addBoth(self._settled, item, delivery)
        delivery.addErrback(self._bug, "after a delivery")

    def _settled(self, outcome: Failure | None, item: _Claimed, delivery: Deferred[None]) -> None:
        self._deliveries.discard(delivery)
        self._in_flight[item.message.channel] -= 1
        judged = self._judge(outcome, item)
        if judged.state is _State.DEAD:
            _log.warn(
                "outbox: dead letter {key} for {recipient} on {channel}: {reason}",
                key=judged.key,
                recipient=item.message.recipient,
                channel=item.message.channel,
                reason=judged.error,
            )
        self._outcomes.append(judged)
        self._pump()

    def _judge(self, outcome: Failure | None, item: _Claimed) -> _Outcome:
        key = item.message.key
        now = self._clock.seconds()
        if outcome is None:
            return _Outcome(key, _State.DELIVERED, now)
        if outcome.check(PermanentDeliveryError):
            return _Outcome(key, _State.DEAD, now, _describe(outcome))
        if outcome.check(CancelledError):
            return _Outcome(key, _State.PENDING, now, "interrupted by a stop", True)
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
            return _Outcome(
                key, _State.DEAD, now, f"gave up after {item.attempts} attempts: {reason}"
            )
        if now - item.since >= self._settings.max_age:
            return _Outcome(
                key, _State.DEAD, now, f"gave up after {now - item.since:.0f} s: {reason}"
            )
        delay = self._backoff.delay(item.attempts, self._jitter())
        return _Outcome(key, _State.PENDING, now + delay, reason, duplicate)

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


# The operator's view, for `herd outbox list|dead|retry`: blocking, on the file directly.


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One outbox row as the operator sees it."""

    key: str
    channel: str
    recipient: str
    subject: str
    state: str
    attempts: int
    possible_duplicate: bool
    created: float
    due: float
    finished: float | None
    last_error: str


def _open_existing(path: Path) -> sqlite3.Connection:
    """Open a server's database file without creating one where there is none."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such database")
    return _connect(path)


def _entries(path: Path, where: str, order: str, limit: int) -> list[OutboxEntry]:
    with closing(_open_existing(path)) as db:
        rows = db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM outbox WHERE {where} ORDER BY {order} LIMIT ?",
            (limit,),
        ).fetchall()
    return [
        OutboxEntry(
            _text(key),
            _text(channel),
            _text(recipient),
            _text(subject),
            state,
            attempts,
            bool(dup),
            *rest,
        )
        for key, channel, recipient, subject, state, attempts, dup, *rest in rows
    ]


def list_pending(path: Path, limit: int = 1000) -> list[OutboxEntry]:
    """Rows waiting for delivery (or being delivered), soonest first."""
    return _entries(path, "state IN ('pending', 'sending')", "due, key", limit)


def list_dead(path: Path, limit: int = 1000) -> list[OutboxEntry]:
    """Dead letters, oldest first."""
    return _entries(path, "state = 'dead'", "finished, key", limit)


def retry_dead(path: Path, keys: Collection[str] | None, now: float) -> list[str]:
    """Make dead letters pending again with a fresh round of attempts, due `now`: the ones in
    `keys`, or all of them.  Returns the keys replayed (a key that is not a dead letter is not)."""
    replay = (
        "UPDATE outbox SET state = 'pending', due = ?, since = ?, attempts = 0, finished = NULL"
        " WHERE state = 'dead'"
    )
    with closing(_open_existing(path)) as db, _transaction(db):
        if keys is None:
            rows = db.execute(f"{replay} RETURNING key", (now, now)).fetchall()
        else:
            rows = []
            for key in keys:
                rows += db.execute(
                    f"{replay} AND key = ? RETURNING key", (now, now, _storable(key))
                ).fetchall()
    return sorted(_text(key) for (key,) in rows)


def format_entries(entries: Sequence[OutboxEntry]) -> list[str]:
    """Aligned lines for a terminal: a header, then one line per entry (times in UTC)."""
    header = ("KEY", "CHANNEL", "RECIPIENT", "STATE", "TRIES", "WHEN", "SUBJECT / LAST ERROR")
    table: list[tuple[str, ...]] = [header]
    for entry in entries:
        when = entry.finished if entry.state in ("delivered", "dead") else entry.due
        tries = f"{entry.attempts}{'+dup' if entry.possible_duplicate else ''}"
        note = " / ".join(part for part in (entry.subject, entry.last_error) if part)
        cells = (entry.key, entry.channel, entry.recipient, entry.state, tries, _utc(when), note)
        table.append(tuple(_printable(cell) for cell in cells))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in table
    ]


def _utc(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _printable(text: str) -> str:
    """One line, no control characters: a subject or error must not break the table."""
    return "".join(ch if ch.isprintable() else " " for ch in text)
