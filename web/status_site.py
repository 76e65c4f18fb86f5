"""The operator's status listener (twisted.web; docs/web.md, "Operator status and /metrics"):
`GET /`, a page of the server's figures, and `GET /metrics`, the same figures in the
Prometheus text format.

It is bound to 127.0.0.1 by the wiring whatever else the config says (`status_port` has no
host), and answers only requests that come from a loopback address and name a loopback host
(`Host: 127.0.0.1:<port>`, `localhost`, `[::1]`): a web page a local browser opens cannot
read it by pointing a name of its own at 127.0.0.1 (DNS rebinding).  Nothing here writes.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from web.metrics import CONTENT_TYPE, metrics_registry, metrics_text
from web.status import OUTBOX_STATES, StatusSource
from web.templates import WebTemplates

__all__ = ["StatusSite", "build_status_site", "is_loopback_host"]

_HEADERS: Final = {
    b"Content-Security-Policy": b"default-src 'none'; style-src 'unsafe-inline'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
    b"Cache-Control": b"no-store",
}
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """Whether a `Host` header's name (port left off) or an address is a loopback one."""
    name = host.strip().lower()
    if name.startswith("[") and "]" in name:
        name = name[1 : name.index("]")]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _plain(request: Request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return text.encode("utf-8") + b"\n"


def _local(request: Request) -> bool:
    peer = getattr(request.getClientAddress(), "host", "")
    hosts = request.requestHeaders.getRawHeaders(b"host") or []
    return (
        is_loopback_host(str(peer))
        and len(hosts) == 1
        and is_loopback_host(hosts[0].decode("ascii", "replace"))
    )


class _StatusResource(Resource):
    """`/` and `/metrics`; anything else is 404."""

    isLeaf = True

    def __init__(self, source: StatusSource, templates: WebTemplates) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.source = source
        self.templates = templates
        self.registry = metrics_registry(source.figures)

    def render_GET(self, request: Request) -> bytes | int:
        for name, value in _HEADERS.items():
            request.setHeader(name, value)
        if not _local(request):
            return _plain(request, http.FORBIDDEN, "the status listener answers loopback only")
        path = request.path
        if path not in (b"/", b"/metrics"):
            return _plain(request, http.NOT_FOUND, "not found: / and /metrics only")
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(_: object) -> None:
            if gone:
                return
            if path == b"/metrics":
                request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
                body = metrics_text(self.registry)
            else:
                request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
                body = self.templates.page(
                    "status", {"now": self.source.figures(), "states": OUTBOX_STATES}
                )
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if not gone:
                request.write(_plain(request, http.SERVICE_UNAVAILABLE, "figures unavailable"))
                request.finish()

        self.source.refresh().addCallbacks(answer, failed)
        return NOT_DONE_YET


class _NoBodyRequest(Request):
    """The status listener reads no request body: a request that announces one is answered
    413 and its connection closed before the body is read."""

    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length != 0:  # a Content-Length, or None: chunked
            self._refused = True
            channel = self.channel
            if channel is not None and channel.transport is not None:
                channel.transport.write(
                    b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\n"
                    b"Content-Length: 0\r\n\r\n"
                )
                channel.loseConnection()
        super().gotLength(0)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        return

    def process(self) -> None:
        if not self._refused:
            super().process()  # type: ignore[no-untyped-call]


class StatusSite(Site):
    """The status listener's site: no access log (a scrape every few seconds would fill the
    server's log), small request limits, no tracebacks."""

    def __init__(self, root: Resource) -> None:
        super().__init__(root, timeout=30)  # type: ignore[no-untyped-call]
        self.requestFactory = _NoBodyRequest
        self.protocol = http.HTTPChannel  # type: ignore[assignment]
        self.displayTracebacks = False
        self.noisy = False

    def log(self, request: Request) -> None:  # type: ignore[override]
        return

    def buildProtocol(self, addr: object) -> http.HTTPChannel:  # type: ignore[override]
        channel: http.HTTPChannel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        channel.totalHeadersSize = 8192
        channel.MAX_LENGTH = 8192
        channel.maxHeaders = 50
        return channel


def build_status_site(source: StatusSource, templates: WebTemplates) -> StatusSite:
    return StatusSite(_StatusResource(source, templates))
