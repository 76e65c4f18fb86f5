"""Planning commands on the line, pure: parse them and answer them.

A planning line is parsed like every client line (docs/protocol.md §1): a command word in capitals,
whitespace-separated fields, free text last.  A line that does not have the command's shape is
a `WireError` (answered `? <line>`); a well-formed command that breaks a rule (`herd.rules`) gets
one line `ERR <code>: <message>`.  Replies are one line each, a word saying what follows and
compact JSON: `USER {...}`, `EVENT {...}`, `EVENTS [...]`, `SUGGEST {...}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from herd.ops import Choice, Op, UserField, client_bytes, client_text
from herd.state import PlanningState
from herd.venues import SuggestionQuery, Venue, rank_venues, who_is_near
from herd.wire import WireError
from herd.zones import PositionOf, timezone_of

__all__ = [
    "PLANNING_WORDS",
    "AddDevice",
    "CancelEvent",
    "CommentOn",
    "DecideEvent",
    "InviteUsers",
    "ListEvents",
    "Login",
    "PlanEvent",
    "PlanningCommand",
    "PlanningError",
    "ProposePlace",
    "ProposeTime",
    "RemoveDevice",
    "ReopenEvent",
    "SetUser",
    "ShowEvent",
    "ShowUser",
    "StateCommand",
    "Suggest",
    "UninviteUsers",
    "UnsetUser",
    "VoteOn",
    "WhoAmI",
    "format_reply",
    "parse_planning_line",
    "respond",
    "suggest_reply",
]

_POSITION: Final = re.compile(r"([+-][0-9]+\.[0-9]+)([+-][0-9]+\.[0-9]+)\Z")


@dataclass(frozen=True, slots=True)
class PlanningError:
    """A refused command: `ERR <code>: <message>`, the code stable for programs, the message
    for people."""

    code: str
    message: str

    def line(self) -> bytes:
        return b"ERR %s: %s\n" % (self.code.encode(), client_bytes(self.message))


# --- commands: one class per command, its wire format in its docstring -----------------------


@dataclass(frozen=True, slots=True)
class Login:
    """`AUTH <user> <token>`: authenticate this connection as `user`.  Reply: `USER <json>`."""

    user: str
    token: str


@dataclass(frozen=True, slots=True)
class WhoAmI:
    """`WHOAMI`: the authenticated user.  Reply: `USER <json>`."""


@dataclass(frozen=True, slots=True)
class ShowUser:
    """`USER`: the authenticated user, with contacts and preferences.  Reply: `USER <json>`."""


@dataclass(frozen=True, slots=True)
class SetUser:
    """`USER SET <field> <value…>`: field is `email`, `jid`, `quiet` (`22:00-07:00`), `digest`
    (`daily|weekly|off`), `channels` (comma-separated of `email,line,xmpp`, or `none`) or `tz`
    (an IANA zone).  Reply: `USER <json>`."""

    field: UserField
    value: str


@dataclass(frozen=True, slots=True)
class UnsetUser:
    """`USER UNSET <field>`: back to the default (no address; all channels; daily digest; no
    quiet hours; time zone from the position).  Reply: `USER <json>`."""

    field: UserField


@dataclass(frozen=True, slots=True)
class AddDevice:
    """`DEVICE ADD <client>`: positions reported by `client` (IAMAT) are the user's.
    Reply: `USER <json>`."""

    client: str


@dataclass(frozen=True, slots=True)
class RemoveDevice:
    """`DEVICE REMOVE <client>`.  Reply: `USER <json>`."""

    client: str


@dataclass(frozen=True, slots=True)
class PlanEvent:
    """`PLAN <title…>`: a new event organised by the user.  Reply: `EVENT <json>` (its id)."""

    title: str


@dataclass(frozen=True, slots=True)
class InviteUsers:
    """`INVITE <event> <user> [<user>…]` (organiser only).  Reply: `EVENT <json>`."""

    event: str
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UninviteUsers:
    """`UNINVITE <event> <user> [<user>…]` (organiser only).  Reply: `EVENT <json>`."""

    event: str
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProposeTime:
    """`PROPOSE <event> TIME <iso>`: ISO 8601 with a zone (`2026-12-05T19:00+01:00`, `…Z`),
    not in the past; kept in UTC, to the second.  Reply: `EVENT <json>`."""

    event: str
    time: str


@dataclass(frozen=True, slots=True)
class ProposePlace:
    """`PROPOSE <event> PLACE [<position>] <name…>`: position as in IAMAT
    (`+48.8566+002.3522`).  Reply: `EVENT <json>`."""

    event: str
    position: str | None
    name: str


@dataclass(frozen=True, slots=True)
class VoteOn:
    """`VOTE <event> <option> YES|MAYBE|NO` (participants only).  Reply: `EVENT <json>`."""

    event: str
    option: str
    choice: Choice


@dataclass(frozen=True, slots=True)
class CommentOn:
    """`COMMENT <event> <text…>`.  Reply: `EVENT <json>`."""

    event: str
    text: str


@dataclass(frozen=True, slots=True)
class DecideEvent:
    """`DECIDE <event> <time option> <place option>` (organiser only).  Reply: `EVENT <json>`."""

    event: str
    time: str
    place: str


@dataclass(frozen=True, slots=True)
class ReopenEvent:
    """`REOPEN <event>`: a decided event back to planning (organiser only)."""

    event: str


@dataclass(frozen=True, slots=True)
class CancelEvent:
    """`CANCEL <event>` (organiser only); a cancelled event takes no more changes."""

    event: str


@dataclass(frozen=True, slots=True)
class ShowEvent:
    """`EVENT <event>`.  Reply: `EVENT <json>`."""

    event: str


@dataclass(frozen=True, slots=True)
class ListEvents:
    """`EVENTS`: the events the user organises or is invited to.  Reply: `EVENTS <json>`."""


@dataclass(frozen=True, slots=True)
class Suggest:
    """`SUGGEST <event> [<radius_km>]`: venues near the people coming, and who is near the
    leading place; radius as in WHATSAT, default 5.  Reply: `SUGGEST <json>`."""

    event: str
    radius: str | None


StateCommand = (
    Login
    | WhoAmI
    | ShowUser
    | SetUser
    | UnsetUser
    | AddDevice
    | RemoveDevice
    | PlanEvent
    | InviteUsers
    | UninviteUsers
    | ProposeTime
    | ProposePlace
    | VoteOn
    | CommentOn
    | DecideEvent
    | ReopenEvent
    | CancelEvent
    | ShowEvent
    | ListEvents
)
"""The commands `execute` and `respond` take; `Suggest` needs the places provider in between."""

PlanningCommand = StateCommand | Suggest


# --- parsing -----------------------------------------------------------------------------------


def _rest(line: bytes, skip: int) -> str:
    """The free text after the first `skip` fields, inner whitespace kept."""
    parts = line.split(None, skip)
    return client_text(parts[skip].strip()) if len(parts) > skip else ""


def _arity(fields: list[bytes], low: int, high: int | None = None) -> None:
    if len(fields) < low or (high is not None and len(fields) > high):
        raise WireError(f"{fields[0].decode()} takes other fields")


def _parse_auth(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 3, 3)
    return Login(client_text(fields[1]), client_text(fields[2]))


def _parse_whoami(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 1, 1)
    return WhoAmI()


_SETTABLE: Final = {
    b"email": UserField.EMAIL,
    b"jid": UserField.JID,
    b"quiet": UserField.QUIET,
    b"digest": UserField.DIGEST,
    b"channels": UserField.CHANNELS,
    b"tz": UserField.TZ,
}


def _parse_user(fields: list[bytes], line: bytes) -> PlanningCommand:
    if len(fields) == 1:
        return ShowUser()
    settable = _SETTABLE.get(fields[2]) if len(fields) > 2 else None
    if settable is None:
        raise WireError("USER takes SET <field> <value> or UNSET <field>")
    if fields[1] == b"SET" and len(fields) >= 4:
        return SetUser(settable, _rest(line, 3))
    if fields[1] == b"UNSET" and len(fields) == 3:
        return UnsetUser(settable)
    raise WireError("USER takes SET <field> <value> or UNSET <field>")


def _parse_device(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 3, 3)
    if fields[1] == b"ADD":
        return AddDevice(client_text(fields[2]))
    if fields[1] == b"REMOVE":
        return RemoveDevice(client_text(fields[2]))
    raise WireError("DEVICE takes ADD or REMOVE")


def _parse_plan(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 2)
    return PlanEvent(_rest(line, 1))


def _parse_invite(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 3)
    return InviteUsers(client_text(fields[1]), tuple(client_text(field) for field in fields[2:]))


def _parse_uninvite(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 3)
    return UninviteUsers(client_text(fields[1]), tuple(client_text(field) for field in fields[2:]))


def _parse_propose(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 4)
    event = client_text(fields[1])
    if fields[2] == b"TIME" and len(fields) == 4:
        return ProposeTime(event, client_text(fields[3]))
    if fields[2] == b"PLACE":
        if _POSITION.match(client_text(fields[3])) is None:
            return ProposePlace(event, None, _rest(line, 3))
        if len(fields) > 4:
            return ProposePlace(event, client_text(fields[3]), _rest(line, 4))
    raise WireError("PROPOSE takes <event> TIME <iso> or <event> PLACE [<position>] <name>")


_CHOICES: Final = {b"YES": Choice.YES, b"MAYBE": Choice.MAYBE, b"NO": Choice.NO}


def _parse_vote(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 4, 4)
    choice = _CHOICES.get(fields[3])
    if choice is None:
        raise WireError("VOTE takes YES, MAYBE or NO")
    return VoteOn(client_text(fields[1]), client_text(fields[2]), choice)


def _parse_comment(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 3)
    return CommentOn(client_text(fields[1]), _rest(line, 2))


def _parse_decide(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 4, 4)
    return DecideEvent(client_text(fields[1]), client_text(fields[2]), client_text(fields[3]))


def _parse_reopen(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 2, 2)
    return ReopenEvent(client_text(fields[1]))


def _parse_cancel(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 2, 2)
    return CancelEvent(client_text(fields[1]))


def _parse_event(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 2, 2)
    return ShowEvent(client_text(fields[1]))


def _parse_events(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 1, 1)
    return ListEvents()


def _parse_suggest(fields: list[bytes], line: bytes) -> PlanningCommand:
    _arity(fields, 2, 3)
    return Suggest(client_text(fields[1]), client_text(fields[2]) if len(fields) == 3 else None)


_PARSERS: Final[dict[bytes, Callable[[list[bytes], bytes], PlanningCommand]]] = {
    b"AUTH": _parse_auth,
    b"WHOAMI": _parse_whoami,
    b"USER": _parse_user,
    b"DEVICE": _parse_device,
    b"PLAN": _parse_plan,
    b"INVITE": _parse_invite,
    b"UNINVITE": _parse_uninvite,
    b"PROPOSE": _parse_propose,
    b"VOTE": _parse_vote,
    b"COMMENT": _parse_comment,
    b"DECIDE": _parse_decide,
    b"REOPEN": _parse_reopen,
    b"CANCEL": _parse_cancel,
    b"EVENT": _parse_event,
    b"EVENTS": _parse_events,
    b"SUGGEST": _parse_suggest,
}

PLANNING_WORDS: Final = frozenset(_PARSERS)
"""The command words of this module, for the protocol's dispatch."""


