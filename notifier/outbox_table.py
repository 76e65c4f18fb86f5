"""The outbox table in SQLite: its schema, `enqueue` inside the transaction of a change, the
row codec, and `OutboxBook`, the blocking connection the delivery loop claims rows and writes
outcomes through.

No reactor here: `notifier.outbox` runs the book on its own thread; `notifier.outbox_admin`
opens the same file for the operator.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from notifier.message import Attachment, Outgoing

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
        *(storable(text) for text in texts),
        *(None if text is None else storable(text) for text in optional),
        headers,
        attachments,
        now,
        due,  # a round of attempts begins when the row is due: max_age counts from there
        due,
        coalesce,
    )


def storable(text: str) -> str | bytes:
    """SQLite takes only valid Unicode as TEXT.  A string carrying raw bytes from the wire
    (decoded with surrogateescape) is kept exactly, as its bytes; `stored_text` turns it back."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def stored_text(value: str | bytes) -> str:
    """A text column as it was given to `storable`."""
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
        key=stored_text(key),
        channel=stored_text(channel),
        recipient=stored_text(recipient),
        subject=stored_text(subject),
        text=stored_text(text),
        html=None if html is None else stored_text(html),
        thread=None if thread is None else stored_text(thread),
        headers=tuple((name, value) for name, value in json.loads(headers)),
        attachments=tuple(
            Attachment(filename, content_type, base64.b64decode(data))
            for filename, content_type, data in json.loads(attachments)
        ),
    )


class RowState(StrEnum):
    """The states an attempt's outcome leaves a row in (`sending` is only ever set by a claim)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A row claimed for one attempt."""

    message: Outgoing
    attempts: int  # including this one
    since: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one attempt: delivered, retry at `at`, or dead at `at`."""

    key: str
    state: RowState
    at: float
    error: str = ""
    possible_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Cycle:
    """What one cycle claimed, soonest due first."""

    claimed: list[Claimed]
    next_due: float | None  # earliest pending row of a channel that still has free slots


@dataclass(frozen=True, slots=True)
class Opened:
    """What the book found when it opened the file."""

    recovered: int  # rows that were being delivered when the process last stopped
    unconfigured: dict[str, int]  # pending rows per channel missing from the registry


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, the table created."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(OUTBOX_SCHEMA)
    return db


class OutboxBook:
    """The outbox's own connection.  Blocking; used only on the outbox thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self, channels: Collection[str], now: float) -> Opened:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db = connect(self.path)
        with transaction(db):
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
        return Opened(recovered, unconfigured)

    def cycle(
        self,
        outcomes: Sequence[Outcome],
        free: Mapping[str, int],
        now: float,
        prune_before: float | None,
    ) -> Cycle:
        """Write `outcomes`, claim up to `free[channel]` due rows per channel: one transaction."""
        db = self._require()
        claimed: list[tuple[float, Claimed]] = []
        next_due: float | None = None
        with transaction(db):
            db.executemany(
                _DELIVERED,
                [(o.at, storable(o.key)) for o in outcomes if o.state is RowState.DELIVERED],
            )
            db.executemany(
                _RETRY,
                [
                    (o.at, o.error, o.possible_duplicate, storable(o.key))
                    for o in outcomes
                    if o.state is RowState.PENDING
                ],
            )
            db.executemany(
                _DEAD,
                [(o.at, o.error, storable(o.key)) for o in outcomes if o.state is RowState.DEAD],
            )
            for channel, limit in free.items():
                rows = db.execute(_CLAIM, (channel, now, limit)).fetchall()
                for *fields, attempts, since, due in rows:
                    claimed.append((due, Claimed(_from_row(*fields), attempts, since)))
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
        return Cycle([item for _, item in claimed], next_due)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("outbox is not open")
        return self._db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
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
