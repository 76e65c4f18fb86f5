"""Holds idle client connections open (for `bench idle`): opens `--count` connections to a
server, a few at a time, prints one JSON line (`{"held": N, "failed": F, "seconds": S}`) when
they are all open, then keeps them silent until its stdin closes or it gets SIGTERM, and resets
them all (SO_LINGER 0, so no TIME_WAIT is left behind).

Each connection first sends one line (`--greeting`, default `STATUS`; a server that does not
know it answers `? STATUS`) and waits for the reply before the next connect starts: a connect
completes before the server has accepted it, so without that feedback the clients outrun the
server's accept queue (Twisted listens with a backlog of 50) and the dropped SYNs are retried a
second later.  `--greeting ""` opens silent connections instead.

    python -m bench holder --port 12001 --count 9500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import struct
import sys
import time
from typing import cast

from bench.harness import raise_open_files_limit
from bench.tools.loadgen import new_event_loop

CONNECT_ATTEMPTS = 5
RESET = struct.pack("ii", 1, 0)


class Idle(asyncio.Protocol):
    """Says its greeting (if any), then nothing; remembers whether the server closed it."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        if self.greeting:
            self.transport.write(self.greeting + b"\n")
        else:
            self.answered.set_result(None)

    def data_received(self, data: bytes) -> None:
        if b"\n" in data and not self.answered.done():
            self.answered.set_result(None)

    def connection_lost(self, error: Exception | None) -> None:
        self.closed = True
        if not self.answered.done():
            self.answered.set_exception(ConnectionError("closed by the server"))


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def hold(host: str, port: int, count: int, concurrency: int, greeting: bytes) -> int:
    loop = asyncio.get_running_loop()
    connections: list[Idle] = []
    failed = 0
    gate = asyncio.Semaphore(concurrency)
    start = time.monotonic()

    async def one() -> None:
        nonlocal failed
        async with gate:
            for attempt in range(CONNECT_ATTEMPTS):
                try:
                    _, protocol = await asyncio.wait_for(
                        loop.create_connection(lambda: Idle(greeting), host, port), 10.0
                    )
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                try:
                    await asyncio.wait_for(protocol.answered, 10.0)
                except (OSError, TimeoutError):
                    if protocol.transport is not None:
                        protocol.transport.abort()
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                connections.append(protocol)
                return
            failed += 1

    await asyncio.gather(*(one() for _ in range(count)))
    print(
        json.dumps(
            {"held": len(connections), "failed": failed, "seconds": time.monotonic() - start}
        ),
        flush=True,
    )
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: _finish(stop))
    loop.add_reader(sys.stdin.fileno(), lambda: _finish(stop))
    await stop
    closed_by_server = sum(1 for connection in connections if connection.closed)
    for connection in connections:
        if connection.transport is not None:
            connection.transport.abort()
    await asyncio.sleep(0)
    return 1 if closed_by_server else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench holder", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16, help="connects at a time")
    parser.add_argument("--greeting", default="STATUS", help="first line of each connection")
    arguments = parser.parse_args(argv)
    raise_open_files_limit()
    loop = new_event_loop()
    try:
        return loop.run_until_complete(
            hold(
                arguments.host,
                arguments.port,
                arguments.count,
                arguments.concurrency,
                arguments.greeting.encode(),
            )
        )
    finally:
        loop.close()
