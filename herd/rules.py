"""Planning rules, pure: a command and the state give the ops that carry it out, or the
`PlanningError` that refuses it.

Rules are checked here, on the state of the server that accepts the command, because
`PlanningState.apply` must take any op in any order; each command becomes at most a few ops,
which the server stores, applies and floods.  Also here: the operator's commands (`herd user …`),
the checks of typed values (times, positions, user fields), and what `SUGGEST` asks.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final, Literal

from herd.geo import midpoint
from herd.ops import (
    MAX_COMMENT,
    MAX_INVITES,
    MAX_NAME,
    MAX_POSIX,
    MAX_TITLE,
    OPERATOR,
    AddComment,
    AddPlace,
    AddTime,
    AddUser,
    Body,
    Cancel,
    CastVote,
    Choice,
    CreateEvent,
    Decide,
    Invite,
    LinksRevoked,
    Op,
    Reopen,
    SetDevice,
    SetUserField,
    Uninvite,
    UserField,
    client_bytes,
    is_client,
    is_id,
    is_text,
)
from herd.state import PlanningState
from herd.tokens import verify_token
from herd.venues import SuggestionQuery, coming, leading_place
from herd.views import Event, Status, format_utc
from herd.wire.grammar import (
    MAX_RADIUS_KM,
    NOT_A_USER_ID,
    WireError,
    is_email,
    is_jid,
    iso6709_position,
)
from herd.wire.operator import OperatorCommand, OperatorLineError, UserAdd, UserToken
from herd.wire.planning import (
    AddDevice,
    CancelEvent,
    CommentOn,
    DecideEvent,
    InviteUsers,
    ListEvents,
    Login,
    PlanEvent,
    PlanningError,
    ProposePlace,
    ProposeTime,
    RemoveDevice,
    ReopenEvent,
    RevokeLinks,
    SetUser,
    ShowEvent,
    ShowLinks,
    ShowUser,
    StateCommand,
    Suggest,
    UninviteUsers,
    UnsetUser,
    VoteOn,
    WhoAmI,
)
from herd.zones import Position, PositionOf

__all__ = [
    "add_user",
    "execute",
    "execute_operator",
    "is_free_text",
    "parse_time",
    "reset_token",
    "suggestion_query",
]

MAX_OPTIONS: Final = 50
MAX_COMMENTS: Final = 500
MAX_DEVICES: Final = 20
DEFAULT_RADIUS_KM: Final = 5.0

_RADIUS: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?\Z")
_BREAKS: Final = re.compile("[\x80-\x9f\u2028\u2029]")
_MAX_USER_VALUE: Final = 254
_QUIET: Final = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]\Z")
_CLOCK_TIME: Final = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]\Z")
_CHANNELS: Final = frozenset({"email", "line", "xmpp"})
_DIGESTS: Final = frozenset({"daily", "weekly", "off"})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# --- values --------------------------------------------------------------------------------------


def is_free_text(value: str, limit: int) -> bool:
    """Text a user typed (titles, place names, comments, USER SET values): 1-`limit` characters
    of valid UTF-8 without C0 controls or DEL (`is_text`), and also without C1 controls
    (U+0080-U+009F: U+0085 ends a line for many readers, U+009B starts a terminal escape) or
    the line and paragraph separators U+2028/U+2029, so that it is one line everywhere it goes."""
    return is_text(value, limit) and _BREAKS.search(value) is None


def parse_time(text: str, now_ns: int) -> int | PlanningError:
    """An ISO 8601 time with a zone, not before `now_ns`, as POSIX seconds (UTC; fractions of
    a second dropped)."""
    example = "e.g. 2099-12-05T19:00+01:00 or 2099-12-05T18:00Z"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return PlanningError("bad-time", f"{text} is not an ISO 8601 time, {example}")
    if moment.utcoffset() is None:
        return PlanningError("bad-time", f"{text} has no time zone: add Z or an offset, {example}")
    posix = (moment - _EPOCH) // timedelta(seconds=1)
    if posix * 1_000_000_000 < now_ns:
        return PlanningError("past-time", f"{text} is in the past")
    if posix > MAX_POSIX:
        return PlanningError("bad-time", f"{text} is after the year 9999")
    return posix


def _position(text: str) -> Position | PlanningError:
    """An ISO 6709 position, range-checked exactly (like IAMAT's, so that `+90.00…01` is out)."""
    try:
        return iso6709_position(client_bytes(text))
    except (WireError, UnicodeEncodeError):
        return PlanningError(
            "bad-position", f"{text} is not an ISO 6709 position like +48.8566+002.3522 in range"
        )


def _user_value(name: UserField, value: str) -> str | PlanningError:
    """A USER SET value (or the operator's email/JID) checked and in canonical form."""
    if not 0 < len(value) <= _MAX_USER_VALUE:
        return PlanningError("bad-value", f"{name} must be 1-{_MAX_USER_VALUE} characters of text")
    if not is_free_text(value, _MAX_USER_VALUE):
        return _bad_text(f"{name} values", _MAX_USER_VALUE)
    match name:
        case UserField.EMAIL if not is_email(value):
            return PlanningError("bad-value", f"{value} is not an email address")
        case UserField.JID if not is_jid(value):
            return PlanningError("bad-value", f"{value} is not a bare JID like name@example.org")
        case UserField.QUIET if _QUIET.match(value) is None or value[:5] == value[6:]:
            return PlanningError("bad-value", "quiet hours are HH:MM-HH:MM, e.g. 22:00-07:00")
        case UserField.DIGEST if value not in _DIGESTS:
            return PlanningError("bad-value", "digest is daily, weekly or off")
        case UserField.WEB_QUIET if value not in ("yes", "no"):
            return PlanningError("bad-value", "web_quiet is yes or no")
        case UserField.DIGEST_AT if _CLOCK_TIME.match(value) is None:
            return PlanningError("bad-value", "digest_at is a local time HH:MM, e.g. 19:30")
        case UserField.CHANNELS:
            if value == "none":
                return ""
            channels = {channel.strip() for channel in value.split(",")}
            if not channels <= _CHANNELS:
                return PlanningError("bad-value", "channels are some of email,line,xmpp or none")
            return ",".join(sorted(channels))
        case UserField.TZ:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                return PlanningError("bad-value", f"{value} is not a time zone like Europe/Paris")
    return value


# --- execution -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    state: PlanningState
    actor: str
    now_ns: int
    new_op_id: Callable[[], str]

    def op(self, body: Body) -> Op:
        op_id = self.new_op_id()
        if not is_id(op_id):
            raise ValueError(f"op ids must be ids, not {op_id!r}")
        return Op(op_id, self.state.next_time(self.now_ns), self.actor, body)


def execute(
    state: PlanningState,
    actor: str | None,
    command: StateCommand,
    now_ns: int,
    new_op_id: Callable[[], str],
) -> list[Op] | PlanningError:
    """The ops that carry out `command` by `actor` (None: not authenticated yet), or why not.

    Nothing is changed: the caller stores, applies and floods the ops, then answers with
    `respond`.  Read-only commands, and a successful `AUTH`, give no ops.
    """
    if isinstance(command, Login):
        return _login(state, command)
    if actor is None:
        return PlanningError("not-authenticated", "AUTH <user> <token> first")
    context = _Context(state, actor, now_ns, new_op_id)
    match command:
        case WhoAmI() | ShowUser() | ListEvents() | ShowLinks():
            return []
        case RevokeLinks():
            user = state.user(actor)
            generation = 0 if user is None else user.link_generation
            return [context.op(LinksRevoked(actor, generation + 1))]
        case SetUser(field=name, value=value):
            canonical = _user_value(name, value)
            if isinstance(canonical, PlanningError):
                return canonical
            return [context.op(SetUserField(actor, name, canonical))]
        case UnsetUser(field=name):
            return [context.op(SetUserField(actor, name, None))]
        case AddDevice(client=client):
            return _add_device(context, client)
        case RemoveDevice(client=client):
            if state.user_of_client(client) != actor:
                return PlanningError("no-such-device", f"{client} is not one of your devices")
            return [context.op(SetDevice(client, None))]
        case PlanEvent(title=title):
            if not is_free_text(title, MAX_TITLE):
                return _bad_text("titles", MAX_TITLE)
            return [context.op(CreateEvent(title))]
        case InviteUsers():
            return _invite(context, command)
        case UninviteUsers():
            return _uninvite(context, command)
        case ProposeTime():
            return _propose_time(context, command)
        case ProposePlace():
            return _propose_place(context, command)
        case VoteOn():
            return _vote(context, command)
        case CommentOn():
            return _comment(context, command)
        case DecideEvent():
            return _decide(context, command)
        case ReopenEvent(event=event_id):
            event = _organised(state, actor, event_id, "reopen it")
            if isinstance(event, PlanningError):
                return event
            if event.status is not Status.DECIDED:
                return _refuse_status(event) or PlanningError(
                    "not-decided", f"{event_id} is not decided"
                )
            return [context.op(Reopen(event_id))]
        case CancelEvent(event=event_id):
            event = _organised(state, actor, event_id, "cancel it")
            if isinstance(event, PlanningError):
                return event
            if event.status is Status.CANCELLED:
                return PlanningError("cancelled", f"{event_id} is already cancelled")
            return [context.op(Cancel(event_id))]
        case ShowEvent(event=event_id):
            shown = _visible(state, actor, event_id, "see it")
            return shown if isinstance(shown, PlanningError) else []


def _login(state: PlanningState, command: Login) -> list[Op] | PlanningError:
    user = state.user(command.user) if is_id(command.user) else None
    if verify_token(None if user is None else user.token_hash, command.token):
        return []
    return PlanningError("auth-failed", "unknown user or wrong token")


def _bad_text(what: str, limit: int) -> PlanningError:
    return PlanningError(
        "bad-text",
        f"{what} are 1-{limit} characters of UTF-8 text without control characters or line"
        " separators",
    )


def _visible(state: PlanningState, actor: str, event_id: str, verb: str) -> Event | PlanningError:
    """The event if `actor` takes part in it; the same error whether or not others do."""
    event = state.event(event_id)
    if event is None:
        return PlanningError("no-such-event", f"no event {event_id}")
    if actor not in event.participants:
        return PlanningError("not-invited", f"only invitees of {event_id} may {verb}")
    return event


def _organised(state: PlanningState, actor: str, event_id: str, verb: str) -> Event | PlanningError:
    event = _visible(state, actor, event_id, verb)
    if isinstance(event, Event) and event.organiser != actor:
        return PlanningError("not-organiser", f"only the organiser of {event_id} may {verb}")
    return event


def _refuse_status(event: Event, decided_too: bool = False) -> PlanningError | None:
    """Cancelled events take no changes; with `decided_too`, decided ones take no new options
    or decisions until reopened."""
    if event.status is Status.CANCELLED:
        return PlanningError("cancelled", f"{event.id} is cancelled")
    if decided_too and event.status is Status.DECIDED:
        return PlanningError("decided", f"{event.id} is decided; REOPEN it first")
    return None


def _add_device(context: _Context, client: str) -> list[Op] | PlanningError:
    owner = context.state.user_of_client(client)
    if not is_client(client):
        return PlanningError("bad-client", "client ids are at most 512 bytes")
    if owner == context.actor:
        return []
    if owner is not None:
        return PlanningError("device-taken", f"{client} reports for another user")
    if len(context.state.clients_of(context.actor)) >= MAX_DEVICES:
        return PlanningError("too-many", f"at most {MAX_DEVICES} devices per user")
    return [context.op(SetDevice(client, context.actor))]


def _invite(context: _Context, command: InviteUsers) -> list[Op] | PlanningError:
    event = _organised(context.state, context.actor, command.event, "invite")
    if isinstance(event, PlanningError):
        return event
    refused = _refuse_status(event)
    if refused is not None:
        return refused
    if len(command.users) > MAX_INVITES:
        return PlanningError("too-many", f"invite at most {MAX_INVITES} users at once")
    for user in command.users:
        if not is_id(user) or context.state.user(user) is None:
            return PlanningError("no-such-user", f"no user {user}")
    new = tuple(user for user in dict.fromkeys(command.users) if user not in event.participants)
    if not new:
        return PlanningError("already-invited", f"they already take part in {event.id}")
    return [context.op(Invite(event.id, new))]


def _uninvite(context: _Context, command: UninviteUsers) -> list[Op] | PlanningError:
    event = _organised(context.state, context.actor, command.event, "uninvite")
    if isinstance(event, PlanningError):
        return event
    refused = _refuse_status(event)
    if refused is not None:
        return refused
    for user in command.users:
        if user not in event.invitees:
            return PlanningError("no-such-invitee", f"{user} is not an invitee of {event.id}")
    return [context.op(Uninvite(event.id, tuple(dict.fromkeys(command.users))))]


def _proposable(
    context: _Context, event_id: str, kind: Literal["times", "places"]
) -> Event | PlanningError:
    event = _visible(context.state, context.actor, event_id, "propose")
    if isinstance(event, PlanningError):
        return event
    refused = _refuse_status(event, decided_too=True)
    if refused is not None:
        return refused
    if len(event.times if kind == "times" else event.places) >= MAX_OPTIONS:
        return PlanningError("too-many", f"{event_id} has {MAX_OPTIONS} {kind} already")
    return event


def _propose_time(context: _Context, command: ProposeTime) -> list[Op] | PlanningError:
    event = _proposable(context, command.event, "times")
    if isinstance(event, PlanningError):
        return event
    posix = parse_time(command.time, context.now_ns)
    if isinstance(posix, PlanningError):
        return posix
    for option in event.times:
        if option.at == posix:
            return PlanningError(
                "duplicate-option", f"{format_utc(posix)} is already option {option.id}"
            )
    return [context.op(AddTime(event.id, posix))]


def _propose_place(context: _Context, command: ProposePlace) -> list[Op] | PlanningError:
    event = _proposable(context, command.event, "places")
    if isinstance(event, PlanningError):
        return event
    position: Position | None = None
    if command.position is not None:
        parsed = _position(command.position)
        if isinstance(parsed, PlanningError):
            return parsed
        position = parsed
    if not is_free_text(command.name, MAX_NAME):
        return _bad_text("place names", MAX_NAME)
    for option in event.places:
        same_position = (option.lat, option.lon) == (position or (None, None))
        if option.name.casefold() == command.name.casefold() and same_position:
            return PlanningError(
                "duplicate-option", f"{command.name} is already option {option.id}"
            )
    lat, lon = position if position is not None else (None, None)
    return [context.op(AddPlace(event.id, command.name, lat, lon))]


def _vote(context: _Context, command: VoteOn) -> list[Op] | PlanningError:
    event = _visible(context.state, context.actor, command.event, "vote")
    if isinstance(event, PlanningError):
        return event
    refused = _refuse_status(event)
    if refused is not None:
        return refused
    if event.time(command.option) is None and event.place(command.option) is None:
        return PlanningError("no-such-option", f"{event.id} has no option {command.option}")
    return [context.op(CastVote(event.id, command.option, command.choice))]


def _comment(context: _Context, command: CommentOn) -> list[Op] | PlanningError:
    event = _visible(context.state, context.actor, command.event, "comment")
    if isinstance(event, PlanningError):
        return event
    refused = _refuse_status(event)
    if refused is not None:
        return refused
    if not is_free_text(command.text, MAX_COMMENT):
        return _bad_text("comments", MAX_COMMENT)
    if len(event.comments) >= MAX_COMMENTS:
        return PlanningError("too-many", f"{event.id} has {MAX_COMMENTS} comments already")
    return [context.op(AddComment(event.id, command.text))]


def _decide(context: _Context, command: DecideEvent) -> list[Op] | PlanningError:
    event = _organised(context.state, context.actor, command.event, "decide")
    if isinstance(event, PlanningError):
        return event
    refused = _refuse_status(event, decided_too=True)
    if refused is not None:
        return refused
    time, place = event.time(command.time), event.place(command.place)
    if time is None:
        return PlanningError("no-such-option", f"{event.id} has no time option {command.time}")
    if place is None:
        return PlanningError("no-such-option", f"{event.id} has no place option {command.place}")
    for option_id, label in (
        (time.id, f"time {time.id} ({format_utc(time.at)})"),
        (place.id, f"place {place.id} ({place.name})"),
    ):
        if _rejected(event, option_id):
            return PlanningError(
                "rejected", f"cannot decide {event.id}: every invitee voted NO on {label}"
            )
    return [context.op(Decide(event.id, time.id, place.id))]


def _rejected(event: Event, option_id: str) -> bool:
    """Every invitee (there is at least one) voted NO on the option."""
    votes = event.votes.get(option_id, {})
    return bool(event.invitees) and all(votes.get(u) is Choice.NO for u in event.invitees)


# --- operator commands (`herd user …`) -----------------------------------------------------------


def add_user(
    state: PlanningState,
    user: str,
    token_hash: str,
    now_ns: int,
    new_op_id: Callable[[], str],
    jid: str | None = None,
    email: str | None = None,
) -> list[Op] | PlanningError:
    """The ops of `herd user add <user> [--jid J] [--email E]`, with the hash of a new token
    (its shape is the caller's to check: `execute_operator`); every field is checked before
    any op is made, so a refusal changes nothing."""
    if not is_id(user):
        return _bad_user(user)
    if state.user(user) is not None:
        return PlanningError("user-exists", f"user {user} exists already")
    values: list[tuple[UserField, str]] = []
    for name, value in ((UserField.JID, jid), (UserField.EMAIL, email)):
        if value is not None:
            canonical = _user_value(name, value)
            if isinstance(canonical, PlanningError):
                return canonical
            values.append((name, canonical))
    context = _Context(state, OPERATOR, now_ns, new_op_id)
    ops = [context.op(AddUser(user)), context.op(SetUserField(user, UserField.TOKEN, token_hash))]
    ops += [context.op(SetUserField(user, name, value)) for name, value in values]
    return ops


def reset_token(
    state: PlanningState, user: str, token_hash: str, now_ns: int, new_op_id: Callable[[], str]
) -> list[Op] | PlanningError:
    """The op of `herd user token <user>`: a new token replaces the old one everywhere."""
    if not is_id(user):
        return _bad_user(user)
    if state.user(user) is None:
        return PlanningError("no-such-user", f"no user {user}")
    context = _Context(state, OPERATOR, now_ns, new_op_id)
    return [context.op(SetUserField(user, UserField.TOKEN, token_hash))]


def execute_operator(
    state: PlanningState, command: OperatorCommand, now_ns: int, new_op_id: Callable[[], str]
) -> list[Op] | PlanningError:
    """The ops of one operator command; a field without its shape (a token hash that is
    not scrypt's, say) is refused here too, whoever built the command."""
    try:
        command.check()
    except OperatorLineError as error:
        return PlanningError(error.code, error.message)
    if isinstance(command, UserAdd):
        return add_user(
            state,
            command.user,
            command.token_hash,
            now_ns,
            new_op_id,
            jid=command.jid,
            email=command.email,
        )
    assert isinstance(command, UserToken)
    return reset_token(state, command.user, command.token_hash, now_ns, new_op_id)


def _bad_user(user: str) -> PlanningError:
    return PlanningError("bad-user", f"{user!r} {NOT_A_USER_ID}")


# --- suggestions -------------------------------------------------------------------------------


def suggestion_query(
    state: PlanningState, actor: str | None, command: Suggest, position_of: PositionOf
) -> SuggestionQuery | PlanningError:
    """Check a `SUGGEST` and work out where to look; the server then asks the places provider
    and answers with `suggest_reply`."""
    if actor is None:
        return PlanningError("not-authenticated", "AUTH <user> <token> first")
    event = _visible(state, actor, command.event, "ask for suggestions")
    if isinstance(event, PlanningError):
        return event
    radius = DEFAULT_RADIUS_KM
    if command.radius is not None:
        exact = Decimal(command.radius) if _RADIUS.match(command.radius) else Decimal(-1)
        radius = float(exact)
        if not (0 < exact <= MAX_RADIUS_KM and radius > 0):
            return PlanningError("bad-radius", f"radius is in km, 0 < r <= {MAX_RADIUS_KM}")
    positions = {
        user: position
        for user in sorted(event.participants)
        if (position := position_of(user)) is not None
    }
    people = tuple(user for user in coming(event) if user in positions) or tuple(positions)
    if not people:
        return PlanningError(
            "no-positions", f"nobody taking part in {event.id} has reported a position"
        )
    try:
        center = midpoint(positions[user] for user in people)
    except ValueError:
        return PlanningError("no-positions", f"the people of {event.id} have no middle on Earth")
    return SuggestionQuery(event.id, people, positions, center, radius, leading_place(event))
