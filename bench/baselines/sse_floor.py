"""The live streams' floor: a bare asyncio server that holds Server-Sent Events responses and,
on one line, writes one event to all of them.  What holding N streams and writing one event to
N sockets costs on this machine, with nothing checked, routed, rendered or stored.

    python -m bench sse_floor --port HTTP_PORT --line-port LINE_PORT [--data-bytes 300]

- `GET <anything>/stream` on the HTTP port: `200`, `text/event-stream`, chunked (as twisted.web
  sends a response of unknown length), then held.  Any other request: `404`, closed.
- A line on the line port (`VOTE …`, or anything): one event, `id: <n>`, `event: change`, a
  `data:` line of `--data-bytes` bytes, written as one chunk to every held stream; the line is
  answered `EVENT {"streams": n}` once every write has been handed to its transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast

from bench.harness import raise_open_files_limit
from tests.support.ports import HOST

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Hub:
    def __init__(self, data_bytes: int) -> None:
        self.streams: set[asyncio.Transport] = set()
        self.data_bytes = data_bytes
        self.sequence = 0

    def fire(self) -> int:
        self.sequence += 1
        data = b"x" * self.data_bytes
        event = b"id: %d\nevent: change\ndata: %s\n\n" % (self.sequence, data)
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        for transport in self.streams:
            transport.write(chunk)
        return len(self.streams)


class HttpSide(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.head = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport in self.hub.streams:
            return  # a held stream says nothing more
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 16384:
                self.transport.abort()
            return
        request_line = self.head.split(b"\r\n", 1)[0].split()
        if (
            len(request_line) == 3
            and request_line[0] == b"GET"
            and (request_line[1].split(b"?")[0].endswith(b"/stream"))
        ):
            self.transport.write(HEAD)
            self.hub.streams.add(self.transport)
        else:
            self.transport.write(NOT_FOUND)
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self.transport is not None:
            self.hub.streams.discard(self.transport)


class LineSide(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        for _ in lines:
            count = self.hub.fire()
            self.transport.write(b"EVENT " + json.dumps({"streams": count}).encode() + b"\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sse_floor", description=__doc__)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--line-port", type=int, required=True)
    parser.add_argument("--data-bytes", type=int, default=300)
    options = parser.parse_args(argv)
    raise_open_files_limit()
    hub = Hub(options.data_bytes)
    loop = asyncio.new_event_loop()
    servers = [
        loop.run_until_complete(
            loop.create_server(lambda: HttpSide(hub), options.host, options.port, backlog=1024)
        ),
        loop.run_until_complete(
            loop.create_server(lambda: LineSide(hub), options.host, options.line_port)
        ),
    ]
    try:
        loop.run_forever()
    finally:
        for server in servers:
            server.close()
        loop.close()
    return 0
