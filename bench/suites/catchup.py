"""Catch-up: how long a server that was down takes to learn what it missed.

A five-server herd (default topology) is started as a user would, and knows 1,000 clients.
Each round, Clark is SIGKILLed; 10,000 new clients report to Bailey (pipelined, 10 connections
x 20 in flight), then one sentinel client, and the bench waits until Bona and Jaquez (Clark's
peers) know the sentinel.  Then `herd run Clark` is spawned again, and timed from the spawn:

- `listening`: Clark accepts a connection;
- `sentinel`: a WHATSAT for the sentinel, repeated one at a time on an open connection, first
  shows it (updates are applied in order, so everything sent before it is there too);
- `all`: a pipelined batch of `WHATSAT <id> 1 0` for all 10,000 clients finds every one (the
  check itself is part of this time; clients still missing are asked again until none is).

The baseline in the same run is a restart with nothing missed (`listening`, and its CPU until
the herd is quiet).  At the end, Bailey — where every update began — is restarted too: it
missed nothing, so the time and CPU until the herd is quiet show what a catch-up costs when
there is nothing to catch up.  Goal: all 10,000 known within 2 s of the spawn.

    python -m bench catchup [--rounds 3] [--updates 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.harness import (
    BenchError,
    Herd,
    HerdLayout,
    cpu_seconds,
    median,
    save_results,
    temp_directory,
    wait_quiet,
)
from bench.tools.loadgen import LoadSpec, new_event_loop, run_load
from tests.support.ports import HOST
from tests.support.processes import Processes, log

GOAL_SECONDS = 2.0
PRELOAD = 1_000
POSITION = b"+34.068930-118.445127"
DEADLINE = 60.0


async def connect(port: int, deadline: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect as soon as the port accepts (polled every 2 ms)."""
    while True:
        try:
            return await asyncio.open_connection(HOST, port)
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"port {port} never opened") from None
            await asyncio.sleep(0.002)


async def read_whatsat(reader: asyncio.StreamReader) -> bool:
    """One WHATSAT answer; True if the client was known."""
    first = await reader.readuntil(b"\n")
    if first.startswith(b"? "):
        return False
    while await reader.readuntil(b"\n") != b"\n":
        pass
    return True


async def known(port: int, clients: list[bytes]) -> list[bytes]:
    """Which of `clients` the server does not know, by one pipelined batch of WHATSATs."""
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    try:
        writer.write(b"".join(b"WHATSAT %s 1 0\n" % client for client in clients))
        missing = [client for client in clients if not await read_whatsat(reader)]
    finally:
        writer.close()
    return missing


