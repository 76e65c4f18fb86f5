"""The notifier's tables in a server's database (beside the outbox's): their schema, reading
them back at start (`load`, as `Saved`), and the writes the listener makes inside a change's or
a loop's transaction.  Blocking sqlite3: `load` runs on the store's thread, the writes in the
group committer's transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from twisted.logger import Logger

from notifier.digest import DigestItem
from notifier.message import Kind
from notifier.outbox_table import OUTBOX_SCHEMA

__all__ = [
    "SCHEMA",
    "Saved",
    "forget_items",
    "hold_items",
    "load",
    "mark",
    "record_digests",
]

SCHEMA: Final = (
    OUTBOX_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS notifier_digest_items (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,                       -- the notification's id
    kind TEXT NOT NULL,
    event_id TEXT NOT NULL,
    actor TEXT,
    option_id TEXT,
    cause TEXT NOT NULL,
    at_ns INTEGER NOT NULL,
    PRIMARY KEY (user_id, id)
);
CREATE TABLE IF NOT EXISTS notifier_digest_sent (
    user_id TEXT PRIMARY KEY,
    at_ns INTEGER NOT NULL                  -- the last digest was made then
);
CREATE TABLE IF NOT EXISTS notifier_marks (
    name TEXT PRIMARY KEY,                  -- 'reminders': looked up to at_ns;
                                            -- 'alive': the lease was last renewed at_ns
    at_ns INTEGER NOT NULL
);
"""
)

_INSERT_ITEM: Final = """
INSERT OR IGNORE INTO notifier_digest_items
    (user_id, id, kind, event_id, actor, option_id, cause, at_ns)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""

_log = Logger()


@dataclass(frozen=True, slots=True)
class Saved:
    """What the notifier keeps in the server's database, as `load` read it back."""

    digest_items: Mapping[str, Mapping[str, DigestItem]]  # user -> notification id -> item
    digest_sent: Mapping[str, int]  # user -> when their last digest was made (ns)
    reminders_ns: int | None  # reminders were looked for up to then
    alive_ns: int | None  # this server last renewed its lease then


def load(path: Path) -> Saved:
    """Create the outbox's and the notifier's tables in a server's database and read the
    notifier's back.  Blocking: run it on the store's thread before making the listener (its
    writes need the tables)."""
    items: dict[str, dict[str, DigestItem]] = {}
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(SCHEMA)
        rows = db.execute(
            "SELECT user_id, id, kind, event_id, actor, option_id, cause, at_ns"
            " FROM notifier_digest_items"
        )
        for user_id, item_id, kind, event_id, actor, option_id, cause, at_ns in rows:
            if kind not in Kind.__members__.values():
                _log.warn("notifier: dropping a digest item of unknown kind {kind}", kind=kind)
                continue
            item = DigestItem(item_id, Kind(kind), event_id, actor, option_id, cause, at_ns)
            items.setdefault(user_id, {})[item_id] = item
        sent = dict(db.execute("SELECT user_id, at_ns FROM notifier_digest_sent"))
        marks = dict(db.execute("SELECT name, at_ns FROM notifier_marks"))
    return Saved(items, sent, marks.get("reminders"), marks.get("alive"))


def hold_items(db: sqlite3.Connection, folded: Iterable[tuple[str, DigestItem]]) -> None:
    """Keep (user, item) pairs until the user's digest."""
    db.executemany(_INSERT_ITEM, [_item_row(user, item) for user, item in folded])


def forget_items(db: sqlite3.Connection, gone: Iterable[tuple[str, str]]) -> None:
    """Drop (user, item id) pairs a digest covered."""
    db.executemany("DELETE FROM notifier_digest_items WHERE user_id = ? AND id = ?", gone)


def record_digests(db: sqlite3.Connection, users: Iterable[str], at_ns: int) -> None:
    """The digests of `users` were made at `at_ns`."""
    db.executemany(
        "INSERT OR REPLACE INTO notifier_digest_sent (user_id, at_ns) VALUES (?, ?)",
        [(user_id, at_ns) for user_id in users],
    )


def mark(db: sqlite3.Connection, name: str, at_ns: int) -> None:
    """`reminders` were looked for up to `at_ns`; this server was `alive` (renewed its lease)
    then."""
    db.execute("INSERT OR REPLACE INTO notifier_marks (name, at_ns) VALUES (?, ?)", (name, at_ns))


def _item_row(user: str, item: DigestItem) -> tuple[object, ...]:
    return (
        user,
        item.id,
        item.kind.value,
        item.event_id,
        item.actor,
        item.option_id,
        item.cause,
        item.at_ns,
    )
