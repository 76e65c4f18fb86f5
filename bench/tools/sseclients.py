"""Holds many Server-Sent Events streams open and times when one event reaches each of them
(used by `python -m bench web_streams`, for Renga and for the bare baseline alike).

    python -m bench sseclients --port PORT --streams FILE [--connect 200] [--loop auto]

`FILE` is JSON: a list of `[path, cookie]` (cookie: a whole `Cookie:` header value, or "").
Each stream is `GET path HTTP/1.1` with `Accept: text/event-stream`; a response other than
`200` with `text/event-stream` counts as failed.  The body may be chunked
(`Transfer-Encoding: chunked`, as twisted.web sends it) or not; events are parsed as the
EventSource spec says (a blank line ends one; comment lines, `:` heartbeats, are not events; an
event with no `data` line is not dispatched).

It talks to the benchmark on stdin/stdout, one JSON object a line:
- at start, once every stream is open (or failed): `{"ready": n, "failed": m, "open_s": …}`;
- `arm <timeout_s>` on stdin: the next event on each stream is timed from now on; answered
  `{"armed": n}` at once, then, when every open stream has had one (or at the timeout),
  `{"arrivals": [perf_counter_ns …], "bytes": …, "closed": …, "cpu_ms": …}` — absolute
  `time.perf_counter_ns()` values (CLOCK_MONOTONIC, the same clock in every process of this
  machine), and the CPU this client spent from arming to then;
- `quit`: close everything and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from bench.harness import raise_open_files_limit
from bench.tools.loadgen import new_event_loop
from tests.support.ports import HOST


class Fanout:
    """The streams' shared state: which are armed, when each got its event."""

    def __init__(self) -> None:
        self.armed = False
        self.arrivals: list[int] = []
        self.sizes: list[int] = []
        self.waiting = 0
        self.done: asyncio.Future[None] | None = None
        self.open = 0
        self.closed = 0


class Stream(asyncio.Protocol):
    __slots__ = (
        "armed",
        "chunk_left",
        "chunked",
        "events",
        "fanout",
        "head",
        "in_body",
        "ok",
        "pending",
        "ready",
        "request",
        "transport",
    )

    def __init__(self, fanout: Fanout, request: bytes, ready: asyncio.Future[bool]) -> None:
        self.fanout = fanout
        self.request = request
        self.ready = ready
        self.head = b""
        self.in_body = False
        self.chunked = False
        self.chunk_left = -1  # -1: reading a chunk-size line
        self.pending = b""  # undecoded chunk framing, or the event being read
        self.events = b""
        self.ok = False
        self.armed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.transport.abort()
                return
            head, data = self.head[:end].lower(), self.head[end + 4 :]
            self.head = b""
            self.in_body = True
            self.ok = head.startswith((b"http/1.1 200", b"http/1.0 200")) and (
                b"text/event-stream" in head
            )
            self.chunked = b"transfer-encoding: chunked" in head
            if not self.ready.done():
                self.ready.set_result(self.ok)
            if not self.ok:
                self.transport.abort()
                return
            if not data:
                return
        if self.chunked:
            data = self._dechunk(data)
        self._events(data, now)

    def _dechunk(self, data: bytes) -> bytes:
        buffer = self.pending + data
        out = []
        position = 0
        while position < len(buffer):
            if self.chunk_left < 0:
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    break
                size_text = buffer[position:end].split(b";")[0].strip()
                position = end + 2
                if not size_text:
                    continue  # the CRLF after a chunk's data
                self.chunk_left = int(size_text, 16)
                if self.chunk_left == 0:
                    self.transport.close()
                    break
            else:
                take = min(self.chunk_left, len(buffer) - position)
                out.append(buffer[position : position + take])
                position += take
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_left = -1
        self.pending = buffer[position:]
        return b"".join(out)

    def _events(self, data: bytes, now: int) -> None:
        text = self.events + data
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *complete, self.events = text.split(b"\n\n")
        for event in complete:
            if not (event.startswith(b"data") or b"\ndata" in event):
                continue  # a heartbeat (comment) or an event without data: not dispatched
            if self.armed:
                self.armed = False
                fanout = self.fanout
                fanout.arrivals.append(now)
                fanout.sizes.append(len(event))
                fanout.waiting -= 1
                if fanout.waiting == 0 and fanout.done is not None and not fanout.done.done():
                    fanout.done.set_result(None)

    def connection_lost(self, error: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        if self.ok:
            self.fanout.closed += 1
            if self.armed:
                self.armed = False
                self.fanout.waiting -= 1
                done = self.fanout.done
                if self.fanout.waiting == 0 and done is not None and not done.done():
                    done.set_result(None)


def say(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def run(options: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    targets = json.loads(Path(options.streams).read_text())
    fanout = Fanout()
    streams: list[Stream] = []
    gate = asyncio.Semaphore(options.connect)
    failed = 0
    started = time.perf_counter()

    async def open_one(path: str, cookie: str) -> None:
        nonlocal failed
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {options.host}:{options.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
            + (f"Cookie: {cookie}\r\n" if cookie else "")
            + "\r\n"
        ).encode()
        async with gate:
            ready: asyncio.Future[bool] = loop.create_future()
            try:
                _, stream = await loop.create_connection(
                    lambda: Stream(fanout, request, ready), options.host, options.port
                )
                ok = await asyncio.wait_for(ready, 60)
            except (OSError, TimeoutError):
                ok = False
            if ok:
                streams.append(stream)
            else:
                failed += 1

    await asyncio.gather(*(open_one(path, cookie) for path, cookie in targets))
    say({"ready": len(streams), "failed": failed, "open_s": time.perf_counter() - started})
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            break
        if line[0] == "arm":
            timeout = float(line[1]) if len(line) > 1 else 30.0
            live = [s for s in streams if not s.transport.is_closing()]
            fanout.arrivals, fanout.sizes = [], []
            fanout.waiting = len(live)
            fanout.done = loop.create_future()
            for stream in live:
                stream.armed = True
            say({"armed": len(live)})
            cpu_before = time.process_time_ns()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fanout.done), timeout)
            for stream in live:
                stream.armed = False
            sizes = sorted(fanout.sizes)
            say(
                {
                    "arrivals": fanout.arrivals,
                    "bytes": sizes[len(sizes) // 2] if sizes else 0,
                    "closed": fanout.closed,
                    "cpu_ms": (time.process_time_ns() - cpu_before) / 1e6,
                }
            )
    for stream in streams:
        stream.transport.abort()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sseclients", description=__doc__)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streams", required=True, help="JSON list of [path, cookie]")
    parser.add_argument("--connect", type=int, default=200, help="connects in flight")
    parser.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"))
    options = parser.parse_args(argv)
    raise_open_files_limit()
    loop = new_event_loop(options.loop)
    try:
        return loop.run_until_complete(run(options))
    finally:
        loop.close()
