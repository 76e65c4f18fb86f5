"""The outbox on a fake clock, over a real SQLite file, with a channel the test scripts.

Blocking work runs inline (no thread), so every step is deterministic: the test moves the clock
and looks at what was delivered and at the rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from herd.offload import RunBlocking
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.message import Attachment, Outgoing
from notifier.outbox import PRUNE_EVERY, Outbox, OutboxSettings
from notifier.outbox_admin import format_entries, list_dead, list_pending, retry_dead
from notifier.outbox_table import OUTBOX_SCHEMA, enqueue
from tests.support.channels import HOLD, RecordingChannel

T = TypeVar("T")
START = 1_700_000_000.0


def inline(work: Callable[[], T]) -> Deferred[T]:
    return maybeDeferred(work)


def message(key: str, channel: str = "email", **fields: object) -> Outgoing:
    defaults: dict[str, object] = {
        "recipient": "alice@example.org",
        "subject": f"About {key}",
        "text": f"Text of {key}",
    }
    return Outgoing(key=key, channel=channel, **{**defaults, **fields})  # type: ignore[arg-type]


@dataclass
class Rig:
    """One outbox file, the herd store's connection to it, a clock and an email channel."""

    path: Path
    clock: Clock = field(default_factory=Clock)
    channel: RecordingChannel = field(default_factory=RecordingChannel)
    outboxes: list[Outbox] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clock.advance(START)
        self.store = sqlite3.connect(self.path, isolation_level=None)
        self.store.execute("PRAGMA journal_mode=WAL")
        self.store.executescript(OUTBOX_SCHEMA)

    def outbox(
        self,
        settings: OutboxSettings = OutboxSettings(),  # noqa: B008 - frozen
        channels: list[RecordingChannel] | None = None,
        jitter: float = 1.0,
        run_blocking: RunBlocking = inline,
        clock: Clock | None = None,
        **options: object,
    ) -> Outbox:
        registry = {c.name: c for c in (channels if channels is not None else [self.channel])}
        outbox = Outbox(
            self.path,
            registry,
            self.clock if clock is None else clock,
            run_blocking,
            lambda: jitter,
            settings,
            **options,  # type: ignore[arg-type]
        )
        self.outboxes.append(outbox)
        started = outbox.start()
        assert started.called
        return outbox

    def commit(self, *items: Outgoing) -> None:
        """What the herd store does: the rows commit in the change's transaction."""
        self.store.execute("BEGIN")
        enqueue(self.store, items, self.clock.seconds())
        self.store.execute("COMMIT")

    def commit_later(
        self, *items: Outgoing, due: float | None = None, coalesce: str | None = None
    ) -> None:
        """A deferred or coalesced batch, as the notifier's wiring commits it."""
        self.store.execute("BEGIN")
        enqueue(self.store, items, self.clock.seconds(), due=due, coalesce=coalesce)
        self.store.execute("COMMIT")

    def run(self, seconds: float, step: float = 0.25) -> None:
        """Let time pass in small steps, as it does (one big `advance` skips timers set on
        the way)."""
        self.clock.pump([step] * round(seconds / step))

    def row(self, key: str) -> dict[str, object]:
        cursor = self.store.execute("SELECT * FROM outbox WHERE key = ?", (key,))
        names = [d[0] for d in cursor.description]
        found = cursor.fetchone()
        assert found is not None, key
        return dict(zip(names, found, strict=True))

    def states(self) -> dict[str, str]:
        return dict(self.store.execute("SELECT key, state FROM outbox ORDER BY key"))

    def stop_all(self) -> None:
        for outbox in self.outboxes:
            stopped = outbox.stop()
            self.channel.release()
            self.clock.advance(60)
            assert stopped.called
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path / "Bailey.sqlite")
    yield made
    made.stop_all()


def test_delivers_committed_rows_on_wake(rig: Rig) -> None:
    outbox = rig.outbox()
    full = message(
        "n1.email",
        html="<p>Hi</p>",
        thread="ev-1",
        headers=(("List-Unsubscribe", "<https://x.org/u>"),),
        attachments=(Attachment("a.ics", "text/calendar; method=REQUEST", b"\x00\xffICS"),),
    )
    rig.commit(full, message("n2.email"))
    assert rig.channel.calls == []  # the wiring calls wake() after the commit
    outbox.wake()
    assert rig.channel.calls == [full, message("n2.email")]
    assert rig.states() == {"n1.email": "delivered", "n2.email": "delivered"}
    row = rig.row("n1.email")
    assert (row["attempts"], row["possible_duplicate"], row["finished"]) == (1, 0, START)


