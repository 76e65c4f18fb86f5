"""Users and event planning as replicated state, pure: operations, their merge, and views.

Every change is an `Op` with a globally unique id and a stamp `(time_ns, op_id)`, a total order.
The state is a function of the *set* of ops applied, whatever their order or repetition:

- last-writer-wins registers, where the op with the larger stamp wins: each user field, the
  owner of each client id, each (event, user) invitation, each (event, option, voter) vote, and
  each event's status together with its decision (so a decision is never half applied);
- add-only sets keyed by op id: users, events, proposed options and comments (an event's id and
  an option's id are the id of the op that created it, so they need no coordination);
- max registers: when each user's digest was last sent and the newest change it covered.

`apply` never refuses a well-formed op: a rule checked on arrival would depend on what had
arrived first, and replicas would diverge.  Rules are checked before an op exists (in
`herd.planning`, on the state of the server that accepts the command); views then read the merged
state through the rules that must hold whatever the order, e.g. only the votes of the current
participants count.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import ClassVar, Final, Self, TypeVar

from herd.changes import Change, ChangeKind
from herd.wire import WireError

__all__ = [
    "DEFAULT_CHANNELS",
    "DEFAULT_DIGEST",
    "MAX_COMMENT",
    "MAX_INVITES",
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
    "Comment",
    "CreateEvent",
    "Decide",
    "DigestSent",
    "Event",
    "Invite",
    "Op",
    "PlaceOption",
    "PlanningState",
    "Reopen",
    "SetDevice",
    "SetUserField",
    "Stamp",
    "Status",
    "TimeOption",
    "Uninvite",
    "User",
    "UserField",
    "client_bytes",
    "client_text",
    "format_utc",
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
MAX_POSIX: Final = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second datetime can show

DEFAULT_CHANNELS: Final = ("email", "line", "xmpp")
DEFAULT_DIGEST: Final = "daily"

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


def format_utc(posix: int) -> str:
    """POSIX seconds as ISO 8601 in UTC, the form every view shows: `2026-12-05T18:00:00Z`."""
    return datetime.fromtimestamp(posix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Choice(StrEnum):
    YES = "yes"
    MAYBE = "maybe"
    NO = "no"


class Status(StrEnum):
    PLANNING = "planning"
    DECIDED = "decided"
    CANCELLED = "cancelled"


class UserField(StrEnum):
    """The user fields that are registers; `None` as a value means unset (the default)."""

    JID = "jid"
    EMAIL = "email"
    CHANNELS = "channels"  # canonical: sorted, comma-joined; "" means no channel
    DIGEST = "digest"  # "daily", "weekly" or "off"
    QUIET = "quiet"  # "HH:MM-HH:MM", local time
    TZ = "tz"  # an IANA zone set explicitly
    TOKEN = "token"  # the hash of the user's line token, never shown


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


# --- views -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    """A user as the merged registers say, defaults filled in."""

    id: str
    jid: str | None
    email: str | None
    channels: tuple[str, ...]
    digest: str
    quiet: str | None
    tz: str | None
    clients: tuple[str, ...]
    token_hash: str | None

    def to_json(self, timezone: str) -> dict[str, object]:
        """The user as a line reply shows it: no token hash; `timezone` is the effective one
        (set, or derived from the position by the caller)."""
        return {
            "id": self.id,
            "jid": self.jid,
            "email": self.email,
            "channels": list(self.channels),
            "digest": self.digest,
            "quiet": self.quiet,
            "tz": timezone,
            "tz_set": self.tz is not None,
            "clients": list(self.clients),
        }


@dataclass(frozen=True, slots=True)
class TimeOption:
    id: str
    at: int
    by: str
    stamp: Stamp


@dataclass(frozen=True, slots=True)
class PlaceOption:
    id: str
    name: str
    lat: float | None
    lon: float | None
    by: str
    stamp: Stamp


@dataclass(frozen=True, slots=True)
class Comment:
    id: str
    by: str
    text: str
    stamp: Stamp


@dataclass(frozen=True, slots=True)
class Event:
    """One event as the merged state says.  `invitees` excludes the organiser; `votes` holds
    only the votes of current participants on options that exist; options and comments are in
    stamp order."""

    id: str
    title: str
    organiser: str
    status: Status
    decision: tuple[str, str] | None
    invitees: tuple[str, ...]
    times: tuple[TimeOption, ...]
    places: tuple[PlaceOption, ...]
    votes: Mapping[str, Mapping[str, Choice]]
    comments: tuple[Comment, ...]

    @property
    def participants(self) -> frozenset[str]:
        """Who may see the event and vote on it: the organiser and the invitees."""
        return frozenset((self.organiser, *self.invitees))

    def time(self, option_id: str) -> TimeOption | None:
        return next((option for option in self.times if option.id == option_id), None)

    def place(self, option_id: str) -> PlaceOption | None:
        return next((option for option in self.places if option.id == option_id), None)

    def tally(self, option_id: str) -> dict[Choice, tuple[str, ...]]:
        """Who voted what on an option, each list sorted."""
        votes = self.votes.get(option_id, {})
        return {
            choice: tuple(sorted(voter for voter, vote in votes.items() if vote is choice))
            for choice in Choice
        }

    def to_json(self) -> dict[str, object]:
        """The compact view every `EVENT` reply carries."""
        decision = self.decision
        return {
            "id": self.id,
            "title": self.title,
            "organiser": self.organiser,
            "status": self.status.value,
            "invitees": list(self.invitees),
            "times": [
                {"id": o.id, "at": format_utc(o.at), "by": o.by, **self._tally_json(o.id)}
                for o in self.times
            ],
            "places": [
                {
                    "id": o.id,
                    "name": o.name,
                    "lat": o.lat,
                    "lon": o.lon,
                    "by": o.by,
                    **self._tally_json(o.id),
                }
                for o in self.places
            ],
            "decision": None if decision is None else {"time": decision[0], "place": decision[1]},
            "comments": [
                {"id": c.id, "by": c.by, "at": format_utc(c.stamp[0] // 10**9), "text": c.text}
                for c in self.comments
            ],
        }

    def _tally_json(self, option_id: str) -> dict[str, list[str]]:
        return {choice.value: list(voters) for choice, voters in self.tally(option_id).items()}


# --- the state -----------------------------------------------------------------------------------

_K = TypeVar("_K")
_V = TypeVar("_V")
_StatusValue = tuple[Status, str | None, str | None]


def _lww(registers: dict[_K, tuple[Stamp, _V]], key: _K, stamp: Stamp, value: _V) -> bool:
    """Write `value` if `stamp` is newer than the register's; whether it was written."""
    current = registers.get(key)
    if current is not None and current[0] >= stamp:
        return False
    registers[key] = stamp, value
    return True


