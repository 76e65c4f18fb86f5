"""Digest mail: 10,000 digests composed and delivered to a real aiosmtpd in another process,
through Renga's own path against the naive way, side by side in one run.

Each variant runs as its own child process (so their memory can be compared), against a fresh
SMTP sink process (`bench/tools/smtpsink.py`: aiosmtpd, counts and drops).  With two cores, the
sender is pinned to core 1 and the sink to core 0.  The parent samples each child's RSS every
0.2 s, and the sink's CPU over the child's life.  Both children first build the same planning
state in memory (10,000 users with an email address in five zones, 5,000 events with 10
invitees, options, votes and comments, all made two days ago, so that every user's daily
digest hour has passed since; each user's digest items; untimed), then time:

- **renga**: the server's own digest path on a Twisted asyncio reactor.  Untimed setup, as
  `herd/service.py` builds a server: a `herd.store.Store` (SQLite, WAL) opened on a store
  thread, `notifier.tables.load` (the notifier's tables), the digest items written to
  `notifier_digest_items` and read back by `load` as the listener's `Saved`, a
  `GroupCommitter` on the store thread, the `Outbox` on its own thread delivering through
  `SmtpChannel` (aiosmtplib over `--pool` reused connections, the outbox's default 10 deliveries
  in flight), and a `NotifierListener` given the `AddUser` ops' JSON lines (their ids start
  with `Bench.`, so this server, "Bench", sends every user's digest).  Timed: one call of
  `listener._send_digests()`, which is what the minute loop (`LoopingCall` every `TICK`) does
  when the digests fall due: it sorts the users by zone and composes `DIGESTS_PER_TURN` (25)
  digests per reactor turn with one shared `RenderCache`, each turn's digests enqueued in
  their own transaction (`add_write`, group commit on the store thread) and the outbox woken
  after it commits, so sending overlaps composing.  Before timing, `gc.freeze()`, as
  `HerdService` does once it has started.  Done when the sink has confirmed (250) every one of the
  10,000 deliveries; the outbox rows are then checked to say `delivered`, the items to be gone
  and `notifier_digest_sent` to have a row per user.  "Composed" is when the listener's run
  has no next turn any more; a `LoopingCall` every 5 ms records the gaps between its calls
  (the longest is the longest the reactor was stalled during the run), and `gc.callbacks` the
  garbage collector's pauses, to tell them from composing turns.
- **naive**: `compose_digest` for every user (no cache) then, for each mail,
  `MessageBuilder.build` and a new `smtplib.SMTP` connection (EHLO, MAIL, RCPT, DATA, QUIT) in
  one worker thread, one after the other; no outbox, so nothing is durable.

Mails/s end to end: digests composed and delivered per second, from the start of the run (the
`_send_digests` call; the first compose for naive) to the last 250.  Goal: >= 600 mails/s for
renga.  CPU per mail is the sender process's (all its threads), while composing and after.

    python -m bench digests [--digests 10000] [--pool 10] [--also-pool 4] [--rounds 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    BenchError,
    cpu_seconds,
    median,
    pinned,
    rss_bytes,
    save_results,
    temp_directory,
)
from tests.support.processes import log

GOAL = 600.0
SAMPLE_EVERY = 0.2
CHILD_TIMEOUT = 900.0
SENDER = "Renga <renga@bench.invalid>"
ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC", "Australia/Sydney")
SERVER = "Bench"  # the op ids of `build_state` start with "Bench.": this server adds every user
AGO_NS = 2 * 86400 * 10**9  # the state is made this long ago: every zone's 08:00 has passed since
MONITOR_EVERY = 0.005  # seconds between the calls of the reactor stall monitor


# --- the state both variants mail about --------------------------------------------------------


def build_state(users: int) -> tuple[Any, list[Any], list[list[Any]], list[bytes]]:
    """A planning state with `users` users (email, a zone, daily digests) and users/2 events of
    10 invitees with two times, a place, votes and a comment each, all made `AGO_NS` ago; each
    user's recipient and digest items (new options, votes, comments on up to three of their
    events); and the JSON lines of the `AddUser` ops (as the op log holds them)."""
    from herd.ops import (
        OPERATOR,
        AddComment,
        AddPlace,
        AddTime,
        AddUser,
        CastVote,
        Choice,
        CreateEvent,
        Invite,
        Op,
        SetUserField,
        UserField,
    )
    from herd.state import PlanningState
    from notifier.digest import DigestItem
    from notifier.message import Kind, Recipient

    state = PlanningState()
    counter = iter(range(1, 10**9))
    now = time.time_ns() - AGO_NS
    user_lines: list[bytes] = []

    def op(actor: str, body: Any) -> Op:
        made = Op(f"Bench.x.{next(counter)}", state.next_time(now), actor, body)
        state.apply(made)
        return made

    names = [f"u{i:05d}" for i in range(users)]
    for index, name in enumerate(names):
        user_lines.append(op(OPERATOR, AddUser(name)).to_json())
        op(OPERATOR, SetUserField(name, UserField.EMAIL, f"{name}@bench.invalid"))
        op(OPERATOR, SetUserField(name, UserField.TZ, ZONES[index % len(ZONES)]))
    items: dict[str, list[Any]] = {name: [] for name in names}
    at = int(time.time()) + 30 * 86400
    for event in range(users // 2):
        organiser = names[(2 * event) % users]
        invited = tuple(names[(2 * event + 1 + k * 997) % users] for k in range(10))
        created = op(organiser, CreateEvent(f"Dinner number {event} at the usual place"))
        eid = created.op_id
        op(organiser, Invite(eid, invited))
        times = [op(organiser, AddTime(eid, at + 3600 * k)) for k in range(2)]
        place = op(invited[0], AddPlace(eid, "Chez Janou, 2 rue Roger Verlomme", 48.8556, 2.3667))
        votes = [
            op(voter, CastVote(eid, times[0].op_id, (Choice.YES, Choice.MAYBE, Choice.NO)[k % 3]))
            for k, voter in enumerate(invited[:6])
        ]
        comment = op(invited[1], AddComment(eid, "I can bring the wine; who drives?"))
        for person in (organiser, *invited):
            held = items[person]
            if len({item.event_id for item in held}) >= 3:
                continue
            for option in (*times, place):
                if option.actor != person:
                    held.append(
                        DigestItem(
                            option.op_id,
                            Kind.NEW_OPTION,
                            eid,
                            option.actor,
                            option.op_id,
                            option.op_id,
                            option.time_ns,
                        )
                    )
            for vote in votes:
                if vote.actor != person:
                    held.append(
                        DigestItem(
                            vote.op_id,
                            Kind.VOTES,
                            eid,
                            vote.actor,
                            times[0].op_id,
                            vote.op_id,
                            vote.time_ns,
                        )
                    )
            if comment.actor != person:
                held.append(
                    DigestItem(
                        comment.op_id,
                        Kind.COMMENT,
                        eid,
                        comment.actor,
                        None,
                        comment.op_id,
                        comment.time_ns,
                    )
                )
    recipients = []
    for index, name in enumerate(names):
        user = state.user(name)
        assert user is not None
        recipients.append(Recipient.of(user, ZONES[index % len(ZONES)]))
    return state, recipients, [items[name] for name in names], user_lines


def compose_all(state: Any, recipients: list[Any], items: list[list[Any]], count: int) -> list[Any]:
    from notifier.digest import compose_digest
    from notifier.render import RenderCache, Templates

    unsubscribe = _unsubscribe()
    templates = Templates()
    now_ns = time.time_ns()
    out = []
    for index in range(count):
        k = index % len(recipients)
        cache = RenderCache(templates, state, now_ns)  # none shared: the naive way
        message = compose_digest(recipients[k], state, items[k], now_ns, unsubscribe, cache)
        if message is None:
            raise BenchError(f"no digest for {recipients[k].user}")
        out.append(message)
    return out


def _unsubscribe() -> Any:
    from notifier.render import Unsubscribe

    return Unsubscribe(
        b"bench-secret", "mailto:renga@bench.invalid?subject=OPTOUT%20{user}%20{token}"
    )


def _rss_mib() -> float:
    return rss_bytes(os.getpid()) / 2**20


# --- the children ---------------------------------------------------------------------------------


def child_renga(
    port: int, count: int, pool: int, directory: Path, profiled: bool = False
) -> dict[str, Any]:
    import asyncio
    import cProfile

    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    import sqlite3
    from collections.abc import Callable
    from contextlib import closing
    from typing import TypeVar

    from twisted.internet import reactor as installed
    from twisted.internet.defer import Deferred, ensureDeferred, succeed
    from twisted.internet.task import LoopingCall, deferLater
    from twisted.internet.threads import deferToThreadPool
    from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
    from twisted.python.failure import Failure
    from twisted.python.threadpool import ThreadPool
    from zope.interface import provider

    from herd.api import Body, Clock, LeaseSettings, op_server, user_additions
    from herd.changes import ChangeFeed
    from herd.ops import OPERATOR, Op
    from herd.records import OpLog, Sequencer
    from herd.store import GroupCommitter, Store
    from notifier.build import Host, NotifierSettings, build_notifier
    from notifier.channels.smtp import SmtpChannel
    from notifier.render import Templates
    from notifier.tables import SCHEMA, load

    reactor: Any = installed
    T = TypeVar("T")

    result: dict[str, Any] = {"variant": "renga", "pool": pool}
    marks: dict[str, float] = {}
    cpu: dict[str, float] = {}
    gaps: list[tuple[float, float]] = []  # (time, seconds since the monitor's previous call)
    profile = cProfile.Profile() if profiled else None
    collections: list[tuple[int, float, float]] = []  # (generation, start, seconds), timed part
    collecting = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.monotonic()
        elif "start" in marks and "delivered" not in marks:
            collections.append(
                (info["generation"], collecting[0], time.monotonic() - collecting[0])
            )

    pools: list[ThreadPool] = []

    def thread_pool(name: str) -> ThreadPool:
        made = ThreadPool(minthreads=1, maxthreads=1, name=name)
        made.start()
        pools.append(made)
        return made

    async def main() -> None:
        state, recipients, items, user_lines = build_state(count)
        result["rss_after_state_mib"] = _rss_mib()
        path = directory / f"{SERVER}.sqlite"
        store_pool, outbox_pool = thread_pool("store"), thread_pool("outbox")

        def on_store(work: Callable[[], T]) -> Deferred[T]:
            return deferToThreadPool(reactor, store_pool, work)

        def on_outbox(work: Callable[[], T]) -> Deferred[T]:
            return deferToThreadPool(reactor, outbox_pool, work)

        done: Deferred[None] = Deferred()

        def fail(reason: Failure | Exception) -> None:
            if not done.called:
                done.errback(reason)

        # The server's database as a server holding these digest items would have it.
        store = Store(path)
        await on_store(store.open)
        rows = [
            (
                recipient.user,
                item.id,
                item.kind.value,
                item.event_id,
                item.actor,
                item.option_id,
                item.cause,
                item.at_ns,
            )
            for recipient, held in zip(recipients, items, strict=True)
            for item in held
        ]

        def seed() -> None:
            with closing(sqlite3.connect(path, isolation_level=None)) as db:
                db.executescript(SCHEMA)
                db.execute("BEGIN")
                db.executemany(
                    "INSERT OR IGNORE INTO notifier_digest_items"
                    " (user_id, id, kind, event_id, actor, option_id, cause, at_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute("COMMIT")

        await on_store(seed)
        saved = await on_store(lambda: load(path))
        rows.clear()
        if len(saved.digest_items) != count or saved.digest_sent or saved.reminders_ns:
            raise BenchError(f"load read back {len(saved.digest_items)} users' digest items")
        committer = GroupCommitter(store, on_store, reactor, fail)

        smtp = SmtpChannel("127.0.0.1", port, SENDER, tls="none", pool_size=pool, clock=reactor)
        tally = {"ok": 0, "failed": 0}
        delivered_at: list[float] = []

        class Counting:
            name = "email"

            def deliver(self, message: Any) -> Deferred[None]:
                if "handed" not in marks:
                    marks["handed"] = time.monotonic()  # the outbox's first claim
                d = smtp.deliver(message)

                def ok(value: None) -> None:
                    tally["ok"] += 1
                    delivered_at.append(time.monotonic())
                    if tally["ok"] == count and not done.called:
                        done.callback(None)

                def failed(failure: Any) -> Any:
                    tally["failed"] += 1
                    return failure

                d.addCallbacks(ok, failed)
                return d

            def close(self) -> Deferred[None]:
                return smtp.close()

        channel = Counting()
        commits: list[float] = []  # when each turn's transaction had committed

        def after_commit(effect: Callable[[], None]) -> None:
            """The committer's, noting when each digest turn's transaction has committed (the
            listener then wakes the outbox)."""

            def committed() -> None:
                commits.append(time.monotonic())
                if "enqueued" not in marks:
                    marks["enqueued"] = time.monotonic()
                    cpu["enqueued"] = time.process_time()
                effect()

            committer.after_commit(committed)

        # What the server's `accept_body` does with the listener's records (`DigestSent`):
        # make an op of this server's own, log it in the turn's transaction, apply it and
        # publish its changes (the listener drops the user's items in the same transaction).
        feed = ChangeFeed(state, committer.add_write)
        ops = OpLog(Sequencer())
        made_ops = iter(range(1, 10**9))

        def accept(body: Body) -> None:
            op = Op(f"{SERVER}.d.{next(made_ops)}", state.next_time(time.time_ns()), OPERATOR, body)
            committer.add_op(ops.add(op.op_id, op.to_json()))
            feed.publish(state.apply(op), accepted_here=True)

        host = Host(
            name=SERVER,
            servers=[SERVER],
            state=state,
            position_of=lambda user_id: None,
            subscribe=feed.subscribe,
            add_write=committer.add_write,
            after_commit=after_commit,
            renew=lambda: None,  # no peers to tell
            accept=accept,
            run_as=lambda user, line: succeed(b""),  # no Jabber bot
            secret=b"bench-secret",
            store=path,
        )
        notifier = build_notifier(
            host,
            saved,
            {"email": channel},
            Clock(reactor, time.time_ns),
            on_outbox,
            lambda: 0.5,
            op_lines=user_lines,
            unsubscribe=_unsubscribe(),
            templates=Templates(),
            # A one-server herd whose start grace (one lease's length) is over: its digests
            # are its own to send at once.  The loops look once an hour: the run is timed from
            # the bench's own call of what the minute loop calls.
            settings=NotifierSettings(
                look_every=3600.0, lease=LeaseSettings(renew=3600.0, valid=0.001)
            ),
        )
        listener, outbox = notifier.listener, notifier.outbox
        homes = {op_server(op.op_id) for op in user_additions(user_lines)}
        if homes != {SERVER}:
            raise BenchError(f"the users' homes are {sorted(homes)[:3]}, not {SERVER} alone")
        await notifier.start(())
        await deferLater(reactor, 0.01, lambda: None)
        if not notifier.leases.mine(SERVER, time.time_ns()):
            raise BenchError(f"{SERVER} does not hold its own users' duties")
        gc.freeze()  # as `HerdService` does once it has started

        # Whatever the notifier logs as an error (a digest it could not compose, a failed loop)
        # ends the run rather than leaving it waiting for mails that will never come.
        errors: list[str] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            level = event.get("log_level")
            if level is not None and level >= LogLevel.error:
                failure = event.get("log_failure")
                text = formatEvent(event) or ""
                errors.append(text + ("\n" + failure.getTraceback() if failure else ""))

        globalLogPublisher.addObserver(observe)

        def monitor() -> None:
            """Every `MONITOR_EVERY`: the gap since the last call, the end of composing."""
            now = time.monotonic()
            gaps.append((now, now - last[0]))
            last[0] = now
            if "composed" not in marks and listener._digest_run is None:
                marks["composed"] = now
                cpu["composed"] = time.process_time()
                result["rss_after_compose_mib"] = _rss_mib()
            if errors:
                fail(BenchError("the notifier logged an error:\n" + errors[0]))

        print(json.dumps({"phase": "start", "t": time.monotonic()}), flush=True)
        stall_monitor = LoopingCall(monitor)
        stall_monitor.clock = reactor
        last = [time.monotonic()]
        marks["start"] = time.monotonic()
        cpu["start"] = time.process_time()
        stall_monitor.start(MONITOR_EVERY, now=False)
        gc.callbacks.append(on_gc)
        if profile is not None:
            profile.enable()
        listener._send_digests()  # what the digests' minute loop does every TICK
        timeout = reactor.callLater(CHILD_TIMEOUT - 60, done.cancel)
        try:
            await done
        finally:
            if timeout.active():
                timeout.cancel()
            marks["delivered"] = time.monotonic()
            cpu["delivered"] = time.process_time()
            if profile is not None:
                profile.disable()
                profile.dump_stats(str(directory / "run.prof"))
            stall_monitor.stop()
            globalLogPublisher.removeObserver(observe)
            gc.callbacks.remove(on_gc)
        result["rss_at_end_mib"] = _rss_mib()
        if "composed" not in marks:
            raise BenchError("all delivered, but the listener is still composing")
        await committer.idle()
        listener.stop()
        await outbox.stop()
        await channel.close()
        await on_store(store.close)

        def check() -> dict[str, Any]:
            with closing(sqlite3.connect(path)) as db:
                return {
                    "outbox_states": dict(
                        db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state")
                    ),
                    "text_bytes_avg": db.execute(
                        "SELECT AVG(LENGTH(text) + COALESCE(LENGTH(html), 0)) FROM outbox"
                    ).fetchone()[0],
                    "items_left": db.execute(
                        "SELECT COUNT(*) FROM notifier_digest_items"
                    ).fetchone()[0],
                    "digests_sent": db.execute(
                        "SELECT COUNT(*) FROM notifier_digest_sent"
                    ).fetchone()[0],
                }

        checked = await on_store(check)
        result.update(checked)
        if (
            checked["outbox_states"] != {"delivered": count}
            or checked["items_left"]
            or checked["digests_sent"] != count
        ):
            raise BenchError(f"the store does not show every digest delivered: {checked}")
        result["commits_at"] = commits
        result["tally"] = tally
        result["delivered_at"] = delivered_at

    def finish(outcome: Any) -> None:
        if outcome is not None and hasattr(outcome, "getTraceback"):
            result["error"] = outcome.getTraceback()
        for made in pools:
            made.stop()
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(main()).addBoth(finish))
    reactor.run()
    result["marks"] = marks
    result["cpu"] = cpu
    result["gc"] = {
        f"gen{generation}": {
            "count": sum(1 for g, _, _ in collections if g == generation),
            "total_ms": sum(s for g, _, s in collections if g == generation) * 1000,
            "max_ms": max((s for g, _, s in collections if g == generation), default=0) * 1000,
        }
        for generation in (0, 1, 2)
    }
    result["gc"]["gen2_at_s"] = [
        (round(at - marks.get("start", 0.0), 3), round(s * 1000, 1))
        for g, at, s in collections
        if g == 2
    ]
    result["reactor_gaps"] = _gap_figures(gaps, marks.get("start", 0.0), marks.get("composed"))
    return result


def _gap_figures(
    gaps: list[tuple[float, float]], start: float, composed: float | None
) -> dict[str, Any]:
    """The stall monitor's gaps (ms): the longest, while composing and after, the 99th
    percentile, how many exceeded 50 ms, and the five longest as (end, s from start; ms)."""
    if not gaps:
        return {}
    ms = sorted(gap * 1000 for _, gap in gaps)
    during = [gap * 1000 for at, gap in gaps if composed is None or at <= composed]
    after = [gap * 1000 for at, gap in gaps if composed is not None and at > composed]
    return {
        "calls": len(gaps),
        "max_ms": ms[-1],
        "max_composing_ms": max(during, default=0.0),
        "max_after_ms": max(after, default=0.0),
        "p99_ms": ms[min(len(ms) - 1, len(ms) * 99 // 100)],
        "median_ms": ms[len(ms) // 2],
        "over_50ms": sum(1 for gap in ms if gap > 50),
        "longest": [
            (round(at - start, 3), round(gap * 1000, 1))
            for at, gap in sorted(gaps, key=lambda g: g[1])[-5:]
        ],
    }


def child_naive(port: int, count: int, threads: int) -> dict[str, Any]:
    import smtplib
    from concurrent.futures import ThreadPoolExecutor

    from notifier.mime import MessageBuilder

    result: dict[str, Any] = {"variant": "naive", "threads": threads}
    marks: dict[str, float] = {}
    cpu: dict[str, float] = {}
    state, recipients, items, _ = build_state(count)
    result["rss_after_state_mib"] = _rss_mib()
    builder = MessageBuilder(SENDER)
    delivered_at: list[float] = []
    lock = threading.Lock()
    print(json.dumps({"phase": "start", "t": time.monotonic()}), flush=True)
    marks["start"] = time.monotonic()
    cpu["start"] = time.process_time()
    messages = compose_all(state, recipients, items, count)
    marks["composed"] = time.monotonic()
    cpu["composed"] = cpu["enqueued"] = time.process_time()
    result["rss_after_compose_mib"] = _rss_mib()

    def send(message: Any) -> None:
        data, _ = builder.build(message, time.time())
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(builder.envelope_sender, [message.recipient], data)
        with lock:
            delivered_at.append(time.monotonic())

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(send, m) for m in messages]:
            future.result()
    marks["enqueued"] = marks["composed"]  # nothing is stored: sending starts at once
    marks["delivered"] = time.monotonic()
    cpu["delivered"] = time.process_time()
    result["rss_at_end_mib"] = _rss_mib()
    result["text_bytes_avg"] = sum(len(m.text) + len(m.html or "") for m in messages) / count
    result["tally"] = {"ok": len(delivered_at), "failed": count - len(delivered_at)}
    result["delivered_at"] = delivered_at
    result["marks"] = marks
    result["cpu"] = cpu
    return result


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=("renga", "naive"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args(argv)
    if options.variant == "renga":
        result = child_renga(
            options.port, options.count, options.pool, options.dir, options.profile
        )
    else:
        result = child_naive(options.port, options.count, options.threads)
    print(json.dumps(result), flush=True)
    return 0


# --- the parent -----------------------------------------------------------------------------------


def run_variant(
    variant: str, count: int, extra: list[str], directory: Path, pin: bool
) -> dict[str, Any]:
    sink = subprocess.Popen(
        pinned([sys.executable, "-m", "bench", "smtpsink", "--port", "0"], 0 if pin else None),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert sink.stdout is not None
        ready = sink.stdout.readline().split()
        if ready[:1] != ["ready"]:
            raise BenchError(f"the SMTP sink did not start: {ready}")
        port = int(ready[1])
        child = subprocess.Popen(
            pinned(
                [
                    sys.executable,
                    "-m",
                    "bench",
                    "digests",
                    "--child",
                    variant,
                    "--port",
                    str(port),
                    "--count",
                    str(count),
                    "--dir",
                    str(directory),
                    *extra,
                ],
                1 if pin else None,
            ),
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        samples: list[tuple[float, float]] = []
        lines: list[str] = []

        def read() -> None:
            assert child.stdout is not None
            for line in child.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + CHILD_TIMEOUT
        sink_cpu_before = cpu_seconds(sink.pid)
        while child.poll() is None:
            try:
                samples.append((time.monotonic(), rss_bytes(child.pid) / 2**20))
            except (FileNotFoundError, ProcessLookupError):
                break
            if time.monotonic() > deadline:
                child.kill()
                raise BenchError(f"{variant} did not finish in {CHILD_TIMEOUT:.0f} s")
            time.sleep(SAMPLE_EVERY)
        child.wait()
        reader.join(10)
        sink_cpu = cpu_seconds(sink.pid) - sink_cpu_before
        if child.returncode != 0 or not lines:
            raise BenchError(f"{variant} failed with {child.returncode}")
        result: dict[str, Any] = json.loads(lines[-1])
        if "error" in result:
            raise BenchError(f"{variant} failed:\n{result['error']}")
    finally:
        if sink.poll() is None:
            sink.terminate()
        out, _ = sink.communicate(timeout=30)
    sunk = json.loads(out.strip().splitlines()[-1])
    return summarise(result, samples, sunk, sink_cpu, count)


def summarise(
    result: dict[str, Any],
    samples: list[tuple[float, float]],
    sunk: dict[str, Any],
    sink_cpu: float,
    count: int,
) -> dict[str, Any]:
    """The figures of one run.  Marks: `start`; `composed` (the last digest composed);
    `enqueued` (sending may begin: renga's first turn committed, naive's composing done);
    `delivered` (the last 250).  For renga, composing and sending overlap."""
    marks = result.pop("marks")
    cpu = result.pop("cpu")
    delivered = result.pop("delivered_at")
    gaps = result.pop("reactor_gaps", None)
    commits = result.pop("commits_at", None)
    start, end = marks["start"], marks["delivered"]
    total = end - start
    sending = end - marks["enqueued"]
    times = sorted(sunk.pop("times"))
    # The steady rate: the middle 80% of the deliveries.
    delivered.sort()
    lo, hi = delivered[len(delivered) // 10], delivered[len(delivered) * 9 // 10]
    steady = (len(delivered) * 8 // 10) / (hi - lo) if hi > lo else float("nan")
    rss = [(round(t - start, 2), round(m, 1)) for t, m in samples]
    figures = {
        **result,
        "count": count,
        "end_to_end_s": total,
        "mails_per_s": count / total,
        "compose_s": marks["composed"] - start,
        "first_commit_s": marks["enqueued"] - start,
        "first_delivery_s": delivered[0] - start if delivered else float("nan"),
        "send_s": sending,
        "after_compose_s": end - marks["composed"],
        "send_mails_per_s": count / sending,
        "steady_send_mails_per_s": steady,
        "sender_cpu_ms_per_mail": {
            "total": (cpu["delivered"] - cpu["start"]) / count * 1000,
            "composing": (cpu["composed"] - cpu["start"]) / count * 1000,
            "after_composing": (cpu["delivered"] - cpu["composed"]) / count * 1000,
        },
        "sink_cpu_ms_per_mail": sink_cpu / count * 1000,
        "sink": {
            **sunk,
            "cpu_s": sink_cpu,
            "first_to_last_s": times[-1] - times[0] if times else 0,
        },
        "rss_peak_mib": max(m for _, m in samples) if samples else float("nan"),
        "rss_series_mib": rss[:: max(1, len(rss) // 60)],
    }
    figures["sender_cpu_ms_total"] = figures["sender_cpu_ms_per_mail"]["total"]
    figures["delivered_while_composing"] = sum(1 for t in delivered if t <= marks["composed"])
    if commits is not None:
        figures["first_handed_s"] = marks["handed"] - start
        figures["turns_committed"] = len(commits)
        figures["turns_committed_while_composing"] = sum(
            1 for t in commits if t <= marks["composed"]
        )
        figures["turns_committed_at_s"] = [round(t - start, 3) for t in commits]
    if gaps:
        figures["reactor_gaps_ms"] = gaps
        figures["max_reactor_stall_ms"] = gaps["max_ms"]
    return figures


SUMMARY_KEYS = (
    "mails_per_s",
    "end_to_end_s",
    "compose_s",
    "first_commit_s",
    "first_delivery_s",
    "send_s",
    "after_compose_s",
    "send_mails_per_s",
    "steady_send_mails_per_s",
    "sender_cpu_ms_total",
    "sink_cpu_ms_per_mail",
    "max_reactor_stall_ms",
    "delivered_while_composing",
    "rss_peak_mib",
    "rss_after_state_mib",
    "rss_after_compose_mib",
)


def describe(figures: dict[str, Any]) -> str:
    """One line of figures (one run's or medians)."""
    text = (
        f"{figures['mails_per_s']:6.0f} mails/s end to end ({figures['end_to_end_s']:.1f} s: "
        f"composed by {figures['compose_s']:.1f} s, first 250 at "
        f"{figures['first_delivery_s']:.2f} s, last {figures['after_compose_s']:.1f} s after "
        f"composing; sending {figures['send_s']:.1f} s = {figures['send_mails_per_s']:.0f}/s); "
        f"CPU {figures['sender_cpu_ms_total']:.2f} ms/mail, sink "
        f"{figures['sink_cpu_ms_per_mail']:.2f}; RSS peak {figures['rss_peak_mib']:.0f} MiB"
    )
    if "max_reactor_stall_ms" in figures:
        text += (
            f"; {figures['delivered_while_composing']:.0f} delivered while composing;"
            f" longest reactor stall {figures['max_reactor_stall_ms']:.0f} ms"
        )
    return text


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench digests", description=__doc__)
    parser.add_argument("--digests", type=int, default=10_000)
    parser.add_argument("--pool", type=int, default=10, help="SmtpChannel connections")
    parser.add_argument(
        "--also-pool", type=int, default=4, help="also run renga with this pool (0: no)"
    )
    parser.add_argument("--naive-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true")
    options = parser.parse_args(argv)
    pin = not options.no_pin and (os.cpu_count() or 1) >= 2
    variants: list[tuple[str, str, list[str]]] = [
        (f"renga pool {options.pool}", "renga", ["--pool", str(options.pool)]),
        (
            f"naive, {options.naive_threads} thread",
            "naive",
            ["--threads", str(options.naive_threads)],
        ),
    ]
    if options.also_pool:
        variants.append(
            (f"renga pool {options.also_pool}", "renga", ["--pool", str(options.also_pool)])
        )
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in variants}
    with temp_directory("renga-bench-digests-") as directory:
        for number in range(options.rounds):
            for index, (label, variant, extra) in enumerate(variants):
                folder = directory / f"{number}-{index}-{variant}"
                folder.mkdir()
                log(f"round {number + 1}: {label}")
                figures = run_variant(variant, options.digests, extra, folder, pin)
                runs[label].append(figures)
                log(
                    f"  {describe(figures)}; sink got {figures['sink']['messages']} on "
                    f"{figures['sink']['connections']} connections"
                )
    summary = {
        label: {
            key: median([r[key] for r in rounds])
            for key in SUMMARY_KEYS
            if all(key in r for r in rounds)
        }
        for label, rounds in runs.items()
    }
    lines = [f"digests: {options.digests} per variant, medians of {options.rounds} round(s)"]
    for label, figures in summary.items():
        lines.append(f"  {label:18} {describe(figures)}")
    first = variants[0][0]
    naive = variants[1][0]
    ratio = summary[first]["mails_per_s"] / summary[naive]["mails_per_s"]
    verdict = "met" if summary[first]["mails_per_s"] >= GOAL else "NOT met"
    lines.append(f"  {first} / naive: {ratio:.2f}; goal >= {GOAL:.0f} mails/s: {verdict}")
    print("\n".join(lines))
    path = save_results(
        "digests", {"options": vars(options), "pinned": pin, "summary": summary, "runs": runs}
    )
    log(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