def test_raw_bytes_from_the_wire_round_trip(rig: Rig) -> None:
    outbox = rig.outbox()
    raw = b"caf\xe9-\xff".decode("utf-8", "surrogateescape")  # a client id that is not UTF-8
    sent = message(f"n1.{raw}", channel="email", recipient=raw, subject=raw, text=raw, thread=raw)
    rig.channel.script(sent.key, PermanentDeliveryError("no"))
    rig.commit(sent)
    outbox.wake()
    assert rig.channel.calls == [sent]
    [dead] = list_dead(rig.path)
    assert (dead.key, dead.recipient, dead.subject) == (sent.key, raw, raw)
    assert retry_dead(rig.path, [sent.key], rig.clock.seconds()) == [sent.key]
    outbox.wake()
    assert rig.channel.calls == [sent, sent]
    assert list_dead(rig.path) == list_pending(rig.path) == []


def test_finds_rows_at_the_next_poll_without_wake(rig: Rig) -> None:
    rig.outbox(OutboxSettings(poll_interval=5))
    rig.commit(message("n1"))
    rig.clock.advance(4.9)
    assert rig.channel.calls == []
    rig.clock.advance(0.1)
    assert rig.channel.keys() == ["n1"]


def test_enqueue_ignores_a_key_already_there(rig: Rig) -> None:
    outbox = rig.outbox()
    rig.commit(message("n1"), message("n1", text="again in the same batch"))
    rig.commit(message("n1", text="again later"))
    outbox.wake()
    assert [m.text for m in rig.channel.calls] == ["Text of n1"]
    rig.commit(message("n1", text="after delivery"))
    outbox.wake()
    rig.clock.advance(600)
    assert rig.channel.keys() == ["n1"]


def test_enqueue_belongs_to_the_change_transaction(rig: Rig) -> None:
    rig.store.execute("BEGIN")
    enqueue(rig.store, [message("n1")], START)
    rig.store.execute("ROLLBACK")
    assert rig.states() == {}
    with pytest.raises(RuntimeError, match="inside the transaction"):
        enqueue(rig.store, [message("n1")], START)


def test_a_row_is_not_sent_before_it_is_due(rig: Rig) -> None:
    outbox = rig.outbox(OutboxSettings(poll_interval=3600))
    rig.commit_later(message("n1"), due=START + 30)
    rig.commit_later(message("n2"), due=START - 30)  # a due time already past: at once
    outbox.wake()
    assert rig.channel.keys() == ["n2"]
    rig.clock.advance(29.9)
    assert rig.channel.keys() == ["n2"]
    rig.clock.advance(0.1)  # the outbox set its timer for the due row, not the next poll
    assert rig.channel.keys() == ["n2", "n1"]


def test_max_age_counts_from_the_due_time(rig: Rig) -> None:
    outbox = rig.outbox(OutboxSettings(base_delay=4, max_age=10))
    rig.channel.script("n1", *[TransientDeliveryError("timeout")] * 5)
    rig.commit_later(message("n1"), due=START + 3600)
    outbox.wake()
    rig.run(7200)
    assert len(rig.channel.calls) == 3  # at 3600, 3604 and 3612 s, as if enqueued at 3600
    assert rig.row("n1")["last_error"] == "gave up after 12 s: timeout"


