"""The bot's commands: what a linked user's chat asks for (`interpret`), one handler per
command under one table with its help, aliases and the closest command for a typo.

A user types what they would say (`time fri 19:00`, `vote yes 2`, `status`), in any case and
spacing.  A message becomes one step: a planning line to run as that user (`RunLine`), exactly as
the line protocol would run it, so the bot can do nothing the user could not do on the line; a
reply that needs no server (`Reply`: help, or a mistake explained with an example); or a position
to record (`SetPosition`).  Commands without an event name work on the current event (see
`notifier.chat.turn`); `status <event>` switches to another."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from herd.api import (
    Choice,
    PlaceOption,
    StateView,
    Status,
    TimeOption,
    User,
    client_bytes,
    format_utc,
)
from notifier.chat.phrases import (
    MAX_TEXT,
    channels_named,
    choice_named,
    command_word,
    confirms,
    digest_named,
    iso6709,
    listed,
    place_and_position,
    position,
    quiet_hours,
    radius_km,
    readable,
    turns_off,
    user_id_as_typed,
    zone_named,
)
from notifier.chat.replies import chat_text, mistake
from notifier.chat.steps import BotStep, Conversation, Reply, RunLine, Say, SetPosition
from notifier.chat.turn import Turn
from notifier.naturaltime import Moment, NotATime, parse_clock, parse_when
from notifier.render import Templates

__all__ = ["interpret"]

_Handler = Callable[[Turn, str], BotStep]


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
        return mistake(
            templates, f"That is too long for me: at most {MAX_TEXT} characters.", "status"
        )
    if not readable(text):
        return mistake(templates, "I can't read that message.", "help")
    words = text.split()
    if not words:
        return Reply(chat_text(templates, "hello", user=user.id))
    turn = Turn(templates, user, state, conversation, zone, now_ns)
    word = command_word(words[0])
    if word.startswith("geo:"):  # a location shared by the chat client
        return _here(turn, " ".join(words))
    name = _ALIASES.get(word, word)
    handle = _COMMANDS[name].handle if name in _COMMANDS else _HIDDEN.get(name)
    if handle is None:
        return _unknown(turn.templates, word)
    return handle(turn, " ".join(words[1:]))


def _unknown(templates: Templates, word: str) -> Reply:
    """Not a command: the closest one (with its example) when there is one."""
    known = [*_COMMANDS, *(alias for alias, name in _ALIASES.items() if name in _COMMANDS)]
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.75)
    guess = _ALIASES.get(close[0], close[0]) if close else None
    example = _COMMANDS[guess].example if guess is not None else None
    return Reply(chat_text(templates, "unknown", word=word, guess=guess, example=example))


def _line(*fields: str) -> bytes:
    return client_bytes(" ".join(fields))


def _help(turn: Turn, rest: str) -> BotStep:
    if rest:
        word = rest.split()[0].lower()
        name = _ALIASES.get(word, word)
        command = _COMMANDS.get(name)
        if command is None:
            return _unknown(turn.templates, word)
        aliases = sorted(alias for alias, target in _ALIASES.items() if target == name)
        return Reply(
            chat_text(
                turn.templates, "help", command=command, name=name, aliases=aliases, commands={}
            )
        )
    return Reply(
        chat_text(turn.templates, "help", command=None, name=None, aliases=[], commands=_COMMANDS)
    )


def _hello(turn: Turn, rest: str) -> BotStep:
    return Reply(chat_text(turn.templates, "hello", user=turn.user.id))


def _plan(turn: Turn, rest: str) -> BotStep:
    if not rest:
        return mistake(turn.templates, "What is it called?", "plan Dinner on Friday")
    return RunLine(_line("PLAN", rest), Say.PLANNED)


def _invite(turn: Turn, rest: str) -> BotStep:
    return _invitation(turn, rest, "INVITE", Say.INVITED)


def _uninvite(turn: Turn, rest: str) -> BotStep:
    return _invitation(turn, rest, "UNINVITE", Say.UNINVITED)


def _invitation(turn: Turn, rest: str, word: str, say: Say) -> BotStep:
    event = turn.current()
    if isinstance(event, Reply):
        return event
    names = [name.lstrip("@") for name in listed(rest)]
    if not names:
        return mistake(turn.templates, "Whom?", f"{word.lower()} bob carol")
    users = tuple(user_id_as_typed(turn.state, name) for name in names)
    return RunLine(_line(word, event.id, *users), say, event.id, users)


def _propose(turn: Turn, rest: str) -> BotStep:
    kind, _, what = rest.partition(" ")
    if kind.lower() in ("time", "place"):
        return _time(turn, what) if kind.lower() == "time" else _place(turn, what)
    if rest and isinstance(parse_when(rest, turn.zone, turn.now_ns), Moment):
        return _time(turn, rest)
    return mistake(turn.templates, "A time or a place?", "time fri 19:00 or place Chez Paul")


def _time(turn: Turn, rest: str) -> BotStep:
    event = turn.current()
    if isinstance(event, Reply):
        return event
    moment = parse_when(rest, turn.zone, turn.now_ns)
    if isinstance(moment, NotATime):
        return mistake(turn.templates, moment.message)
    posix = moment.ns // 10**9
    line = _line("PROPOSE", event.id, "TIME", format_utc(posix))
    return RunLine(line, Say.PROPOSED, event.id, ("time", str(posix)), moment.note)


def _place(turn: Turn, rest: str) -> BotStep:
    event = turn.current()
    if isinstance(event, Reply):
        return event
    placed = place_and_position(rest)
    if placed is None:
        return mistake(
            turn.templates, "That position is off the map.", "place Chez Paul 48.8566, 2.3522"
        )
    name, found = placed
    if not name:
        return mistake(
            turn.templates, "What is the place called?", "place Chez Paul +48.8566+002.3522"
        )
    fields = ("PROPOSE", event.id, "PLACE", *([iso6709(*found)] if found else []), name)
    return RunLine(_line(*fields), Say.PROPOSED, event.id, ("place", name))


def _vote(turn: Turn, rest: str) -> BotStep:
    words = listed(rest.lower().replace("if need be", "maybe"))
    choices = [choice for word in words if (choice := choice_named(word)) is not None]
    refs = turn.without_event_ids([word for word in words if choice_named(word) is None])
    if len(choices) != 1:
        return mistake(turn.templates, "Yes, maybe or no?", "vote yes 2")
    if len(refs) != 1:
        problem = "One option at a time." if refs else f"{choices[0].capitalize()} to which one?"
        return mistake(
            turn.templates, f"{problem} status shows the numbers.", f"vote {choices[0]} 2"
        )
    found = turn.option(refs[0])
    if isinstance(found, Reply):
        return found
    event, option = found
    line = _line("VOTE", event.id, option.id, choices[0].upper())
    return RunLine(line, Say.VOTED, event.id, (option.id,))


def _vote_with(choice: Choice) -> _Handler:
    return lambda turn, rest: _vote(turn, f"{choice} {rest}")


def _comment(turn: Turn, rest: str) -> BotStep:
    event = turn.current()
    if isinstance(event, Reply):
        return event
    if not rest:
        return mistake(turn.templates, "What would you like to say?", "comment I'll bring wine")
    return RunLine(_line("COMMENT", event.id, rest), Say.COMMENTED, event.id)


def _status(turn: Turn, rest: str) -> BotStep:
    event_id = turn.event_id(rest)
    if isinstance(event_id, Reply):
        return event_id
    return RunLine(_line("EVENT", event_id), Say.STATUS, event_id)


def _where(turn: Turn, rest: str) -> BotStep:
    event = turn.current()
    if isinstance(event, Reply):
        return event
    if not rest:
        return RunLine(_line("SUGGEST", event.id), Say.WHERE, event.id)
    radius = radius_km(rest)
    if radius is None:
        return mistake(turn.templates, "How far, in km?", "where 2")
    return RunLine(_line("SUGGEST", event.id, radius), Say.WHERE, event.id)


def _decide(turn: Turn, rest: str) -> BotStep:
    refs = turn.without_event_ids(listed(rest.lower()))
    picked = []
    for ref in refs:
        found = turn.option(ref)
        if isinstance(found, Reply):
            return found
        picked.append(found)
    events = {event.id: event for event, _ in picked}
    if len(events) > 1:
        return mistake(turn.templates, "Those options are from different events.", "decide 1 3")
    event = next(iter(events.values()), None) or turn.current()
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
        return mistake(
            turn.templates,
            "Decide takes one time and one place; status shows the numbers.",
            example,
        )
    line = _line("DECIDE", event.id, times[0].id, places[0].id)
    return RunLine(line, Say.DECIDED, event.id)


def _reopen(turn: Turn, rest: str) -> BotStep:
    event_id = turn.event_id(rest)
    if isinstance(event_id, Reply):
        return event_id
    return RunLine(_line("REOPEN", event_id), Say.REOPENED, event_id)


def _cancel(turn: Turn, rest: str) -> BotStep:
    """Asks first: "cancel" is also what people type to drop what they were doing."""
    words = rest.split()
    confirmed = bool(words) and confirms(words[-1])
    ref = " ".join(words[:-1] if confirmed else words)
    event_id = turn.event_id(ref)
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
    return Reply(chat_text(turn.templates, "confirm_cancel", title=event.title, again=again))


def _events(turn: Turn, rest: str) -> BotStep:
    current = turn.current()
    return RunLine(b"EVENTS", Say.EVENTS, None if isinstance(current, Reply) else current.id)


def _my(turn: Turn, rest: str) -> BotStep:
    word = rest.lower()
    if word.startswith("event"):
        return _events(turn, "")
    if word.startswith(("setting", "pref")):
        return _settings(turn, "")
    return _unknown(turn.templates, f"my {rest}".strip())


def _settings(turn: Turn, rest: str) -> BotStep:
    return RunLine(b"USER", Say.SETTINGS)


def _digest(turn: Turn, rest: str) -> BotStep:
    if not rest:
        return _settings(turn, rest)
    value = digest_named(rest)
    if value is not None:
        return RunLine(_line("USER", "SET", "digest", value), Say.SETTINGS, subject=("digest",))
    first, _, when = rest.partition(" ")
    if first.lower() == "at":
        return _digest_at(turn, when.strip())
    if parse_clock(rest) is not None:  # `digest 19:30`
        return _digest_at(turn, rest)
    return mistake(turn.templates, "Digests are daily, weekly or off.", "digest weekly")


def _digest_at(turn: Turn, when: str) -> BotStep:
    """`digest at 19:30` (`7pm`, `19h30`): the hour the digest comes, in the user's zone;
    `digest at usual` (`off`, `auto` …) goes back to the herd's."""
    subject = ("digest_at",)
    if turns_off(when) or when.lower() in ("usual", "default"):
        return RunLine(b"USER UNSET digest_at", Say.SETTINGS, subject=subject)
    clock = parse_clock(when)
    if clock is None:
        problem = "At what time? A clock time, in your zone."
        return mistake(turn.templates, problem, "digest at 19:30")
    value = f"{clock[0]:02d}:{clock[1]:02d}"
    return RunLine(_line("USER", "SET", "digest_at", value), Say.SETTINGS, subject=subject)


