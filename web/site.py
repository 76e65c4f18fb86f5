"""The web site of one herd server (twisted.web): what the wiring passes in (`WebHost`), the
request every resource gets (`WebRequest`: security headers, bounded bodies, an access log
without tokens) and `build_site`, the one place the URL tree is put together.

URLs (docs/web.md): `/e/<event>?t=<link token>` (a personal link: a session cookie, then a
redirect to `/e/<event>`), `/e/<event>` (the event page), `POST /e/<event>/vote` and
`POST /e/<event>/comment` (the page's forms), `/static/<file>`, `/e/<event>/stream` and
`/u/stream` (the live streams, `web.stream`), `/u` (the user's "my events" page,
`web.user_site`), `/prefs` and `/unsubscribe` (`web.prefs_site`).
Other parts of the web add
their own children in `build_site` (see `EventsResource.actions` for an event's sub-paths).
"""

from __future__ import annotations

import io
from typing import Any

from twisted.web import http
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request, Site

from web.api import ApiResource
from web.host import WebHost
from web.prefs_site import add_prefs
from web.resources import EventResource, EventsResource, RootResource, StaticResource
from web.rules import SECURITY_HEADERS, access_line
from web.stream import EventStreamResource
from web.user_site import UserResource

__all__ = ["WebRequest", "WebSite", "build_site"]

_HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
    b"Content-Length: 0\r\n\r\n"
)
_TOO_LARGE = (
    b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 0\r\n"
    b"Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n\r\n"
)
_API_TOO_LARGE_BODY = (
    b'{"error":{"code":"body-too-large","message":"the body is over [web] body_bytes"}}\n'
)
_API_TOO_LARGE = (
    b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_API_TOO_LARGE_BODY), _API_TOO_LARGE_BODY)
)


class WebRequest(Request):
    """Every request of the site: the security headers are set before any resource runs (so
    errors carry them too), a body over `[web] body_bytes` is refused with 413 before it is
    read, and the access log gets one line per request with no query value in it."""

    _refused = False

    def process(self) -> None:
        if self._refused:  # answered 413 already; the connection is closing
            return
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)  # type: ignore[no-untyped-call]
        super().process()  # type: ignore[no-untyped-call]

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.setHeader(b"Server", b"Renga")  # type: ignore[no-untyped-call]
        super().write(data)  # type: ignore[no-untyped-call]

    def gotLength(self, length: int | None) -> None:
        self._body_seen = 0
        self._refused = False
        site: WebSite = self.channel.site  # type: ignore[attr-defined]
        limit = site.host.web.settings.body_bytes
        self._body_limit = limit
        if length is not None and length > limit:
            self._refuse_body()
        # The body is bounded, so it is always kept in memory (never a temporary file).
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_seen += len(data)
        if self._body_seen > self._body_limit:
            self._refuse_body()
            return
        assert self.content is not None
        self.content.write(data)

    def _refuse_body(self) -> None:
        self._refused = True
        channel = self.channel
        transport = None if channel is None else channel.transport
        if channel is not None and transport is not None:
            # The channel has read the request line: the JSON API answers in JSON.
            path: bytes = getattr(channel, "_path", b"") or b""
            transport.write(_API_TOO_LARGE if path.startswith(b"/api/") else _TOO_LARGE)
            channel.loseConnection()


class _WebChannel(http.HTTPChannel):
    """HTTP/1.1 whose over-long request line or header line is answered 431, not dropped."""

    def lineLengthExceeded(self, line: bytes) -> None:
        if self.transport is not None:
            self.transport.write(_HEADERS_TOO_LARGE)
        self.loseConnection()  # type: ignore[no-untyped-call]


class WebSite(Site):
    """A `Site` whose header limits and idle timeout come from `[web]`, and whose access log
    is the server's traffic log, tokens redacted (`web.rules.access_line`)."""

    def __init__(self, root: Resource, host: WebHost) -> None:
        settings = host.web.settings
        super().__init__(root, timeout=settings.idle_seconds)  # type: ignore[no-untyped-call]
        self.host = host
        self.requestFactory = WebRequest
        # The plain HTTP/1.1 channel rather than Twisted's wrapper that may switch to HTTP/2
        # (only over TLS, which the site does not do itself): its limits are set below.
        self.protocol = _WebChannel  # type: ignore[assignment]
        self.displayTracebacks = False
        self.noisy = False

    def buildProtocol(self, addr: Any) -> http.HTTPChannel:  # type: ignore[override]
        channel: http.HTTPChannel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        limit = self.host.web.settings.header_bytes
        channel.totalHeadersSize = limit
        channel.MAX_LENGTH = limit
        channel.maxHeaders = 100
        channel.site = self  # type: ignore[attr-defined]
        return channel

    def log(self, request: Request) -> None:  # type: ignore[override]
        peer = request.getClientAddress()
        client = getattr(peer, "host", "-")
        length = request.sentLength if request.sentLength else 0
        line = access_line(request.method, request.uri, request.code, length)
        self.host.log(f"web:{client}", [line])


def build_site(host: WebHost) -> WebSite:
    """The site's URL tree, every resource built once."""
    root = RootResource(host)
    root.putChild(b"e", EventsResource(host))
    root.putChild(b"static", StaticResource(host.static))
    root.putChild(b"api", ApiResource(host))
    if host.live is not None:
        EventResource.actions[b"stream"] = _event_stream
    root.putChild(b"u", UserResource(host))  # /u, /u/stream
    add_prefs(root, host)  # /prefs, /unsubscribe
    return WebSite(root, host)


def _event_stream(host: WebHost, event_id: str) -> Resource:
    """`/e/<event>/stream` (`web.stream`); not found on a site without live streams."""
    if host.live is None:
        return NoResource()
    return EventStreamResource(host.live, event_id)