def test_a_pending_coalesced_row_takes_the_newest_content(rig: Rig) -> None:
    outbox = rig.outbox(OutboxSettings(poll_interval=3600))
    due = START + 60
    rig.commit_later(message("v1.email", text="1 vote"), due=due, coalesce="votes/e1/alice")
    rig.commit_later(message("v1.line", "line", text="1 vote"), due=due, coalesce="votes/e1/alice")
    rig.clock.advance(30)
    later = due + 30  # the first row's due time stands: a steady stream cannot starve it
    rig.commit_later(
        message("v2.email", text="2 votes"),
        message("v2.line", "line", text="2 votes"),
        due=later,
        coalesce="votes/e1/alice",
    )
    rig.commit_later(message("v3.email", text="3 votes"), due=later, coalesce="votes/e1/alice")
    rig.commit_later(message("v1.email", text="1 vote"), due=due, coalesce="votes/e1/alice")
    rig.commit_later(message("x1.email", text="other"), due=due, coalesce="votes/e2/alice")
    outbox.wake()
    assert rig.states() == {"v1.email": "pending", "v1.line": "pending", "x1.email": "pending"}
    assert rig.row("v1.line")["text"] == "2 votes"  # each channel's row on its own
    rig.clock.advance(30)
    assert [(m.key, m.text) for m in rig.channel.calls] == [
        ("v1.email", "3 votes"),  # the repeat of v1 was ignored, not taken as newer
        ("x1.email", "other"),
    ]


def test_a_coalesced_row_already_sent_is_followed_by_a_new_one(rig: Rig) -> None:
    outbox = rig.outbox()
    rig.commit_later(message("v1", text="1 vote"), coalesce="votes/e1/alice")
    outbox.wake()
    rig.commit_later(message("v2", text="2 votes"), coalesce="votes/e1/alice")
    outbox.wake()
    assert [(m.key, m.text) for m in rig.channel.calls] == [("v1", "1 vote"), ("v2", "2 votes")]


def test_backoff_doubles_from_one_second_to_five_minutes() -> None:
    backoff = OutboxSettings().backoff
    assert [backoff.delay(n, 1.0) for n in range(1, 12)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
        300,
    ]
    assert backoff.delay(1000, 1.0) == 300
    assert backoff.delay(3, 0.0) == 2  # jitter scales the delay by 0.5 to 1
    assert backoff.delay(3, 0.5) == 3


def test_transient_failures_retry_with_backoff(rig: Rig) -> None:
    outbox = rig.outbox()
    down = TransientDeliveryError("SMTP 451: try later")
    rig.channel.script("n1", down, down, down)
    rig.commit(message("n1"))
    outbox.wake()
    times = [rig.clock.seconds()]
    for delay in (1, 2, 4):
        rig.clock.advance(delay - 0.001)
        assert len(rig.channel.calls) == len(times)
        assert rig.row("n1")["last_error"] == "SMTP 451: try later"
        rig.clock.advance(0.001)
        times.append(rig.clock.seconds())
        assert len(rig.channel.calls) == len(times)
    row = rig.row("n1")
    assert (row["state"], row["attempts"], row["last_error"]) == ("delivered", 4, "")
    assert [t - START for t in times] == pytest.approx([0, 1, 3, 7])


def test_jitter_spreads_retries(rig: Rig) -> None:
    outbox = rig.outbox(jitter=0.0)
    rig.channel.script("n1", TransientDeliveryError("down"))
    rig.commit(message("n1"))
    outbox.wake()
    rig.clock.advance(0.5)
    assert len(rig.channel.calls) == 2


def test_gives_up_after_max_attempts(rig: Rig) -> None:
    outbox = rig.outbox(OutboxSettings(max_attempts=3))
    rig.channel.script("n1", *[TransientDeliveryError("connection refused")] * 5)
    rig.commit(message("n1"))
    outbox.wake()
    rig.run(3600)
    assert len(rig.channel.calls) == 3
    row = rig.row("n1")
    assert row["state"] == "dead"
    assert row["last_error"] == "gave up after 3 attempts: connection refused"
    assert [entry.key for entry in list_dead(rig.path)] == ["n1"]


def test_gives_up_after_max_age(rig: Rig) -> None:
    outbox = rig.outbox(OutboxSettings(base_delay=4, max_age=10))
    rig.channel.script("n1", *[TransientDeliveryError("timeout")] * 5)
    rig.commit(message("n1"))
    outbox.wake()
    rig.run(3600)
    assert len(rig.channel.calls) == 3  # at 0, 4 and 12 s: 12 s is past the age limit
    assert rig.row("n1")["last_error"] == "gave up after 12 s: timeout"


