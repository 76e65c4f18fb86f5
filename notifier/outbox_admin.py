"""The operator's view of the outbox, for `herd outbox list|dead|retry`: blocking, on the
server's database file directly, with or without the server running (a running server picks
replayed rows up at its next poll).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from notifier.outbox_table import connect, storable, stored_text, transaction

_ENTRY_COLUMNS = """
key, channel, recipient, subject, state, attempts, possible_duplicate, created, due, finished,
last_error
"""


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
    return connect(path)


def _entries(path: Path, where: str, order: str, limit: int) -> list[OutboxEntry]:
    with closing(_open_existing(path)) as db:
        rows = db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM outbox WHERE {where} ORDER BY {order} LIMIT ?",
            (limit,),
        ).fetchall()
    return [
        OutboxEntry(
            stored_text(key),
            stored_text(channel),
            stored_text(recipient),
            stored_text(subject),
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
    with closing(_open_existing(path)) as db, transaction(db):
        if keys is None:
            rows = db.execute(f"{replay} RETURNING key", (now, now)).fetchall()
        else:
            rows = []
            for key in keys:
                rows += db.execute(
                    f"{replay} AND key = ? RETURNING key", (now, now, storable(key))
                ).fetchall()
    return sorted(stored_text(key) for (key,) in rows)


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


def depth(path: Path) -> dict[tuple[str, str], int]:
    """Rows not yet delivered, per (channel, state): `pending`, `sending` and `dead` (for the
    operator's status page and `/metrics`; the `outbox_queue` index answers it)."""
    with closing(_open_existing(path)) as db:
        rows = db.execute(
            "SELECT channel, state, COUNT(*) FROM outbox"
            " WHERE state IN ('pending', 'sending', 'dead') GROUP BY channel, state"
        ).fetchall()
    return {(stored_text(channel), state): count for channel, state, count in rows}
