"""The Jabber bot's conversation, pure: chat in, planning lines out, replies for people.

A linked user types what they would say (`time fri 19:00`, `vote yes 2`, `status`), in any
case and spacing.  `interpret` turns one message into one step: a planning line to run as that
user (`RunLine`), exactly as the line protocol would run it, so the bot can do nothing the user
could not do on the line; a reply that needs no server (`Reply`: help, or a mistake explained
with an example); or a position to record (`SetPosition`).  `render_reply` turns the line's
reply into a short message from `templates/xmpp/reply/`, times in the user's zone.

Current event: the last event whose `EVENT` or `SUGGEST` reply the user got (they planned,
changed or looked at it), kept in `Conversation`; commands without an event name work on it.
Before there is one, it is the user's newest event that is not cancelled.  To switch, `status
<event>` (its number in `my events`, its title, or its id).

Option numbers: an event's times then its places, in the order of the event view, from 1
(`status` shows them).  Full option ids work too, and pick their own event.

Strangers: `interpret_stranger` answers JIDs linked to no user.  One proves a JID is theirs by
sending, from it, `link <user> <code>`, where the code came from `LINK <jid>` on the line
protocol as that user: an HMAC of (user, JID, 10-minute window) under the herd's secret, so any
server can check it and it is good for 10 to 20 minutes (`herd.tokens.link_code`).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from herd.api import (
    Choice,
    Event,
    PlaceOption,
    StateView,
    Status,
    TimeOption,
    User,
    check_link_code,
    client_bytes,
    client_text,
    format_utc,
    is_id,
)
from notifier.message import Recipient
from notifier.naturaltime import Moment, NotATime, parse_clock, parse_when
from notifier.render import OptionView, Templates, event_view

__all__ = [
    "MAX_TEXT",
    "BotStep",
    "Conversation",
    "LinkJid",
    "Reply",
    "RunLine",
    "Say",
    "SetPosition",
    "StrangerStep",
    "interpret",
    "interpret_stranger",
    "render_reply",
    "user_of_jid",
]

MAX_TEXT: Final = 2500
"""Longer messages are refused before parsing (a comment is at most 2000 characters)."""

_LISTED: Final = 20  # `my events` shows the newest ones, with their numbers
_POSITION_6709: Final = re.compile(r"([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)/?\Z")
_POSITION_PAIR: Final = re.compile(
    r"(?:geo:)?\s*([+-]?\d{1,2}(?:\.\d+)?)\s*(?:[,;]\s*|\s+)([+-]?\d{1,3}(?:\.\d+)?)(?:;.*)?\Z"
)
_TRAILING_PAIR: Final = re.compile(
    r"(.*?)[\s,]+(?:at\s+|@\s*)?([+-]?\d{1,2}\.\d+)\s*[,;]\s*([+-]?\d{1,3}\.\d+)\Z"
)
_RADIUS: Final = re.compile(r"(?:within\s+)?(\d+(?:[.,]\d+)?)\s*(?:km|kms|kilometres?)?\Z")
_QUIET_SPLIT: Final = re.compile(r"\s*(?:-|\u2013|\u2014|\bto\b|\buntil\b|\btill\b)\s*")
_SEPARATORS: Final = re.compile(r"[\s,;]+")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_CHOICES: Final = {
    **dict.fromkeys(("yes", "y", "yeah", "yep", "ok", "sure"), Choice.YES),
    **dict.fromkeys(("maybe", "m", "perhaps", "ifneedbe", "if-need-be"), Choice.MAYBE),
    **dict.fromkeys(("no", "n", "nope"), Choice.NO),
}
_DIGESTS: Final = {
    **dict.fromkeys(("daily", "day"), "daily"),
    **dict.fromkeys(("weekly", "week"), "weekly"),
    **dict.fromkeys(("off", "none", "never", "no", "stop"), "off"),
}
_CHANNELS: Final = {
    **dict.fromkeys(("", "xmpp", "jabber", "chat", "here"), ("xmpp",)),
    **dict.fromkeys(("email", "mail", "e-mail"), ("email",)),
    "line": ("line",),
    **dict.fromkeys(("all", "everything"), ("email", "line", "xmpp")),
}
_OFF: Final = frozenset({"off", "none", "no", "never", "auto", "unset"})
_CONFIRM: Final = frozenset({"yes", "y", "confirm", "sure"})
_FILLER: Final = frozenset({"and", "&", "to", "for", "on", "at", "option", "options"})


# --- steps -----------------------------------------------------------------------------------


class Say(StrEnum):
    """How the reply to a line is told: the template `templates/xmpp/reply/<value>.txt.j2`."""

    PLANNED = "planned"
    INVITED = "invited"
    UNINVITED = "uninvited"
    PROPOSED = "proposed"
    VOTED = "voted"
    COMMENTED = "commented"
    DECIDED = "decided"
    REOPENED = "reopened"
    CANCELLED = "cancelled"
    STATUS = "status"
    WHERE = "where"
    EVENTS = "events"
    SETTINGS = "settings"
    LINKED = "linked"


@dataclass(frozen=True, slots=True)
class RunLine:
    """Run `line` (one planning line, no terminator) as the user, then answer with
    `render_reply`.  `event` is the event it is about, if known before the reply; `subject`
    what the reply should point at: the users invited, `("time", <posix>)` or `("place",
    <name>)` proposed, `(<option id>,)` voted on, `(<field>,)` set; `note` is said last."""

    line: bytes
    say: Say
    event: str | None = None
    subject: tuple[str, ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer with `text`; nothing to run."""

    text: str


