"""Idle connections: memory per connection held, and whether the server still answers promptly.

One server (a one-server Renga herd started with `herd run`, and the floor server as the
baseline, in turn) is made to hold 19,000 idle client connections, opened by two holder
processes (`bench/tools/holder.py`, 9,500 sockets each: one process may hold ~20,000 files here).
Each connection says one line first (`STATUS`; the floor answers `? STATUS`) and waits for the
answer — a client that has spoken once, then idles; it also keeps the connects from outrunning
the server's accept queue.  The
soft limit on open files is raised to the hard limit first; the servers and holders inherit it.
The server's RSS is read before (after one IAMAT on a fresh connection, so lazily built state
exists) and once all connections are accepted and the server is quiet: the difference divided
by the connections is the memory per connection (goal < 3 KiB).  While all are open, a fresh
connection sends IAMATs one at a time: their latency shows the server still answers promptly.

    python -m bench idle [--connections 19000]
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    BenchError,
    Herd,
    HerdLayout,
    median,
    open_fds,
    pinned,
    port_open,
    raise_open_files_limit,
    rss_bytes,
    save_results,
    temp_directory,
    wait_for,
    wait_quiet,
)
from tests.support.ports import HOST, free_ports
from tests.support.processes import Child, Processes, log

GOAL_BYTES_PER_CONNECTION = 3 * 1024
HOLDERS = 2
PROBES = 50
POSITION = b"+34.068930-118.445127"
HOLD_TIMEOUT = 300.0


@dataclass
class Server:
    name: str
    port: int
    child: Child


def iamat_latencies(port: int, count: int, tag: str) -> list[float]:
    """IAMATs one at a time on a fresh connection; each round trip in ms."""
    times = []
    with socket.create_connection((HOST, port), timeout=10.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        for number in range(count):
            now = time.time_ns()
            line = b"IAMAT %s.%d %s %d.%09d\n" % (
                tag.encode(),
                number,
                POSITION,
                now // 10**9,
                now % 10**9,
            )
            start = time.perf_counter_ns()
            sock.sendall(line)
            reply = reader.readline()
            times.append((time.perf_counter_ns() - start) / 1e6)
            if not reply.startswith(b"AT "):
                raise BenchError(f"IAMAT answered {reply!r}")
    return times


def read_line(child: Child, deadline: float) -> bytes:
    """One line from a child's stdout, or BenchError once `deadline` (monotonic) passes."""
    stream = child.process.stdout
    assert stream is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{child.name} said nothing in time")
        ready, _, _ = select.select([stream], [], [], remaining)
        if ready:
            line = stream.readline()
            if not line:
                raise BenchError(f"{child.name} exited: {child.tail()}")
            return line


