"""The web's JSON shapes, pure: what the JSON API answers and what a live update carries, built
from the event page's model (`web.model.EventPage`), so the page, the API and the live stream
show one event the same way.

Field names are stable (docs/web.md, "JSON API"): a field may be added, none is renamed or
removed.  Every value is a string, a number, a boolean, null, a list or an object; lists of
people are sorted; options are in the order they were proposed; times are ISO 8601 in UTC
(`at`) with the same moment on the viewer's clock beside it (`local`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Final

from herd.api import Choice, CommentOn, VoteOn, is_id
from web.model import AnswerRow, CommentRow, EventPage, OptionRow

__all__ = [
    "ERROR_STATUS",
    "ApiError",
    "JsonObject",
    "bearer_token",
    "comment_line",
    "error_shape",
    "event_shape",
    "read_object",
    "refusal",
    "status_of_refusal",
    "vote_line",
]

JsonObject = dict[str, object]

ERROR_STATUS: Final[Mapping[str, int]] = {
    # the request names something that is not there
    "no-such-event": 404,
    # the user may not do that
    "not-invited": 403,
    "not-organiser": 403,
    # the event's state refuses it now
    "cancelled": 409,
    "decided": 409,
    "not-decided": 409,
    "too-many": 409,
    # what was asked cannot be done as asked
    "no-such-option": 422,
    "bad-text": 422,
    "too-long": 422,
    "rejected": 422,
    "duplicate-option": 422,
}
"""The HTTP status of each planning refusal (`ERR <code>` of docs/protocol.md §12) the API can
meet; any other code is 422."""


def status_of_refusal(code: str) -> int:
    """The HTTP status for the line protocol's `ERR <code>`."""
    return ERROR_STATUS.get(code, 422)


def error_shape(code: str, message: str) -> JsonObject:
    """`{"error": {"code": …, "message": …}}`: the code is stable and meant for programs (the
    line protocol's own where the refusal is the line's), the message is for people."""
    return {"error": {"code": code, "message": message}}


def event_shape(page: EventPage) -> JsonObject:
    """The event as `page.viewer` sees it on the page."""
    leading_time, leading_place = page.leading_time, page.leading_place
    return {
        "id": page.id,
        "title": page.title,
        "organiser": page.organiser,
        "status": page.status,
        "viewer": page.viewer,
        "zone": page.zone,
        "times": [_time(row) for row in page.times],
        "places": [_place(row) for row in page.places],
        "leading": {
            "time": None if leading_time is None else leading_time.id,
            "place": None if leading_place is None else leading_place.id,
        },
        "answers": [_answers(row, page.options) for row in page.answers],
        "not_answered": list(page.not_answered),
        "comments": [_comment(row) for row in page.comments],
    }


def _option(row: OptionRow) -> JsonObject:
    return {
        "id": row.id,
        "by": row.by,
        "yes": list(row.yes),
        "maybe": list(row.maybe),
        "no": list(row.no),
        "tally": {"yes": len(row.yes), "maybe": len(row.maybe), "no": len(row.no)},
        "mine": row.mine,
        "leading": row.leading,
        "decided": row.decided,
    }


def _time(row: OptionRow) -> JsonObject:
    return {"id": row.id, "at": row.iso, "local": row.label, **_option(row)}


def _place(row: OptionRow) -> JsonObject:
    lat, lon = (None, None) if row.position is None else row.position
    return {"id": row.id, "name": row.label, "lat": lat, "lon": lon, **_option(row)}


def _answers(row: AnswerRow, options: tuple[OptionRow, ...]) -> JsonObject:
    return {
        "user": row.user,
        "organiser": row.is_organiser,
        "answers": {
            option.id: answer for option, answer in zip(options, row.answers, strict=True) if answer
        },
    }


def _comment(row: CommentRow) -> JsonObject:
    return {"id": row.id, "by": row.by, "at": row.iso, "local": row.when, "text": row.text}


# --- what a client sends ----------------------------------------------------------------------


class ApiError(Exception):
    """A refusal: the HTTP status, the stable code and the message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def shape(self) -> JsonObject:
        return error_shape(self.code, self.message)


_CHOICES: Final = {"yes": Choice.YES, "maybe": Choice.MAYBE, "no": Choice.NO}
_BEARER: Final = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_-]{1,400})\Z")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def bearer_token(values: Sequence[bytes]) -> str:
    """The token of the request's one `Authorization: Bearer <token>` header (RFC 6750)."""
    if not values:
        raise ApiError(401, "no-token", "send your link token as Authorization: Bearer <token>")
    found = _BEARER.match(values[0].decode("ascii", "replace")) if len(values) == 1 else None
    if found is None:
        raise ApiError(401, "bad-token", "the Authorization header is not Bearer <token>")
    return found[1]


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found: dict[str, object] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"{key!r} is given twice")
        found[key] = value
    return found


def read_object(body: bytes, fields: tuple[str, ...]) -> dict[str, str]:
    """A request body that is one JSON object of exactly `fields`, each a string."""
    try:
        value = json.loads(
            body.decode("utf-8"), object_pairs_hook=_unique, parse_constant=_no_constants
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ApiError(400, "bad-json", f"the body is not JSON in UTF-8: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "bad-field", f"the body is a JSON object with {_names(fields)}")
    if set(value) != set(fields):
        raise ApiError(400, "bad-field", f"the body is a JSON object with {_names(fields)}")
    for key in fields:
        text = value[key]
        if not isinstance(text, str):
            raise ApiError(400, "bad-field", f"{key} is a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "bad-json", f"{key} holds a lone surrogate") from None
    return value


def _names(fields: tuple[str, ...]) -> str:
    return " and ".join(f'"{name}"' for name in fields) + (" only" if fields else "")


def vote_line(event_id: str, body: bytes) -> bytes:
    """The `VOTE` line for `{"option": <option id>, "choice": "yes"|"maybe"|"no"}`."""
    value = read_object(body, ("option", "choice"))
    choice = _CHOICES.get(value["choice"])
    if choice is None:
        raise ApiError(400, "bad-field", "choice is yes, maybe or no")
    if not is_id(value["option"]):
        raise ApiError(400, "bad-field", "option is an option id, like Bailey.e3ce36.20")
    return VoteOn(event_id, value["option"], choice).to_line()


def comment_line(event_id: str, body: bytes) -> bytes:
    """The `COMMENT` line for `{"text": …}`.  A control character (a line break among them)
    is refused here, as the line protocol refuses it: the text is one line's last field."""
    text = read_object(body, ("text",))["text"].strip()
    if not text or _CONTROL.search(text):
        raise ApiError(
            422, "bad-text", "a comment is 1-2000 characters of text without control characters"
        )
    return CommentOn(event_id, text).to_line()


def refusal(reply: bytes) -> ApiError | None:
    """What a planning line's reply refuses (None for `EVENT …`, a success)."""
    if reply.startswith(b"ERR "):
        code, _, message = reply[4:].rstrip(b"\n").decode("utf-8", "replace").partition(": ")
        return ApiError(status_of_refusal(code), code, message or code)
    if reply.startswith(b"EVENT "):
        return None
    return ApiError(500, "internal", "the server did not take the line")
