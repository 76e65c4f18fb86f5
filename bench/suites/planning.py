"""Planning at scale: 10,000 events with 10 invitees each and 100,000 votes over a five-server
herd, then how soon every server shows the same thing, then planning commands per second on
one server beside IAMAT's.

A five-server herd (default topology) is started as a user would (`herd run` processes, a
config in a temp dir, free ports; no `[smtp]`/`[xmpp]`, so notifications are line pushes only,
rendered on every server).  Then:

1. **Users.** A few with the real `herd user add` command (timed: one process each), the rest
   through the same operator handshake over one connection, pipelined (`bench/tools/lines.py`).  All
   share one token, so the bench can log in as anyone.  Each user gets one connection, user i
   on server i mod 5, authenticated with `AUTH` (scrypt, on each server's CPU thread).
2. **Setup.** Event e is organised by user e mod U and invites 10 other users; the organiser
   sends `PLAN`, then `INVITE <id> <10 users>` and `PROPOSE <id> TIME <2030…>` (3 ops per
   event).  The bench waits until every server holds every op (convergence of the setup).
3. **Votes.** Every invitee votes (`VOTE <id> <option> YES|MAYBE|NO`) on each event they are
   invited to, from their own connection on their own server, `--inflight` votes in flight
   per connection: votes arrive at all five servers at once.  Timed: the whole phase, each
   vote's round trip, every server's CPU.
4. **Convergence.** From the reply to the last vote: (a) every server's op count equals the
   number of ops accepted (read from each server's SQLite file, read-only, every 20 ms), and
   (b) `EVENT <id>` for a sample of events (the last ones voted on, and random ones) gives the
   same reply, byte for byte, on all five servers.  The time to both is the figure.  Then
   every event is compared on all five servers (untimed check).
5. **One server.** Bailey is pinned to core 1, everything else to core 0 (as `bench iamat`).
   In each round: planning writes (`VOTE`, changing a vote: one op each, stored, flooded,
   routed), planning reads (`EVENT <id>`), and IAMAT from `bench/tools/loadgen.py` (new clients,
   each stored and flooded), each as 50 connections x 20 in flight; requests/s and Bailey's
   CPU per request, medians over the rounds.

Afterwards, with the herd stopped, Bailey's database is read back in this process to time what
a server does with this much state: its restart (`Replica.restore`), and one look for due
reminders (`due_reminders`, which every server's notifier runs every minute on the reactor).

    python -m bench planning [--events 10000] [--invitees 10] [--users 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    BenchError,
    Herd,
    HerdLayout,
    bailey_profiled,
    cpu_seconds,
    herd_command,
    median,
    percentile,
    rss_bytes,
    save_results,
    temp_directory,
    wait_quiet,
)
from bench.suites.iamat import run_loadgen
from bench.tools.lines import LineClient, Operator, authed_many, closed_loop, reply_json, user_token
from bench.tools.loadgen import new_event_loop
from herd.config import load_config
from tests.support.herd import NAMES
from tests.support.processes import Processes, log

TIME_OPTION = "2030-06-01T19:00Z"
CHOICES = ("YES", "YES", "MAYBE", "NO")
CLI_USERS = 5
POLL_INTERVAL = 0.02
CONVERGE_TIMEOUT = 300.0


@dataclass(frozen=True)
class Options:
    users: int
    events: int
    invitees: int
    inflight: int
    sample: int
    rounds: int
    one_server_count: int
    iamat_count: int
    pin: bool
    cprofile: Path | None = None


def user_name(index: int) -> str:
    return f"u{index:05d}"


def invitees_of(event: int, users: int, count: int) -> list[int]:
    """`count` distinct users other than the organiser (event mod users), spread evenly."""
    organiser = event % users
    stride = max(1, (users - 1) // count)
    shift = (event // users) % stride
    return [(organiser + 1 + shift + k * stride) % users for k in range(count)]


def choice_of(event: int, user: int) -> str:
    return CHOICES[(event * 31 + user * 17) % len(CHOICES)]


# --- reading a server's store from outside -----------------------------------------------------


def op_count(db_path: Path) -> int:
    """Ops a server has committed (its SQLite file, read-only; WAL lets it keep writing)."""
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM ops").fetchone()[0])
    except sqlite3.OperationalError:
        return -1


# --- phases -----------------------------------------------------------------------------------


class NotConverged(BenchError):
    """The herd did not converge in time (what it reached is in the results)."""


class Run:
    def __init__(self, options: Options, herd: Herd) -> None:
        self.options = options
        self.herd = herd
        self.ports = [herd.port(name) for name in NAMES]
        self.users = [user_name(i) for i in range(options.users)]
        self.token = ""
        self.clients: list[LineClient] = []
        self.event_ids: list[str] = []
        self.option_ids: list[str] = []
        self.ops = 0  # ops accepted by the herd so far
        self.results: dict[str, Any] = {}

    def db_paths(self) -> list[Path]:
        return [self.herd.directory / "var" / f"{name}.sqlite" for name in NAMES]

    def op_counts(self) -> list[int]:
        return [op_count(path) for path in self.db_paths()]

    async def create_users(self) -> None:
        options = self.options
        token, digest = user_token()
        self.token = token
        # The real command for a few (each its own process, as an operator would run it).
        cli_times = []
        config = str(self.herd.config_path)
        for index in range(min(CLI_USERS, options.users)):
            start = time.perf_counter()
            done = await asyncio.to_thread(
                subprocess.run,
                [herd_command(), "user", "add", self.users[index], "--config", config],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            cli_times.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise BenchError(f"herd user add failed: {done.stderr}")
        self.ops += 2 * len(cli_times)
        # `herd user add` prints a fresh token per user; the bench needs one it knows for
        # those, so it sets them to the shared one (USER-TOKEN, one op each).
        secret = load_config(self.herd.config_path, os.environ).secret
        operator = await Operator.open(secret, NAMES[0], self.ports[0])
        try:
            for user in self.users[: len(cli_times)]:
                reply = await operator.client.ask(f"USER-TOKEN {user} {digest}".encode())
                if not reply.startswith(b"OK "):
                    raise BenchError(f"USER-TOKEN refused: {reply!r}")
            self.ops += len(cli_times)
            rest = self.users[len(cli_times) :]
            seconds = await operator.add_users(rest, digest)
            self.ops += 2 * len(rest)
        finally:
            operator.close()
        self.results["users"] = {
            "count": options.users,
            "cli_user_add_s": cli_times,
            "cli_user_add_median_s": median(cli_times),
            "operator_pipelined": len(rest),
            "operator_s": seconds,
            "operator_per_s": len(rest) / seconds if seconds else None,
        }
        log(
            f"users: `herd user add` {median(cli_times):.2f} s each ({len(cli_times)}); "
            f"{len(rest)} more through one operator connection in {seconds:.2f} s"
        )
        await self.wait_ops("users")
        start = time.perf_counter()
        self.clients = await authed_many(self.ports, self.users, token)
        auth_s = time.perf_counter() - start
        self.results["users"]["auth_s"] = auth_s
        log(f"users: {len(self.clients)} connections authenticated in {auth_s:.2f} s")

    async def setup_events(self) -> None:
        options = self.options
        users = options.users
        self.event_ids = [""] * options.events
        self.option_ids = [""] * options.events
        by_organiser: dict[int, list[int]] = {}
        for event in range(options.events):
            by_organiser.setdefault(event % users, []).append(event)

        async def organise(organiser: int, events: list[int]) -> None:
            client = self.clients[organiser]
            plans = [f"PLAN Bench event {event}".encode() for event in events]
            for event, reply in zip(
                events, await closed_loop(client, plans, options.inflight), strict=True
            ):
                self.event_ids[event] = reply_json(reply)["id"]
            lines = []
            for event in events:
                invited = " ".join(
                    user_name(u) for u in invitees_of(event, users, options.invitees)
                )
                lines.append(f"INVITE {self.event_ids[event]} {invited}".encode())
                lines.append(f"PROPOSE {self.event_ids[event]} TIME {TIME_OPTION}".encode())
            replies = await closed_loop(client, lines, options.inflight)
            for index, event in enumerate(events):
                reply_json(replies[2 * index])
                self.option_ids[event] = reply_json(replies[2 * index + 1])["times"][-1]["id"]

        pids = self.herd.pids()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        start = time.perf_counter()
        await asyncio.gather(*(organise(o, events) for o, events in by_organiser.items()))
        elapsed = time.perf_counter() - start
        commands = 3 * options.events
        self.ops += commands
        converged = await self.wait_ops("setup")
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        self.results["setup"] = {
            "commands": commands,
            "elapsed_s": elapsed,
            "commands_per_s": commands / elapsed,
            "converged_after_last_reply_s": converged,
            "cpu_s": cpu,
        }
        log(
            f"setup: {commands} commands in {elapsed:.1f} s ({commands / elapsed:.0f}/s); "
            f"all servers hold every op {converged:.2f} s after the last reply"
        )

    async def wait_ops(self, what: str) -> float:
        """Seconds until every server has committed `self.ops` ops."""
        start = time.perf_counter()
        deadline = start + CONVERGE_TIMEOUT
        while True:
            counts = await asyncio.to_thread(self.op_counts)
            if all(count == self.ops for count in counts):
                return time.perf_counter() - start
            if any(count > self.ops for count in counts):
                raise BenchError(f"{what}: more ops than accepted: {counts} > {self.ops}")
            if time.perf_counter() > deadline:
                self.results["not_converged"] = {
                    "phase": what,
                    "after_s": CONVERGE_TIMEOUT,
                    "op_counts": dict(zip(NAMES, counts, strict=True)),
                    "expected": self.ops,
                    "link_drops": self.link_drops(),
                }
                raise NotConverged(f"{what}: not converged: {counts}, expected {self.ops}")
            self.herd.check_alive()
            await asyncio.sleep(POLL_INTERVAL)

    def link_drops(self) -> dict[str, int]:
        """How often each server dropped a peer link it found silent or not reading (from the
        servers' logs)."""
        drops = {}
        for name in NAMES:
            path = self.herd.directory / f"{name}.stderr"
            count = 0
            with path.open("rb") as log_file:
                for line in log_file:
                    if b"silent too long" in line or b"is not reading" in line:
                        count += 1
            drops[name] = count
        return drops

    async def vote(self) -> None:
        options = self.options
        users = options.users
        ballots: dict[int, list[bytes]] = {}
        for event in range(options.events):
            for user in invitees_of(event, users, options.invitees):
                ballots.setdefault(user, []).append(
                    f"VOTE {self.event_ids[event]} {self.option_ids[event]} "
                    f"{choice_of(event, user)}".encode()
                )
        total = sum(len(lines) for lines in ballots.values())
        latencies: list[int] = []
        last_reply = [0.0]
        bad: list[bytes] = []

        async def voter(user: int, lines: list[bytes]) -> None:
            replies = await closed_loop(self.clients[user], lines, options.inflight, latencies)
            last_reply[0] = max(last_reply[0], time.perf_counter())
            bad.extend(reply for reply in replies if not reply.startswith(b"EVENT "))

        await self.open_readers()
        pids = self.herd.pids()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        start = time.perf_counter()
        await asyncio.gather(*(voter(user, lines) for user, lines in ballots.items()))
        elapsed = last_reply[0] - start
        if bad:
            raise BenchError(f"{len(bad)} votes refused, e.g. {bad[0][:200]!r}")
        self.ops += total
        self.results["votes_sent"] = {"votes": total, "elapsed_s": elapsed}
        log(f"votes: {total} in {elapsed:.1f} s ({total / elapsed:.0f}/s); waiting to converge")
        # Convergence, from the reply to the last vote.
        ops_s = await self.wait_ops("votes")
        views_s, sample_size = await self.same_views(last_reply[0])
        for client in self.readers.values():
            client.close()
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        ms = [ns / 1e6 for ns in latencies]
        self.results["votes"] = {
            "votes": total,
            "connections": len(ballots),
            "inflight_per_connection": options.inflight,
            "elapsed_s": elapsed,
            "votes_per_s": total / elapsed,
            "latency_ms": {
                "p50": percentile(ms, 0.5),
                "p99": percentile(ms, 0.99),
                "max": max(ms),
            },
            "converged_ops_s": ops_s,
            "converged_views_s": views_s,
            "sample_events": sample_size,
            "cpu_s": cpu,
            "cpu_us_per_vote": {name: seconds / total * 1e6 for name, seconds in cpu.items()},
        }
        log(
            f"votes: every server holds every op {ops_s:.2f} s after the last vote; "
            f"sampled views equal {views_s:.2f} s after it"
        )

    async def views(self, client: LineClient, ids: list[str]) -> list[bytes]:
        return await closed_loop(client, [f"EVENT {i}".encode() for i in ids], 50)

    def sample_organisers(self) -> list[int]:
        """Organisers whose events are compared while timing: those of the last events (the
        last votes are on them) and as many picked at random."""
        options = self.options
        count = max(1, options.sample // max(1, options.events // options.users) // 2)
        last = [(options.events - 1 - i) % options.users for i in range(count)]
        rng = random.Random(7)
        others = [u for u in range(options.users) if u not in last]
        return list(dict.fromkeys(last + rng.sample(others, min(count, len(others)))))

    async def open_readers(self) -> None:
        """Before the votes: one connection per sampled organiser per server, authenticated
        (so no `AUTH` runs while convergence is timed)."""
        self.readers: dict[tuple[int, int], LineClient] = {}
        for organiser in self.sample_organisers():
            for server, port in enumerate(self.ports):
                client = await LineClient.open(port)
                reply = await client.ask(f"AUTH {user_name(organiser)} {self.token}".encode())
                if not reply.startswith(b"USER "):
                    raise BenchError(f"AUTH failed: {reply!r}")
                self.readers[organiser, server] = client

    async def same_views(self, since: float) -> tuple[float, int]:
        """Seconds from `since` until `EVENT` replies for the sampled organisers' events are
        equal on all servers (asked as their organiser: only participants may see an event)."""
        options = self.options
        by_organiser: dict[int, list[str]] = {}
        for organiser in self.sample_organisers():
            by_organiser[organiser] = [
                self.event_ids[e] for e in range(organiser, options.events, options.users)
            ]
        sample = sum(len(ids) for ids in by_organiser.values())
        deadline = time.perf_counter() + CONVERGE_TIMEOUT
        servers = range(len(self.ports))
        while True:
            answers = await asyncio.gather(
                *(
                    self.views(self.readers[organiser, server], ids)
                    for organiser, ids in by_organiser.items()
                    for server in servers
                )
            )
            groups = [
                answers[i : i + len(self.ports)] for i in range(0, len(answers), len(self.ports))
            ]
            if all(all(a == group[0] for a in group[1:]) for group in groups):
                return time.perf_counter() - since, sample
            if time.perf_counter() > deadline:
                raise BenchError("sampled event views never became equal")
            await asyncio.sleep(POLL_INTERVAL)

    async def compare_all(self) -> dict[str, Any]:
        """Every event, as its organiser sees it, on every server (untimed check)."""
        options = self.options
        start = time.perf_counter()
        mismatches = 0
        by_organiser: dict[int, list[str]] = {}
        for index, event_id in enumerate(self.event_ids):
            by_organiser.setdefault(index % options.users, []).append(event_id)
        gate = asyncio.Semaphore(20)

        async def check(organiser: int, ids: list[str]) -> int:
            async with gate:
                clients = []
                try:
                    for port in self.ports:
                        client = await LineClient.open(port)
                        clients.append(client)
                        await client.ask(f"AUTH {user_name(organiser)} {self.token}".encode())
                    answers = await asyncio.gather(*(self.views(c, ids) for c in clients))
                finally:
                    for client in clients:
                        client.close()
                for answer in answers:
                    for reply in answer:
                        reply_json(reply)
                return sum(1 for answer in answers[1:] if answer != answers[0])

        counts = await asyncio.gather(*(check(o, ids) for o, ids in by_organiser.items()))
        mismatches = sum(counts)
        checked = {
            "events": len(self.event_ids),
            "organisers_with_a_difference": mismatches,
            "seconds": time.perf_counter() - start,
        }
        log(f"check: all {len(self.event_ids)} events compared on all servers: {mismatches} differ")
        return checked

    async def one_server(self) -> None:
        """Bailey alone under load: planning writes, planning reads, IAMAT."""
        options = self.options
        bailey = self.herd.pid("Bailey")
        pids = self.herd.pids()
        me = os.getpid()
        if options.pin:
            pin_process(bailey, 1)
            for name, pid in pids.items():
                if name != "Bailey":
                    pin_process(pid, 0)
            os.sched_setaffinity(me, {0})
        try:
            rounds = []
            for number in range(options.rounds):
                rounds.append(await self.one_server_round(number))
            self.results["one_server"] = {
                "rounds": rounds,
                "median": {
                    kind: {
                        key: median([r[kind][key] for r in rounds])
                        for key in ("requests_per_s", "bailey_cpu_us", "p50_ms", "p99_ms")
                    }
                    for kind in rounds[0]
                },
                "pinned": options.pin,
            }
        finally:
            if options.pin:
                every = set(range(os.cpu_count() or 1))
                for pid in pids.values():
                    pin_process(pid, None)
                os.sched_setaffinity(me, every)

    async def one_server_round(self, number: int) -> dict[str, Any]:
        options = self.options
        users = options.users
        port = self.ports[0]
        pids = self.herd.pids()
        bailey = self.herd.pid("Bailey")
        # 50 users and the events they are invited to.
        chosen = list(range(number * 50, number * 50 + 50))
        invited: dict[int, list[int]] = {u % users: [] for u in chosen}
        for event in range(options.events):
            for user in invitees_of(event, users, options.invitees):
                if user in invited:
                    invited[user].append(event)
        per_connection = options.one_server_count // len(invited)
        clients = await authed_many([port], [user_name(u) for u in invited], self.token)
        result: dict[str, Any] = {}
        try:

            def write_lines(user: int, flip: int) -> list[bytes]:
                events = invited[user]
                lines = []
                for n in range(per_connection):
                    event = events[n % len(events)]
                    choice = CHOICES[(n + flip + number) % len(CHOICES)]
                    lines.append(
                        f"VOTE {self.event_ids[event]} {self.option_ids[event]} {choice}".encode()
                    )
                return lines

            def read_lines(user: int) -> list[bytes]:
                events = invited[user]
                return [
                    f"EVENT {self.event_ids[events[n % len(events)]]}".encode()
                    for n in range(per_connection)
                ]

            makers = {
                "planning_write": lambda user: write_lines(user, 1),
                "planning_read": read_lines,
            }
            for kind, make in makers.items():
                await asyncio.to_thread(wait_quiet, pids.values(), 0.5, 0.02, 120)
                before = cpu_seconds(bailey)
                latencies: list[int] = []
                start = time.perf_counter()
                batches = await asyncio.gather(
                    *(
                        closed_loop(
                            client,
                            make(user),
                            20,
                            latencies,
                        )
                        for client, user in zip(clients, invited, strict=True)
                    )
                )
                elapsed = time.perf_counter() - start
                await asyncio.to_thread(wait_quiet, pids.values(), 0.5, 0.02, 300)
                cpu = cpu_seconds(bailey) - before
                count = sum(len(batch) for batch in batches)
                bad = [r for batch in batches for r in batch if not r.startswith(b"EVENT ")]
                if bad:
                    raise BenchError(f"{kind}: {len(bad)} refused, e.g. {bad[0][:200]!r}")
                if kind == "planning_write":
                    self.ops += count
                ms = [ns / 1e6 for ns in latencies]
                result[kind] = {
                    "requests": count,
                    "requests_per_s": count / elapsed,
                    "bailey_cpu_us": cpu / count * 1e6,
                    "p50_ms": percentile(ms, 0.5),
                    "p99_ms": percentile(ms, 0.99),
                }
        finally:
            for client in clients:
                client.close()
        await asyncio.to_thread(wait_quiet, pids.values(), 0.5, 0.02, 300)
        before = cpu_seconds(bailey)
        load = await asyncio.to_thread(
            run_loadgen,
            port,
            50,
            20,
            options.iamat_count,
            0 if options.pin else None,
            f"pl{number}.",
        )
        await asyncio.to_thread(wait_quiet, pids.values(), 0.5, 0.02, 300)
        cpu = cpu_seconds(bailey) - before
        result["iamat"] = {
            "requests": load["answered"],
            "requests_per_s": load["requests_per_s"],
            "bailey_cpu_us": cpu / load["answered"] * 1e6,
            "p50_ms": load["latency_ms"]["p50"],
            "p99_ms": load["latency_ms"]["p99"],
        }
        log(
            f"one server, round {number + 1}: "
            + ", ".join(
                f"{kind} {r['requests_per_s']:.0f}/s ({r['bailey_cpu_us']:.0f} µs CPU)"
                for kind, r in result.items()
            )
        )
        return result


def pin_process(pid: int, cpu: int | None) -> None:
    """Every thread of `pid` onto `cpu` (None: all CPUs)."""
    cpus = set(range(os.cpu_count() or 1)) if cpu is None else {cpu}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (ProcessLookupError, OSError):
            continue


def offline_costs(db_path: Path) -> dict[str, Any]:
    """With the herd stopped: restore Bailey's state, and one look for due reminders."""
    from herd.server import Replica
    from herd.store import Store
    from notifier.routing import due_reminders

    store = Store(db_path)
    rss_before = rss_bytes(os.getpid())
    start = time.perf_counter()
    snapshot = store.open()
    replica = Replica.restore(snapshot)
    restore_s = time.perf_counter() - start
    rss_state = rss_bytes(os.getpid()) - rss_before
    store.close()
    now_ns = time.time_ns()
    start = time.perf_counter()
    due_reminders(replica.planning, now_ns, now_ns - 60 * 10**9)
    remind_s = time.perf_counter() - start
    return {
        "ops": len(snapshot.ops),
        "restore_s": restore_s,
        "state_rss_mib": rss_state / 2**20,  # the restored replica (and the snapshot it came from)
        "due_reminders_s": remind_s,
    }


def reminder_look(options: Options, repeat: int = 3) -> dict[str, Any]:
    """Without a herd: the same users, events, options and votes built in this process, then
    one `due_reminders` look (what every server's notifier runs on its reactor every minute)
    and one `Replica`-free state build, timed.  Best of `repeat` looks."""
    from herd.ops import OPERATOR, AddTime, AddUser, CastVote, Choice, CreateEvent, Invite, Op
    from herd.state import PlanningState
    from notifier.routing import due_reminders

    state = PlanningState()
    serial = iter(range(1, 10**9))
    now = time.time_ns()
    start = time.perf_counter()

    def op(actor: str, body: Any) -> Op:
        made = Op(f"B.x.{next(serial)}", state.next_time(now), actor, body)
        state.apply(made)
        return made

    for index in range(options.users):
        op(OPERATOR, AddUser(user_name(index)))
    at = int(time.time()) + 400 * 86400
    choices = {"YES": Choice.YES, "MAYBE": Choice.MAYBE, "NO": Choice.NO}
    for event in range(options.events):
        organiser = user_name(event % options.users)
        invited = [user_name(u) for u in invitees_of(event, options.users, options.invitees)]
        event_id = op(organiser, CreateEvent(f"Bench event {event}")).op_id
        op(organiser, Invite(event_id, tuple(invited)))
        option = op(organiser, AddTime(event_id, at)).op_id
        for index, user in enumerate(invited):
            choice = choices[choice_of(event, index)]
            op(user, CastVote(event_id, option, choice))
    build_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeat):
        now_ns = time.time_ns()
        start = time.perf_counter()
        due_reminders(state, now_ns, now_ns - 60 * 10**9)
        best = min(best, time.perf_counter() - start)
    return {"events": options.events, "build_s": build_s, "due_reminders_s": best}


async def run_async(options: Options, herd: Herd) -> dict[str, Any]:
    run = Run(options, herd)
    await run.create_users()
    try:
        await run.setup_events()
        await run.vote()
    except NotConverged as error:
        log(f"{error}; link drops so far: {run.results['not_converged']['link_drops']}")
        for client in run.clients:
            client.close()
        return run.results
    run.results["check"] = await run.compare_all()
    for client in run.clients:
        client.close()
    await run.one_server()
    run.results["ops_total"] = run.ops
    return run.results


def run(options: Options) -> dict[str, Any]:
    with temp_directory("renga-bench-planning-") as directory, Processes() as processes:
        launchers = bailey_profiled(options.cprofile)
        herd = Herd(processes, HerdLayout.default(), directory / "herd", launchers=launchers)
        herd.start()
        herd.wait_ready()
        log("herd up")
        loop = new_event_loop()
        try:
            results = loop.run_until_complete(run_async(options, herd))
        finally:
            loop.close()
        pids = herd.pids()
        peak = {name: _peak_rss(pid) for name, pid in pids.items()}
        results["rss_at_rest_mib"] = {name: rss_bytes(pid) / 2**20 for name, pid in pids.items()}
        processes.stop_all()
        results["peak_rss_mib"] = peak
        log("herd stopped; timing a restore and a reminder look on Bailey's database")
        results["offline"] = offline_costs(directory / "herd" / "var" / "Bailey.sqlite")
        return results


def _peak_rss(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cprofile_by_total(path: Path, top: int = 45) -> str:
    """Bailey's hot functions by inclusive time, as shares of the profiled run (the profiler
    inflates absolute times; compare the shares)."""
    import pstats

    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]
    grand = sum(own for (_, _, own, _, _) in raw.values())
    rows = []
    for (file, line, function), (_, calls, own, total, _) in raw.items():
        short = file.split("/site-packages/")[-1].split("/lib/python3.11/")[-1]
        for marker in ("/herd/", "/notifier/"):
            if marker in short:
                short = marker.strip("/") + "/" + short.rsplit(marker, 1)[1]
        rows.append((total, own, calls, f"{short}:{line}:{function}"))
    rows.sort(reverse=True)
    lines = [
        f"Bailey under cProfile: {grand:.1f} s of own time in all; by inclusive time:",
        "   incl %    own %      calls  function",
    ]
    for total, own, calls, name in rows[:top]:
        lines.append(f"  {total / grand:6.1%}  {own / grand:6.1%}  {calls:9d}  {name}")
    return "\n".join(lines)


def report(results: dict[str, Any], options: Options) -> str:
    if "not_converged" in results:
        failed = results["not_converged"]
        return (
            f"planning: NOT CONVERGED in the {failed['phase']} phase after {failed['after_s']:.0f}"
            f" s: op counts {failed['op_counts']}, expected {failed['expected']}; peer links "
            f"dropped (silent / not reading): {failed['link_drops']}"
        )
    users, setup, votes = results["users"], results["setup"], results["votes"]
    one = results["one_server"]["median"]
    lines = [
        f"planning: {options.events} events x {options.invitees} invitees, "
        f"{options.users} users, five servers",
        f"  users: `herd user add` {users['cli_user_add_median_s']:.2f} s each; "
        f"operator pipelined {users['operator_per_s']:.0f}/s; AUTH of all {users['auth_s']:.1f} s",
        f"  setup: {setup['commands']} commands, {setup['commands_per_s']:.0f}/s over the herd; "
        f"converged {setup['converged_after_last_reply_s']:.2f} s after the last reply",
        f"  votes: {votes['votes']} in {votes['elapsed_s']:.1f} s = {votes['votes_per_s']:.0f}/s; "
        f"round trip p50 {votes['latency_ms']['p50']:.1f} ms "
        f"p99 {votes['latency_ms']['p99']:.1f} ms",
        f"  convergence after the last vote: ops {votes['converged_ops_s']:.2f} s, "
        f"sampled views ({votes['sample_events']} events) {votes['converged_views_s']:.2f} s",
        "  CPU per vote (µs): "
        + ", ".join(f"{n} {v:.0f}" for n, v in votes["cpu_us_per_vote"].items()),
        f"  check: {results['check']['organisers_with_a_difference']} organisers' events differ",
        "  one server (Bailey), 50 conn x 20 in flight, medians:",
    ]
    for kind, figures in one.items():
        lines.append(
            f"    {kind:15} {figures['requests_per_s']:8.0f}/s  Bailey CPU "
            f"{figures['bailey_cpu_us']:6.0f} µs/req  p50 {figures['p50_ms']:.1f} ms "
            f"p99 {figures['p99_ms']:.1f} ms"
        )
    ratio = one["planning_write"]["requests_per_s"] / one["iamat"]["requests_per_s"]
    lines.append(f"    planning writes / IAMAT: {ratio:.2f}")
    off = results["offline"]
    lines.append(
        f"  with {off['ops']} ops: restore {off['restore_s']:.2f} s, "
        f"one reminder look {off['due_reminders_s']:.2f} s (every minute, on the reactor)"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench planning", description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--invitees", type=int, default=10)
    parser.add_argument("--inflight", type=int, default=4, help="per user connection")
    parser.add_argument("--sample", type=int, default=200, help="events compared while timing")
    parser.add_argument("--rounds", type=int, default=3, help="one-server rounds")
    parser.add_argument("--one-server-count", type=int, default=20_000)
    parser.add_argument("--iamat-count", type=int, default=100_000)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--cprofile", type=Path, default=None, help="run Bailey under cProfile, dump here"
    )
    parser.add_argument(
        "--reminders-only",
        action="store_true",
        help="no herd: build the state in this process and time one due_reminders look",
    )
    arguments = parser.parse_args(argv)
    if arguments.invitees >= arguments.users:
        parser.error("need more users than invitees per event")
    options = Options(
        users=arguments.users,
        events=arguments.events,
        invitees=arguments.invitees,
        inflight=arguments.inflight,
        sample=arguments.sample,
        rounds=arguments.rounds,
        one_server_count=arguments.one_server_count,
        iamat_count=arguments.iamat_count,
        pin=not arguments.no_pin and (os.cpu_count() or 1) >= 2,
        cprofile=arguments.cprofile,
    )
    if arguments.reminders_only:
        look = reminder_look(options)
        print(
            f"planning: {look['events']} events built in-process in {look['build_s']:.1f} s; "
            f"one due_reminders look {look['due_reminders_s'] * 1000:.0f} ms"
        )
        save_results("planning-reminders", {"options": options.__dict__, **look})
        return 0
    results = run(options)
    print(report(results, options))
    code = 1 if "not_converged" in results else 0
    if options.cprofile is not None:
        print(cprofile_by_total(options.cprofile))
    path = save_results("planning", {"options": options.__dict__, **results})
    log(f"saved {path}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
