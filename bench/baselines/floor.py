"""The floor: the least any Python server pays to answer IAMAT.

A plain-asyncio server (the default event loop, as Renga's asyncio reactor uses) that parses
each line with `herd.wire` — the same validation Renga applies — and formats the AT reply with
`herd.wire.format_at`; nothing else: no store, no flood, no log.  One `transport.write` per
read: the lines that arrived together are answered together.

    python -m bench floor --port 12345        # until SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from typing import cast

from herd.wire.client import IAmAt, error_reply, format_at, parse_client_line
from herd.wire.grammar import WireError

SERVER_NAME = b"Floor"
MAX_LINE = 65536


class FloorProtocol(asyncio.Protocol):
    """IAMAT in, AT out; anything else is answered `? <line>`."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        lines = (self._buffer + data if self._buffer else data).split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > MAX_LINE:
            self._buffer = b""
            assert self._transport is not None
            self._transport.close()
            return
        replies = []
        now_ns = time.time_ns()
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            try:
                command = parse_client_line(line)
            except WireError:
                replies.append(error_reply(line))
                continue
            if command is None:
                continue
            if isinstance(command, IAmAt):
                replies.append(format_at(SERVER_NAME, now_ns, command).line + b"\n")
            else:
                replies.append(error_reply(line))
        if replies and self._transport is not None:
            self._transport.write(b"".join(replies))

    def eof_received(self) -> bool:
        if self._buffer and self._transport is not None:
            line, self._buffer = self._buffer, b""
            self.data_received(line + b"\n")
        return False  # close once the replies are written


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def serve(host: str, port: int, backlog: int = 50) -> None:
    """Serve until SIGTERM/SIGINT; the backlog is Twisted's default, as Renga listens."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: _finish(stop))
    server = await loop.create_server(FloorProtocol, host, port, backlog=backlog)
    async with server:
        await stop
    # Connections still open are dropped with the loop.


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=int, default=50)
    arguments = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(arguments.host, arguments.port, arguments.backlog))
    return 0