def parse_planning_line(line: bytes) -> PlanningCommand | None:
    """One client line (without its terminator) to a planning command; None if blank.
    Raises `WireError` when the line does not have a planning command's shape."""
    fields = line.split()
    if not fields:
        return None
    parse = _PARSERS.get(fields[0])
    if parse is None:
        raise WireError("unknown command")
    return parse(fields, line)


# --- replies -------------------------------------------------------------------------------------


def format_reply(word: bytes, document: object) -> bytes:
    """`<WORD> <compact json>\\n`; client ids that are not UTF-8 go back as the bytes they came
    as."""
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return word + b" " + client_bytes(body) + b"\n"


def respond(
    state: PlanningState,
    actor: str,
    command: StateCommand,
    ops: Sequence[Op],
    position_of: PositionOf,
) -> bytes:
    """The reply to a command `execute` accepted, once its ops are applied; `actor` is the
    authenticated user (for `AUTH`, the user just authenticated)."""
    match command:
        case Login(user=user):
            return _user_reply(state, user, position_of)
        case WhoAmI() | ShowUser() | SetUser() | UnsetUser() | AddDevice() | RemoveDevice():
            return _user_reply(state, actor, position_of)
        case ListEvents():
            summaries = [
                {"id": e.id, "title": e.title, "organiser": e.organiser, "status": e.status.value}
                for e in state.events_of(actor)
            ]
            return format_reply(b"EVENTS", summaries)
        case PlanEvent():
            return _event_reply(state, ops[0].op_id)
        case (
            InviteUsers(event=event_id)
            | UninviteUsers(event=event_id)
            | ProposeTime(event=event_id)
            | ProposePlace(event=event_id)
            | VoteOn(event=event_id)
            | CommentOn(event=event_id)
            | DecideEvent(event=event_id)
            | ReopenEvent(event=event_id)
            | CancelEvent(event=event_id)
            | ShowEvent(event=event_id)
        ):
            return _event_reply(state, event_id)