def _quiet(turn: Turn, rest: str) -> BotStep:
    span = rest.lower().removeprefix("hours").strip()
    if not span:
        return _settings(turn, span)
    if turns_off(span):
        return RunLine(b"USER UNSET quiet", Say.SETTINGS, subject=("quiet",))
    value = quiet_hours(span)
    if value is None:
        return mistake(
            turn.templates, "Quiet hours go from one time to another.", "quiet 22:00-07:00"
        )
    return RunLine(_line("USER", "SET", "quiet", value), Say.SETTINGS, subject=("quiet",))


def _unsubscribe(turn: Turn, rest: str) -> BotStep:
    return _channels(turn, rest, subscribe=False)


def _subscribe(turn: Turn, rest: str) -> BotStep:
    return _channels(turn, rest, subscribe=True)


def _channels(turn: Turn, rest: str, subscribe: bool) -> BotStep:
    named = channels_named(rest)
    if named is None:
        word = "subscribe" if subscribe else "unsubscribe"
        return mistake(
            turn.templates, "From what? Here (xmpp), email, line or all.", f"{word} email"
        )
    kept = set(turn.user.channels)
    kept = kept | set(named) if subscribe else kept - set(named)
    value = ",".join(sorted(kept)) or "none"
    return RunLine(_line("USER", "SET", "channels", value), Say.SETTINGS, subject=("channels",))


def _timezone(turn: Turn, rest: str) -> BotStep:
    if not rest:
        return _settings(turn, rest)
    if turns_off(rest):
        return RunLine(b"USER UNSET tz", Say.SETTINGS, subject=("tz",))
    zone = zone_named(rest)
    if zone is None:
        return mistake(
            turn.templates, f"I don't know the time zone “{rest}”.", "timezone Europe/Paris"
        )
    return RunLine(_line("USER", "SET", "tz", zone), Say.SETTINGS, subject=("tz",))


def _here(turn: Turn, rest: str) -> BotStep:
    found = position(rest)
    if found is None:
        return mistake(
            turn.templates, "Where are you? Latitude then longitude.", "here 48.8566, 2.3522"
        )
    lat, lon = found
    return SetPosition(
        lat, lon, iso6709(lat, lon), chat_text(turn.templates, "here", lat=lat, lon=lon)
    )


def _link(turn: Turn, rest: str) -> BotStep:
    return Reply(chat_text(turn.templates, "already_linked", user=turn.user.id))


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
        _SETTINGS,
        "digest daily|weekly|off|at <time>",
        "digest weekly",
        "how often and when digests come",
        _digest,
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