@dataclass(frozen=True, slots=True)
class SetPosition:
    """The user says where they are: record `position` (ISO 6709, as IAMAT takes it) for
    their XMPP device, then answer with `reply`."""

    lat: float
    lon: float
    position: str
    reply: str


BotStep = RunLine | Reply | SetPosition


@dataclass(frozen=True, slots=True)
class LinkJid:
    """A stranger proved that `jid` is theirs and `user`'s: run `run` as `user` (it sets the
    user's JID) and answer with `render_reply`."""

    user: str
    jid: str

    @property
    def run(self) -> RunLine:
        return RunLine(b"USER SET jid " + client_bytes(self.jid), Say.LINKED)


StrangerStep = LinkJid | Reply


@dataclass(frozen=True, slots=True)
class Conversation:
    """What the bot remembers of one user between messages: their current event."""

    event: str | None = None

    def remember(self, reply: bytes) -> Conversation:
        """After a line's reply: an `EVENT` or `SUGGEST` makes its event the current one."""
        word, _, body = reply.partition(b" ")
        if word not in (b"EVENT", b"SUGGEST"):
            return self
        document = json.loads(client_text(body))
        event = document.get("id", document.get("event"))
        return Conversation(event) if isinstance(event, str) else self


# --- interpreting ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Turn:
    """One message being interpreted, with what it is read against (and answered with)."""

    templates: Templates
    user: User
    state: StateView
    conversation: Conversation
    zone: str
    now_ns: int


_Handler = Callable[[_Turn, str], BotStep]


@dataclass(frozen=True, slots=True)
class _Command:
    """A chat command: its help (`group` in the list, `usage`, `example`, `about`) and its
    handler."""

    group: str
    usage: str
    example: str
    about: str
    handle: _Handler


def interpret(
    templates: Templates,
    text: str,
    user: User,
    state: StateView,
    conversation: Conversation,
    zone: str,
    now_ns: int,
) -> BotStep:
    """What a linked user's message asks for.  `zone` is the user's effective time zone
    (`herd.zones.timezone_of`); times are read in it, relative to `now_ns`."""
    if len(text) > MAX_TEXT:
        return _mistake(
            templates, f"That is too long for me: at most {MAX_TEXT} characters.", "status"
        )
    if not _readable(text):
        return _mistake(templates, "I can't read that message.", "help")
    words = text.split()
    if not words:
        return Reply(_render(templates, "hello", user=user.id))
    turn = _Turn(templates, user, state, conversation, zone, now_ns)
    word = words[0].lower().lstrip("/").rstrip("?!.:,") or words[0]
    if word.startswith("geo:"):  # a location shared by the chat client
        return _here(turn, " ".join(words))
    name = _ALIASES.get(word, word)
    handle = _COMMANDS[name].handle if name in _COMMANDS else _HIDDEN.get(name)
    if handle is None:
        return _unknown(turn.templates, word)
    return handle(turn, " ".join(words[1:]))


