"""The JSON API (twisted.web adapter; docs/web.md, "JSON API"): `GET /api/events/<event>`,
`POST /api/events/<event>/votes`, `POST /api/events/<event>/comments`, each with the caller's
personal link token in `Authorization: Bearer <token>`.

The shapes and the reading of request bodies are `web.shapes`'s (pure); a write is one
planning line run as the token's user (`WebHost.run_as`), exactly like the page's forms.

No cookie is read or set here, so a page of another site cannot make a browser send an
authenticated request (the browser attaches no `Authorization` header of its own, and setting
one across sites needs a CORS preflight, which this API never grants): there is no CSRF
surface, and no `Access-Control-Allow-*` header is ever sent (same origin only).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Final

from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from herd.api import WebClaim, is_id, read_link, timezone_of
from web.host import WebHost
from web.model import event_page
from web.shapes import (
    ApiError,
    JsonObject,
    bearer_token,
    comment_line,
    event_shape,
    refusal,
    vote_line,
)

__all__ = ["ApiResource", "json_response"]

_JSON: Final = b"application/json"
_ACTIONS: Final = {b"votes": vote_line, b"comments": comment_line}
_REALM: Final = b'Bearer realm="renga"'


def json_response(request: Request, status: int, value: JsonObject) -> bytes:
    """`value` as the response's JSON body (UTF-8, one line) with `status`."""
    request.setResponseCode(status, HTTPStatus(status).phrase.encode("ascii"))
    request.setHeader(b"Content-Type", _JSON)
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return body.encode("utf-8") + b"\n"


def _refused(request: Request, error: ApiError) -> bytes:
    if error.status == http.UNAUTHORIZED:
        challenge = _REALM if error.code == "no-token" else _REALM + b', error="invalid_token"'
        request.setHeader(b"WWW-Authenticate", challenge)
    return json_response(request, error.status, error.shape())


class ApiResource(Resource):
    """`/api`: only `events/<event>` below it; anything else is a JSON 404."""

    def __init__(self, host: WebHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _ApiPath(self.host)

    def render(self, request: Request) -> bytes:
        return _refused(request, ApiError(404, "not-found", "no such API path"))


class _ApiPath(Resource):
    """Everything under `/api/`, routed on the rest of the path."""

    isLeaf = True

    def __init__(self, host: WebHost) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.host = host

    def render(self, request: Request) -> bytes | int:
        try:
            return self._render(request)
        except ApiError as error:
            return _refused(request, error)

    def _render(self, request: Request) -> bytes | int:
        path = [*(request.prepath or [])[1:], *(request.postpath or [])]
        if path[-1:] == [b""]:
            path.pop()
        if len(path) not in (2, 3) or path[0] != b"events":
            raise ApiError(404, "not-found", "no such API path")
        event_id = path[1].decode("ascii", "replace")
        action = path[2] if len(path) == 3 else None
        if action is not None and action not in _ACTIONS:
            raise ApiError(404, "not-found", "no such API path")
        method = request.method
        wanted = b"GET" if action is None else b"POST"
        if method not in (wanted, b"HEAD" if action is None else wanted):
            request.setHeader(b"Allow", wanted)
            raise ApiError(405, "method-not-allowed", f"use {wanted.decode()} here")
        claim = self._authorise(request, event_id)
        if action is None:
            return json_response(request, http.OK, self._event(claim.user, event_id))
        content_type = (request.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
        kind, _, parameters = content_type.partition(b";")
        charset = parameters.strip().lower()
        if kind.strip().lower() != _JSON or charset not in (b"", b"charset=utf-8"):
            raise ApiError(415, "unsupported-media-type", "send application/json (UTF-8)")
        body = request.content.read() if request.content is not None else b""
        line = _ACTIONS[action](event_id, body)
        return self._run(request, claim.user, event_id, line, 201 if action == b"comments" else 200)

    def _authorise(self, request: Request, event_id: str) -> WebClaim:
        """The claim of the request's link token for `event_id`: 401 without a genuine,
        unexpired link token; 403 for one that is for another event, revoked, or whose user
        no longer takes part; 404 for an event this server does not know."""
        host = self.host
        if b"t" in (request.args or {}):
            raise ApiError(
                400, "token-in-query", "the API takes the token in an Authorization header only"
            )
        token = bearer_token(request.requestHeaders.getRawHeaders(b"authorization") or [])
        claim = read_link(host.secret, token, host.now())
        if claim is None:
            raise ApiError(401, "bad-token", "this token is not a valid link token, or expired")
        if not is_id(event_id) or claim.scope != event_id:
            raise ApiError(403, "forbidden", "this token is for another event")
        user = host.state.user(claim.user)
        if user is None or user.link_generation != claim.generation:
            raise ApiError(403, "forbidden", "this token was revoked")
        event = host.state.event(event_id)
        if event is None:
            raise ApiError(404, "no-such-event", f"no event {event_id}")
        if claim.user not in event.participants:
            raise ApiError(403, "not-invited", f"you take no part in {event_id}")
        return claim

    def _event(self, user_id: str, event_id: str) -> JsonObject:
        host = self.host
        event = host.state.event(event_id)
        if event is None:
            raise ApiError(404, "no-such-event", f"no event {event_id}")
        user = host.state.user(user_id)
        zone = timezone_of(None if user is None else user.tz, host.position_of(user_id))
        return {"event": event_shape(event_page(event, user_id, zone))}

    def _run(self, request: Request, user: str, event_id: str, line: bytes, done: int) -> int:
        """Run `line` as `user`; answer the event as it now is, or the refusal."""
        answered = self.host.run_as(user, line.rstrip(b"\n"))
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def reply(answer: bytes) -> None:
            if gone:
                return
            refused = refusal(answer)
            try:
                if refused is not None:
                    raise refused
                body = json_response(request, done, self._event(user, event_id))
            except ApiError as error:
                body = _refused(request, error)
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if not gone:
                error = ApiError(503, "unavailable", "the server could not do it now")
                request.write(_refused(request, error))
                request.finish()

        answered.addCallbacks(reply, failed)
        return NOT_DONE_YET
