"""The op codec, pure: the replicated operations (one class per kind), `Op`, and their JSON.

Every change is an `Op` with a globally unique id and a stamp `(time_ns, op_id)`, a total order.
`Op.from_json` is the one place an op from a peer or the store is decoded and validated; the
text helpers here (`is_id`, `is_text`, `client_text`) are the field grammar ops share.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import ClassVar, Final, Self

from herd.wire.grammar import WireError

__all__ = [
    "MAX_COMMENT",
    "MAX_INVITES",
    "MAX_LINK_GENERATION",
    "MAX_NAME",
    "MAX_POSIX",
    "MAX_TITLE",
    "OPERATOR",
    "AddComment",
    "AddPlace",
    "AddTime",
    "AddUser",
    "Body",
    "Cancel",
    "CastVote",
    "Choice",
    "CreateEvent",
    "Decide",
    "DigestSent",
    "Invite",
    "LinksRevoked",
    "Op",
    "Reopen",
    "SetDevice",
    "SetUserField",
    "Stamp",
    "Uninvite",
    "UserField",
    "client_bytes",
    "client_text",
    "is_client",
    "is_id",
    "is_text",
]

Stamp = tuple[int, str]
"""(time in ns, op id): the total order of ops; the op id breaks ties between equal times."""

OPERATOR: Final = "@operator"
"""The actor of ops made by `herd user …`; no user id can spell it."""

MAX_TITLE: Final = 200
MAX_NAME: Final = 200
MAX_COMMENT: Final = 2000
MAX_INVITES: Final = 50
_MAX_VALUE: Final = 512
_MAX_CLIENT: Final = 512
MAX_LINK_GENERATION: Final = 2**53  # exact in every JSON reader
MAX_POSIX: Final = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second datetime can show


_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_WHITESPACE: Final = re.compile(rb"[ \t\n\r\x0b\x0c]")


def is_id(value: str) -> bool:
    """Op, event, option and user ids: 1-64 of letters, digits, `.`, `_`, `-`, not starting
    with a punctuation mark, so they are single fields on the line and never look like options."""
    return _ID.match(value) is not None


def is_text(value: str, limit: int) -> bool:
    """Free text (titles, names, comments): non-empty, valid Unicode, no control characters."""
    if not value or len(value) > limit or _CONTROL.search(value):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate: the line was not UTF-8
        return False
    return True


def client_text(client: bytes) -> str:
    """A client id (any non-whitespace bytes, docs/protocol.md §1) as text that round-trips
    exactly."""
    return client.decode("utf-8", "surrogateescape")


def client_bytes(client: str) -> bytes:
    """The inverse of `client_text`."""
    return client.encode("utf-8", "surrogateescape")


def is_client(value: str) -> bool:
    """Whether `value` is the canonical text of a client id (one field on the line)."""
    try:
        raw = client_bytes(value)
    except UnicodeEncodeError:
        return False
    return (
        0 < len(raw) <= _MAX_CLIENT
        and _WHITESPACE.search(raw) is None
        and client_text(raw) == value
    )


class Choice(StrEnum):
    YES = "yes"
    MAYBE = "maybe"
    NO = "no"


class UserField(StrEnum):
    """The user fields that are registers; `None` as a value means unset (the default)."""

    JID = "jid"
    EMAIL = "email"
    CHANNELS = "channels"  # canonical: sorted, comma-joined; "" means no channel
    DIGEST = "digest"  # "daily", "weekly" or "off"
    QUIET = "quiet"  # "HH:MM-HH:MM", local time
    TZ = "tz"  # an IANA zone set explicitly
    TOKEN = "token"  # the hash of the user's line token, never shown
    WEB_QUIET = "web_quiet"  # "yes" (the default) or "no": no message for what a page shows live
    DIGEST_AT = "digest_at"  # "HH:MM", local time: the user's digest hour (unset: the herd's)


# --- op bodies: one class per kind; its JSON payload is its fields ---------------------------


@dataclass(frozen=True, slots=True)
class AddUser:
    """`user_add` `{"user": "alice"}`: the operator creates a user (add-only)."""

    KIND: ClassVar[str] = "user_add"
    user: str

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        return cls(payload.ident("user"))


@dataclass(frozen=True, slots=True)
class SetUserField:
    """`user_set` `{"user": "alice", "field": "email", "value": "a@b.c"}` (value null: unset)."""

    KIND: ClassVar[str] = "user_set"
    user: str
    field: UserField
    value: str | None

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        name = payload.text("field", _MAX_VALUE)
        if name not in UserField.__members__.values():
            raise WireError(f"unknown user field {name!r}")
        return cls(payload.ident("user"), UserField(name), payload.optional_text("value"))


@dataclass(frozen=True, slots=True)
class LinksRevoked:
    """`links` `{"user": "alice", "generation": 3}`: the user revoked their personal web links
    (`LINKS REVOKE`); a link made under an older generation no longer opens anything.  A max
    register: the generation never goes back, whatever order the ops arrive in."""

    KIND: ClassVar[str] = "links"
    user: str
    generation: int

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        generation = payload.raw("generation")
        if type(generation) is not int or not 0 < generation <= MAX_LINK_GENERATION:
            raise WireError(f"generation must be an integer from 1 to {MAX_LINK_GENERATION}")
        return cls(payload.ident("user"), generation)


@dataclass(frozen=True, slots=True)
class SetDevice:
    """`device` `{"client": "phone-1", "user": "alice"}`: who a client id reports for (null:
    nobody).  Client ids that are not UTF-8 travel as `\\udcXX` escapes (see `client_text`)."""

    KIND: ClassVar[str] = "device"
    client: str
    user: str | None

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        client = payload.raw("client")
        if not isinstance(client, str) or not is_client(client):
            raise WireError("client must be a client id")
        user = payload.raw("user")
        if user is not None and (not isinstance(user, str) or not is_id(user)):
            raise WireError("user must be a user id or null")
        return cls(client, user)


@dataclass(frozen=True, slots=True)
class CreateEvent:
    """`create` `{"title": "Dinner"}`: a new event, organised by the op's actor; its id is the
    op's id."""

    KIND: ClassVar[str] = "create"
    title: str

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        return cls(payload.text("title", MAX_TITLE))