def _readable(text: str) -> bool:
    """Valid Unicode without control characters other than whitespace (which only separates
    words), so that it can go into a planning line."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(text) is None


def _unknown(templates: Templates, word: str) -> Reply:
    """Not a command: the closest one (with its example) when there is one."""
    known = [*_COMMANDS, *(alias for alias, name in _ALIASES.items() if name in _COMMANDS)]
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.75)
    guess = _ALIASES.get(close[0], close[0]) if close else None
    example = _COMMANDS[guess].example if guess is not None else None
    return Reply(_render(templates, "unknown", word=word, guess=guess, example=example))


def _mistake(templates: Templates, problem: str, example: str | None = None) -> Reply:
    return Reply(_render(templates, "mistake", problem=problem, example=example))


def _line(*fields: str) -> bytes:
    return client_bytes(" ".join(fields))


def _help(turn: _Turn, rest: str) -> BotStep:
    if rest:
        word = rest.split()[0].lower()
        name = _ALIASES.get(word, word)
        command = _COMMANDS.get(name)
        if command is None:
            return _unknown(turn.templates, word)
        aliases = sorted(alias for alias, target in _ALIASES.items() if target == name)
        return Reply(
            _render(
                turn.templates, "help", command=command, name=name, aliases=aliases, commands={}
            )
        )
    return Reply(
        _render(turn.templates, "help", command=None, name=None, aliases=[], commands=_COMMANDS)
    )


def _hello(turn: _Turn, rest: str) -> BotStep:
    return Reply(_render(turn.templates, "hello", user=turn.user.id))


def _plan(turn: _Turn, rest: str) -> BotStep:
    if not rest:
        return _mistake(turn.templates, "What is it called?", "plan Dinner on Friday")
    return RunLine(_line("PLAN", rest), Say.PLANNED)


def _invite(turn: _Turn, rest: str) -> BotStep:
    return _invitation(turn, rest, "INVITE", Say.INVITED)


def _uninvite(turn: _Turn, rest: str) -> BotStep:
    return _invitation(turn, rest, "UNINVITE", Say.UNINVITED)


def _invitation(turn: _Turn, rest: str, word: str, say: Say) -> BotStep:
    event = _current(turn)
    if isinstance(event, Reply):
        return event
    names = [n.lstrip("@") for n in _SEPARATORS.split(rest) if n and n.lower() not in _FILLER]
    if not names:
        return _mistake(turn.templates, "Whom?", f"{word.lower()} bob carol")
    users = tuple(_user_id(turn.state, name) for name in names)
    return RunLine(_line(word, event.id, *users), say, event.id, users)


def _user_id(state: StateView, name: str) -> str:
    """A user id as typed, or the one user whose id it is in another case."""
    if state.user(name) is not None:
        return name
    same = [user for user in state.users() if user.casefold() == name.casefold()]
    return same[0] if len(same) == 1 else name


def _propose(turn: _Turn, rest: str) -> BotStep:
    kind, _, what = rest.partition(" ")
    if kind.lower() in ("time", "place"):
        return _time(turn, what) if kind.lower() == "time" else _place(turn, what)
    if rest and isinstance(parse_when(rest, turn.zone, turn.now_ns), Moment):
        return _time(turn, rest)
    return _mistake(turn.templates, "A time or a place?", "time fri 19:00 or place Chez Paul")


def _time(turn: _Turn, rest: str) -> BotStep:
    event = _current(turn)
    if isinstance(event, Reply):
        return event
    moment = parse_when(rest, turn.zone, turn.now_ns)
    if isinstance(moment, NotATime):
        return _mistake(turn.templates, moment.message)
    posix = moment.ns // 10**9
    line = _line("PROPOSE", event.id, "TIME", format_utc(posix))
    return RunLine(line, Say.PROPOSED, event.id, ("time", str(posix)), moment.note)


def _place(turn: _Turn, rest: str) -> BotStep:
    event = _current(turn)
    if isinstance(event, Reply):
        return event
    words = rest.split()
    position = None
    ends = [index for index in (0, -1) if words and _looks_like_position(words[index])]
    trailing = _TRAILING_PAIR.match(rest) if not ends else None
    if ends:
        position = _position(words.pop(ends[0]))
    elif trailing is not None:
        position = _checked(trailing[2], trailing[3])
        words = trailing[1].split()
    if (ends or trailing) and position is None:
        return _mistake(
            turn.templates, "That position is off the map.", "place Chez Paul 48.8566, 2.3522"
        )
    name = " ".join(words).strip(" ,")
    if not name:
        return _mistake(
            turn.templates, "What is the place called?", "place Chez Paul +48.8566+002.3522"
        )
    fields = ("PROPOSE", event.id, "PLACE", *([_iso6709(*position)] if position else []), name)
    return RunLine(_line(*fields), Say.PROPOSED, event.id, ("place", name))


def _looks_like_position(word: str) -> bool:
    return _POSITION_6709.match(word) is not None or _POSITION_PAIR.match(word) is not None


def _position(text: str) -> tuple[float, float] | None:
    """`+48.8566+002.3522` (ISO 6709), `48.8566, 2.3522`, `48.8566 2.3522` or a `geo:` URI,
    in range."""
    match = _POSITION_6709.match(text) or _POSITION_PAIR.match(text)
    return None if match is None else _checked(match[1], match[2])


def _checked(lat_text: str, lon_text: str) -> tuple[float, float] | None:
    lat, lon = float(lat_text), float(lon_text)
    return (lat, lon) if abs(lat) <= 90 and abs(lon) <= 180 else None


def _iso6709(lat: float, lon: float) -> str:
    return f"{lat:+.6f}{lon:+.6f}"


def _vote(turn: _Turn, rest: str) -> BotStep:
    words = [
        word
        for word in _SEPARATORS.split(rest.lower().replace("if need be", "maybe"))
        if word and word not in _FILLER
    ]
    choices = [_CHOICES[word] for word in words if word in _CHOICES]
    refs = _without_event_ids(turn, [word for word in words if word not in _CHOICES])
    if len(choices) != 1:
        return _mistake(turn.templates, "Yes, maybe or no?", "vote yes 2")
    if len(refs) != 1:
        problem = "One option at a time." if refs else f"{choices[0].capitalize()} to which one?"
        return _mistake(
            turn.templates, f"{problem} status shows the numbers.", f"vote {choices[0]} 2"
        )
    found = _option(turn, refs[0])
    if isinstance(found, Reply):
        return found
    event, option = found
    line = _line("VOTE", event.id, option.id, choices[0].upper())
    return RunLine(line, Say.VOTED, event.id, (option.id,))


def _vote_with(choice: Choice) -> _Handler:
    return lambda turn, rest: _vote(turn, f"{choice} {rest}")


def _without_event_ids(turn: _Turn, refs: list[str]) -> list[str]:
    """Drop event ids, so the line form a notification shows (`VOTE <event> <option> YES`,
    `DECIDE <event> <time> <place>`) works in the chat too: an option id names its event."""
    ids = {event.id.casefold() for event in turn.state.events_of(turn.user.id)}
    return [ref for ref in refs if ref.lstrip("#").casefold() not in ids]


def _option(turn: _Turn, ref: str) -> tuple[Event, TimeOption | PlaceOption] | Reply:
    """An option by its number in the current event, or by its id in any of the user's."""
    ref = ref.lstrip("#")
    if ref.isdigit():
        event = _current(turn)
        if isinstance(event, Reply):
            return event
        options: tuple[TimeOption | PlaceOption, ...] = (*event.times, *event.places)
        if 1 <= int(ref) <= len(options):
            return event, options[int(ref) - 1]
        if not options:
            return _mistake(
                turn.templates, f"“{event.title}” has no options yet.", "time fri 19:00"
            )
        return _mistake(
            turn.templates, f"“{event.title}” has options 1 to {len(options)}.", "status"
        )
    events = turn.state.events_of(turn.user.id)
    current = turn.state.event(turn.conversation.event or "")
    for event in (current, *events) if current is not None else events:
        choices: tuple[TimeOption | PlaceOption, ...] = (*event.times, *event.places)
        for option in choices:
            if option.id.casefold() == ref.casefold():
                return event, option
    return _mistake(
        turn.templates, f"I can't find option “{ref}”; status shows the numbers.", "vote yes 2"
    )


