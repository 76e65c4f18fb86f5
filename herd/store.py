"""SQLite persistence (WAL) for one server, and group commit off the reactor thread.

`Store` is plain blocking code; it is only ever called on one dedicated thread (see
`GroupCommitter` and `HerdService`).  WAL with `synchronous=NORMAL` makes a committed batch
survive the process being killed (the commit is in the OS before `write` returns); surviving a
power cut as well would need `synchronous=FULL` and an fsync per batch.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.changes import DurableWrite
from herd.offload import RunBlocking
from herd.records import Location, LoggedOp, location_key
from herd.wire.client import parse_at
from herd.wire.grammar import WireError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS locations (
    client BLOB PRIMARY KEY,
    seq INTEGER NOT NULL,
    at_line BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops (
    op_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    line BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peer_marks (
    peer TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL
);
"""


@dataclass(slots=True)
class Snapshot:
    """What a server knows at start: its store's identity, its locations, its planning
    operations (in sequence order) and its peers' marks."""

    instance: bytes
    locations: list[Location]
    ops: list[LoggedOp]
    marks: dict[str, tuple[bytes, int]]


@dataclass(slots=True)
class Batch:
    """Changes committed together in one transaction.  `writes` are other layers' rows that must
    be durable exactly when these changes are (the notifications a change causes)."""

    locations: list[Location] = field(default_factory=list)
    ops: list[LoggedOp] = field(default_factory=list)
    marks: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    writes: list[DurableWrite] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.locations or self.ops or self.marks or self.writes)


class Store:
    """One server's SQLite database.  Blocking; use from a single thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> Snapshot:
        """Open (creating if needed) and read everything back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        row = db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
        if row is None:
            instance = secrets.token_hex(8)
            db.execute("INSERT INTO meta (key, value) VALUES ('instance', ?)", (instance,))
        else:
            instance = row[0]
        locations = []
        for seq, at_line in db.execute("SELECT seq, at_line FROM locations"):
            try:
                at = parse_at(bytes(at_line).split())
            except WireError:
                Logger().warn("store {path}: skipping a corrupt row {seq}", path=self.path, seq=seq)
                continue
            locations.append(Location(at, location_key(at), seq))
        ops = [
            LoggedOp(op_id, seq, bytes(line))
            for op_id, seq, line in db.execute("SELECT op_id, seq, line FROM ops ORDER BY seq")
        ]
        marks = {
            peer: (inst.encode(), seq)
            for peer, inst, seq in db.execute("SELECT peer, instance, seq FROM peer_marks")
        }
        return Snapshot(instance.encode(), locations, ops, marks)

    def write(self, batch: Batch) -> None:
        """Commit one batch in one transaction."""
        db = self._require()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO locations (client, seq, at_line) VALUES (?, ?, ?)",
                [(loc.at.client, loc.seq, loc.at.line) for loc in batch.locations],
            )
            db.executemany(
                "INSERT OR IGNORE INTO ops (op_id, seq, line) VALUES (?, ?, ?)",
                [(op.op_id, op.seq, op.line) for op in batch.ops],
            )
            db.executemany(
                "INSERT OR REPLACE INTO peer_marks (peer, instance, seq) VALUES (?, ?, ?)",
                [(peer, inst.decode(), seq) for peer, (inst, seq) in batch.marks.items()],
            )
            for write in batch.writes:
                write(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db


class GroupCommitter:
    """Collects changes on the reactor thread and commits them in batches, one at a time.

    While a batch is being written, new changes gather in the next one, so the commit rate
    adapts to the load (group commit).  Effects that must wait for durability (replies, floods)
    are attached to the batch that holds their change and run, in order, once it commits.
    """

    def __init__(
        self,
        store: Store,
        run_blocking: RunBlocking,
        clock: IReactorTime,
        on_failure: Callable[[Failure], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._run_blocking = run_blocking
        self._on_failure = on_failure
        self._open = Batch()
        self._open_effects: list[Callable[[], None]] = []
        self._in_flight = False
        self._idle_waiters: list[Deferred[None]] = []
        self._log = Logger()
        self.failure: Failure | None = None

    @property
    def busy(self) -> bool:
        """Whether any change is not yet durable (always, once a write failed)."""
        return self._in_flight or bool(self._open) or self.failure is not None

    def add_location(self, location: Location) -> None:
        self._open.locations.append(location)
        self._kick()

    def add_op(self, logged: LoggedOp) -> None:
        self._open.ops.append(logged)
        self._kick()

    def add_write(self, write: DurableWrite) -> None:
        """Commit `write` in the same transaction as the changes added so far this turn."""
        self._open.writes.append(write)
        self._kick()

    @property
    def open_batch(self) -> Batch:
        """The batch that changes added now will be committed in."""
        return self._open

    def set_mark(self, peer: str, instance: bytes, seq: int) -> None:
        self._open.marks[peer] = (instance, seq)
        self._kick()

    def after_commit(self, effect: Callable[[], None]) -> None:
        """Run `effect` once everything added so far is durable (now, if it already is;
        never, once a write failed)."""
        if self.failure is not None:
            return
        if self.busy:
            self._open_effects.append(effect)
        else:
            effect()

    def idle(self) -> Deferred[None]:
        """Fires once everything added so far is committed, or once a write failed (nothing
        more will be: a stop must not wait for it)."""
        waiter: Deferred[None] = Deferred()
        if self.busy and self.failure is None:
            self._idle_waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def _kick(self) -> None:
        """Start a batch at the end of this reactor turn, so that everything one read brought
        in is committed together."""
        if self.failure is not None:
            self._open, self._open_effects = Batch(), []
            return
        if not self._in_flight:
            self._in_flight = True
            self._clock.callLater(0, self._submit)

    def _submit(self) -> None:
        batch, effects = self._open, self._open_effects
        self._open, self._open_effects = Batch(), []
        done = self._run_blocking(lambda: self._store.write(batch))
        done.addCallbacks(lambda _: self._committed(effects), self._failed)

    def _committed(self, effects: list[Callable[[], None]]) -> None:
        for effect in effects:
            effect()
        if self._open:
            self._submit()
            return
        self._in_flight = False
        for effect in self._open_effects:
            effect()
        self._open_effects = []
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _failed(self, failure: Failure) -> None:
        """A write that fails (disk full, I/O error) must not be acknowledged: the owner stops
        the server rather than pretend; the unacknowledged changes are lost with it."""
        self.failure = failure
        self._open, self._open_effects = Batch(), []
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._log.failure("store write failed", failure)
        self._on_failure(failure)