def test_permanent_failure_is_a_dead_letter_until_replayed(rig: Rig) -> None:
    outbox = rig.outbox(OutboxSettings(poll_interval=5))
    rig.channel.script("n1", PermanentDeliveryError("SMTP 550: no such user"))
    rig.commit(message("n1"), message("n2"))
    outbox.wake()
    rig.run(3600)
    assert rig.channel.keys() == ["n1", "n2"]
    [dead] = list_dead(rig.path)
    assert (dead.key, dead.state, dead.attempts) == ("n1", "dead", 1)
    assert dead.last_error == "SMTP 550: no such user"
    assert list_pending(rig.path) == []

    # `herd outbox retry n1 n9` against the file while the server runs
    assert retry_dead(rig.path, ["n1", "n2", "n9"], rig.clock.seconds()) == ["n1"]
    assert [entry.state for entry in list_pending(rig.path)] == ["pending"]
    rig.clock.advance(5)  # the running outbox finds it at its next poll
    assert rig.channel.keys() == ["n1", "n2", "n1"]
    assert rig.row("n1")["state"] == "delivered"
    assert rig.row("n1")["attempts"] == 1  # a replay starts a fresh round of attempts


def test_retry_all_dead_letters(rig: Rig) -> None:
    outbox = rig.outbox()
    for key in ("n1", "n2"):
        rig.channel.script(key, PermanentDeliveryError("refused"))
    rig.commit(message("n1"), message("n2"), message("n3"))
    outbox.wake()
    assert retry_dead(rig.path, None, rig.clock.seconds()) == ["n1", "n2"]
    outbox.wake()
    assert rig.states() == {"n1": "delivered", "n2": "delivered", "n3": "delivered"}


def test_restart_retries_what_was_being_delivered(rig: Rig) -> None:
    doomed = Clock()  # the first process's time: it stops when the process dies
    doomed.advance(START)
    first = rig.outbox(clock=doomed)
    rig.channel.hold_all = True
    rig.commit(message("n1"))
    first.wake()
    assert rig.row("n1")["state"] == "sending"
    # The process dies: no timer of its fires again, its connection goes without a word.
    first._book.close()
    rig.outboxes.remove(first)
    rig.channel.held.clear()

    rig.channel.hold_all = False
    with capturedLogs() as events:
        rig.outbox()
    assert any("interrupted by the last stop" in str(e.get("log_format")) for e in events)
    assert rig.channel.keys() == ["n1", "n1"]
    row = rig.row("n1")
    assert (row["state"], row["attempts"], row["possible_duplicate"]) == ("delivered", 2, 1)


def test_stop_waits_for_running_deliveries(rig: Rig) -> None:
    outbox = rig.outbox()
    rig.channel.hold_all = True
    rig.commit(message("n1"))
    outbox.wake()
    rig.outboxes.remove(outbox)
    stopped = outbox.stop()
    assert not stopped.called
    rig.channel.release()
    assert stopped.called
    assert rig.row("n1")["state"] == "delivered"


def test_stop_cancels_deliveries_after_the_grace(rig: Rig) -> None:
    outbox = rig.outbox(OutboxSettings(stop_grace=5))
    rig.channel.hold_all = True
    rig.commit(message("n1"))
    outbox.wake()
    rig.outboxes.remove(outbox)
    stopped = outbox.stop()
    rig.clock.advance(4.9)
    assert not stopped.called
    rig.clock.advance(0.1)
    assert stopped.called
    row = rig.row("n1")
    assert (row["state"], row["possible_duplicate"]) == ("pending", 1)
    assert row["last_error"] == "interrupted by a stop"
    rig.channel.held.clear()


def test_bounded_concurrency_per_channel(rig: Rig) -> None:
    xmpp = RecordingChannel("xmpp")
    outbox = rig.outbox(channels=[rig.channel, xmpp], concurrency={"email": 10})
    rig.channel.hold_all = xmpp.hold_all = True
    rig.commit(*[message(f"e{i:02}") for i in range(25)])
    rig.commit(*[message(f"x{i:02}", channel="xmpp") for i in range(12)])
    outbox.wake()
    assert (len(rig.channel.calls), outbox.in_flight("email")) == (10, 10)
    assert len(xmpp.calls) == 10  # the default limit, independently of email
    rig.channel.release(3)
    assert len(rig.channel.calls) == 13
    while rig.channel.held:
        rig.channel.release(1)
    xmpp.release()
    xmpp.release()
    assert rig.channel.most_running == 10
    assert rig.channel.keys() == [f"e{i:02}" for i in range(25)]  # in order, each once
    assert set(rig.states().values()) == {"delivered"}