def _comment(turn: _Turn, rest: str) -> BotStep:
    event = _current(turn)
    if isinstance(event, Reply):
        return event
    if not rest:
        return _mistake(turn.templates, "What would you like to say?", "comment I'll bring wine")
    return RunLine(_line("COMMENT", event.id, rest), Say.COMMENTED, event.id)


def _status(turn: _Turn, rest: str) -> BotStep:
    event_id = _event_id(turn, rest)
    if isinstance(event_id, Reply):
        return event_id
    return RunLine(_line("EVENT", event_id), Say.STATUS, event_id)


def _where(turn: _Turn, rest: str) -> BotStep:
    event = _current(turn)
    if isinstance(event, Reply):
        return event
    if not rest:
        return RunLine(_line("SUGGEST", event.id), Say.WHERE, event.id)
    match = _RADIUS.match(rest.lower())
    if match is None:
        return _mistake(turn.templates, "How far, in km?", "where 2")
    return RunLine(_line("SUGGEST", event.id, match[1].replace(",", ".")), Say.WHERE, event.id)


def _decide(turn: _Turn, rest: str) -> BotStep:
    refs = _without_event_ids(
        turn, [word for word in _SEPARATORS.split(rest.lower()) if word and word not in _FILLER]
    )
    picked = []
    for ref in refs:
        found = _option(turn, ref)
        if isinstance(found, Reply):
            return found
        picked.append(found)
    events = {event.id: event for event, _ in picked}
    if len(events) > 1:
        return _mistake(turn.templates, "Those options are from different events.", "decide 1 3")
    event = next(iter(events.values()), None) or _current(turn)
    if isinstance(event, Reply):
        return event
    times = [option for _, option in picked if isinstance(option, TimeOption)]
    places = [option for _, option in picked if isinstance(option, PlaceOption)]
    if len(times) == 0 and len(event.times) == 1 and len(places) == 1:
        times = list(event.times)
    if len(places) == 0 and len(event.places) == 1 and len(times) == 1:
        places = list(event.places)
    if len(times) != 1 or len(places) != 1:
        example = f"decide 1 {len(event.times) + 1}" if event.times else "decide 1 2"
        return _mistake(
            turn.templates,
            "Decide takes one time and one place; status shows the numbers.",
            example,
        )
    line = _line("DECIDE", event.id, times[0].id, places[0].id)
    return RunLine(line, Say.DECIDED, event.id)


