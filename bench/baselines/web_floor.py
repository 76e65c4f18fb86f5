"""The web's floor: twisted.web serving one page of fixed bytes, on the asyncio reactor
installed the way `herd` installs it.  What an HTTP request costs the framework before Renga
does anything: parsing the request and its headers, one resource lookup, writing the response
(the same body and the same security headers as Renga's page), no access log.

    python -m bench web_floor --port 12345 --body PAGE.html      # until SIGTERM/SIGINT

Any GET is answered with the body (`text/html`); the `web_page` benchmark gives it the page
Renga rendered in the same run, so both send the same bytes.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from web.rules import SECURITY_HEADERS


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench web_floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="the file every GET answers")
    arguments = parser.parse_args(argv)
    body: bytes = arguments.body.read_bytes()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.resource import Resource
    from twisted.web.server import Request, Site

    class Page(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> bytes:
            for name, value in SECURITY_HEADERS.items():
                request.setHeader(name, value)
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return body

    site = Site(Page())  # type: ignore[no-untyped-call]
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    endpoint = TCP4ServerEndpoint(reactor, arguments.port, interface=arguments.host)
    endpoint.listen(site)
    runner: Any = reactor
    runner.run()
    return 0
