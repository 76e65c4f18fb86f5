"""Digest mail: 10,000 digests rendered and delivered to a real aiosmtpd in another process,
through Renga's own path against the naive way, side by side in one run.

Each variant runs as its own child process (so their memory can be compared), against a fresh
SMTP sink process (`bench/smtpsink.py`: aiosmtpd, counts and drops).  With two cores, the
sender is pinned to core 1 and the sink to core 0.  The parent samples each child's RSS every
0.2 s.  Both children first build the same planning state in memory (10,000 users with an
email address, 5,000 events with 10 invitees, options, votes and comments; untimed), then time:

- **renga**: the real code paths on a Twisted asyncio reactor, as a herd server's notifier
  does at digest time: `compose_digest` for every user (on the reactor, in one go, as
  `NotifierListener._send_digests` does), `enqueue` of all of them in one transaction on a
  store thread (a second SQLite connection, WAL, as the server's store), then `Outbox.wake()`:
  the outbox claims rows on its own thread and delivers them through `SmtpChannel`
  (`MessageBuilder`, aiosmtplib over a pool of reused connections; `--pool` connections, the
  outbox's default 10 deliveries in flight).  Done when every delivery has been confirmed (the
  sink's 250), and the outbox rows say `delivered`.
- **naive**: the same `compose_digest` and `MessageBuilder.build`, then for each mail a new
  `smtplib.SMTP` connection (EHLO, MAIL, RCPT, DATA, QUIT) in one worker thread, one after the
  other; no outbox, so nothing is durable.

Mails/s end to end: digests composed and delivered per second, from the first compose to the
last 250.  Goal: >= 600 mails/s for renga.

    python -m bench digests [--digests 10000] [--pool 10] [--also-pool 4]
"""

from __future__ import annotations

import argparse
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
    log,
    median,
    pinned,
    rss_bytes,
    save_results,
    temp_directory,
)

GOAL = 600.0
SAMPLE_EVERY = 0.2
CHILD_TIMEOUT = 900.0
SENDER = "Renga <renga@bench.invalid>"
ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC", "Australia/Sydney")


# --- the state both variants mail about --------------------------------------------------------


def build_state(users: int) -> tuple[Any, list[Any], list[list[Any]]]:
    """A planning state with `users` users (email, a zone, daily digests) and users/2 events of
    10 invitees with two times, a place, votes and a comment each; and each user's digest items
    (new options, votes, comments on up to three of their events)."""
    from herd.events import (
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
        PlanningState,
        SetUserField,
        UserField,
    )
    from notifier.digest import DigestItem
    from notifier.message import Kind, Recipient

    state = PlanningState()
    counter = iter(range(1, 10**9))
    now = time.time_ns()

    def op(actor: str, body: Any) -> Op:
        made = Op(f"Bench.x.{next(counter)}", state.next_time(now), actor, body)
        state.apply(made)
        return made

    names = [f"u{i:05d}" for i in range(users)]
    for index, name in enumerate(names):
        op(OPERATOR, AddUser(name))
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
    return state, recipients, [items[name] for name in names]


def compose_all(state: Any, recipients: list[Any], items: list[list[Any]], count: int) -> list[Any]:
    from notifier.digest import compose_digest
    from notifier.render import Unsubscribe

    unsubscribe = Unsubscribe(
        b"bench-secret", "mailto:renga@bench.invalid?subject=OPTOUT%20{user}%20{token}"
    )
    now_ns = time.time_ns()
    out = []
    for index in range(count):
        k = index % len(recipients)
        message = compose_digest(recipients[k], state, items[k], now_ns, unsubscribe)
        if message is None:
            raise BenchError(f"no digest for {recipients[k].user}")
        out.append(message)
    return out


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
    from twisted.internet import reactor as installed
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from notifier.channels.smtp import SmtpChannel
    from notifier.outbox import OUTBOX_SCHEMA, Outbox, enqueue

    reactor: Any = installed

    result: dict[str, Any] = {"variant": "renga", "pool": pool}
    marks: dict[str, float] = {}
    cpu: dict[str, float] = {}
    profile = cProfile.Profile() if profiled else None

    def thread_pool(name: str) -> ThreadPool:
        made = ThreadPool(minthreads=1, maxthreads=1, name=name)
        made.start()
        return made

    async def main() -> None:
        state, recipients, items = build_state(count)
        result["rss_after_state_mib"] = _rss_mib()
        path = directory / "outbox.sqlite"
        store_pool, outbox_pool = thread_pool("store"), thread_pool("outbox")
        import sqlite3

        store_db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        store_db.execute("PRAGMA journal_mode=WAL")
        store_db.execute("PRAGMA synchronous=NORMAL")
        store_db.executescript(OUTBOX_SCHEMA)
        smtp = SmtpChannel(
            "127.0.0.1", port, SENDER, tls="none", pool_size=pool, now=reactor.seconds
        )
        done: Deferred[None] = Deferred()
        tally = {"ok": 0, "failed": 0}
        delivered_at: list[float] = []

        class Counting:
            name = "email"

            def deliver(self, message: Any) -> Deferred[None]:
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
        outbox = Outbox(
            path,
            {"email": channel},
            reactor,
            lambda work: deferToThreadPool(reactor, outbox_pool, work),
            lambda: 0.5,
        )
        await outbox.start()
        print(json.dumps({"phase": "start", "t": time.monotonic()}), flush=True)
        marks["start"] = time.monotonic()
        cpu["start"] = time.process_time()
        if profile is not None:
            profile.enable()
        messages = compose_all(state, recipients, items, count)
        if profile is not None:
            profile.disable()
            profile.dump_stats(str(directory / "compose.prof"))
            profile.clear()
        marks["composed"] = time.monotonic()
        cpu["composed"] = time.process_time()
        result["rss_after_compose_mib"] = _rss_mib()
        result["text_bytes_avg"] = sum(len(m.text) + len(m.html or "") for m in messages) / count

        def write() -> None:
            store_db.execute("BEGIN IMMEDIATE")
            enqueue(store_db, messages, time.time())
            store_db.execute("COMMIT")

        await deferToThreadPool(reactor, store_pool, write)
        marks["enqueued"] = time.monotonic()
        cpu["enqueued"] = time.process_time()
        messages.clear()  # the rows hold them now, as in the server
        if profile is not None:
            profile.enable()
        outbox.wake()
        timeout = reactor.callLater(CHILD_TIMEOUT - 60, done.cancel)
        await done
        if timeout.active():
            timeout.cancel()
        marks["delivered"] = time.monotonic()
        cpu["delivered"] = time.process_time()
        if profile is not None:
            profile.disable()
            profile.dump_stats(str(directory / "send.prof"))
        result["rss_at_end_mib"] = _rss_mib()
        await outbox.stop()
        await channel.close()
        check = sqlite3.connect(path)
        states = dict(check.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state"))
        check.close()
        store_db.close()
        store_pool.stop()
        outbox_pool.stop()
        result["outbox_states"] = states
        result["tally"] = tally
        result["delivered_at"] = delivered_at

    def finish(outcome: Any) -> None:
        if outcome is not None and hasattr(outcome, "getTraceback"):
            result["error"] = outcome.getTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(main()).addBoth(finish))
    reactor.run()
    result["marks"] = marks
    result["cpu"] = cpu
    return result