def _reopen(turn: _Turn, rest: str) -> BotStep:
    event_id = _event_id(turn, rest)
    if isinstance(event_id, Reply):
        return event_id
    return RunLine(_line("REOPEN", event_id), Say.REOPENED, event_id)


def _cancel(turn: _Turn, rest: str) -> BotStep:
    """Asks first: "cancel" is also what people type to drop what they were doing."""
    words = rest.split()
    confirmed = bool(words) and words[-1].lower() in _CONFIRM
    ref = " ".join(words[:-1] if confirmed else words)
    event_id = _event_id(turn, ref)
    if isinstance(event_id, Reply):
        return event_id
    event = turn.state.event(event_id)
    if (
        confirmed
        or event is None
        or event.organiser != turn.user.id
        or event.status is Status.CANCELLED
    ):
        return RunLine(_line("CANCEL", event_id), Say.CANCELLED, event_id)
    again = f"cancel {ref} yes" if ref else "cancel yes"
    return Reply(_render(turn.templates, "confirm_cancel", title=event.title, again=again))


def _events(turn: _Turn, rest: str) -> BotStep:
    current = _current(turn)
    return RunLine(b"EVENTS", Say.EVENTS, None if isinstance(current, Reply) else current.id)


def _my(turn: _Turn, rest: str) -> BotStep:
    word = rest.lower()
    if word.startswith("event"):
        return _events(turn, "")
    if word.startswith(("setting", "pref")):
        return _settings(turn, "")
    return _unknown(turn.templates, f"my {rest}".strip())


def _settings(turn: _Turn, rest: str) -> BotStep:
    return RunLine(b"USER", Say.SETTINGS)


def _digest(turn: _Turn, rest: str) -> BotStep:
    if not rest:
        return _settings(turn, rest)
    value = _DIGESTS.get(rest.lower())
    if value is None:
        return _mistake(turn.templates, "Digests are daily, weekly or off.", "digest weekly")
    return RunLine(_line("USER", "SET", "digest", value), Say.SETTINGS, subject=("digest",))


