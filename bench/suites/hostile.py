"""A normal client's service while 30 hostile connections flood one server (issue 9, 3 and 4).

One `herd run` server (pinned to its own core when there are two).  Two phases of the same
length, each with the same normal client: IAMATs one at a time on one connection (a new report
every 20 ms) and, every second, a valid AUTH on a fresh connection.

- baseline: nothing else;
- hostile: 30 more connections, opened first.  Half write `WHATSAT nyc 50 20` lines (each
  answer ~7 KB, 20 places) as fast as the server takes them and never read a byte; half write
  `AUTH mallory wrong` lines as fast as the server takes them (and never read either).

Reported against the goals: the normal client's IAMAT p99 (< 50 ms), the slowest valid AUTH
(< 1 s), and the server's peak RSS against the budget docs/operations.md gives for this many
connections: RSS at rest + connections x (2 x output_budget + input_budget + max_line) + 32 MiB
of working room, with the default `[limits]`.

    python -m bench hostile [--seconds 20] [--hostile 30]
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.harness import (
    BenchError,
    Herd,
    HerdLayout,
    cpu_count,
    herd_command,
    median,
    percentile,
    rss_bytes,
    save_results,
    temp_directory,
)
from herd.config import DEFAULT_MAX_LINE, LimitsConfig
from tests.support.processes import Processes, log

HOST = "127.0.0.1"
P99_GOAL_MS = 50.0
AUTH_GOAL_S = 1.0
WORKING_ROOM = 32 * 1024 * 1024
WHATSAT_CHUNK = b"WHATSAT nyc 50 20\n" * 3640  # 64 KB
AUTH_CHUNK = b"AUTH mallory wrong\n" * 3450  # 64 KB
IAMAT_EVERY = 0.02


def budget_per_connection(limits: LimitsConfig, max_line: int) -> int:
    """What docs/operations.md says one connection can make a server hold."""
    return 2 * limits.output_budget + limits.input_budget + max_line


def add_user(herd: Herd, user: str) -> str:
    done = subprocess.run(
        [herd_command(), "user", "add", user, "--config", str(herd.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"token (\S+)", done.stdout)
    if done.returncode != 0 or match is None:
        raise BenchError(f"herd user add failed: {done.stdout} {done.stderr}")
    return match[1]


def request(sock: socket.socket, line: bytes) -> bytes:
    """One line, one reply line."""
    sock.sendall(line + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"the server closed on {line[:40]!r}")
        reply += chunk
    return reply


@dataclass
class Normal:
    """The normal client's two loops, and what they measured."""

    port: int
    token: str
    iamat_ms: list[float] = field(default_factory=list)
    auth_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def iamats(self) -> None:
        with socket.create_connection((HOST, self.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            count = 0
            while not self.stop.is_set():
                count += 1
                line = b"IAMAT normal +40.7128-074.0060 %d.%09d" % divmod(time.time_ns(), 10**9)
                started = time.perf_counter()
                reply = request(sock, line)
                self.iamat_ms.append((time.perf_counter() - started) * 1000)
                if not reply.startswith(b"AT "):
                    self.errors.append(reply[:80].decode(errors="replace"))
                time.sleep(IAMAT_EVERY)

    def logins(self) -> None:
        while not self.stop.wait(1.0):
            started = time.perf_counter()
            with socket.create_connection((HOST, self.port), timeout=10) as sock:
                reply = request(sock, f"AUTH alice {self.token}".encode())
            self.auth_s.append(time.perf_counter() - started)
            if not reply.startswith(b"USER "):
                self.errors.append(reply[:80].decode(errors="replace"))

    def run(self, seconds: float, sample: Any) -> None:
        threads = [threading.Thread(target=self.iamats), threading.Thread(target=self.logins)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sample()
            time.sleep(0.1)
        self.stop.set()
        for thread in threads:
            thread.join(15)

    def summary(self) -> dict[str, Any]:
        return {
            "iamats": len(self.iamat_ms),
            "iamat_p50_ms": median(self.iamat_ms),
            "iamat_p99_ms": percentile(self.iamat_ms, 0.99),
            "iamat_max_ms": max(self.iamat_ms, default=float("nan")),
            "logins": len(self.auth_s),
            "auth_max_s": max(self.auth_s, default=float("nan")),
            "auth_median_s": median(self.auth_s),
            "errors": self.errors[:5],
        }


class Hostile:
    """Connections that write their chunk again and again as fast as the server reads it, and
    never read; on a thread of their own."""

    def __init__(self, port: int, count: int) -> None:
        self.sent = 0
        self.selector = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        for index in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((HOST, port))
            sock.setblocking(False)
            chunk = WHATSAT_CHUNK if index % 2 == 0 else AUTH_CHUNK
            self.selector.register(sock, selectors.EVENT_WRITE, [chunk, 0])
            self.socks.append(sock)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._flood)
        self.thread.start()

    def _flood(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.1):
                chunk, offset = key.data
                try:
                    written = key.fileobj.send(chunk[offset:])  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    self.selector.unregister(key.fileobj)
                    continue
                self.sent += written
                key.data[1] = (offset + written) % len(chunk)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


def run(seconds: float, hostile: int) -> dict[str, Any]:
    pin = cpu_count() >= 2
    if pin:
        os.sched_setaffinity(0, {0})
    with Processes() as processes, temp_directory("bench-hostile-") as directory:
        herd = Herd(processes, HerdLayout.single(), directory, cpus={"Bailey": 1 if pin else None})
        herd.start()
        herd.wait_ready()
        port = herd.port("Bailey")
        pid = herd.pid("Bailey")
        token = add_user(herd, "alice")
        with socket.create_connection((HOST, port), timeout=60) as sock:
            line = b"IAMAT nyc +40.7128-074.0060 %d" % time.time()
            if not request(sock, line).startswith(b"AT "):
                raise BenchError("IAMAT nyc refused")
            sock.sendall(b"WHATSAT nyc 50 20\n")  # waits for the places index to be built
            answer = b""
            while not answer.endswith(b"\n\n"):
                answer += sock.recv(65536)
        log(f"baseline: {seconds:.0f} s of the normal client alone")
        base = Normal(port, token)
        base.run(seconds, lambda: None)
        rest = rss_bytes(pid)
        log(f"hostile: {hostile} connections (half WHATSAT, half AUTH floods), {seconds:.0f} s")
        flood = Hostile(port, hostile)
        peak = [rest]
        try:
            time.sleep(1.0)
            under = Normal(port, token)
            under.run(seconds, lambda: peak.append(rss_bytes(pid)))
        finally:
            flood.close()
        herd.check_alive()
        limits = LimitsConfig()
        budget = rest + (hostile + 2) * budget_per_connection(limits, DEFAULT_MAX_LINE)
        budget += WORKING_ROOM
        return {
            "seconds": seconds,
            "hostile": hostile,
            "baseline": base.summary(),
            "under_attack": under.summary(),
            "hostile_bytes_sent": flood.sent,
            "rss_at_rest": rest,
            "rss_peak": max(peak),
            "rss_budget": budget,
            "goals": {
                "iamat_p99_ms": P99_GOAL_MS,
                "auth_s": AUTH_GOAL_S,
            },
        }


def report(results: dict[str, Any]) -> str:
    base, under = results["baseline"], results["under_attack"]
    mb = 1024 * 1024

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [
        f"normal client, {results['seconds']:.0f} s each, hostile = {results['hostile']} "
        f"connections ({results['hostile_bytes_sent'] / mb:.0f} MB written by them):",
        f"  IAMAT      baseline p50 {base['iamat_p50_ms']:.2f} ms p99 {base['iamat_p99_ms']:.2f} ms"
        f" ({base['iamats']});  hostile p50 {under['iamat_p50_ms']:.2f} ms p99 "
        f"{under['iamat_p99_ms']:.2f} ms max {under['iamat_max_ms']:.1f} ms ({under['iamats']})"
        f"  goal p99 < {P99_GOAL_MS:.0f} ms: {verdict(under['iamat_p99_ms'] < P99_GOAL_MS)}",
        f"  valid AUTH baseline max {base['auth_max_s'] * 1000:.0f} ms;  hostile median "
        f"{under['auth_median_s'] * 1000:.0f} ms max {under['auth_max_s'] * 1000:.0f} ms "
        f"({under['logins']})  goal < {AUTH_GOAL_S:.0f} s: "
        f"{verdict(under['auth_max_s'] < AUTH_GOAL_S)}",
        f"  server RSS at rest {results['rss_at_rest'] / mb:.1f} MB, peak under attack "
        f"{results['rss_peak'] / mb:.1f} MB, budget {results['rss_budget'] / mb:.1f} MB: "
        f"{verdict(results['rss_peak'] < results['rss_budget'])}",
    ]
    errors = base["errors"] + under["errors"]
    if errors:
        lines.append(f"  unexpected replies: {errors}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench hostile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--hostile", type=int, default=30, help="hostile connections")
    arguments = parser.parse_args(argv)
    results = run(arguments.seconds, arguments.hostile)
    print(report(results))
    path = save_results(
        "hostile", {"command": "python -m bench hostile " + " ".join(argv)} | results
    )
    log(f"results in {path}")
    under = results["under_attack"]
    met = (
        under["iamat_p99_ms"] < P99_GOAL_MS
        and under["auth_max_s"] < AUTH_GOAL_S
        and results["rss_peak"] < results["rss_budget"]
        and not (results["baseline"]["errors"] or under["errors"])
    )
    return 0 if met else 1