def measure(
    processes: Processes,
    server: Server,
    connections: int,
    greeting: str,
    directory: Any,
    tag: str,
) -> dict[str, Any]:
    pid = server.child.pid
    iamat_latencies(server.port, 5, f"{tag}.warm")
    wait_quiet([pid])
    rss_before, fds_before = rss_bytes(pid), open_fds(pid)
    holders = []
    share = [
        connections // HOLDERS + (1 if i < connections % HOLDERS else 0) for i in range(HOLDERS)
    ]
    opened = time.monotonic()
    try:
        for number, count in enumerate(share):
            holders.append(
                processes.start(
                    f"holder-{server.name}-{number}",
                    [
                        sys.executable,
                        "-m",
                        "bench",
                        "holder",
                        "--port",
                        str(server.port),
                        "--count",
                        str(count),
                        "--greeting",
                        greeting,
                    ],
                    log_path=directory / f"holder-{server.name}-{number}.stderr",
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        deadline = time.monotonic() + HOLD_TIMEOUT
        held = [json.loads(read_line(holder, deadline)) for holder in holders]
        if any(entry["failed"] for entry in held):
            raise BenchError(f"some connections failed: {held}")
        wait_for(
            lambda: open_fds(pid) >= fds_before + connections,
            60.0,
            f"{server.name} to accept {connections} connections",
            interval=0.1,
        )
        open_seconds = time.monotonic() - opened
        wait_quiet([pid])
        rss_held = rss_bytes(pid)
        fds_held = open_fds(pid)
        probes = iamat_latencies(server.port, PROBES, f"{tag}.probe")
        server.child.process.poll()
        if not server.child.alive():
            raise BenchError(f"{server.name} died holding the connections: {server.child.tail()}")
    finally:
        for holder in holders:
            if holder.process.stdin is not None:
                holder.process.stdin.close()
        for holder in holders:
            processes.stop(holder)
    wait_for(lambda: open_fds(pid) <= fds_before + 10, 60.0, "the connections to close", 0.1)
    wait_quiet([pid])
    rss_after = rss_bytes(pid)
    held_count = fds_held - fds_before
    return {
        "connections": held_count,
        "open_seconds": open_seconds,
        "rss_before": rss_before,
        "rss_held": rss_held,
        "rss_after_close": rss_after,
        "bytes_per_connection": (rss_held - rss_before) / held_count,
        "probe_ms": {
            "p50": median(probes),
            "max": max(probes),
            "first": probes[0],
        },
    }


def report(results: dict[str, Any]) -> str:
    lines = ["idle connections held by one server (RSS growth / connections):"]
    for name, entry in results.items():
        lines.append(
            f"  {name:6} {entry['connections']:6d} connections  "
            f"{entry['bytes_per_connection'] / 1024:6.2f} KiB each  "
            f"(RSS {entry['rss_before'] / 2**20:.1f} -> {entry['rss_held'] / 2**20:.1f} MiB, "
            f"{entry['rss_after_close'] / 2**20:.1f} MiB after they closed; "
            f"opened in {entry['open_seconds']:.1f} s)"
        )
        probe = entry["probe_ms"]
        lines.append(
            f"         IAMAT on a fresh connection meanwhile: p50 {probe['p50']:.3f} ms, "
            f"max {probe['max']:.3f} ms, first {probe['first']:.3f} ms"
        )
    renga = results["Renga"]["bytes_per_connection"]
    verdict = "met" if renga < GOAL_BYTES_PER_CONNECTION else "NOT met"
    lines.append(f"  goal: Renga under {GOAL_BYTES_PER_CONNECTION // 1024} KiB each: {verdict}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench idle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--connections", type=int, default=19_000)
    parser.add_argument(
        "--greeting", default="STATUS", help='first line of each connection ("": silent)'
    )
    arguments = parser.parse_args(argv)
    limit = raise_open_files_limit()
    if arguments.connections + 500 > limit:
        raise BenchError(f"{arguments.connections} connections need more than {limit} open files")
    if arguments.connections // HOLDERS + 100 > limit:
        raise BenchError("each holder process would need more files than the limit")
    tag = f"idle{int(time.time())}"
    results: dict[str, Any] = {}
    with Processes() as processes, temp_directory("bench-idle-") as directory:
        (floor_port,) = free_ports(1)
        floor = processes.start(
            "floor",
            pinned([sys.executable, "-m", "bench", "floor", "--port", str(floor_port)], None),
            log_path=directory / "floor.stderr",
        )
        herd = Herd(processes, HerdLayout.single("Bailey"), directory / "herd")
        herd.start()
        herd.wait_ready()
        wait_for(lambda: port_open(floor_port), 10.0, "the floor server")
        for server in (
            Server("floor", floor_port, floor),
            Server("Renga", herd.port("Bailey"), herd.children["Bailey"]),
        ):
            log(f"{server.name}: opening {arguments.connections} idle connections")
            results[server.name] = measure(
                processes,
                server,
                arguments.connections,
                arguments.greeting,
                directory,
                f"{tag}.{server.name}",
            )
            log(f"{server.name}: {results[server.name]['bytes_per_connection']:.0f} B each")
    print(report(results))
    path = save_results(
        "idle",
        {
            "command": "python -m bench idle " + " ".join(argv),
            "options": vars(arguments),
            "open_files_limit": limit,
            "goal_bytes_per_connection": GOAL_BYTES_PER_CONNECTION,
            "results": results,
        },
    )
    log(f"results in {path}")
    return 0