def _quiet(turn: _Turn, rest: str) -> BotStep:
    span = rest.lower().removeprefix("hours").strip()
    if not span:
        return _settings(turn, span)
    if span in _OFF:
        return RunLine(b"USER UNSET quiet", Say.SETTINGS, subject=("quiet",))
    ends = [_quiet_clock(part) for part in _QUIET_SPLIT.split(span)]
    if len(ends) != 2 or ends[0] is None or ends[1] is None or ends[0] == ends[1]:
        return _mistake(
            turn.templates, "Quiet hours go from one time to another.", "quiet 22:00-07:00"
        )
    value = "-".join(f"{hour:02d}:{minute:02d}" for hour, minute in (ends[0], ends[1]))
    return RunLine(_line("USER", "SET", "quiet", value), Say.SETTINGS, subject=("quiet",))


def _quiet_clock(text: str) -> tuple[int, int] | None:
    """A clock, or a bare hour of the 24-hour clock (`22-7`)."""
    if text.isdigit() and int(text) <= 23:
        return int(text), 0
    return parse_clock(text)


def _unsubscribe(turn: _Turn, rest: str) -> BotStep:
    return _channels(turn, rest, subscribe=False)


def _subscribe(turn: _Turn, rest: str) -> BotStep:
    return _channels(turn, rest, subscribe=True)


def _channels(turn: _Turn, rest: str, subscribe: bool) -> BotStep:
    named = _CHANNELS.get(rest.lower())
    if named is None:
        word = "subscribe" if subscribe else "unsubscribe"
        return _mistake(
            turn.templates, "From what? Here (xmpp), email, line or all.", f"{word} email"
        )
    kept = set(turn.user.channels)
    kept = kept | set(named) if subscribe else kept - set(named)
    value = ",".join(sorted(kept)) or "none"
    return RunLine(_line("USER", "SET", "channels", value), Say.SETTINGS, subject=("channels",))


def _timezone(turn: _Turn, rest: str) -> BotStep:
    if not rest:
        return _settings(turn, rest)
    if rest.lower() in _OFF:
        return RunLine(b"USER UNSET tz", Say.SETTINGS, subject=("tz",))
    zone = _zones().get(rest.casefold().replace(" ", "_"))
    if zone is None:
        return _mistake(
            turn.templates, f"I don't know the time zone “{rest}”.", "timezone Europe/Paris"
        )
    return RunLine(_line("USER", "SET", "tz", zone), Say.SETTINGS, subject=("tz",))


@functools.cache
def _zones() -> dict[str, str]:
    """IANA zone names by their case-folded spelling."""
    return {zone.casefold(): zone for zone in zoneinfo.available_timezones()}


def _here(turn: _Turn, rest: str) -> BotStep:
    position = _position(rest)
    if position is None:
        return _mistake(
            turn.templates, "Where are you? Latitude then longitude.", "here 48.8566, 2.3522"
        )
    lat, lon = position
    return SetPosition(
        lat, lon, _iso6709(lat, lon), _render(turn.templates, "here", lat=lat, lon=lon)
    )


def _link(turn: _Turn, rest: str) -> BotStep:
    return Reply(_render(turn.templates, "already_linked", user=turn.user.id))


def _current(turn: _Turn) -> Event | Reply:
    """The event a command without an event name is about."""
    current = turn.state.event(turn.conversation.event or "")
    if current is not None and turn.user.id in current.participants:
        return current
    events = turn.state.events_of(turn.user.id)
    open_events = [event for event in events if event.status is not Status.CANCELLED]
    if open_events:
        return open_events[-1]
    return _mistake(turn.templates, "You have no event going on yet.", "plan Dinner on Friday")


def _event_id(turn: _Turn, ref: str) -> str | Reply:
    """An event by its number in `my events`, its id (any case), or its title (or the start of
    it); none: the current one.  An unknown id goes to the server, which says why not."""
    if not ref:
        current = _current(turn)
        return current if isinstance(current, Reply) else current.id
    events = turn.state.events_of(turn.user.id)
    ref = ref.lstrip("#")
    if ref.isdigit():
        if 1 <= int(ref) <= len(events):
            return events[int(ref) - 1].id
        count = {0: "no events", 1: "one event"}.get(len(events), f"{len(events)} events")
        return _mistake(turn.templates, f"You have {count}; my events lists them.", "status 1")
    folded = ref.casefold()
    for matches in (
        [event for event in events if event.id.casefold() == folded],
        [event for event in events if event.title.casefold() == folded],
        [event for event in events if event.title.casefold().startswith(folded)],
    ):
        if matches:
            return matches[-1].id
    if is_id(ref):
        return ref
    return _mistake(
        turn.templates, f"I can't find an event “{ref}”; my events lists yours.", "status 1"
    )


