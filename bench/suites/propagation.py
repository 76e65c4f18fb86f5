"""Propagation: how soon an update sent to Bailey can be seen elsewhere in the herd.

A five-server herd (default topology) is started as a user would.  For each sample, a fresh
client id reports to Bailey (`IAMAT`), and at once, on an open interactive connection to the
observing server, `WHATSAT <id> 1 0` is sent again and again — one at a time, each as soon
as the previous answer is read — until the answer is the AT line instead of `? ...` (unknown
client).  The sample is the time from writing the IAMAT to reading that first answer: an
upper bound.  The write of the last `? ...` poll is a lower bound ("not yet visible"); the
truth is in between.  The same WHATSAT's round trip for a known client is reported as the
baseline.  Observed at Bona (one hop: Bailey-Bona) and Clark (two hops: Bailey-Bona-Clark,
the shortest path).  Goal: median under 5 ms two hops away.

Polling takes CPU from the herd being measured: on two cores, the poller and the observing
server keep one busy.  `--poll-interval` spaces the polls, but an asyncio sleep lasts a
millisecond or more, which costs more resolution than back-to-back polling costs accuracy.

    python -m bench propagation [--samples 300]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    BenchError,
    Herd,
    HerdLayout,
    median,
    percentile,
    save_results,
    temp_directory,
    wait_quiet,
)
from bench.tools.loadgen import new_event_loop
from tests.support.ports import HOST
from tests.support.processes import Processes, log

GOAL_MEDIAN_MS = 5.0
MAX_POLLS = 20_000
SAMPLE_TIMEOUT = 5.0
POSITION = b"+34.068930-118.445127"


class ReplyReader:
    """Reads whole replies: `? ...` is one line; an AT line starts a WHATSAT answer that ends
    with an empty line (`\\n\\n`); any other line is a reply of its own (IAMAT's AT)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def line(self) -> bytes:
        line = await self.reader.readuntil(b"\n")
        return line

    async def timed_line(self) -> tuple[bytes, int]:
        """A line and when it was read (perf_counter_ns)."""
        line = await self.line()
        return line, time.perf_counter_ns()

    async def whatsat(self) -> bytes:
        first = await self.line()
        if first.startswith(b"? "):
            return first
        parts = [first]
        while True:
            line = await self.line()
            parts.append(line)
            if line == b"\n":
                return b"".join(parts)


@dataclass
class Samples:
    observer: str
    hops: int
    visible_ms: list[float]
    not_yet_ms: list[float]
    reply_ms: list[float]
    polls: list[int]

    def summary(self) -> dict[str, Any]:
        return {
            "observer": self.observer,
            "hops": self.hops,
            "samples": len(self.visible_ms),
            "visible_ms": {
                "p50": median(self.visible_ms),
                "p90": percentile(self.visible_ms, 0.90),
                "p99": percentile(self.visible_ms, 0.99),
                "max": max(self.visible_ms),
            },
            "not_yet_ms": {
                "p50": median(self.not_yet_ms),
                "p99": percentile(self.not_yet_ms, 0.99),
            },
            "bailey_at_reply_ms": {
                "p50": median(self.reply_ms),
                "p99": percentile(self.reply_ms, 0.99),
            },
            "polls_p50": median([float(p) for p in self.polls]),
        }


async def whatsat_round_trip(port: int, client: bytes, count: int) -> list[float]:
    """The resolution of the measurement: WHATSAT round trips for a known client."""
    reader, writer = await asyncio.open_connection(HOST, port)
    replies = ReplyReader(reader)
    times = []
    try:
        for _ in range(count):
            start = time.perf_counter_ns()
            writer.write(b"WHATSAT %s 1 0\n" % client)
            answer = await replies.whatsat()
            times.append((time.perf_counter_ns() - start) / 1e6)
            if answer.startswith(b"? "):
                raise BenchError(f"WHATSAT for a known client failed: {answer!r}")
    finally:
        writer.close()
    return times


async def measure(
    herd: Herd, observer: str, hops: int, samples: int, interval: float, tag: str
) -> Samples:
    bailey_reader, bailey_writer = await asyncio.open_connection(HOST, herd.port("Bailey"))
    observer_reader, observer_writer = await asyncio.open_connection(HOST, herd.port(observer))
    bailey, watcher = ReplyReader(bailey_reader), ReplyReader(observer_reader)
    result = Samples(observer, hops, [], [], [], [])
    try:
        for number in range(samples):
            client = f"{tag}.{observer}.{number}".encode()
            now = time.time_ns()
            iamat = b"IAMAT %s %s %d.%09d\n" % (client, POSITION, now // 10**9, now % 10**9)
            start = time.perf_counter_ns()
            bailey_writer.write(iamat)
            reply = asyncio.ensure_future(bailey.timed_line())
            polls = 0
            asked = start
            async with asyncio.timeout(SAMPLE_TIMEOUT):
                while True:
                    not_yet = asked
                    asked = time.perf_counter_ns()
                    observer_writer.write(b"WHATSAT %s 1 0\n" % client)
                    answer = await watcher.whatsat()
                    if not answer.startswith(b"? "):
                        seen = time.perf_counter_ns()
                        break
                    polls += 1
                    if polls > MAX_POLLS:
                        raise BenchError(f"{observer} never saw {client!r}")
                    if interval:
                        await asyncio.sleep(interval)
                at_line, replied = await reply
            if not at_line.startswith(b"AT Bailey "):
                raise BenchError(f"Bailey answered {at_line!r}")
            if not answer.startswith(at_line):
                raise BenchError(f"{observer} shows {answer[:120]!r}, Bailey made {at_line!r}")
            result.visible_ms.append((seen - start) / 1e6)
            result.not_yet_ms.append((not_yet - start) / 1e6)
            result.reply_ms.append((replied - start) / 1e6)
            result.polls.append(polls)
            await asyncio.sleep(0.005)  # let the herd settle: samples are independent
    finally:
        bailey_writer.close()
        observer_writer.close()
    return result


async def run_samples(herd: Herd, samples: int, interval: float, tag: str) -> dict[str, Any]:
    results = {}
    for observer, hops in (("Bona", 1), ("Clark", 2)):
        measured = await measure(herd, observer, hops, samples, interval, tag)
        results[observer] = measured.summary()
        baseline = await whatsat_round_trip(
            herd.port(observer), f"{tag}.{observer}.0".encode(), samples
        )
        results[observer]["whatsat_round_trip_ms"] = {
            "p50": median(baseline),
            "p99": percentile(baseline, 0.99),
        }
    return results


def report(results: dict[str, Any], samples: int) -> str:
    lines = [
        f"propagation from Bailey, {samples} samples each (time to the first WHATSAT "
        "answer showing the update):"
    ]
    for observer, entry in results.items():
        visible, trip = entry["visible_ms"], entry["whatsat_round_trip_ms"]
        lines.append(
            f"  {observer:6} ({entry['hops']} hop{'s' if entry['hops'] > 1 else ''}): "
            f"p50 {visible['p50']:.3f} ms  p90 {visible['p90']:.3f} ms  p99 {visible['p99']:.3f} ms"
            f"  max {visible['max']:.3f} ms\n"
            f"           (not yet visible at p50 {entry['not_yet_ms']['p50']:.3f} ms; "
            f"WHATSAT round trip p50 {trip['p50']:.3f} ms; "
            f"Bailey's AT reply p50 {entry['bailey_at_reply_ms']['p50']:.3f} ms; "
            f"polls p50 {entry['polls_p50']:.0f})"
        )
    clark = results["Clark"]["visible_ms"]["p50"]
    verdict = "met" if clark < GOAL_MEDIAN_MS else "NOT met"
    lines.append(f"  goal: median under {GOAL_MEDIAN_MS} ms two hops away: {verdict}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench propagation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=300, help="per observer")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.0,
        help="seconds between WHATSATs (default 0: back to back)",
    )
    arguments = parser.parse_args(argv)
    tag = f"prop{int(time.time())}"
    with Processes() as processes, temp_directory("bench-propagation-") as directory:
        herd = Herd(processes, HerdLayout.default(), directory / "herd")
        herd.start()
        log(f"herd ready in {herd.wait_ready():.2f} s")
        wait_quiet(herd.pids().values())
        loop = new_event_loop()
        try:
            results = loop.run_until_complete(
                run_samples(herd, arguments.samples, arguments.poll_interval, tag)
            )
        finally:
            loop.close()
        herd.check_alive()
    print(report(results, arguments.samples))
    path = save_results(
        "propagation",
        {
            "command": "python -m bench propagation " + " ".join(argv),
            "options": vars(arguments),
            "goal_median_ms": GOAL_MEDIAN_MS,
            "results": results,
        },
    )
    log(f"results in {path}")
    return 0