def child_naive(port: int, count: int, threads: int) -> dict[str, Any]:
    import smtplib
    from concurrent.futures import ThreadPoolExecutor

    from notifier.channels.smtp import MessageBuilder

    result: dict[str, Any] = {"variant": "naive", "threads": threads}
    marks: dict[str, float] = {}
    cpu: dict[str, float] = {}
    state, recipients, items = build_state(count)
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
    marks["enqueued"] = marks["composed"]
    marks["delivered"] = time.monotonic()
    cpu["delivered"] = time.process_time()
    result["rss_at_end_mib"] = _rss_mib()
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
    marks = result.pop("marks")
    cpu = result.pop("cpu")
    delivered = result.pop("delivered_at")
    start, end = marks["start"], marks["delivered"]
    total = end - start
    sending = end - marks["enqueued"]
    times = sorted(sunk.pop("times"))
    # The steady rate: the middle 80% of the deliveries.
    delivered.sort()
    lo, hi = delivered[len(delivered) // 10], delivered[len(delivered) * 9 // 10]
    steady = (len(delivered) * 8 // 10) / (hi - lo) if hi > lo else float("nan")
    rss = [(round(t - start, 2), round(m, 1)) for t, m in samples]
    return {
        **result,
        "count": count,
        "end_to_end_s": total,
        "mails_per_s": count / total,
        "compose_s": marks["composed"] - start,
        "enqueue_s": marks["enqueued"] - marks["composed"],
        "send_s": sending,
        "send_mails_per_s": count / sending,
        "steady_send_mails_per_s": steady,
        "sender_cpu_ms_per_mail": {
            "compose": (cpu["composed"] - cpu["start"]) / count * 1000,
            "enqueue": (cpu["enqueued"] - cpu["composed"]) / count * 1000,
            "send": (cpu["delivered"] - cpu["enqueued"]) / count * 1000,
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
                    f"  {figures['mails_per_s']:.0f} mails/s end to end "
                    f"(compose {figures['compose_s']:.1f} s, enqueue {figures['enqueue_s']:.2f} s,"
                    f" send {figures['send_s']:.1f} s = {figures['send_mails_per_s']:.0f}/s); "
                    f"sink got {figures['sink']['messages']} on {figures['sink']['connections']}"
                    f" connections; RSS peak {figures['rss_peak_mib']:.0f} MiB"
                )
    summary = {
        label: {
            key: median([r[key] for r in rounds])
            for key in (
                "mails_per_s",
                "end_to_end_s",
                "compose_s",
                "enqueue_s",
                "send_s",
                "send_mails_per_s",
                "steady_send_mails_per_s",
                "rss_peak_mib",
                "rss_after_state_mib",
                "rss_after_compose_mib",
            )
        }
        for label, rounds in runs.items()
    }
    lines = [f"digests: {options.digests} per variant, medians of {options.rounds} round(s)"]
    for label, figures in summary.items():
        lines.append(
            f"  {label:18} {figures['mails_per_s']:6.0f} mails/s end to end "
            f"({figures['end_to_end_s']:.1f} s: compose {figures['compose_s']:.1f}, enqueue "
            f"{figures['enqueue_s']:.2f}, send {figures['send_s']:.1f} s = "
            f"{figures['send_mails_per_s']:.0f}/s); RSS peak {figures['rss_peak_mib']:.0f} MiB"
        )
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
