"""The preferences page and the one-click unsubscribe page (thin twisted.web adapters over
`web.prefs`; docs/web.md "Unsubscribing and preferences").

- `/unsubscribe?u=<user>&t=<token>`: `GET` shows a page with a button and changes nothing
  (link scanners and previews open links); `POST` with `List-Unsubscribe=One-Click` (RFC 8058:
  no cookie, no CSRF token, from anywhere: the token in the URL is the authority) runs the
  line protocol's `OPTOUT <user> <token>` as that user, so the opt-out is exactly the line's.
- `/prefs?t=<user-scope link token>`: a session cookie for `/prefs`, then a redirect to
  `/prefs`, the form (session, same origin, CSRF token); what it changes runs as `USER SET` /
  `USER UNSET` lines as the user, one after the other, and the result shows after a 303.
  The link's session is also set for `/u` (the "my events" page and its live stream,
  `web.user_site`).
- `POST /prefs/revoke`: `LINKS REVOKE` as the user (this page's session ends with the rest),
  then `/prefs/revoked`, a page that needs no session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from herd.api import (
    USER_SCOPE,
    OptOut,
    RevokeLinks,
    User,
    UserField,
    WebClaim,
    check_csrf,
    csrf_token,
    open_link,
    open_session,
    session_token,
    timezone_of,
    verify_unsubscribe,
)
from web.host import WebHost
from web.prefs import (
    CHANNELS,
    DIGESTS,
    ONE_CLICK,
    PREFS_PATH,
    UserCommand,
    is_one_click,
    prefs_changes,
    prefs_page,
    result_message,
    unsubscribe_query,
)
from web.resources import DENIED, _denied, _html, _redirect, start_write, too_many
from web.rules import (
    FLASH_COOKIE,
    SESSION_COOKIE,
    USER_PATH,
    Cookie,
    cookie_values,
    origin_of,
    read_flash,
    same_origin,
    write_flash,
)

__all__ = ["PrefsResource", "UnsubscribeResource", "add_prefs"]

_log = Logger()

_FORM: Final = b"application/x-www-form-urlencoded"
_NOT_NOW: Final = "Not saved: the server could not do it now. Try again in a minute."
BAD_UNSUBSCRIBE: Final = (
    "This unsubscribe link is not valid: it may have been cut short or changed. Use the link "
    "in your most recent Renga mail."
)


def add_prefs(root: Resource, host: WebHost) -> None:
    """`/prefs` and `/unsubscribe` on the site's root."""
    root.putChild(b"prefs", PrefsResource(host))
    root.putChild(b"unsubscribe", UnsubscribeResource(host))


# --- one-click unsubscribe ---------------------------------------------------------------------