def test_a_delivery_without_outcome_times_out(rig: Rig) -> None:
    outbox = rig.outbox(OutboxSettings(deliver_timeout=30))
    rig.channel.script("n1", HOLD)
    rig.commit(message("n1"))
    outbox.wake()
    rig.clock.advance(30)
    row = rig.row("n1")
    assert (row["state"], row["possible_duplicate"]) == ("pending", 1)
    assert row["last_error"] == "no outcome within 30 s"
    rig.clock.advance(1)
    assert rig.row("n1")["state"] == "delivered"
    rig.channel.held.clear()


def test_unconfigured_channel_waits_with_a_reason(rig: Rig) -> None:
    rig.commit(message("x1", channel="xmpp"), message("e1"))
    with capturedLogs() as events:
        outbox = rig.outbox()
    assert any("not configured" in str(e.get("log_format")) for e in events)
    outbox.wake()
    rig.run(3600)
    assert rig.channel.keys() == ["e1"]
    [waiting] = list_pending(rig.path)
    assert (waiting.key, waiting.attempts) == ("x1", 0)
    assert waiting.last_error == "channel xmpp is not configured"

    xmpp = RecordingChannel("xmpp")  # the operator configures [xmpp] and restarts
    rig.outbox(channels=[rig.channel, xmpp])
    assert xmpp.keys() == ["x1"]


def test_unexpected_channel_errors_are_logged_and_retried(rig: Rig) -> None:
    outbox = rig.outbox()
    rig.channel.script("n1", ZeroDivisionError("a bug"))
    rig.commit(message("n1"))
    with capturedLogs() as events:
        outbox.wake()
    assert any(e.get("log_failure") is not None for e in events)
    assert rig.row("n1")["last_error"] == "unexpected ZeroDivisionError: a bug"
    rig.clock.advance(1)
    assert rig.row("n1")["state"] == "delivered"


def test_a_failed_cycle_keeps_its_outcomes(rig: Rig) -> None:
    broken = {"now": False}

    def flaky(work: Callable[[], T]) -> Deferred[T]:
        if broken["now"]:
            broken["now"] = False
            return fail(sqlite3.OperationalError("disk I/O error"))
        return maybeDeferred(work)

    outbox = rig.outbox(OutboxSettings(poll_interval=5), run_blocking=flaky)
    rig.channel.script("n1", HOLD)
    rig.commit(message("n1"))
    outbox.wake()
    broken["now"] = True
    with capturedLogs() as events:
        rig.channel.release()
    assert any(e.get("log_failure") is not None for e in events)
    assert rig.row("n1")["state"] == "sending"
    rig.clock.advance(5)
    assert rig.row("n1")["state"] == "delivered"
    assert rig.channel.keys() == ["n1"]


def test_delivered_rows_are_pruned_after_retention(rig: Rig) -> None:
    outbox = rig.outbox(OutboxSettings(retention=100))
    rig.commit(message("n1"))
    outbox.wake()
    rig.run(PRUNE_EVERY, step=5)
    assert rig.states() == {}


def test_operator_listing(rig: Rig) -> None:
    outbox = rig.outbox()
    rig.channel.script("n1", PermanentDeliveryError("SMTP 550 5.1.1 no\r\nsuch user"))
    rig.channel.script("n2", TransientDeliveryError("SMTP 421 busy"))
    rig.commit(message("n1", subject="Hi\r\nBcc: x"), message("n2"))
    outbox.wake()
    dead = format_entries(list_dead(rig.path))
    assert dead[0].split() == [
        "KEY",
        "CHANNEL",
        "RECIPIENT",
        "STATE",
        "TRIES",
        "WHEN",
        "SUBJECT",
        "/",
        "LAST",
        "ERROR",
    ]
    assert len(dead) == 2
    assert dead[1].split()[:5] == ["n1", "email", "alice@example.org", "dead", "1"]
    assert dead[1].endswith("Hi  Bcc: x / SMTP 550 5.1.1 no  such user")
    [pending] = format_entries(list_pending(rig.path))[1:]
    assert "2023-11-14T22:13:21Z" in pending  # the retry time, in UTC
    with pytest.raises(FileNotFoundError):
        list_pending(rig.path.with_name("Nobody.sqlite"))
