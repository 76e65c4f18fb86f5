"""The live streams' floor again, on twisted.web: what the framework alone costs before Renga
does anything.  The same work as `bench/baselines/sse_floor.py` (hold every `GET …/stream` as a
`text/event-stream` response; on a line on the line port, write one event to all of them) as
a twisted.web resource on the asyncio reactor, installed the way `herd` installs it: each
event goes out through `Request.write` (chunked by twisted.web), as Renga's streams write it.
The gap between this and the asyncio floor is the framework's; between this and Renga, Renga's.

    python -m bench sse_twisted_floor --port HTTP_PORT --line-port LINE_PORT [--data-bytes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from bench.harness import raise_open_files_limit
from tests.support.ports import HOST


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sse_twisted_floor", description=__doc__)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--line-port", type=int, required=True)
    parser.add_argument("--data-bytes", type=int, default=300)
    options = parser.parse_args(argv)
    raise_open_files_limit()
    data_bytes: int = options.data_bytes

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory, Protocol
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Request, Site

    streams: set[Request] = set()
    sequence = [0]

    class Streams(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes | int:
            if not (request.path or b"").endswith(b"/stream"):
                request.setResponseCode(404)
                return b""
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.setHeader(b"Cache-Control", b"no-store")
            channel = request.channel
            if channel is not None:
                channel.setTimeout(None)
            streams.add(request)
            request.notifyFinish().addBoth(lambda _: streams.discard(request))
            request.write(b": hello\n\n")
            return NOT_DONE_YET

    class Line(Protocol):
        buffer = b""

        def dataReceived(self, data: bytes) -> None:
            lines = (self.buffer + data).split(b"\n")
            self.buffer = lines.pop()
            for _ in lines:
                sequence[0] += 1
                event = b"id: %d\nevent: change\ndata: %s\n\n" % (sequence[0], b"x" * data_bytes)
                for request in tuple(streams):
                    request.write(event)
                reply = {"streams": len(streams)}
                self.transport.write(b"EVENT " + json.dumps(reply).encode() + b"\n")  # type: ignore[union-attr]

    site = Site(Streams())  # type: ignore[no-untyped-call]
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    TCP4ServerEndpoint(reactor, options.port, backlog=1024, interface=options.host).listen(site)
    TCP4ServerEndpoint(reactor, options.line_port, interface=options.host).listen(
        Factory.forProtocol(Line)
    )
    runner: Any = reactor
    runner.run()
    return 0
