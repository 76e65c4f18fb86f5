"""The site's resources (thin twisted.web adapters): the personal link, the event page, its
vote and comment forms, the static files.  The rules are elsewhere: who may see what
(`herd.tokens` through `herd.api`, the session checks here read the herd's state), what the
page shows (`web.model`, `web.svg`), what a request may carry (`web.rules`).  Writes go
through the line protocol: a vote from the page is a `VOTE` line run as that user, so every
rule, permission and replication path is the line's.

Whatever is wrong with a link or a session — forged, expired, revoked, for another event or
user, or the user no longer invited — the answer is the same 403 page, which shows nothing of
the event.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, TypeVar

from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from herd.api import (
    Choice,
    CommentOn,
    Event,
    RevokeLinks,
    VoteOn,
    WebClaim,
    check_csrf,
    csrf_token,
    is_id,
    open_link,
    open_session,
    session_token,
    timezone_of,
)
from web.host import WebHost
from web.model import EventPage, event_page
from web.rules import (
    FLASH_COOKIE,
    SESSION_COOKIE,
    Cookie,
    cookie_values,
    origin_of,
    read_flash,
    same_origin,
    write_flash,
)
from web.svg import positions_figure
from web.templates import StaticFile

__all__ = [
    "EventResource",
    "EventsResource",
    "RootResource",
    "Session",
    "StaticResource",
    "session_for",
]

_FORM: Final = b"application/x-www-form-urlencoded"
_TOO_MANY_REQUESTS: Final = 429  # RFC 6585; twisted.web.http has no name for it
_LINE_BREAKS: Final = re.compile(r"[\r\n\t]+")
_CHOICES: Final = {"yes": Choice.YES, "maybe": Choice.MAYBE, "no": Choice.NO}
DENIED: Final = (
    "This link does not open anything: it may have expired, been revoked, or be for someone "
    "else. Open the link in your most recent Renga message."
)


@dataclass(frozen=True, slots=True)
class Session:
    """A request's valid session for one event: its claim and the cookie's value (which the
    CSRF token is bound to)."""

    claim: WebClaim
    cookie: str
    event: Event


def session_for(host: WebHost, request: Request, event_id: str) -> Session | None:
    """The request's session for `event_id`: a genuine unexpired session cookie for that event
    (or for all the user's events), of the user's current link generation, the user still
    taking part in the event.  None otherwise."""
    event = host.state.event(event_id)
    if event is None:
        return None
    headers = request.requestHeaders.getRawHeaders(b"cookie") or []
    now = host.now()
    for value in cookie_values(headers, SESSION_COOKIE):
        claim = open_session(host.secret, value, now)
        if claim is None or not claim.allows(event_id):
            continue
        user = host.state.user(claim.user)
        if user is None or user.link_generation != claim.generation:
            continue
        if claim.user in event.participants:
            return Session(claim, value, event)
    return None


def _generation_of(host: WebHost) -> Callable[[str], int | None]:
    def generation(user_id: str) -> int | None:
        user = host.state.user(user_id)
        return None if user is None else user.link_generation

    return generation


def _html(request: Request, body: bytes, code: int = http.OK) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    return body


def _denied(host: WebHost, request: Request, message: str = DENIED) -> bytes:
    """The one 403 page: nothing of any event on it."""
    body = host.templates.page("denied", {"message": message, "server": host.name})
    return _html(request, body, http.FORBIDDEN)


def _redirect(request: Request, location: bytes) -> bytes:
    request.setResponseCode(http.SEE_OTHER)
    request.setHeader(b"Location", location)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b""


class RootResource(Resource):
    """`/`: what the site is, and no data."""

    def __init__(self, host: WebHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host

    def render_GET(self, request: Request) -> bytes:
        return _html(request, self.host.templates.page("home", {"server": self.host.name}))

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)  # type: ignore[no-untyped-call,no-any-return]


class StaticResource(Resource):
    """`/static/<name>`: the files read at start, nothing else (no listing, no paths)."""

    isLeaf = True

    def __init__(self, files: Mapping[str, StaticFile]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.files = files

    def render_GET(self, request: Request) -> bytes:
        postpath = request.postpath or []
        name = postpath[0].decode("ascii", "replace") if len(postpath) == 1 else ""
        found = self.files.get(name)
        if found is None:
            request.setResponseCode(http.NOT_FOUND)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"not found\n"
        request.setHeader(b"Content-Type", found.content_type)
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return found.body


class EventsResource(Resource):
    """`/e/<event>`: one `EventResource` per request (they hold nothing)."""

    def __init__(self, host: WebHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host

    def getChild(self, path: bytes, request: Request) -> Resource:
        event_id = path.decode("ascii", "replace")
        return EventResource(self.host, event_id if is_id(event_id) else "")


ActionFactory = Callable[[WebHost, str], Resource]


class EventResource(Resource):
    """`/e/<event>` and its sub-paths.  Other parts of the web add sub-paths to `actions`
    (`/e/<event>/<name>` → `factory(host, event_id)`)."""

    actions: ClassVar[dict[bytes, ActionFactory]] = {}

    def __init__(self, host: WebHost, event_id: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host
        self.event_id = event_id

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        if path == b"vote":
            return VoteResource(self.host, self.event_id)
        if path == b"comment":
            return CommentResource(self.host, self.event_id)
        if path == b"revoke":
            return RevokeResource(self.host, self.event_id)
        factory = self.actions.get(path)
        if factory is not None:
            return factory(self.host, self.event_id)
        return super().getChild(path, request)  # type: ignore[no-untyped-call,no-any-return]

    def render_GET(self, request: Request) -> bytes:
        host = self.host
        tokens = (request.args or {}).get(b"t")
        if tokens:
            return self._open_link(request, tokens[0].decode("ascii", "replace"))
        session = session_for(host, request, self.event_id) if self.event_id else None
        if session is None:
            return _denied(host, request)
        flashes = cookie_values(request.requestHeaders.getRawHeaders(b"cookie") or [], FLASH_COOKIE)
        if flashes:  # shown once: cleared with this answer
            request.setHeader(b"Set-Cookie", self._flash_cookie("", 0).header())
        return _html(request, self.page(session, read_flash(flashes[0]) if flashes else None))

    def page(self, session: Session, flash: str | None) -> bytes:
        """The event page as the session's user sees it."""
        host = self.host
        user_id = session.claim.user
        user = host.state.user(user_id)
        zone = timezone_of(None if user is None else user.tz, host.position_of(user_id))
        model = event_page(session.event, user_id, zone)
        return host.templates.page(
            "event",
            {
                "page": model,
                "figure": self._figure(model),
                "csrf": csrf_token(host.secret, session.cookie),
                "flash": flash,
                "server": host.name,
                # where the page's live stream resumes from (web.stream); None: no stream
                "live": None if host.live is None else host.live.latest() or "",
            },
        )

    def _figure(self, model: EventPage) -> object:
        host = self.host
        people = [
            (row.user, position)
            for row in model.answers
            if (position := host.position_of(row.user)) is not None
        ]
        leading = model.leading_place
        place = None if leading is None else leading.position
        return positions_figure(place, None if leading is None else leading.label, people)

    def _open_link(self, request: Request, token: str) -> bytes:
        """A personal link: a session cookie for this event, then the page without the token
        in the address."""
        host = self.host
        now = host.now()
        claim = (
            open_link(host.secret, token, self.event_id, now, _generation_of(host))
            if self.event_id
            else None
        )
        event = host.state.event(self.event_id) if claim is not None else None
        if claim is None or event is None or claim.user not in event.participants:
            return _denied(host, request)
        limit = now + host.web.settings.session_hours * 3600
        session = WebClaim(claim.user, self.event_id, min(claim.expires, limit), claim.generation)
        cookie = Cookie(
            SESSION_COOKIE,
            session_token(host.secret, session),
            f"/e/{self.event_id}",
            session.expires - now,
            host.web.secure,
        )
        request.setHeader(b"Set-Cookie", cookie.header())
        return _redirect(request, f"/e/{self.event_id}".encode("ascii"))

    def _flash_cookie(self, message: str, max_age: int) -> Cookie:
        value = write_flash(message) if message else ""
        return Cookie(
            FLASH_COOKIE, value, f"/e/{self.event_id}", max_age, self.host.web.secure, "Strict"
        )


class _FormResource(Resource):
    """A POST from the event page: a session for the event, a request from our own pages
    (`Origin`, `Sec-Fetch-Site`), the session's CSRF token, a form body; then one line run as
    the user, and a 303 back to the page with the result."""

    isLeaf = True

    def __init__(self, host: WebHost, event_id: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host
        self.event_id = event_id

    def line(self, form: Mapping[str, str]) -> bytes | str:
        """The planning line for this form, or why there is none (shown to the user)."""
        raise NotImplementedError

    done: ClassVar[str] = "Done."

    def render_POST(self, request: Request) -> bytes | int:
        host = self.host
        headers = request.requestHeaders
        allowed = {origin_of(host.web.base_url)}
        origin = headers.getRawHeaders(b"origin")
        fetch_site = headers.getRawHeaders(b"sec-fetch-site")
        if not same_origin(
            origin[0] if origin else None, fetch_site[0] if fetch_site else None, allowed
        ):
            return _denied(host, request, "This form was sent from another site: refused.")
        session = session_for(host, request, self.event_id) if self.event_id else None
        if session is None:
            return _denied(host, request)
        content_type = (headers.getRawHeaders(b"content-type") or [b""])[0]
        if content_type.split(b";")[0].strip().lower() != _FORM:
            request.setResponseCode(http.UNSUPPORTED_MEDIA_TYPE)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"forms only\n"
        form = _form(request.args or {})
        if not check_csrf(host.secret, session.cookie, form.get("csrf", "")):
            return _denied(host, request, "This form has expired: reload the page and try again.")
        line = self.line(form)
        if isinstance(line, str):
            return self._back(request, line)
        release = start_write(host, request)
        if release is None:
            return too_many(request)
        answered = host.run_as(session.claim.user, line.rstrip(b"\n"))
        answered.addBoth(release)
        finished = request.notifyFinish()
        gone: list[bool] = []
        finished.addErrback(lambda _: gone.append(True))

        def reply(answer: bytes) -> None:
            if not gone:
                request.write(self._back(request, _result(answer, self.done)))
                request.finish()

        def failed(failure: Failure) -> None:
            if not gone:
                request.write(self._back(request, "Not done: the server could not do it now."))
                request.finish()

        answered.addCallbacks(reply, failed)
        return NOT_DONE_YET

    def _back(self, request: Request, message: str) -> bytes:
        cookie = Cookie(
            FLASH_COOKIE,
            write_flash(message),
            f"/e/{self.event_id}",
            60,
            self.host.web.secure,
            "Strict",
        )
        request.setHeader(b"Set-Cookie", cookie.header())
        return _redirect(request, f"/e/{self.event_id}".encode("ascii"))


class VoteResource(_FormResource):
    """`POST /e/<event>/vote`: `option`, `choice` (yes, maybe, no), `csrf`."""

    done = "Your vote is in."

    def line(self, form: Mapping[str, str]) -> bytes | str:
        option, choice = form.get("option", ""), _CHOICES.get(form.get("choice", ""))
        if not is_id(option) or choice is None:
            return "Not done: pick an option and yes, maybe or no."
        return VoteOn(self.event_id, option, choice).to_line()


class CommentResource(_FormResource):
    """`POST /e/<event>/comment`: `text`, `csrf`.  Line breaks become spaces: a comment is one
    line of the protocol."""

    done = "Your comment is posted."

    def line(self, form: Mapping[str, str]) -> bytes | str:
        text = _LINE_BREAKS.sub(" ", form.get("text", "")).strip()
        if not text:
            return "Not done: the comment is empty."
        return CommentOn(self.event_id, text).to_line()


class RevokeResource(_FormResource):
    """`POST /e/<event>/revoke`: `csrf`.  `LINKS REVOKE` as the user: every link sent so far,
    and this page's own session, stop working; the answer says so (there is no page to go
    back to)."""

    done = (
        "Your links are revoked: the links in the messages Renga sent you so far, and every page "
        "opened with one, no longer open anything. The next messages carry new links."
    )

    def line(self, form: Mapping[str, str]) -> bytes | str:
        return RevokeLinks().to_line()

    def _back(self, request: Request, message: str) -> bytes:
        cleared = Cookie(SESSION_COOKIE, "", f"/e/{self.event_id}", 0, self.host.web.secure)
        request.setHeader(b"Set-Cookie", cleared.header())
        revoked = message == self.done
        page = self.host.templates.page(
            "denied",
            {
                "heading": "Links revoked" if revoked else "Not done",
                "message": message,
                "server": self.host.name,
            },
        )
        return _html(request, page)


def _form(args: Mapping[bytes, list[bytes]]) -> dict[str, str]:
    """The first value of each field, as text (bytes that are not UTF-8 replaced)."""
    return {
        key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
        for key, values in args.items()
        if values
    }


def _result(answer: bytes, done: str) -> str:
    """What the user is told of the line's reply."""
    if answer.startswith(b"ERR "):
        _, _, message = answer[4:].rstrip(b"\n").decode("utf-8", "replace").partition(": ")
        return f"Not done: {message}"
    if answer.startswith(b"? "):
        return "Not done: the server did not understand that."
    return done


_T = TypeVar("_T")


def start_write(host: WebHost, request: Request) -> Callable[[_T], _T] | None:
    """Count a write from the request's client address (`[web] writes_per_address` at once,
    over every form and page); the function to pass the outcome through when its lines are
    done, or None when the address has as many running as it may."""
    address = str(getattr(request.getClientAddress(), "host", "-"))
    in_flight = host.writes.get(address, 0)
    if in_flight >= host.web.settings.writes_per_address:
        return None
    host.writes[address] = in_flight + 1

    def release(outcome: _T) -> _T:
        left = host.writes.get(address, 1) - 1
        if left > 0:
            host.writes[address] = left
        else:
            host.writes.pop(address, None)
        return outcome

    return release


def too_many(request: Request) -> bytes:
    """The answer to a write over `writes_per_address`."""
    request.setResponseCode(_TOO_MANY_REQUESTS)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Retry-After", b"1")
    return b"too many at once: try again\n"