@dataclass(slots=True)
class _EventRecord:
    created: tuple[str, str, Stamp] | None = None  # title, organiser, stamp
    invitations: dict[str, tuple[Stamp, bool]] = field(default_factory=dict)
    times: dict[str, TimeOption] = field(default_factory=dict)
    places: dict[str, PlaceOption] = field(default_factory=dict)
    votes: dict[tuple[str, str], tuple[Stamp, Choice]] = field(default_factory=dict)
    comments: dict[str, Comment] = field(default_factory=dict)
    status: tuple[Stamp, _StatusValue] | None = None

    def involves(self, user: str) -> bool:
        if self.created is not None and self.created[1] == user:
            return True
        invitation = self.invitations.get(user)
        return invitation is not None and invitation[1]

    def participants(self) -> tuple[str, ...]:
        invited = {user for user, (_, on) in self.invitations.items() if on}
        if self.created is not None:
            invited.add(self.created[1])
        return tuple(sorted(invited))


class PlanningState:
    """Users, devices and events of one server, merged from ops.

    `apply` is idempotent (an op id seen before changes nothing) and commutative (any order of
    the same ops gives an equal `snapshot()`).
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._latest_ns = 0
        self._users: set[str] = set()
        self._user_fields: dict[tuple[str, UserField], tuple[Stamp, str | None]] = {}
        self._jid_users: dict[str, set[str]] = {}  # casefolded JID -> users it is set on
        self._devices: dict[str, tuple[Stamp, str | None]] = {}
        self._clients_of: dict[str, set[str]] = {}
        self._events: dict[str, _EventRecord] = {}
        self._digests: dict[str, tuple[int, int]] = {}  # user -> (last sent, items up to), ns
        self._involved: dict[str, set[str]] = {}  # user -> events they organise or are invited to
        # Built on read and dropped when an op touches them: the notifier reads one event and
        # its participants once per recipient of a change, and a digest run reads each event
        # once per participant, so building them anew each time dominated fan-outs.
        self._built_events: dict[str, Event] = {}
        self._built_users: dict[str, User] = {}

    def knows(self, op_id: str) -> bool:
        """Whether this op was applied already: store and flood an op only when it was not."""
        return op_id in self._seen

    def next_time(self, now_ns: int) -> int:
        """The time for a new op: the clock, but after every op seen (a hybrid logical clock),
        so that a change made after seeing another wins over it even across skewed clocks."""
        return max(now_ns, self._latest_ns + 1)

    def apply(self, op: Op) -> list[Change]:
        """Merge one op; the changes it made (none for a duplicate or an overwritten write)."""
        if op.op_id in self._seen:
            return []
        self._seen.add(op.op_id)
        self._latest_ns = max(self._latest_ns, op.time_ns)
        merged = self._merge(op)
        if merged is None:
            return []
        kind, users = merged
        for user in users:
            self._built_users.pop(user, None)
        event_id = _event_of(op)
        if event_id is not None:
            self._built_events.pop(event_id, None)
            users.update(self._events[event_id].participants())
        return [Change(kind, event_id, tuple(sorted(users)), op)]

    def _merge(self, op: Op) -> tuple[ChangeKind, set[str]] | None:
        """Write the op into its register or set.  None if it lost to a newer write; else the
        kind of change and who it touched beyond an event's participants (who are added)."""
        stamp, body = op.stamp, op.body
        match body:
            case AddUser(user=user):
                if user in self._users:
                    return None
                self._users.add(user)
                return ChangeKind.USER_ADDED, {user}
            case SetUserField(user=user, field=name, value=text):
                before = self._user_fields.get((user, name))
                if not _lww(self._user_fields, (user, name), stamp, text):
                    return None
                if name is UserField.JID:
                    if before is not None and before[1] is not None:
                        self._jid_users[before[1].casefold()].discard(user)
                    if text is not None:
                        self._jid_users.setdefault(text.casefold(), set()).add(user)
                return ChangeKind.USER_UPDATED, {user}
            case SetDevice(client=client, user=user):
                before = self._devices.get(client)
                if not _lww(self._devices, client, stamp, user):
                    return None
                owners: set[str] = set()
                if before is not None and before[1] is not None:
                    self._clients_of[before[1]].discard(client)
                    owners.add(before[1])
                if user is not None:
                    self._clients_of.setdefault(user, set()).add(client)
                    owners.add(user)
                return ChangeKind.USER_UPDATED, owners
            case CreateEvent(title=title):
                self._event(op.op_id).created = title, op.actor, stamp
                self._involved.setdefault(op.actor, set()).add(op.op_id)
                return ChangeKind.CREATED, set()
            case Invite(event=event_id, users=users) | Uninvite(event=event_id, users=users):
                invited = isinstance(body, Invite)
                record = self._event(event_id)
                written = [u for u in users if _lww(record.invitations, u, stamp, invited)]
                for user in written:
                    involved = self._involved.setdefault(user, set())
                    if record.involves(user):
                        involved.add(event_id)
                    else:
                        involved.discard(event_id)
                if not written:
                    return None
                if invited:
                    return ChangeKind.INVITED, set()
                return ChangeKind.UNINVITED, set(written)
            case AddTime(event=event_id, at=at):
                option = TimeOption(op.op_id, at, op.actor, stamp)
                self._event(event_id).times[op.op_id] = option
                return ChangeKind.OPTION_ADDED, set()
            case AddPlace(event=event_id, name=name, lat=lat, lon=lon):
                place = PlaceOption(op.op_id, name, lat, lon, op.actor, stamp)
                self._event(event_id).places[op.op_id] = place
                return ChangeKind.OPTION_ADDED, set()
            case CastVote(event=event_id, option=option_id, choice=choice):
                votes = self._event(event_id).votes
                if not _lww(votes, (option_id, op.actor), stamp, choice):
                    return None
                return ChangeKind.VOTED, set()
            case AddComment(event=event_id, text=text):
                comment = Comment(op.op_id, op.actor, text, stamp)
                self._event(event_id).comments[op.op_id] = comment
                return ChangeKind.COMMENTED, set()
            case Decide(event=event_id, time=time, place=place):
                decided: _StatusValue = Status.DECIDED, time, place
                return self._set_status(event_id, stamp, decided, ChangeKind.DECIDED)
            case Reopen(event=event_id):
                reopened: _StatusValue = Status.PLANNING, None, None
                return self._set_status(event_id, stamp, reopened, ChangeKind.REOPENED)
            case Cancel(event=event_id):
                cancelled: _StatusValue = Status.CANCELLED, None, None
                return self._set_status(event_id, stamp, cancelled, ChangeKind.CANCELLED)
            case DigestSent(user=user, upto=upto):
                sent, held = self._digests.get(user, (0, 0))
                merged = max(sent, op.time_ns), max(held, upto)
                if merged == (sent, held):
                    return None
                self._digests[user] = merged
                return ChangeKind.DIGEST_SENT, {user}

    def _set_status(
        self, event_id: str, stamp: Stamp, value: _StatusValue, kind: ChangeKind
    ) -> tuple[ChangeKind, set[str]] | None:
        record = self._event(event_id)
        if record.status is not None and record.status[0] >= stamp:
            return None
        record.status = stamp, value
        return kind, set()

    def _event(self, event_id: str) -> _EventRecord:
        record = self._events.get(event_id)
        if record is None:
            record = self._events[event_id] = _EventRecord()
        return record

    # --- reads -------------------------------------------------------------------------------

    def user(self, user_id: str) -> User | None:
        built = self._built_users.get(user_id)
        if built is not None:
            return built
        if user_id not in self._users:
            return None
        fields = {
            name: register[1]
            for name in UserField
            if (register := self._user_fields.get((user_id, name))) is not None
        }
        channels = fields.get(UserField.CHANNELS)
        built = self._built_users[user_id] = User(
            id=user_id,
            jid=fields.get(UserField.JID),
            email=fields.get(UserField.EMAIL),
            channels=DEFAULT_CHANNELS
            if channels is None
            else tuple(filter(None, channels.split(","))),
            digest=fields.get(UserField.DIGEST) or DEFAULT_DIGEST,
            quiet=fields.get(UserField.QUIET),
            tz=fields.get(UserField.TZ),
            clients=self.clients_of(user_id),
            token_hash=fields.get(UserField.TOKEN),
        )
        return built

    def users(self) -> list[str]:
        return sorted(self._users)

    def digest_sent(self, user_id: str) -> tuple[int, int]:
        """(when the user's last digest was sent, the newest change it covered), ns; both 0
        before the first.  Maxima over every `digest` op, so the same on every server that has
        seen the same ops."""
        return self._digests.get(user_id, (0, 0))

    def user_of_jid(self, jid: str) -> str | None:
        """The user whose JID this is (case-insensitively; the first by id should two have set
        the same one): an index, because the bot asks for every chat message."""
        users = self._jid_users.get(jid.casefold(), set()) & self._users
        return min(users) if users else None

    def user_of_client(self, client: str) -> str | None:
        """The user a client id reports for (`client_text` of the IAMAT's field), if any."""
        register = self._devices.get(client)
        return None if register is None else register[1]

    def clients_of(self, user_id: str) -> tuple[str, ...]:
        return tuple(sorted(self._clients_of.get(user_id, ())))

    def event(self, event_id: str) -> Event | None:
        """The event, or None until its `create` op has arrived.  The same object until an op
        changes the event, so callers may cache what they derive from it by identity."""
        built = self._built_events.get(event_id)
        if built is not None:
            return built
        record = self._events.get(event_id)
        if record is None or record.created is None:
            return None
        title, organiser, _ = record.created
        participants = set(record.participants())
        votes: dict[str, dict[str, Choice]] = {}
        for (option_id, voter), (_, choice) in sorted(record.votes.items()):
            if voter in participants and (option_id in record.times or option_id in record.places):
                votes.setdefault(option_id, {})[voter] = choice
        status, decision = Status.PLANNING, None
        if record.status is not None:
            status, time, place = record.status[1]
            if time is not None and place is not None:
                decision = time, place
        built = self._built_events[event_id] = Event(
            id=event_id,
            title=title,
            organiser=organiser,
            status=status,
            decision=decision,
            invitees=tuple(user for user in sorted(participants) if user != organiser),
            times=tuple(sorted(record.times.values(), key=lambda o: o.stamp)),
            places=tuple(sorted(record.places.values(), key=lambda o: o.stamp)),
            votes=votes,
            comments=tuple(sorted(record.comments.values(), key=lambda c: c.stamp)),
        )
        return built

    def event_ids(self) -> list[str]:
        """Every event created so far, in id order (for the reminder loop: one pass over the
        events, not one per participant)."""
        return sorted(
            event_id for event_id, record in self._events.items() if record.created is not None
        )

    def places(self) -> list[PlaceOption]:
        """Every place proposed in any event (for the places provider's venues)."""
        return [place for record in self._events.values() for place in record.places.values()]

    def event_view(self, event_id: str) -> dict[str, object] | None:
        event = self.event(event_id)
        return None if event is None else event.to_json()

    def events_of(self, user_id: str) -> list[Event]:
        """The events a user organises or is invited to, oldest first."""
        events = [self.event(event_id) for event_id in self._involved.get(user_id, ())]
        found = [event for event in events if event is not None]
        return sorted(found, key=lambda event: self._created_stamp(event.id))

    def _created_stamp(self, event_id: str) -> Stamp:
        created = self._events[event_id].created
        assert created is not None
        return created[2]

    def snapshot(self) -> dict[str, object]:
        """Everything that merging decides, in a form where equal states compare equal (for
        tests and diagnostics; not a wire format)."""
        return {
            "users": frozenset(self._users),
            "user_fields": dict(self._user_fields),
            "devices": dict(self._devices),
            "events": {event_id: _record_snapshot(r) for event_id, r in self._events.items()},
            "digests": dict(self._digests),
        }


def _record_snapshot(record: _EventRecord) -> dict[str, object]:
    return {
        "created": record.created,
        "invitations": dict(record.invitations),
        "times": dict(record.times),
        "places": dict(record.places),
        "votes": dict(record.votes),
        "comments": dict(record.comments),
        "status": record.status,
    }


def _event_of(op: Op) -> str | None:
    match op.body:
        case AddUser() | SetUserField() | SetDevice() | DigestSent():
            return None
        case CreateEvent():
            return op.op_id
        case _:
            return op.body.event
