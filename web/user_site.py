"""`/u`: the user's own pages, for a session good for all of the user's events (the one the
settings link in a mail sets, sent to `/prefs` and to `/u`): the "my events" page and the
live stream of all those events (`web.stream.UserStreamResource`).

`GET /u` lists every event the user organises or is invited to (`web.mine`), each with a
link that opens its page: a personal link made for this page (`herd.tokens`, the user's
current link generation, expiring with this session), so the event page gets its own
session as from a mail.  With JavaScript the page follows `/u/stream` and updates each row
(its status, the leading time and place, how many answered); without it, it is a plain page.
"""

from __future__ import annotations

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

from herd.api import link_token, timezone_of
from web.host import WebHost
from web.mine import my_events
from web.prefs_site import prefs_session
from web.resources import _denied, _html
from web.stream import UserStreamResource

__all__ = ["UserResource"]


class UserResource(Resource):
    """`/u` (the "my events" page) and `/u/stream` (when the wiring runs live streams)."""

    def __init__(self, host: WebHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host
        if host.live is not None:
            self.putChild(b"stream", UserStreamResource(host.live))

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)  # type: ignore[no-untyped-call,no-any-return]

    def render_GET(self, request: Request) -> bytes:
        host = self.host
        session = prefs_session(host, request)
        if session is None:
            return _denied(host, request)
        user = session.user
        claim = session.claim
        zone = timezone_of(user.tz, host.position_of(user.id))

        def link(event_id: str) -> str:
            token = link_token(host.secret, user.id, event_id, claim.expires, claim.generation)
            return f"/e/{event_id}?t={token}"

        rows = my_events(host.state.events_of(user.id), user.id, zone, link)
        body = host.templates.page(
            "mine",
            {
                "user": user.id,
                "zone": zone,
                "events": rows,
                "server": host.name,
                # where the page's live stream resumes from (web.stream); None: no stream
                "live": None if host.live is None else host.live.latest() or "",
            },
        )
        return _html(request, body, http.OK)