@dataclass(frozen=True, slots=True)
class Invite:
    """`invite` `{"event": "B.1", "users": ["bob", "carol"]}`."""

    KIND: ClassVar[str] = "invite"
    event: str
    users: tuple[str, ...]

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        return cls(payload.ident("event"), payload.idents("users"))


@dataclass(frozen=True, slots=True)
class Uninvite:
    """`uninvite` `{"event": "B.1", "users": ["bob"]}`."""

    KIND: ClassVar[str] = "uninvite"
    event: str
    users: tuple[str, ...]

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        return cls(payload.ident("event"), payload.idents("users"))


@dataclass(frozen=True, slots=True)
class AddTime:
    """`time` `{"event": "B.1", "at": 1796490000}`: a proposed time, POSIX seconds (UTC); the
    option's id is the op's id."""

    KIND: ClassVar[str] = "time"
    event: str
    at: int

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        at = payload.raw("at")
        if type(at) is not int or not 0 <= at <= MAX_POSIX:
            raise WireError("at must be POSIX seconds")
        return cls(payload.ident("event"), at)


@dataclass(frozen=True, slots=True)
class AddPlace:
    """`place` `{"event": "B.1", "name": "Chez Paul", "lat": 48.85, "lon": 2.37}` (lat and lon
    both null when the position is unknown); the option's id is the op's id."""

    KIND: ClassVar[str] = "place"
    event: str
    name: str
    lat: float | None
    lon: float | None

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        lat, lon = payload.raw("lat"), payload.raw("lon")
        if lat is None and lon is None:
            return cls(payload.ident("event"), payload.text("name", MAX_NAME), None, None)
        latitude, longitude = _number(lat), _number(lon)
        if abs(latitude) > 90.0 or abs(longitude) > 180.0:
            raise WireError("position out of range")
        return cls(payload.ident("event"), payload.text("name", MAX_NAME), latitude, longitude)


@dataclass(frozen=True, slots=True)
class CastVote:
    """`vote` `{"event": "B.1", "option": "B.2", "choice": "yes"}` (yes, maybe or no): the vote
    of the op's actor."""

    KIND: ClassVar[str] = "vote"
    event: str
    option: str
    choice: Choice

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        choice = payload.text("choice", 5)
        if choice not in Choice.__members__.values():
            raise WireError("choice must be yes, maybe or no")
        return cls(payload.ident("event"), payload.ident("option"), Choice(choice))


@dataclass(frozen=True, slots=True)
class AddComment:
    """`comment` `{"event": "B.1", "text": "I'll bring wine"}`."""

    KIND: ClassVar[str] = "comment"
    event: str
    text: str

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        return cls(payload.ident("event"), payload.text("text", MAX_COMMENT))


@dataclass(frozen=True, slots=True)
class Decide:
    """`decide` `{"event": "B.1", "time": "B.2", "place": "B.3"}`: one time and one place."""

    KIND: ClassVar[str] = "decide"
    event: str
    time: str
    place: str

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        return cls(payload.ident("event"), payload.ident("time"), payload.ident("place"))


@dataclass(frozen=True, slots=True)
class Reopen:
    """`reopen` `{"event": "B.1"}`: back to planning, decision dropped."""

    KIND: ClassVar[str] = "reopen"
    event: str

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        return cls(payload.ident("event"))


@dataclass(frozen=True, slots=True)
class Cancel:
    """`cancel` `{"event": "B.1"}`."""

    KIND: ClassVar[str] = "cancel"
    event: str

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        return cls(payload.ident("event"))


