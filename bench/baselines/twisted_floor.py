"""The floor again, on Twisted: what the framework alone costs before Renga does anything.

The same work as `bench/baselines/floor.py` (parse with `herd.wire`, format the AT reply, one
write per read, nothing stored, flooded or logged) as a Twisted `Protocol` on the asyncio reactor,
installed the way `herd` installs it.  The gap between this and the plain-asyncio floor is
the framework's (Twisted's transports and dispatch on an asyncio loop); the gap between this
and Renga is Renga's own work.

    python -m bench twisted_floor --port 12345        # until SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from herd.wire.client import IAmAt, error_reply, format_at, parse_client_line
from herd.wire.grammar import WireError

SERVER_NAME = b"Floor"
MAX_LINE = 65536


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench twisted_floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args(argv)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory, Protocol

    class FloorProtocol(Protocol):
        def __init__(self) -> None:
            self._buffer = b""

        def dataReceived(self, data: bytes) -> None:
            lines = (self._buffer + data if self._buffer else data).split(b"\n")
            self._buffer = lines.pop()
            if len(self._buffer) > MAX_LINE:
                self._buffer = b""
                self.transport.loseConnection()  # type: ignore[union-attr]
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
            if replies:
                self.transport.write(b"".join(replies))  # type: ignore[union-attr]

    endpoint = TCP4ServerEndpoint(reactor, arguments.port, interface=arguments.host)
    endpoint.listen(Factory.forProtocol(FloorProtocol))
    runner: Any = reactor
    runner.run()
    return 0
