"""The SQLite store and group commit, with the thread hop run inline on a fake clock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from herd.records import Location, LoggedOp, location_key
from herd.store import Batch, GroupCommitter, Store
from herd.traffic import format_records
from herd.wire.client import IAmAt, format_at
from tests.protocol.harness import inline


def location(client: bytes, seq: int, time: bytes = b"1700000000") -> Location:
    report = IAmAt.parse([b"IAMAT", client, b"+1.0-2.0", time], b"")
    at = format_at(b"Bailey", 1_700_000_000_000_000_000, report)
    return Location(at, location_key(at), seq)


def test_reopen_gives_back_locations_marks_and_instance(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    first = store.open()
    store.write(Batch([location(b"a", 1), location(b"\xff", 2)], marks={"Bona": (b"abc", 7)}))
    store.write(Batch([location(b"a", 3, b"1700000001")], [LoggedOp("x.1", 4, b"{}")]))
    store.close()
    again = Store(tmp_path / "s.sqlite")
    snapshot = again.open()
    again.close()
    assert snapshot.instance == first.instance
    assert {loc.at.client: (loc.seq, loc.at.time) for loc in snapshot.locations} == {
        b"a": (3, b"1700000001"),
        b"\xff": (2, b"1700000000"),
    }
    assert snapshot.marks == {"Bona": (b"abc", 7)}
    assert snapshot.ops == [LoggedOp("x.1", 4, b"{}")]


def test_a_corrupt_row_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    store.open()
    store.write(Batch([location(b"good", 1)]))
    store.close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        db.execute("INSERT INTO locations VALUES (?, ?, ?)", (b"bad", 2, b"AT nonsense"))
    db.close()
    again = Store(tmp_path / "s.sqlite")
    assert [loc.at.client for loc in again.open().locations] == [b"good"]
    again.close()


class CountingStore(Store):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []

    def write(self, batch: Batch) -> None:
        self.batches.append(len(batch.locations))
        super().write(batch)


def test_changes_of_one_turn_are_committed_together(tmp_path: Path) -> None:
    clock = Clock()
    store = CountingStore(tmp_path / "s.sqlite")
    store.open()
    committer = GroupCommitter(store, inline, clock, lambda failure: None)
    effects: list[int] = []
    for index in range(20):
        committer.add_location(location(b"c%d" % index, index + 1))
        committer.after_commit(lambda index=index: effects.append(index))  # type: ignore[misc]
    assert committer.busy and effects == []
    clock.advance(0)
    assert store.batches == [20]
    assert effects == list(range(20))
    assert not committer.busy
    store.close()


def test_changes_during_a_slow_commit_form_the_next_batch(tmp_path: Path) -> None:
    clock = Clock()
    store = CountingStore(tmp_path / "s.sqlite")
    store.open()
    pending: list[tuple[Callable[[], None], Deferred[None]]] = []

    def slow(work: Callable[[], None]) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        pending.append((work, done))
        return done

    committer = GroupCommitter(store, slow, clock, lambda failure: None)
    committer.add_location(location(b"first", 1))
    clock.advance(0)
    for index in range(5):
        committer.add_location(location(b"n%d" % index, index + 2))
    idle = committer.idle()
    while pending:
        work, done = pending.pop(0)
        work()
        done.callback(None)
    assert store.batches == [1, 5]
    assert idle.called
    store.close()


def test_a_failed_write_is_reported_and_its_replies_never_sent(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "s.sqlite")
    store.open()
    store.close()
    failures: list[Failure] = []
    committer = GroupCommitter(store, inline, clock, failures.append)
    sent: list[str] = []
    committer.add_location(location(b"x", 1))
    committer.after_commit(lambda: sent.append("reply"))
    clock.advance(0)
    assert len(failures) == 1 and failures[0].check(RuntimeError)
    assert sent == []


def test_after_a_failed_write_nothing_is_written_or_acknowledged(tmp_path: Path) -> None:
    """A full disk is final: changes after the failure are neither written nor answered (even
    once the disk has room again), and a stop waiting for idle is not held forever."""
    clock = Clock()
    store = Store(tmp_path / "s.sqlite")
    store.open()
    failures: list[Failure] = []
    committer = GroupCommitter(store, inline, clock, failures.append)

    def disk_full(db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    committer.add_location(location(b"lost", 1))
    committer.add_write(disk_full)
    sent: list[str] = []
    committer.after_commit(lambda: sent.append("lost"))
    waiting = committer.idle()
    assert not waiting.called
    clock.advance(0)
    assert len(failures) == 1 and failures[0].check(sqlite3.OperationalError)
    assert waiting.called and committer.idle().called
    committer.add_location(location(b"later", 2))
    committer.after_commit(lambda: sent.append("later"))
    clock.advance(0)
    assert sent == [] and committer.busy and len(failures) == 1
    store.close()
    assert Store(tmp_path / "s.sqlite").open().locations == []


def test_idle_fires_at_once_when_nothing_is_pending(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    committer = GroupCommitter(store, lambda work: succeed(work()), Clock(), lambda f: None)
    assert committer.idle().called


def test_log_records_format() -> None:
    text = format_records(
        b"Bailey",
        [
            (1_700_000_000.25, "recv", "127.0.0.1:5", b"IAMAT x"),
            (1_700_000_000.5, "sent", "Bona", b"U 1 AT a\nU 2 AT b\n"),
        ],
    )
    assert text == (
        b"2023-11-14T22:13:20.250Z Bailey recv 127.0.0.1:5 IAMAT x\n"
        b"2023-11-14T22:13:20.500Z Bailey sent Bona U 1 AT a\n"
        b"2023-11-14T22:13:20.500Z Bailey sent Bona U 2 AT b\n"
    )


def test_secrets_carried_by_lines_are_scrubbed_from_the_log() -> None:
    text = format_records(
        b"Bailey",
        [
            (1_700_000_000.0, "sent", "Bona", b'U 2 OP {"field":"token","value":"scrypt$1$2$ab"}'),
            (1_700_000_000.0, "sent", "127.0.0.1:5", b"? AUTH alice sEcReT extra\n"),
        ],
    )
    assert b"scrypt$1" not in text and b"sEcReT" not in text
    assert b'"value":"scrypt$<redacted>"}' in text
    assert b"? AUTH alice <redacted>\n" in text
