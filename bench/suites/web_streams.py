"""Live event streams: one server holds 10,000 open Server-Sent Events streams of one event and
delivers one change to all of them (issue 12).

Renga: a one-server herd with `[web]` (`herd run`, pinned to the last core; the benchmark and
its client processes on the first).  The operator adds `--streams` users (what `herd user add`
does) and an organiser; the organiser plans one event, invites them all (`INVITE`, 50 a line)
and proposes a time.  Each user's session cookie is what their personal link sets (the first
one is opened through the site as a browser does; the others are made by the same signing
function, `herd.tokens.session_token`, with the herd's secret).  `--clients` client processes
(`bench/tools/sseclients.py`, asyncio) then open `GET /e/<event>/stream` for every user and hold
them.  The server's RSS is read once it is quiet before the streams are opened and again once
they are all open and it is quiet: memory per stream = the difference / streams.

Each trial: the server quiet, the clients armed, then the organiser sends `VOTE <event> <time>
YES` (NO the next trial, so each is a change) over the line protocol to the same server; the
figure is the time from writing the vote to the last stream receiving its event (every process
reads the same monotonic clock), with the median stream and the vote's reply beside it.

Baselines in the same run, right after, each on the same core with the same clients, the same
number of streams and trials, and an event as big as the one Renga sent: a bare asyncio SSE
fan-out (`bench/baselines/sse_floor.py`), and the same on twisted.web
(`bench/baselines/sse_twisted_floor.py`: `Request.write` to every held request, on the asyncio
reactor as `herd` installs it), which tells the framework's share from Renga's.

Goal: all 10,000 streams have the change within 200 ms.

    python -m bench web_streams [--streams 10000] [--trials 10] [--clients 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    BenchError,
    HerdLayout,
    bailey_profiled,
    cpu_count,
    cpu_seconds,
    median,
    percentile,
    port_open,
    raise_open_files_limit,
    rss_bytes,
    save_results,
    temp_directory,
    wait_for,
    wait_quiet,
)
from bench.tools.lines import LineClient, Operator, authed, reply_json, user_token
from bench.tools.loadgen import new_event_loop
from bench.tools.webscene import WebHerd, iso, session_cookie
from herd.tokens import WebClaim, link_token, session_token
from tests.support.ports import free_ports
from tests.support.processes import Processes, log
from web.rules import SESSION_COOKIE

GOAL_MS = 200.0
INVITE_BATCH = 50
TRIAL_TIMEOUT = 30.0


class Clients:
    """The `sseclients` processes holding the streams, driven over their stdin/stdout."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.processes = processes
        self.buffers: dict[int, bytes] = {}

    @classmethod
    def start(
        cls,
        port: int,
        targets: list[tuple[str, str]],
        count: int,
        directory: Path,
        cpu: int | None,
    ) -> Clients:
        started = []
        for index in range(count):
            part = targets[index::count]
            path = directory / f"streams-{port}-{index}.json"
            path.write_text(json.dumps(part))
            command = [sys.executable, "-m", "bench", "sseclients", "--port", str(port)]
            command += ["--streams", str(path)]
            if cpu is not None:
                command = ["taskset", "-c", str(cpu), *command]
            started.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        return cls(started)

    def read(self, process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        """The next JSON line of `process`, within `timeout` seconds."""
        assert process.stdout is not None
        fd = process.stdout.fileno()
        buffer = self.buffers.setdefault(fd, b"")
        deadline = time.monotonic() + timeout
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError("a stream client did not answer in time")
            readable, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if readable:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    process.wait(5)
                    raise BenchError(f"a stream client exited with {process.returncode}")
                buffer += chunk
        line, _, self.buffers[fd] = buffer.partition(b"\n")
        document: dict[str, Any] = json.loads(line)
        return document

    def ready(self, timeout: float = 600) -> dict[str, Any]:
        answers = [self.read(p, timeout) for p in self.processes]
        return {
            "ready": sum(a["ready"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "open_s": max(a["open_s"] for a in answers),
        }

    def send(self, line: str) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(line.encode() + b"\n")
            process.stdin.flush()

    def arm(self) -> int:
        self.send(f"arm {TRIAL_TIMEOUT}")
        return sum(self.read(p, 30)["armed"] for p in self.processes)

    def arrivals(self) -> tuple[list[int], int, int, float]:
        answers = [self.read(p, TRIAL_TIMEOUT + 30) for p in self.processes]
        times = [t for a in answers for t in a["arrivals"]]
        return (
            times,
            max(a["bytes"] for a in answers),
            sum(a["closed"] for a in answers),
            sum(a["cpu_ms"] for a in answers),
        )

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.send("quit")
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def trial_figures(sent: int, replied: int, arrivals: list[int], expected: int) -> dict[str, Any]:
    ms = [(t - sent) / 1e6 for t in arrivals]
    return {
        "received": len(ms),
        "expected": expected,
        "last_ms": max(ms) if ms else float("nan"),
        "p50_ms": percentile(ms, 0.5),
        "p99_ms": percentile(ms, 0.99),
        "first_ms": min(ms) if ms else float("nan"),
        "reply_ms": (replied - sent) / 1e6,
    }


async def vote_trials(
    clients: Clients, voter: LineClient, lines: list[bytes], pid: int, expected: int
) -> list[dict[str, Any]]:
    results = []
    for line in lines:
        await asyncio.to_thread(wait_quiet, [pid], 0.3, 0.03, 120)
        armed = await asyncio.to_thread(clients.arm)
        cpu_before = cpu_seconds(pid)
        sent = time.perf_counter_ns()
        reply = await voter.ask(line, timeout=TRIAL_TIMEOUT)
        replied = time.perf_counter_ns()
        if not reply.startswith(b"EVENT "):
            raise BenchError(f"the vote was refused: {reply[:200]!r}")
        arrivals, size, closed, client_cpu = await asyncio.to_thread(clients.arrivals)
        await asyncio.to_thread(wait_quiet, [pid], 0.3, 0.03, 120)
        figures = trial_figures(sent, replied, arrivals, armed)
        # CPU of the server from the vote until it is quiet again (all it did for the change:
        # the line, the commit, framing and writing to every stream; clock ticks of 10 ms).
        figures["server_cpu_ms"] = (cpu_seconds(pid) - cpu_before) * 1000
        figures["client_cpu_ms"] = client_cpu
        figures["event_bytes"] = size
        figures["closed"] = closed
        figures["load_average"] = os.getloadavg()[0]
        results.append(figures)
        log(
            f"  trial: {figures['received']}/{armed} streams, last {figures['last_ms']:.1f} ms, "
            f"p50 {figures['p50_ms']:.1f} ms, reply {figures['reply_ms']:.1f} ms, server CPU "
            f"{figures['server_cpu_ms']:.0f} ms, clients' CPU {figures['client_cpu_ms']:.0f} ms"
        )
    return results


async def setup_event(herd: WebHerd, users: list[str]) -> dict[str, Any]:
    port = herd.port("Bailey")
    token, digest = user_token()
    operator = await Operator.open(herd.secret_bytes(), "Bailey", port)
    seconds = await operator.add_users(["organiser", *users], digest)
    operator.close()
    log(f"{len(users) + 1} users added in {seconds:.1f} s")
    organiser = await authed(port, "organiser", token)
    event = reply_json(await organiser.ask(b"PLAN Ten thousand watching"))["id"]
    for start in range(0, len(users), INVITE_BATCH):
        batch = " ".join(users[start : start + INVITE_BATCH])
        reply_json(await organiser.ask(f"INVITE {event} {batch}".encode()))
    at = (int(time.time()) // 3600 + 24 * 30) * 3600
    document = reply_json(await organiser.ask(f"PROPOSE {event} TIME {iso(at)}".encode()))
    option = str(document["times"][0]["id"])
    return {"event": event, "option": option, "organiser": organiser}


def renga_phase(
    options: argparse.Namespace, processes: Processes, directory: Path, cpus: dict[str, Any]
) -> dict[str, Any]:
    streams = options.streams
    users = [f"w{i:05d}" for i in range(options.users or streams)]
    per_user = -(-streams // len(users))
    herd = WebHerd(
        processes,
        HerdLayout.single(),
        directory / "herd",
        cpus={"Bailey": cpus["server"]},
        launchers=bailey_profiled(options.cprofile),
        web_settings={
            # All the streams come from one client address, 127.0.0.1: an operator behind
            # a proxy raises this the same way.
            "streams_per_address": str(streams + 100),
            "streams_per_user": str(max(per_user, 8)),
        },
    )
    herd.start()
    herd.wait_ready()
    loop = new_event_loop("asyncio")
    try:
        state = loop.run_until_complete(setup_event(herd, users))
        event, organiser = state["event"], state["organiser"]
        web_port = herd.web_port("Bailey")
        secret = herd.secret_bytes()
        expires = int(time.time()) + 86400
        # The first user's cookie as a browser gets it: the personal link, opened.
        first = link_token(secret, users[0], event, expires, 0)
        browser_cookie = session_cookie(web_port, f"/e/{event}?t={first}")
        cookies = [browser_cookie] + [
            session_token(secret, WebClaim(user, event, expires, 0)) for user in users[1:]
        ]
        targets = [
            (f"/e/{event}/stream", f"{SESSION_COOKIE}={cookies[i % len(users)]}")
            for i in range(streams)
        ]
        pid = herd.pid("Bailey")
        wait_quiet([pid], 0.5, 0.02, 120)
        rss_before = rss_bytes(pid)
        clients = Clients.start(web_port, targets, options.clients, directory, cpus["clients"])
        try:
            opened = clients.ready()
            log(
                f"Renga: {opened['ready']} streams open ({opened['failed']} failed) in "
                f"{opened['open_s']:.1f} s"
            )
            if opened["ready"] == 0:
                raise BenchError("no stream opened: is GET /e/<event>/stream served?")
            wait_quiet([pid], 0.5, 0.02, 120)
            rss_held = rss_bytes(pid)
            lines = [
                f"VOTE {event} {state['option']} {'YES' if n % 2 == 0 else 'NO'}".encode()
                for n in range(options.trials)
            ]
            trials = loop.run_until_complete(
                vote_trials(clients, organiser, lines, pid, opened["ready"])
            )
        finally:
            clients.stop()
            organiser.close()
    finally:
        loop.close()
    return {
        "opened": opened,
        "rss_before": rss_before,
        "rss_held": rss_held,
        "kib_per_stream": (rss_held - rss_before) / max(opened["ready"], 1) / 1024,
        "trials": trials,
    }


def floor_phase(
    options: argparse.Namespace,
    processes: Processes,
    directory: Path,
    cpus: dict[str, Any],
    data_bytes: int,
    kind: str = "sse_floor",
) -> dict[str, Any]:
    """A baseline (`sse_floor`: plain asyncio; `sse_twisted_floor`: twisted.web) through the
    same clients and trials."""
    http_port, line_port = free_ports(2)
    command = [sys.executable, "-m", "bench", kind, "--port", str(http_port)]
    command += ["--line-port", str(line_port), "--data-bytes", str(data_bytes)]
    if cpus["server"] is not None:
        command = ["taskset", "-c", str(cpus["server"]), *command]
    floor = processes.start("sse-floor", command)
    wait_for(lambda: port_open(line_port), 10, "the SSE floor")
    targets = [("/e/floor/stream", "") for _ in range(options.streams)]
    wait_quiet([floor.pid], 0.5, 0.02, 60)
    rss_before = rss_bytes(floor.pid)
    clients = Clients.start(http_port, targets, options.clients, directory, cpus["clients"])
    loop = new_event_loop("asyncio")
    try:
        opened = clients.ready()
        log(f"{kind}: {opened['ready']} streams open in {opened['open_s']:.1f} s")
        wait_quiet([floor.pid], 0.5, 0.02, 60)
        rss_held = rss_bytes(floor.pid)
        voter = loop.run_until_complete(LineClient.open(line_port))
        lines = [f"VOTE floor t {n}".encode() for n in range(options.trials)]
        trials = loop.run_until_complete(
            vote_trials(clients, voter, lines, floor.pid, opened["ready"])
        )
        voter.close()
    finally:
        clients.stop()
        loop.close()
        processes.stop(floor)
    return {
        "opened": opened,
        "rss_before": rss_before,
        "rss_held": rss_held,
        "kib_per_stream": (rss_held - rss_before) / max(opened["ready"], 1) / 1024,
        "trials": trials,
    }


def summary(phase: dict[str, Any]) -> dict[str, Any]:
    trials = phase["trials"]
    lasts = [t["last_ms"] for t in trials]
    return {
        "streams": phase["opened"]["ready"],
        "last_ms": median(lasts),
        "last_ms_min": min(lasts),
        "last_ms_max": max(lasts),
        "p50_ms": median([t["p50_ms"] for t in trials]),
        "reply_ms": median([t["reply_ms"] for t in trials]),
        "server_cpu_ms": median([t["server_cpu_ms"] for t in trials]),
        "client_cpu_ms": median([t["client_cpu_ms"] for t in trials]),
        "complete_trials": sum(1 for t in trials if t["received"] == t["expected"]),
        "kib_per_stream": phase["kib_per_stream"],
        "event_bytes": median([t["event_bytes"] for t in trials]),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench web_streams", description=__doc__)
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--users", type=int, default=0, help="default: one user per stream")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--floor-only", action="store_true", help="only the baselines")
    parser.add_argument(
        "--no-twisted-floor", action="store_true", help="without the twisted.web baseline"
    )
    parser.add_argument(
        "--cprofile", type=Path, default=None, help="run the server under cProfile, to this file"
    )
    options = parser.parse_args(argv)
    limit = raise_open_files_limit()
    if options.streams // options.clients + 100 > limit:
        raise BenchError(f"{options.streams} streams need more than {limit} open files")
    cores = cpu_count()
    cpus = {"server": cores - 1, "clients": 0} if cores > 1 else {"server": None, "clients": None}
    if cpus["clients"] is not None:
        os.sched_setaffinity(0, {cpus["clients"]})
    results: dict[str, Any] = {"options": vars(options), "load_before": os.getloadavg()}
    with temp_directory("renga-bench-web-streams-") as directory, Processes() as processes:
        data_bytes = 300
        if not options.floor_only:
            results["renga"] = renga_phase(options, processes, directory, cpus)
            data_bytes = max(
                int(median([t["event_bytes"] for t in results["renga"]["trials"]])) - 30, 1
            )
        results["floor"] = floor_phase(options, processes, directory, cpus, data_bytes)
        if not options.no_twisted_floor:
            results["twisted"] = floor_phase(
                options, processes, directory, cpus, data_bytes, "sse_twisted_floor"
            )
    results["load_after"] = os.getloadavg()
    results["summary"] = {
        k: summary(results[k]) for k in ("renga", "floor", "twisted") if k in results
    }
    lines = [
        f"web_streams: one vote to {options.streams} event streams, {options.trials} trials, "
        f"load average {results['load_before'][0]:.1f} -> {results['load_after'][0]:.1f}"
    ]
    for kind, s in results["summary"].items():
        lines.append(
            f"  {kind:6} {s['streams']} streams: last {s['last_ms']:.1f} ms (trials "
            f"{s['last_ms_min']:.1f}-{s['last_ms_max']:.1f}), p50 {s['p50_ms']:.1f} ms, reply "
            f"{s['reply_ms']:.1f} ms, server CPU {s['server_cpu_ms']:.0f} ms, clients' CPU "
            f"{s['client_cpu_ms']:.0f} ms, {s['complete_trials']}/{options.trials} complete, "
            f"{s['kib_per_stream']:.2f} KiB/stream, event {s['event_bytes']} bytes"
        )
    if "renga" in results["summary"]:
        renga, floor = results["summary"]["renga"], results["summary"]["floor"]
        lines.append(
            f"  ratio Renga / floor: last stream {renga['last_ms'] / floor['last_ms']:.1f}, "
            f"server CPU {renga['server_cpu_ms'] / max(floor['server_cpu_ms'], 1):.1f}"
        )
        twisted = results["summary"].get("twisted")
        if twisted is not None:
            lines.append(
                f"  ratio Renga / twisted.web floor: last stream "
                f"{renga['last_ms'] / twisted['last_ms']:.1f}, server CPU "
                f"{renga['server_cpu_ms'] / max(twisted['server_cpu_ms'], 1):.1f}"
            )
        last = renga["last_ms"]
        verdict = "met" if last < GOAL_MS else f"NOT met ({last:.0f} ms)"
        lines.append(f"  goal: all streams within {GOAL_MS:.0f} ms: {verdict}")
    print("\n".join(lines))
    path = save_results("web_streams", results)
    log(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
