"""A closed-loop IAMAT load generator.

N connections, each keeping K requests in flight: it writes K pipelined IAMAT lines, and for
every reply line that comes back writes one more (replies that arrive together are answered by
one write), until its share of the count is answered or the duration is over.  Every IAMAT has a
unique client id (`<prefix><n>`) and a time later than the one before, so each is a new report
that a server must store and flood.  Latency is measured per request, from the write that sent
it to the read that brought its reply line (replies come back in order on a connection).

Runs on uvloop when it is installed (the generator must not be the bottleneck), else on the
default asyncio loop.

    python -m bench loadgen --port 12001 --connections 50 --inflight 20 --count 100000
prints one JSON object (see `LoadResult`) on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from bench.harness import percentile

POSITION = b"+34.068930-118.445127"


@dataclass(frozen=True)
class LoadSpec:
    port: int
    host: str = "127.0.0.1"
    connections: int = 50
    inflight: int = 20
    count: int | None = 100_000
    duration: float | None = None
    prefix: str = ""
    timeout: float = 120.0


@dataclass
class LoadResult:
    connections: int
    inflight: int
    sent: int
    answered: int
    bad: int
    elapsed_s: float
    requests_per_s: float
    latency_ms: dict[str, float]
    complete: bool
    loop: str
    first_bad: str = ""
    prefix: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Run:
    spec: LoadSpec
    prefix: bytes
    start_ns: int
    seq: int = 0
    stopping: bool = False
    bad: int = 0
    first_bad: bytes = b""
    latencies_ns: list[int] = field(default_factory=list)

    def lines(self, count: int) -> bytes:
        """`count` fresh IAMAT lines: unique client ids, increasing times."""
        out = []
        prefix, base = self.prefix, self.start_ns
        for seq in range(self.seq, self.seq + count):
            seconds, nanos = divmod(base + seq * 1000, 1_000_000_000)
            out.append(b"IAMAT %s%d %s %d.%09d\n" % (prefix, seq, POSITION, seconds, nanos))
        self.seq += count
        return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run, quota: int) -> None:
        self.run = run
        self.quota = quota
        self.sent = 0
        self.answered = 0
        self.buffer = b""
        self.pending: deque[int] = deque()
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self) -> None:
        self._send(min(self.run.spec.inflight, self.quota))
        self._check_done()

    def _send(self, count: int) -> None:
        if count <= 0:
            return
        assert self.transport is not None
        data = self.run.lines(count)
        now = time.perf_counter_ns()
        self.pending.extend([now] * count)
        self.sent += count
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        lines = (self.buffer + data if self.buffer else data).split(b"\n")
        self.buffer = lines.pop()
        if not lines:
            return
        run = self.run
        latencies, pending = run.latencies_ns, self.pending
        for line in lines:
            latencies.append(now - pending.popleft())
            if not line.startswith(b"AT "):
                run.bad += 1
                if not run.first_bad:
                    run.first_bad = line[:200]
        self.answered += len(lines)
        if not run.stopping:
            self._send(min(len(lines), self.quota - self.sent))
        self._check_done()

    def _check_done(self) -> None:
        finished = self.answered == self.sent and (self.sent >= self.quota or self.run.stopping)
        if finished and not self.done.done():
            self.done.set_result(None)

    def stop_sending(self) -> None:
        self._check_done()

    def connection_lost(self, error: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {error}"))


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run one closed-loop load against `spec.host:spec.port`."""
    if spec.count is None and spec.duration is None:
        raise ValueError("give a count, a duration or both")
    loop = asyncio.get_running_loop()
    prefix = (spec.prefix or f"lg{secrets.token_hex(4)}.").encode()
    run = _Run(spec, prefix, time.time_ns())
    total = spec.count if spec.count is not None else 1 << 62
    quotas = [
        total // spec.connections + (1 if i < total % spec.connections else 0)
        for i in range(spec.connections)
    ]
    connections: list[_Connection] = []
    try:
        for quota in quotas:
            _, protocol = await loop.create_connection(
                lambda q=quota: _Connection(run, q),  # type: ignore[misc]
                spec.host,
                spec.port,
            )
            connections.append(protocol)
        started = time.perf_counter()
        for connection in connections:
            connection.start()
        if spec.duration is not None:

            def stop() -> None:
                run.stopping = True
                for connection in connections:
                    connection.stop_sending()

            loop.call_later(spec.duration, stop)
        waiting = asyncio.gather(*(connection.done for connection in connections))
        complete = True
        try:
            await asyncio.wait_for(waiting, spec.timeout)
        except TimeoutError:
            complete = False
        elapsed = time.perf_counter() - started
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.abort()
    answered = sum(connection.answered for connection in connections)
    latencies = [ns / 1e6 for ns in run.latencies_ns]
    return LoadResult(
        connections=spec.connections,
        inflight=spec.inflight,
        sent=sum(connection.sent for connection in connections),
        answered=answered,
        bad=run.bad,
        elapsed_s=elapsed,
        requests_per_s=answered / elapsed if elapsed > 0 else 0.0,
        latency_ms={
            "p50": percentile(latencies, 0.50),
            "p90": percentile(latencies, 0.90),
            "p99": percentile(latencies, 0.99),
            "p999": percentile(latencies, 0.999),
            "max": max(latencies, default=float("nan")),
            "mean": sum(latencies) / len(latencies) if latencies else float("nan"),
        },
        complete=complete and answered == sum(connection.sent for connection in connections),
        loop=_loop_name(),
        first_bad=run.first_bad.decode("utf-8", "replace"),
        prefix=prefix.decode(),
    )


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """uvloop if asked for (or `auto` and installed), else the default asyncio loop."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run_in_new_loop(spec: LoadSpec, kind: str = "auto") -> LoadResult:
    loop = new_event_loop(kind)
    try:
        return loop.run_until_complete(run_load(spec))
    finally:
        loop.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench loadgen", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--inflight", type=int, default=20, help="requests in flight per connection"
    )
    parser.add_argument("--count", type=int, default=None, help="total requests (default 100000)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of sending")
    parser.add_argument("--prefix", default="", help="client id prefix (default: random)")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (seconds)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    arguments = parser.parse_args(argv)
    count = arguments.count
    if count is None and arguments.duration is None:
        count = 100_000
    spec = LoadSpec(
        port=arguments.port,
        host=arguments.host,
        connections=arguments.connections,
        inflight=arguments.inflight,
        count=count,
        duration=arguments.duration,
        prefix=arguments.prefix,
        timeout=arguments.timeout,
    )
    result = run_in_new_loop(spec, arguments.loop)
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")
    return 0 if result.complete and not result.bad else 1