class UnsubscribeResource(Resource):
    """`/unsubscribe?u=<user>&t=<token>` (RFC 8058)."""

    isLeaf = True

    def __init__(self, host: WebHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host

    def _claim(self, request: Request) -> tuple[str, str, User] | None:
        """The user and token of the URL, if the token is that user's and the user exists."""
        found = unsubscribe_query(request.uri)
        if found is None:
            return None
        user_id, token = found
        genuine = verify_unsubscribe(self.host.secret, user_id, token)  # constant time
        user = self.host.state.user(user_id)
        return (user_id, token, user) if genuine and user is not None else None

    def _page(self, request: Request, context: Mapping[str, object], code: int) -> bytes:
        body = self.host.templates.page(
            "unsubscribe", {"server": self.host.name, "one_click": ONE_CLICK, **context}
        )
        return _html(request, body, code)

    def render_GET(self, request: Request) -> bytes:
        """A page with a button; nothing changes."""
        claim = self._claim(request)
        if claim is None:
            return _denied(self.host, request, BAD_UNSUBSCRIBE)
        user_id, _, user = claim
        context = {"state": "ask", "user": user_id, "email_on": "email" in user.channels}
        return self._page(request, context, http.OK)

    def render_POST(self, request: Request) -> bytes | int:
        """The opt-out: the line protocol's `OPTOUT` run as the user."""
        claim = self._claim(request)
        if claim is None:
            return _denied(self.host, request, BAD_UNSUBSCRIBE)
        user_id, token, user = claim
        if not is_one_click(request.args or {}):
            context = {"state": "bad", "user": user_id, "email_on": "email" in user.channels}
            return self._page(request, context, http.BAD_REQUEST)
        if "email" not in user.channels:  # already off: nothing to write (a retry, a replay)
            return self._page(request, {"state": "done", "user": user_id}, http.OK)
        release = start_write(self.host, request)
        if release is None:
            return too_many(request)
        line = OptOut(user_id, token).to_line().rstrip(b"\n")
        answered = self.host.run_as(user_id, line)
        answered.addBoth(release)

        def reply(answer: bytes) -> bytes:
            if answer.startswith(b"OPTOUT "):
                return self._page(request, {"state": "done", "user": user_id}, http.OK)
            if answer.startswith(b"? "):  # the line judged the token as this page did not
                return _denied(self.host, request, BAD_UNSUBSCRIBE)
            return self._page(
                request, {"state": "later", "user": user_id}, http.SERVICE_UNAVAILABLE
            )

        def failed(failure: Failure) -> bytes:
            _log.failure("a one-click unsubscribe could not run", failure)
            return self._page(
                request, {"state": "later", "user": user_id}, http.SERVICE_UNAVAILABLE
            )

        return _answer_later(request, answered.addCallbacks(reply, failed))


# --- the preferences page ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrefsSession:
    """A request's valid preferences session: its claim, the cookie's value (the CSRF token is
    bound to it) and the user as the state holds them now."""

    claim: WebClaim
    cookie: str
    user: User


def prefs_session(host: WebHost, request: Request) -> PrefsSession | None:
    """A genuine unexpired session cookie with the user scope, of the user's current link
    generation; None otherwise."""
    headers = request.requestHeaders.getRawHeaders(b"cookie") or []
    now = host.now()
    for value in cookie_values(headers, SESSION_COOKIE):
        claim = open_session(host.secret, value, now)
        if claim is None or claim.scope != USER_SCOPE:
            continue
        user = host.state.user(claim.user)
        if user is not None and user.link_generation == claim.generation:
            return PrefsSession(claim, value, user)
    return None


class PrefsResource(Resource):
    """`/prefs` (GET: the link, then the page; POST: the form), `/prefs/revoke`,
    `/prefs/revoked`."""

    def __init__(self, host: WebHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        if path == b"revoke":
            return RevokeResource(self.host)
        if path == b"revoked":
            return RevokedResource(self.host)
        return super().getChild(path, request)  # type: ignore[no-untyped-call,no-any-return]

    def render_GET(self, request: Request) -> bytes:
        host = self.host
        tokens = (request.args or {}).get(b"t")
        if tokens:
            return self._open_link(request, tokens[0].decode("ascii", "replace"))
        session = prefs_session(host, request)
        if session is None:
            return _denied(host, request)
        flashes = cookie_values(request.requestHeaders.getRawHeaders(b"cookie") or [], FLASH_COOKIE)
        if flashes:  # shown once: cleared with this answer
            request.setHeader(b"Set-Cookie", _flash_cookie(host, "", 0).header())
        flash = read_flash(flashes[0]) if flashes else None
        user = session.user
        zone = timezone_of(user.tz, host.position_of(user.id))
        body = host.templates.page(
            "prefs",
            {
                "page": prefs_page(user, zone, host.digest_at),
                "channels": CHANNELS,
                "digests": DIGESTS,
                "csrf": csrf_token(host.secret, session.cookie),
                "flash": flash,
                "server": host.name,
            },
        )
        return _html(request, body)

    def _open_link(self, request: Request, token: str) -> bytes:
        """The preferences link of a mail: a session cookie for `/prefs`, then the page
        without the token in the address."""
        host = self.host
        now = host.now()

        def generation(user_id: str) -> int | None:
            user = host.state.user(user_id)
            return None if user is None else user.link_generation

        claim = open_link(host.secret, token, USER_SCOPE, now, generation)
        if claim is None:
            return _denied(host, request)
        limit = now + host.web.settings.session_hours * 3600
        session = WebClaim(claim.user, USER_SCOPE, min(claim.expires, limit), claim.generation)
        cookie = Cookie(
            SESSION_COOKIE,
            session_token(host.secret, session),
            PREFS_PATH,
            session.expires - now,
            host.web.secure,
        )
        # the same session for the user's own pages ("my events", `/u/stream`: web.user_site)
        mine = Cookie(SESSION_COOKIE, cookie.value, USER_PATH, cookie.max_age, cookie.secure)
        request.setHeader(b"Set-Cookie", mine.header())
        request.responseHeaders.addRawHeader(b"Set-Cookie", cookie.header())
        return _redirect(request, PREFS_PATH.encode("ascii"))

    def render_POST(self, request: Request) -> bytes | int:
        host = self.host
        checked = _checked_form(host, request)
        if isinstance(checked, bytes):
            return checked
        session, form = checked
        commands = prefs_changes(session.user, form)
        if isinstance(commands, str):
            return _back(host, request, commands)
        if not commands:
            return _back(host, request, result_message([], None))
        release = start_write(host, request)
        if release is None:
            return too_many(request)
        ran = self._run(request, session.user.id, commands)
        return _answer_later(request, ran.addBoth(release))

    def _run(self, request: Request, user: str, commands: Sequence[UserCommand]) -> Deferred[bytes]:
        """The commands as lines run as `user` one after the other, stopping at the first the
        line protocol refuses; then a 303 to the page, which says what happened."""
        host = self.host

        async def run() -> bytes:
            done: list[UserField] = []
            for command in commands:
                try:
                    answer = await host.run_as(user, command.to_line().rstrip(b"\n"))
                except Exception:  # the server could not run it: say so, change nothing more
                    _log.failure("a settings line could not run")
                    return _back(host, request, _NOT_NOW)
                if not answer.startswith(b"USER "):
                    refused = (command.field, _refusal(answer))
                    return _back(host, request, result_message(done, refused))
                done.append(command.field)
            return _back(host, request, result_message(done, None))

        return Deferred.fromCoroutine(run())


class RevokeResource(Resource):
    """`POST /prefs/revoke`: `LINKS REVOKE` as the user."""

    isLeaf = True

    def __init__(self, host: WebHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host

    def render_POST(self, request: Request) -> bytes | int:
        host = self.host
        checked = _checked_form(host, request)
        if isinstance(checked, bytes):
            return checked
        session, _ = checked
        release = start_write(host, request)
        if release is None:
            return too_many(request)
        answered = host.run_as(session.user.id, RevokeLinks().to_line().rstrip(b"\n"))
        answered.addBoth(release)

        def reply(answer: bytes) -> bytes:
            if not answer.startswith(b"LINKS "):
                return _back(host, request, f"Not revoked: {_refusal(answer)}")
            for path in (USER_PATH, PREFS_PATH):
                ended = Cookie(SESSION_COOKIE, "", path, 0, host.web.secure)
                request.responseHeaders.addRawHeader(b"Set-Cookie", ended.header())
            return _redirect(request, f"{PREFS_PATH}/revoked".encode("ascii"))

        def failed(failure: Failure) -> bytes:
            _log.failure("LINKS REVOKE from the settings page could not run", failure)
            return _back(host, request, "Not revoked: the server could not do it now.")

        return _answer_later(request, answered.addCallbacks(reply, failed))


class RevokedResource(Resource):
    """`GET /prefs/revoked`: what revoking did (it shows nothing of anyone)."""

    isLeaf = True

    def __init__(self, host: WebHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host

    def render_GET(self, request: Request) -> bytes:
        return _html(request, self.host.templates.page("revoked", {"server": self.host.name}))


# --- helpers -----------------------------------------------------------------------------------


def _checked_form(
    host: WebHost, request: Request
) -> tuple[PrefsSession, dict[str, list[str]]] | bytes:
    """A POST of the preferences page: from our own pages (`Origin`, `Sec-Fetch-Site`), with
    a preferences session, a form body and the session's CSRF token; its fields.  Else the
    refusal to send (403, or 415 for a body that is not a form)."""
    headers = request.requestHeaders
    origin = headers.getRawHeaders(b"origin")
    fetch_site = headers.getRawHeaders(b"sec-fetch-site")
    if not same_origin(
        origin[0] if origin else None,
        fetch_site[0] if fetch_site else None,
        {origin_of(host.web.base_url)},
    ):
        return _denied(host, request, "This form was sent from another site: refused.")
    session = prefs_session(host, request)
    if session is None:
        return _denied(host, request, DENIED)
    content_type = (headers.getRawHeaders(b"content-type") or [b""])[0]
    if content_type.split(b";")[0].strip().lower() != _FORM:
        request.setResponseCode(http.UNSUPPORTED_MEDIA_TYPE)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"forms only\n"
    form = {
        key.decode("utf-8", "replace"): [value.decode("utf-8", "replace") for value in values]
        for key, values in (request.args or {}).items()
    }
    csrf = form.pop("csrf", [""])
    if len(csrf) != 1 or not check_csrf(host.secret, session.cookie, csrf[0]):
        return _denied(host, request, "This form has expired: reload the page and try again.")
    return session, form


def _flash_cookie(host: WebHost, message: str, max_age: int) -> Cookie:
    value = write_flash(message) if message else ""
    return Cookie(FLASH_COOKIE, value, PREFS_PATH, max_age, host.web.secure, "Strict")


def _back(host: WebHost, request: Request, message: str) -> bytes:
    """A 303 to the page, which shows `message` once."""
    request.setHeader(b"Set-Cookie", _flash_cookie(host, message, 60).header())
    return _redirect(request, PREFS_PATH.encode("ascii"))


def _refusal(answer: bytes) -> str:
    """The line protocol's reason for refusing a line, for a person."""
    if answer.startswith(b"ERR "):
        _, _, message = answer[4:].rstrip(b"\n").decode("utf-8", "replace").partition(": ")
        return message
    return "the server did not understand it"


def _answer_later(request: Request, body: Deferred[bytes]) -> int:
    """Finish `request` with what `body` fires with, unless the client left first."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def finish(data: bytes) -> None:
        if not gone:
            request.write(data)
            request.finish()

    def lost(failure: Failure) -> None:  # a bug in a callback: the client gets a 500
        _log.failure("a preferences or unsubscribe page failed", failure)
        if not gone:
            request.setResponseCode(http.INTERNAL_SERVER_ERROR)
            request.finish()

    body.addCallbacks(finish, lost)
    return NOT_DONE_YET