_PLANNING, _SETTINGS, _MORE = "planning", "settings", "more"
_COMMANDS: Final[dict[str, _Command]] = {
    "plan": _Command(_PLANNING, "plan <title>", "plan Dinner on Friday", "a new event", _plan),
    "invite": _Command(_PLANNING, "invite <user>…", "invite bob carol", "invite people", _invite),
    "uninvite": _Command(_MORE, "uninvite <user>…", "uninvite dave", "drop invitees", _uninvite),
    "time": _Command(_PLANNING, "time <when>", "time fri 19:00", "propose a time", _time),
    "place": _Command(
        _PLANNING, "place <name> [<position>]", "place Chez Paul", "propose a place", _place
    ),
    "propose": _Command(_MORE, "propose <when>", "propose sat 12:00", "propose a time", _propose),
    "vote": _Command(
        _PLANNING, "vote yes|maybe|no <option>", "vote yes 2", "say what suits you", _vote
    ),
    "yes": _Command(_MORE, "yes <option>", "yes 2", "vote yes", _vote_with(Choice.YES)),
    "maybe": _Command(_MORE, "maybe <option>", "maybe 2", "vote maybe", _vote_with(Choice.MAYBE)),
    "no": _Command(_MORE, "no <option>", "no 2", "vote no", _vote_with(Choice.NO)),
    "comment": _Command(
        _PLANNING, "comment <text>", "comment I'll bring wine", "say something", _comment
    ),
    "status": _Command(_PLANNING, "status [<event>]", "status", "the event and votes", _status),
    "where": _Command(_PLANNING, "where [<km>]", "where", "places near everyone", _where),
    "decide": _Command(
        _PLANNING, "decide <time> <place>", "decide 1 3", "fix time and place", _decide
    ),
    "reopen": _Command(_MORE, "reopen [<event>]", "reopen", "undo a decision", _reopen),
    "cancel": _Command(_PLANNING, "cancel [<event>]", "cancel", "call it off", _cancel),
    "events": _Command(_PLANNING, "my events", "my events", "your events, numbered", _events),
    "settings": _Command(_SETTINGS, "settings", "settings", "your settings", _settings),
    "digest": _Command(
        _SETTINGS, "digest daily|weekly|off", "digest weekly", "how often digests come", _digest
    ),
    "quiet": _Command(
        _SETTINGS, "quiet <from>-<to>|off", "quiet 22:00-07:00", "no messages then", _quiet
    ),
    "unsubscribe": _Command(
        _SETTINGS,
        "unsubscribe [email|line|all]",
        "unsubscribe",
        "no more notices here",
        _unsubscribe,
    ),
    "subscribe": _Command(
        _SETTINGS, "subscribe [email|line|all]", "subscribe", "notices here again", _subscribe
    ),
    "timezone": _Command(
        _SETTINGS, "timezone <zone>|auto", "timezone Europe/Paris", "your time zone", _timezone
    ),
    "here": _Command(
        _SETTINGS, "here <lat>, <lon>", "here 48.8566, 2.3522", "say where you are", _here
    ),
    "help": _Command(_MORE, "help [<command>]", "help time", "what I understand", _help),
}
_HIDDEN: Final[dict[str, _Handler]] = {"hello": _hello, "my": _my, "link": _link}
_ALIASES: Final = {
    **dict.fromkeys(("?", "h", "commands"), "help"),
    **dict.fromkeys(("hi", "hey"), "hello"),
    "new": "plan",
    **dict.fromkeys(("show", "event", "info"), "status"),
    **dict.fromkeys(("list", "ls"), "events"),
    **dict.fromkeys(("suggest", "near"), "where"),
    "tz": "timezone",
    **dict.fromkeys(("me", "whoami", "prefs", "preferences"), "settings"),
    "stop": "unsubscribe",
    "say": "comment",
}


# --- replies ---------------------------------------------------------------------------------


