"""Planning lines on the client port, sans I/O: one class per command (AUTH, WHOAMI, USER,
LINKS, DEVICE, PLAN ... SUGGEST), its parser, and the one-line replies `WORD <json>` and
`ERR <code>: <message>` (`PlanningError`).

A planning line is parsed like every client line (docs/protocol.md §1): a command word in
capitals, whitespace-separated fields, free text last.  A line that does not have the command's
shape is a `WireError` (answered `? <line>`); a well-formed command that breaks a rule gets one
line `ERR <code>: <message>`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from herd.ops import Choice, UserField, client_bytes, client_text
from herd.wire.grammar import WireError, looks_like_iso6709


@dataclass(frozen=True, slots=True)
class PlanningError:
    """A refused command: `ERR <code>: <message>`, the code stable for programs, the message
    for people."""

    code: str
    message: str

    def line(self) -> bytes:
        return b"ERR %s: %s\n" % (self.code.encode(), client_bytes(self.message))


# --- commands: one class per command, its wire format in its docstring, parse and to_line -----


def _rest(line: bytes, skip: int) -> str:
    """The free text after the first `skip` fields, inner whitespace kept."""
    parts = line.split(None, skip)
    return client_text(parts[skip].strip()) if len(parts) > skip else ""


def _arity(fields: list[bytes], low: int, high: int | None = None) -> None:
    if len(fields) < low or (high is not None and len(fields) > high):
        raise WireError(f"{fields[0].decode()} takes other fields")


def _line(*words: str | bytes) -> bytes:
    """Fields joined by single spaces, text as the bytes it was read from, and the newline."""
    return b" ".join(word if isinstance(word, bytes) else client_bytes(word) for word in words) + (
        b"\n"
    )


@dataclass(frozen=True, slots=True)
class Login:
    """`AUTH <user> <token>`: authenticate this connection as `user`.  Reply: `USER <json>`."""

    user: str
    token: str

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Login:
        _arity(fields, 3, 3)
        return cls(client_text(fields[1]), client_text(fields[2]))

    def to_line(self) -> bytes:
        return _line(b"AUTH", self.user, self.token)


@dataclass(frozen=True, slots=True)
class WhoAmI:
    """`WHOAMI`: the authenticated user.  Reply: `USER <json>`."""

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> WhoAmI:
        _arity(fields, 1, 1)
        return cls()

    def to_line(self) -> bytes:
        return b"WHOAMI\n"


@dataclass(frozen=True, slots=True)
class ShowUser:
    """`USER`: the authenticated user, with contacts and preferences.  Reply: `USER <json>`."""

    def to_line(self) -> bytes:
        return b"USER\n"


@dataclass(frozen=True, slots=True)
class SetUser:
    """`USER SET <field> <value…>`: field is `email`, `jid`, `quiet` (`22:00-07:00`), `digest`
    (`daily|weekly|off`), `digest_at` (`19:30`, local), `channels` (comma-separated of
    `email,line,xmpp`, or `none`), `tz` (an IANA zone) or `web_quiet` (`yes|no`).
    Reply: `USER <json>`."""

    field: UserField
    value: str

    def to_line(self) -> bytes:
        return _line(b"USER SET", self.field.value, self.value)


@dataclass(frozen=True, slots=True)
class UnsetUser:
    """`USER UNSET <field>`: back to the default (no address; all channels; daily digest at the
    herd's hour; no quiet hours; time zone from the position).  Reply: `USER <json>`."""

    field: UserField

    def to_line(self) -> bytes:
        return _line(b"USER UNSET", self.field.value)


_SETTABLE: Final = {
    b"email": UserField.EMAIL,
    b"jid": UserField.JID,
    b"quiet": UserField.QUIET,
    b"digest": UserField.DIGEST,
    b"channels": UserField.CHANNELS,
    b"tz": UserField.TZ,
    b"web_quiet": UserField.WEB_QUIET,
    b"digest_at": UserField.DIGEST_AT,
}


def parse_user(fields: list[bytes], line: bytes) -> ShowUser | SetUser | UnsetUser:
    """`USER`, `USER SET <field> <value…>` or `USER UNSET <field>`."""
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


@dataclass(frozen=True, slots=True)
class ShowLinks:
    """`LINKS`: the generation of the user's personal web links.  Reply: `LINKS <json>`."""

    def to_line(self) -> bytes:
        return b"LINKS\n"


@dataclass(frozen=True, slots=True)
class RevokeLinks:
    """`LINKS REVOKE`: every personal web link made for the user so far (in mails, in Jabber
    messages) stops working, and so does every web session opened with one; links in
    notifications from now on work.  Reply: `LINKS <json>`."""

    def to_line(self) -> bytes:
        return b"LINKS REVOKE\n"


def parse_links(fields: list[bytes], line: bytes) -> ShowLinks | RevokeLinks:
    """`LINKS` or `LINKS REVOKE`."""
    if len(fields) == 1:
        return ShowLinks()
    if len(fields) == 2 and fields[1] == b"REVOKE":
        return RevokeLinks()
    raise WireError("LINKS takes nothing or REVOKE")


@dataclass(frozen=True, slots=True)
class AddDevice:
    """`DEVICE ADD <client>`: positions reported by `client` (IAMAT) are the user's.
    Reply: `USER <json>`."""

    client: str

    def to_line(self) -> bytes:
        return _line(b"DEVICE ADD", self.client)


@dataclass(frozen=True, slots=True)
class RemoveDevice:
    """`DEVICE REMOVE <client>`.  Reply: `USER <json>`."""

    client: str

    def to_line(self) -> bytes:
        return _line(b"DEVICE REMOVE", self.client)


def parse_device(fields: list[bytes], line: bytes) -> AddDevice | RemoveDevice:
    """`DEVICE ADD <client>` or `DEVICE REMOVE <client>`."""
    _arity(fields, 3, 3)
    if fields[1] == b"ADD":
        return AddDevice(client_text(fields[2]))
    if fields[1] == b"REMOVE":
        return RemoveDevice(client_text(fields[2]))
    raise WireError("DEVICE takes ADD or REMOVE")


@dataclass(frozen=True, slots=True)
class PlanEvent:
    """`PLAN <title…>`: a new event organised by the user.  Reply: `EVENT <json>` (its id)."""

    title: str

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> PlanEvent:
        _arity(fields, 2)
        return cls(_rest(line, 1))

    def to_line(self) -> bytes:
        return _line(b"PLAN", self.title)


@dataclass(frozen=True, slots=True)
class InviteUsers:
    """`INVITE <event> <user> [<user>…]` (organiser only).  Reply: `EVENT <json>`."""

    event: str
    users: tuple[str, ...]

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> InviteUsers:
        _arity(fields, 3)
        return cls(client_text(fields[1]), tuple(client_text(field) for field in fields[2:]))

    def to_line(self) -> bytes:
        return _line(b"INVITE", self.event, *self.users)


@dataclass(frozen=True, slots=True)
class UninviteUsers:
    """`UNINVITE <event> <user> [<user>…]` (organiser only).  Reply: `EVENT <json>`."""

    event: str
    users: tuple[str, ...]

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> UninviteUsers:
        _arity(fields, 3)
        return cls(client_text(fields[1]), tuple(client_text(field) for field in fields[2:]))

    def to_line(self) -> bytes:
        return _line(b"UNINVITE", self.event, *self.users)


@dataclass(frozen=True, slots=True)
class ProposeTime:
    """`PROPOSE <event> TIME <iso>`: ISO 8601 with a zone (`2099-12-05T19:00+01:00`, `…Z`),
    not in the past; kept in UTC, to the second.  Reply: `EVENT <json>`."""

    event: str
    time: str

    def to_line(self) -> bytes:
        return _line(b"PROPOSE", self.event, b"TIME", self.time)


@dataclass(frozen=True, slots=True)
class ProposePlace:
    """`PROPOSE <event> PLACE [<position>] <name…>`: position as in IAMAT
    (`+48.8566+002.3522`).  Reply: `EVENT <json>`."""

    event: str
    position: str | None
    name: str

    def to_line(self) -> bytes:
        if self.position is None:
            return _line(b"PROPOSE", self.event, b"PLACE", self.name)
        return _line(b"PROPOSE", self.event, b"PLACE", self.position, self.name)


def parse_propose(fields: list[bytes], line: bytes) -> ProposeTime | ProposePlace:
    """`PROPOSE <event> TIME <iso>` or `PROPOSE <event> PLACE [<position>] <name…>`."""
    _arity(fields, 4)
    event = client_text(fields[1])
    if fields[2] == b"TIME" and len(fields) == 4:
        return ProposeTime(event, client_text(fields[3]))
    if fields[2] == b"PLACE":
        if not looks_like_iso6709(fields[3]):
            return ProposePlace(event, None, _rest(line, 3))
        if len(fields) > 4:
            return ProposePlace(event, client_text(fields[3]), _rest(line, 4))
    raise WireError("PROPOSE takes <event> TIME <iso> or <event> PLACE [<position>] <name>")


_CHOICES: Final = {b"YES": Choice.YES, b"MAYBE": Choice.MAYBE, b"NO": Choice.NO}


@dataclass(frozen=True, slots=True)
class VoteOn:
    """`VOTE <event> <option> YES|MAYBE|NO` (participants only).  Reply: `EVENT <json>`."""

    event: str
    option: str
    choice: Choice

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> VoteOn:
        _arity(fields, 4, 4)
        choice = _CHOICES.get(fields[3])
        if choice is None:
            raise WireError("VOTE takes YES, MAYBE or NO")
        return cls(client_text(fields[1]), client_text(fields[2]), choice)

    def to_line(self) -> bytes:
        return _line(b"VOTE", self.event, self.option, self.choice.value.upper())


@dataclass(frozen=True, slots=True)
class CommentOn:
    """`COMMENT <event> <text…>`.  Reply: `EVENT <json>`."""

    event: str
    text: str

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> CommentOn:
        _arity(fields, 3)
        return cls(client_text(fields[1]), _rest(line, 2))

    def to_line(self) -> bytes:
        return _line(b"COMMENT", self.event, self.text)


@dataclass(frozen=True, slots=True)
class DecideEvent:
    """`DECIDE <event> <time option> <place option>` (organiser only).  Reply: `EVENT <json>`."""

    event: str
    time: str
    place: str

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> DecideEvent:
        _arity(fields, 4, 4)
        return cls(client_text(fields[1]), client_text(fields[2]), client_text(fields[3]))

    def to_line(self) -> bytes:
        return _line(b"DECIDE", self.event, self.time, self.place)


@dataclass(frozen=True, slots=True)
class ReopenEvent:
    """`REOPEN <event>`: a decided event back to planning (organiser only)."""

    event: str

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> ReopenEvent:
        _arity(fields, 2, 2)
        return cls(client_text(fields[1]))

    def to_line(self) -> bytes:
        return _line(b"REOPEN", self.event)


@dataclass(frozen=True, slots=True)
class CancelEvent:
    """`CANCEL <event>` (organiser only); a cancelled event takes no more changes."""

    event: str

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> CancelEvent:
        _arity(fields, 2, 2)
        return cls(client_text(fields[1]))

    def to_line(self) -> bytes:
        return _line(b"CANCEL", self.event)


@dataclass(frozen=True, slots=True)
class ShowEvent:
    """`EVENT <event>`.  Reply: `EVENT <json>`."""

    event: str

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> ShowEvent:
        _arity(fields, 2, 2)
        return cls(client_text(fields[1]))

    def to_line(self) -> bytes:
        return _line(b"EVENT", self.event)


@dataclass(frozen=True, slots=True)
class ListEvents:
    """`EVENTS`: the events the user organises or is invited to.  Reply: `EVENTS <json>`."""

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> ListEvents:
        _arity(fields, 1, 1)
        return cls()

    def to_line(self) -> bytes:
        return b"EVENTS\n"


@dataclass(frozen=True, slots=True)
class Suggest:
    """`SUGGEST <event> [<radius_km>]`: venues near the people coming, and who is near the
    leading place; radius as in WHATSAT, default 5.  Reply: `SUGGEST <json>`."""

    event: str
    radius: str | None

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Suggest:
        _arity(fields, 2, 3)
        return cls(client_text(fields[1]), client_text(fields[2]) if len(fields) == 3 else None)

    def to_line(self) -> bytes:
        if self.radius is None:
            return _line(b"SUGGEST", self.event)
        return _line(b"SUGGEST", self.event, self.radius)


StateCommand = (
    Login
    | WhoAmI
    | ShowUser
    | SetUser
    | UnsetUser
    | ShowLinks
    | RevokeLinks
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

PLANNING_PARSERS: Final[dict[bytes, Callable[[list[bytes], bytes], PlanningCommand]]] = {
    b"AUTH": Login.parse,
    b"WHOAMI": WhoAmI.parse,
    b"USER": parse_user,
    b"LINKS": parse_links,
    b"DEVICE": parse_device,
    b"PLAN": PlanEvent.parse,
    b"INVITE": InviteUsers.parse,
    b"UNINVITE": UninviteUsers.parse,
    b"PROPOSE": parse_propose,
    b"VOTE": VoteOn.parse,
    b"COMMENT": CommentOn.parse,
    b"DECIDE": DecideEvent.parse,
    b"REOPEN": ReopenEvent.parse,
    b"CANCEL": CancelEvent.parse,
    b"EVENT": ShowEvent.parse,
    b"EVENTS": ListEvents.parse,
    b"SUGGEST": Suggest.parse,
}
"""The planning words, each with the parser of its fields (`(fields, line) -> command`)."""

PLANNING_WORDS: Final = frozenset(PLANNING_PARSERS)
"""The command words of this module, for the protocol's dispatch."""


def parse_planning_line(line: bytes) -> PlanningCommand | None:
    """One client line (without its terminator) to a planning command; None if blank.
    Raises `WireError` when the line does not have a planning command's shape."""
    fields = line.split()
    if not fields:
        return None
    parse = PLANNING_PARSERS.get(fields[0])
    if parse is None:
        raise WireError("unknown command")
    return parse(fields, line)


# --- the notifier's commands: served only where an extension registered them (herd.extensions)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """`SUBSCRIBE [<checkpoint>]`: push the user's notifications as `PUSH <checkpoint> <line>`
    lines (first those after the checkpoint) until `UNSUBSCRIBE` or disconnection.
    Reply: `SUBSCRIBED <user> <latest checkpoint or ->`."""

    since: str | None

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Subscribe:
        _arity(fields, 1, 2)
        return cls(fields[1].decode("ascii", "replace") if len(fields) == 2 else None)

    def to_line(self) -> bytes:
        return b"SUBSCRIBE\n" if self.since is None else _line(b"SUBSCRIBE", self.since)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """`UNSUBSCRIBE`: stop the pushes of `SUBSCRIBE`.  Reply: `UNSUBSCRIBED`."""

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Unsubscribe:
        _arity(fields, 1, 1)
        return cls()

    def to_line(self) -> bytes:
        return b"UNSUBSCRIBE\n"


@dataclass(frozen=True, slots=True)
class Link:
    """`LINK <jid>`: a one-time code proving the user owns the JID: they send `link <user>
    <code>` to the bot from it.  Reply: `LINKCODE <code> <expires, POSIX seconds>`."""

    jid: str

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> Link:
        _arity(fields, 2, 2)
        return cls(fields[1].decode("utf-8", "replace"))

    def to_line(self) -> bytes:
        return _line(b"LINK", self.jid.encode())


@dataclass(frozen=True, slots=True)
class OptOut:
    """`OPTOUT <user> <token>`: the unsubscribe token every notification mail carries (no
    login needed: the token proves it) stops email notifications for that user.
    Reply: `OPTOUT <user>`."""

    user: str
    token: str

    @classmethod
    def parse(cls, fields: list[bytes], line: bytes) -> OptOut:
        _arity(fields, 3, 3)
        return cls(fields[1].decode("utf-8", "replace"), fields[2].decode("ascii", "replace"))

    def to_line(self) -> bytes:
        return _line(b"OPTOUT", self.user.encode(), self.token.encode())


NotifierCommand = Subscribe | Unsubscribe | Link | OptOut

NOTIFIER_PARSERS: Final[dict[bytes, Callable[[list[bytes], bytes], NotifierCommand]]] = {
    b"SUBSCRIBE": Subscribe.parse,
    b"UNSUBSCRIBE": Unsubscribe.parse,
    b"LINK": Link.parse,
    b"OPTOUT": OptOut.parse,
}


# --- replies -------------------------------------------------------------------------------------


def format_reply(word: bytes, document: object) -> bytes:
    """`<WORD> <compact json>\\n`; client ids that are not UTF-8 go back as the bytes they came
    as."""
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return word + b" " + client_bytes(body) + b"\n"


def user_ok(user: str) -> bytes:
    """`OK <user>`: an operator command took effect."""
    return b"OK %s\n" % user.encode()


def subscribed_reply(user: str, latest: str | None) -> bytes:
    """`SUBSCRIBED <user> <latest checkpoint or ->`."""
    return f"SUBSCRIBED {user} {latest or '-'}\n".encode()


UNSUBSCRIBED: Final = b"UNSUBSCRIBED\n"


def linkcode_reply(code: str, expires: int) -> bytes:
    """`LINKCODE <code> <expires, POSIX seconds>`."""
    return f"LINKCODE {code} {expires}\n".encode()


def optout_reply(user: str) -> bytes:
    """`OPTOUT <user>`: email notifications for `user` are off."""
    return b"OPTOUT " + user.encode() + b"\n"