async def report_one(port: int, client: bytes) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        now = time.time_ns()
        writer.write(b"IAMAT %s %s %d.%09d\n" % (client, POSITION, now // 10**9, now % 10**9))
        reply = await reader.readuntil(b"\n")
        if not reply.startswith(b"AT "):
            raise BenchError(f"IAMAT answered {reply!r}")
    finally:
        writer.close()


async def wait_known(port: int, client: bytes, deadline: float) -> None:
    """Ask about `client` one WHATSAT at a time until the server knows it."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while True:
            writer.write(b"WHATSAT %s 1 0\n" % client)
            if await read_whatsat(reader):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"port {port} never learned {client!r}")
    finally:
        writer.close()


async def send_updates(port: int, count: int, prefix: str) -> list[bytes]:
    spec = LoadSpec(port=port, connections=10, inflight=20, count=count, prefix=prefix)
    result = await run_load(spec)
    if not result.complete or result.bad:
        raise BenchError(f"updates to Bailey failed: {result}")
    return [f"{prefix}{seq}".encode() for seq in range(count)]


async def restart_clark(
    herd: Herd, clients: list[bytes], sentinel: bytes | None
) -> dict[str, float]:
    """Spawn Clark and time what it knows, from the spawn."""
    port = herd.port("Clark")
    spawned = time.monotonic()
    herd.start("Clark")
    deadline = spawned + DEADLINE
    _, writer = await connect(port, deadline)
    times = {"listening": time.monotonic() - spawned}
    writer.close()
    if sentinel is not None:
        await wait_known(port, sentinel, deadline)
        times["sentinel"] = time.monotonic() - spawned
    missing = clients
    checks = 0
    while missing:
        missing = await known(port, missing)
        checks += 1
        if time.monotonic() > deadline:
            raise BenchError(f"Clark still lacks {len(missing)} updates after {DEADLINE} s")
    times["all"] = time.monotonic() - spawned
    times["checks"] = checks
    return times


async def run_rounds(herd: Herd, rounds: int, updates: int, tag: str) -> dict[str, Any]:
    bailey, clark = herd.port("Bailey"), herd.port("Clark")
    deadline = time.monotonic() + DEADLINE
    preloaded = await send_updates(bailey, PRELOAD, f"{tag}.pre.")
    await wait_known(clark, preloaded[-1], deadline)
    if await known(clark, preloaded):
        raise BenchError("Clark did not get the preload")
    results: dict[str, Any] = {"baseline": [], "rounds": []}
    for number in range(rounds):
        wait_quiet(herd.pids().values())
        herd.kill("Clark")
        baseline = await restart_clark(herd, [], None)
        herd.wait_ready(["Clark"])
        wait_quiet(herd.pids().values())
        baseline["cpu_s"] = cpu_seconds(herd.pid("Clark"))
        results["baseline"].append(baseline)

        herd.kill("Clark")
        clients = await send_updates(bailey, updates, f"{tag}.{number}.")
        sentinel = f"{tag}.{number}.sentinel".encode()
        await report_one(bailey, sentinel)
        deadline = time.monotonic() + DEADLINE
        for peer in ("Bona", "Jaquez"):
            await wait_known(herd.port(peer), sentinel, deadline)
        wait_quiet(herd.pids().values())
        times = await restart_clark(herd, [*clients, sentinel], sentinel)
        herd.wait_ready(["Clark"])
        herd.check_alive()
        results["rounds"].append(times)
        log(
            f"round {number + 1}: listening {times['listening']:.3f} s, sentinel "
            f"{times['sentinel']:.3f} s, all {updates} {times['all']:.3f} s "
            f"(baseline restart: listening {baseline['listening']:.3f} s)"
        )
    results["origin_restart"] = restart_origin(herd, PRELOAD + rounds * (updates + 1))
    return results


def restart_origin(herd: Herd, originated: int) -> dict[str, float]:
    """Stop and start Bailey, where every update began: it missed nothing, so whatever its
    peers send it on the way back up (and the CPU that costs it) is the catch-up's overhead."""
    wait_quiet(herd.pids().values())
    herd.processes.stop(herd.children["Bailey"])
    spawned = time.monotonic()
    herd.start("Bailey")
    herd.wait_ready(["Bailey"])
    wait_quiet(herd.pids().values(), timeout=120.0)
    quiet = time.monotonic() - spawned
    cpu = cpu_seconds(herd.pid("Bailey"))
    log(
        f"origin restart (Bailey, {originated} updates made there): quiet after {quiet:.2f} s, "
        f"{cpu:.2f} s CPU"
    )
    return {"originated": originated, "quiet_s": quiet, "cpu_s": cpu}


def summarise(results: dict[str, Any]) -> dict[str, float]:
    def med(kind: str, key: str) -> float:
        return median([entry[key] for entry in results[kind]])

    return {
        "baseline_listening_s": med("baseline", "listening"),
        "baseline_cpu_s": med("baseline", "cpu_s"),
        "origin_restart_cpu_s": results["origin_restart"]["cpu_s"],
        "origin_restart_quiet_s": results["origin_restart"]["quiet_s"],
        "listening_s": med("rounds", "listening"),
        "sentinel_s": med("rounds", "sentinel"),
        "all_s": med("rounds", "all"),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench catchup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=10_000)
    arguments = parser.parse_args(argv)
    tag = f"cu{int(time.time())}"
    with Processes() as processes, temp_directory("bench-catchup-") as directory:
        herd = Herd(processes, HerdLayout.default(), directory / "herd")
        herd.start()
        log(f"herd ready in {herd.wait_ready():.2f} s")
        loop = new_event_loop()
        try:
            results = loop.run_until_complete(
                run_rounds(herd, arguments.rounds, arguments.updates, tag)
            )
        finally:
            loop.close()
    summary = summarise(results)
    verdict = "met" if summary["all_s"] < GOAL_SECONDS else "NOT met"
    print(
        f"catch-up of Clark after {arguments.updates} missed updates, median of "
        f"{arguments.rounds} rounds, from the spawn of `herd run Clark`:\n"
        f"  listening {summary['listening_s']:.3f} s   sentinel known "
        f"{summary['sentinel_s']:.3f} s   all {arguments.updates} verified "
        f"{summary['all_s']:.3f} s\n"
        f"  baseline (restart with nothing missed): listening "
        f"{summary['baseline_listening_s']:.3f} s, {summary['baseline_cpu_s']:.2f} s CPU "
        "until quiet\n"
        f"  restart of the origin (Bailey) with nothing missed: quiet after "
        f"{summary['origin_restart_quiet_s']:.2f} s, {summary['origin_restart_cpu_s']:.2f} s CPU\n"
        f"  goal: all within {GOAL_SECONDS} s: {verdict}"
    )
    path = save_results(
        "catchup",
        {
            "command": "python -m bench catchup " + " ".join(argv),
            "options": vars(arguments),
            "goal_seconds": GOAL_SECONDS,
            "summary": summary,
            "results": results,
        },
    )
    log(f"results in {path}")
    return 0