def render_reply(
    templates: Templates,
    step: RunLine,
    reply: bytes,
    state: StateView,
    user: User,
    zone: str,
    now_ns: int,
) -> str:
    """The message for the reply to `step.line` (one line, with or without its terminator)."""
    word, _, body = reply.rstrip(b"\r\n").partition(b" ")
    if word == b"ERR":
        return _error(templates, step, client_text(body), state)
    if word == b"?":
        return _render(templates, "confused")
    if word not in (b"EVENT", b"EVENTS", b"SUGGEST", b"USER"):
        raise ValueError(f"no rendering for a {word!r} reply")
    document = json.loads(client_text(body))
    context: dict[str, object] = {"user": user.id, "subject": list(step.subject), "note": step.note}
    if word == b"EVENT":
        context.update(_event_context(step, document["id"], state, user, zone, now_ns))
    elif word == b"EVENTS":
        numbered = [{"n": n, **event} for n, event in enumerate(document, start=1)]
        context["events"] = numbered[-_LISTED:]
        context["total"] = len(numbered)
        context["current"] = step.event
    elif word == b"SUGGEST":
        event = state.event(document["event"])
        context["title"] = document["event"] if event is None else event.title
        context["suggestion"] = document
        context["venues"] = document["venues"][:5]
    else:
        context["me"] = document
    return _render(templates, step.say.value, **context)


def _event_context(
    step: RunLine, event_id: str, state: StateView, user: User, zone: str, now_ns: int
) -> dict[str, object]:
    """The event as it is now, its options numbered, and the option the step is about."""
    event = state.event(event_id)
    if event is None:
        raise ValueError(f"the server answered with event {event_id}, which the state lacks")
    view = event_view(event, Recipient.of(user, zone))
    options = [*view["times"], *view["places"]]
    numbers = {option["id"]: n for n, option in enumerate(options, start=1)}
    past = {o["id"] for o in view["times"] if o["at"] is not None and o["at"] * 10**9 < now_ns}
    option = None
    if step.say is Say.VOTED:
        option = next((o for o in options if o["id"] == step.subject[0]), None)
    elif step.say is Say.PROPOSED and step.subject[0] == "time":
        option = next((o for o in view["times"] if o["at"] == int(step.subject[1])), None)
    elif step.say is Say.PROPOSED:
        option = next((o for o in reversed(view["places"]) if o["label"] == step.subject[1]), None)
    mine = {o["id"]: _choice_of(user.id, o) for o in options}
    return {
        "event": view,
        "numbers": numbers,
        "past": past,
        "option": option,
        "mine": mine,
        "comments": [{"by": c.by, "text": c.text} for c in event.comments[-3:]],
        "organiser": event.organiser == user.id,
    }


def _choice_of(user: str, option: OptionView) -> str | None:
    if user in option["yes"]:
        return "yes"
    if user in option["maybe"]:
        return "maybe"
    return "no" if user in option["no"] else None


def _error(templates: Templates, step: RunLine, body: str, state: StateView) -> str:
    """`ERR <code>: <message>` as one line of explanation and an example."""
    code, _, message = body.partition(": ")
    event = state.event(step.event) if step.event is not None else None
    return _render(
        templates,
        "error",
        code=code,
        message=message,
        title=None if event is None else event.title,
        organiser=None if event is None else event.organiser,
    )


def _render(templates: Templates, template: str, /, **context: object) -> str:
    return templates.text("xmpp", f"reply/{template}", "txt", context).strip()


# --- strangers and linking ---------------------------------------------------------------------


def interpret_stranger(
    templates: Templates, text: str, bare_jid: str, secret: bytes, now_ns: int, state: StateView
) -> StrangerStep:
    """A message from a JID linked to no user: `link <user> <code>` links it when the code was
    made for that user and this JID; anything else gets the line saying how to get linked.
    Whether the user exists is not told apart from a wrong code."""
    words = text.split()
    if len(words) != 3 or words[0].lower() != "link":
        return Reply(_render(templates, "stranger"))
    user = _user_id(state, words[1])
    if state.user(user) is None or not check_link_code(secret, user, bare_jid, words[2], now_ns):
        return Reply(_render(templates, "bad_code"))
    return LinkJid(user, bare_jid)


def user_of_jid(state: StateView, jid: str) -> User | None:
    """The user whose JID this bare JID is (case-insensitively), if any: only they may command
    the bot from it."""
    user_id = state.user_of_jid(jid)
    return None if user_id is None else state.user(user_id)