@dataclass(frozen=True, slots=True)
class DigestSent:
    """`digest` `{"user": "carol", "upto": 1764950400000000000}`: a server sent the user's
    digest (the op's time) holding every folded notification of a change made up to `upto`
    (ns).  Made by the notifier in the transaction that enqueues the digest, so every server
    drops those items and none sends them again, whichever server held the user's duties."""

    KIND: ClassVar[str] = "digest"
    user: str
    upto: int

    @classmethod
    def from_payload(cls, payload: _Payload) -> Self:
        upto = payload.raw("upto")
        if type(upto) is not int or upto < 0:
            raise WireError("upto must be a non-negative integer")
        return cls(payload.ident("user"), upto)


Body = (
    AddUser
    | SetUserField
    | SetDevice
    | CreateEvent
    | Invite
    | Uninvite
    | AddTime
    | AddPlace
    | CastVote
    | AddComment
    | Decide
    | Reopen
    | Cancel
    | DigestSent
    | LinksRevoked
)

_BODIES: Final[dict[str, Callable[[_Payload], Body]]] = {
    body.KIND: body.from_payload
    for body in (
        AddUser,
        SetUserField,
        SetDevice,
        CreateEvent,
        Invite,
        Uninvite,
        AddTime,
        AddPlace,
        CastVote,
        AddComment,
        Decide,
        Reopen,
        Cancel,
        DigestSent,
        LinksRevoked,
    )
}
_HEADER: Final = ("id", "ns", "actor", "kind")


@dataclass(frozen=True, slots=True)
class Op:
    """One replicated change: who (`actor`, a user id or `OPERATOR`) did what (`body`), when.

    As JSON (`to_json`), the header then the body's fields, e.g.
    `{"id":"B.7","ns":1764950400000000000,"actor":"bob","kind":"vote","event":"B.1",
    "option":"B.2","choice":"yes"}`: ASCII only, with no whitespace at all (a space inside a
    string is written `\\u0020`), so it is one field on a line (`U <seq> OP <json>`).
    """

    op_id: str
    time_ns: int
    actor: str
    body: Body

    @property
    def stamp(self) -> Stamp:
        return self.time_ns, self.op_id

    @property
    def kind(self) -> str:
        return self.body.KIND

    def to_json(self) -> bytes:
        document = {"id": self.op_id, "ns": self.time_ns, "actor": self.actor}
        text = json.dumps(
            {**document, "kind": self.kind, **asdict(self.body)},
            ensure_ascii=True,
            separators=(",", ":"),
        )
        # Compact ASCII JSON has whitespace only as spaces inside strings, never escaped there.
        return text.replace(" ", "\\u0020").encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> Op:
        """Parse and validate an op (from a peer or the store); raises only `WireError`."""
        try:
            document = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as error:
            raise WireError(f"op is not JSON: {error}") from None
        if not isinstance(document, dict):
            raise WireError("op must be a JSON object")
        header = _Payload(document)
        op_id, actor, kind = header.ident("id"), header.raw("actor"), header.raw("kind")
        time_ns = header.raw("ns")
        if type(time_ns) is not int or time_ns < 0:
            raise WireError("op time must be a non-negative integer")
        if not isinstance(actor, str) or not (actor == OPERATOR or is_id(actor)):
            raise WireError("op actor must be a user id")
        parse = _BODIES.get(kind) if isinstance(kind, str) else None
        if parse is None:
            raise WireError(f"unknown op kind {kind!r}")
        payload = _Payload({k: v for k, v in document.items() if k not in _HEADER})
        body = parse(payload)
        payload.check_all_read()
        return cls(op_id, time_ns, actor, body)


class _Payload:
    """Typed reads from a decoded JSON object, remembering which keys were read so that an
    unexpected key is refused rather than silently dropped."""

    def __init__(self, document: dict[str, object]) -> None:
        self._document = document
        self._read: set[str] = set()

    def raw(self, key: str) -> object:
        if key not in self._document:
            raise WireError(f"op lacks {key!r}")
        self._read.add(key)
        return self._document[key]

    def ident(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str) or not is_id(value):
            raise WireError(f"{key} must be an id")
        return value

    def idents(self, key: str) -> tuple[str, ...]:
        values = self.raw(key)
        if not isinstance(values, list) or not 0 < len(values) <= MAX_INVITES:
            raise WireError(f"{key} must be a list of 1-{MAX_INVITES} ids")
        if not all(isinstance(value, str) and is_id(value) for value in values):
            raise WireError(f"{key} must be a list of ids")
        return tuple(values)

    def text(self, key: str, limit: int) -> str:
        value = self.raw(key)
        if not isinstance(value, str) or not is_text(value, limit):
            raise WireError(f"{key} must be text of at most {limit} characters")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self.raw(key)
        if value is not None and (not isinstance(value, str) or len(value) > _MAX_VALUE):
            raise WireError(f"{key} must be text or null")
        return value

    def check_all_read(self) -> None:
        extra = self._document.keys() - self._read
        if extra:
            raise WireError(f"unexpected op fields {sorted(extra)}")


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WireError("lat and lon must be numbers")
    return float(value)