def _user_reply(state: PlanningState, user_id: str, position_of: PositionOf) -> bytes:
    user = state.user(user_id)
    if user is None:
        return PlanningError("no-such-user", f"no user {user_id}").line()
    return format_reply(b"USER", user.to_json(timezone_of(user.tz, position_of(user_id))))


def _event_reply(state: PlanningState, event_id: str) -> bytes:
    event = state.event(event_id)
    if event is None:
        return PlanningError("no-such-event", f"no event {event_id}").line()
    return format_reply(b"EVENT", event.to_json())


def suggest_reply(query: SuggestionQuery, venues: Iterable[Venue]) -> bytes:
    """`SUGGEST <json>`: venues by total trip with their `rank_max` (rank by longest trip), and
    who is near the leading place now."""
    ranked = rank_venues(venues, [query.positions[user] for user in query.people])
    leading = query.leading
    document = {
        "event": query.event_id,
        "center": {"lat": round(query.center[0], 6), "lon": round(query.center[1], 6)},
        "radius_km": query.radius_km,
        "people": list(query.people),
        "venues": [
            {
                "name": r.venue.name,
                "lat": r.venue.lat,
                "lon": r.venue.lon,
                "total_km": round(r.total_m / 1000.0, 3),
                "max_km": round(r.max_m / 1000.0, 3),
                "rank_max": r.rank_max,
            }
            for r in ranked
        ],
        "leading": None
        if leading is None
        else {
            "id": leading.id,
            "name": leading.name,
            "near": None
            if leading.lat is None or leading.lon is None
            else who_is_near((leading.lat, leading.lon), query.positions, query.radius_km),
        },
    }
    return format_reply(b"SUGGEST", document)
