"""What people type to the bot, read leniently: positions in four spellings, votes, lists of
names or options, digest and channel names, quiet hours, radii, time zones.  Each reader gives
the value or None; the commands (`notifier.chat.commands`) say what was wrong.  Times and dates
are `notifier.naturaltime`'s."""

from __future__ import annotations

import functools
import re
import zoneinfo
from typing import Final

from herd.api import Choice, StateView
from notifier.naturaltime import parse_clock

__all__ = [
    "MAX_TEXT",
    "channels_named",
    "choice_named",
    "command_word",
    "confirms",
    "digest_named",
    "iso6709",
    "iso6709_degrees",
    "listed",
    "place_and_position",
    "position",
    "quiet_hours",
    "radius_km",
    "readable",
    "turns_off",
    "user_id_as_typed",
    "zone_named",
]

MAX_TEXT: Final = 2500
"""Longer messages are refused before parsing (a comment is at most 2000 characters)."""

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


def readable(text: str) -> bool:
    """Valid Unicode without control characters other than whitespace (which only separates
    words), so that it can go into a planning line."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(text) is None


def command_word(word: str) -> str:
    """The first word as a command name: `/Status?` is `status`."""
    return word.lower().lstrip("/").rstrip("?!.:,") or word


def listed(text: str) -> list[str]:
    """Names or options as people list them (`bob, carol and dave`, `yes to 2`): split at
    spaces, commas and semicolons, filler words dropped."""
    return [word for word in _SEPARATORS.split(text) if word and word.lower() not in _FILLER]


def user_id_as_typed(state: StateView, name: str) -> str:
    """A user id as typed, or the one user whose id it is in another case."""
    if state.user(name) is not None:
        return name
    same = [user for user in state.users() if user.casefold() == name.casefold()]
    return same[0] if len(same) == 1 else name


def choice_named(word: str) -> Choice | None:
    """A vote as said (`yeah`, `perhaps`, `nope`), lower case."""
    return _CHOICES.get(word)


def confirms(word: str) -> bool:
    return word.lower() in _CONFIRM


def turns_off(text: str) -> bool:
    """Whether a setting is asked to go back to none (`off`, `auto`, `unset` …)."""
    return text.lower() in _OFF


def digest_named(text: str) -> str | None:
    """`daily`, `weekly` or `off`, as the `digest` setting takes it."""
    return _DIGESTS.get(text.lower())


def channels_named(text: str) -> tuple[str, ...] | None:
    """The channels a word names (nothing or `here`: this chat)."""
    return _CHANNELS.get(text.lower())


def quiet_hours(span: str) -> str | None:
    """`22:00-07:00`, `10pm to 7`, `22-7`: as the `quiet` setting takes it (`HH:MM-HH:MM`);
    None unless two different clocks."""
    ends = [_quiet_clock(part) for part in _QUIET_SPLIT.split(span)]
    if len(ends) != 2 or ends[0] is None or ends[1] is None or ends[0] == ends[1]:
        return None
    return "-".join(f"{hour:02d}:{minute:02d}" for hour, minute in (ends[0], ends[1]))


def _quiet_clock(text: str) -> tuple[int, int] | None:
    """A clock, or a bare hour of the 24-hour clock (`22-7`)."""
    if text.isdigit() and int(text) <= 23:
        return int(text), 0
    return parse_clock(text)


def radius_km(text: str) -> str | None:
    """`2`, `2,5 km`, `within 3 kilometres`: the number, with a decimal point."""
    match = _RADIUS.match(text.lower())
    return None if match is None else match[1].replace(",", ".")


def zone_named(text: str) -> str | None:
    """An IANA zone in any case, spaces for underscores (`europe/paris`, `America/New York`)."""
    return _zones().get(text.casefold().replace(" ", "_"))


@functools.cache
def _zones() -> dict[str, str]:
    """IANA zone names by their case-folded spelling."""
    return {zone.casefold(): zone for zone in zoneinfo.available_timezones()}


def position(text: str) -> tuple[float, float] | None:
    """`+48.8566+002.3522` (ISO 6709), `48.8566, 2.3522`, `48.8566 2.3522` or a `geo:` URI,
    in range."""
    degrees = _degrees(text)
    return None if degrees is None else _in_range(*degrees)


def place_and_position(text: str) -> tuple[str, tuple[float, float] | None] | None:
    """A place's name and its position if given, first or last (`Chez Paul +48.8566+002.3522`,
    `Chez Paul at 48.8566, 2.3522`); None when the position given is off the map."""
    words = text.split()
    ends = [index for index in (0, -1) if words and _degrees(words[index]) is not None]
    trailing = _TRAILING_PAIR.match(text) if not ends else None
    found = None
    if ends:
        found = position(words.pop(ends[0]))
    elif trailing is not None:
        found = _in_range(float(trailing[2]), float(trailing[3]))
        words = trailing[1].split()
    if (ends or trailing) and found is None:
        return None
    return " ".join(words).strip(" ,"), found


def iso6709_degrees(text: str) -> tuple[float, float] | None:
    """The bot's one reading of ISO 6709 (`+48.8566+002.3522`, an optional final `/`):
    latitude and longitude as written, range not checked; None if it is not that form."""
    match = _POSITION_6709.match(text)
    return None if match is None else (float(match[1]), float(match[2]))


def iso6709(lat: float, lon: float) -> str:
    """A position as IAMAT and PROPOSE … PLACE take it."""
    return f"{lat:+.6f}{lon:+.6f}"


def _degrees(text: str) -> tuple[float, float] | None:
    """Latitude and longitude in any of the spellings `position` reads, range not checked."""
    degrees = iso6709_degrees(text)
    if degrees is not None:
        return degrees
    match = _POSITION_PAIR.match(text)
    return None if match is None else (float(match[1]), float(match[2]))


def _in_range(lat: float, lon: float) -> tuple[float, float] | None:
    return (lat, lon) if abs(lat) <= 90 and abs(lon) <= 180 else None
