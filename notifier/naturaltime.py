"""Times as people type them in a chat (`fri 19:00`, `tomorrow 8pm`, `in 2 hours`), pure.

A time is read on the wall clock of the user's zone, relative to `now_ns`, and comes back as a
UTC instant, or as a one-line explanation with an example.  The rules, chosen so that a reading
is never a silent guess:

- A weekday is the next such day whose time is still ahead: `fri 19:00` said on a Friday at
  17:00 is today, said at 20:00 it is a week later.  A clock alone (`19:00`) is today if still
  ahead, else tomorrow.  `today` and `tomorrow` are taken literally: `today 8:00` said at noon
  is refused as past.  `next fri` is refused (this coming Friday, or the one after?).
- A date without a year (`dec 5 19:00`, `5 dec 7pm`) is its next occurrence, this year or
  later; with a year (`dec 5 2099 19:00`, `2099-12-05 19:00`) it must not be past.  Numeric
  dates such as `5/12` are refused: day/month and month/day readings differ.
- Clocks: `19:00`, `19h`, `19h30`, `7pm`, `7:30 pm`, `noon`.  A bare number (`fri 7`) is refused:
  morning or evening?  `midnight` is refused too (the start or the end of that day?).
- `in 2 hours`, `in 30 min`, `in an hour` count real time from now (seconds dropped);
  `in 3 days`, `in 2 weeks` keep the wall-clock time, or take one: `in 3 days at 19:00`.
- ISO 8601 with a zone (`2099-12-05T19:00+01:00`, `…Z`) is that instant; without one
  (`2099-12-05T19:00`) it is read in the user's zone.
- Daylight saving: a wall time that does not exist (skipped when clocks go forward) is refused
  with the nearest time that does; one that happens twice (clocks go back) is the first, and
  the result says so in `note`.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from herd.api import MAX_POSIX

__all__ = ["Moment", "NotATime", "parse_clock", "parse_when"]

_EXAMPLE: Final = "e.g. fri 19:00, tomorrow 8pm, dec 5 19:00, in 2 hours or 2099-12-05T19:00+01:00"

_WEEKDAYS: Final = {
    **dict.fromkeys(("mon", "monday"), 0),
    **dict.fromkeys(("tue", "tues", "tuesday"), 1),
    **dict.fromkeys(("wed", "weds", "wednesday"), 2),
    **dict.fromkeys(("thu", "thur", "thurs", "thursday"), 3),
    **dict.fromkeys(("fri", "friday"), 4),
    **dict.fromkeys(("sat", "saturday"), 5),
    **dict.fromkeys(("sun", "sunday"), 6),
}
_MONTHS: Final = {
    **dict.fromkeys(("jan", "january"), 1),
    **dict.fromkeys(("feb", "february"), 2),
    **dict.fromkeys(("mar", "march"), 3),
    **dict.fromkeys(("apr", "april"), 4),
    "may": 5,
    **dict.fromkeys(("jun", "june"), 6),
    **dict.fromkeys(("jul", "july"), 7),
    **dict.fromkeys(("aug", "august"), 8),
    **dict.fromkeys(("sep", "sept", "september"), 9),
    **dict.fromkeys(("oct", "october"), 10),
    **dict.fromkeys(("nov", "november"), 11),
    **dict.fromkeys(("dec", "december"), 12),
}
_RELATIVE_DAYS: Final = {"today": 0, "tonight": 0, "tomorrow": 1, "tmrw": 1}
_FILLER: Final = frozenset({"at", "on", "the", "of", "this"})
_DAY_NAMES: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_DAY_NAMES: Final = (
    *("Monday", "Tuesday", "Wednesday", "Thursday"),
    *("Friday", "Saturday", "Sunday"),
)
_MONTH_NAMES: Final = (
    *("Jan", "Feb", "Mar", "Apr", "May", "Jun"),
    *("Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
)

_ISO: Final = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_ISO_DATE: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})\Z")
_NUMERIC_DATE: Final = re.compile(r"\d{1,4}[/.]\d{1,4}(?:[/.]\d{1,4})?\Z")
_CLOCK_24: Final = re.compile(r"(\d{1,2})(?::(\d{2})|h(\d{2})?)\Z")
_CLOCK_12: Final = re.compile(r"(\d{1,2})(?::(\d{2}))?(am|pm)\Z")
_AM_PM: Final = re.compile(r"(\d)\s*(a|p)\.?m\.?(?=\s|$)")
_DAY: Final = re.compile(r"(\d{1,2})(st|nd|rd|th)?\Z")
_YEAR: Final = re.compile(r"\d{4}\Z")
_IN: Final = re.compile(
    r"in (an?|\d{1,4}) ?(minutes?|mins?|m|hours?|hrs?|h|days?|d|weeks?|wks?|w)"
    r"(?: (?:at )?(\S+))?\Z"
)
_LAST_YEAR: Final = 9998
_UNITS: Final = {"m": 60, "h": 3600}  # by first letter; days and weeks keep the wall clock


@dataclass(frozen=True, slots=True)
class Moment:
    """The instant meant, in UTC ns (whole seconds); `note` says which reading was taken when
    the wall time happens twice."""

    ns: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class NotATime:
    """Why the text is not a time, in one line with an example."""

    message: str


def parse_clock(text: str) -> tuple[int, int] | None:
    """`19:00`, `19h`, `19h30`, `7pm`, `7:30pm`, `noon` as (hour, minute); None otherwise."""
    word = _AM_PM.sub(r"\1\2m", text.strip().lower())
    if word == "noon":
        return 12, 0
    match = _CLOCK_24.match(word)
    if match is not None:
        hour, minute = int(match[1]), int(match[2] or match[3] or 0)
        return (hour, minute) if hour <= 23 and minute <= 59 else None
    match = _CLOCK_12.match(word)
    if match is not None:
        hour, minute = int(match[1]), int(match[2] or 0)
        if not 1 <= hour <= 12 or minute > 59:
            return None
        return hour % 12 + (12 if match[3] == "pm" else 0), minute
    return None


def parse_when(text: str, zone: str, now_ns: int) -> Moment | NotATime:
    """What the user meant by `text`, in zone `zone` (an IANA name), at `now_ns`."""
    tz = zoneinfo.ZoneInfo(zone)
    words = " ".join(_AM_PM.sub(r"\1\2m", text.lower()).replace(",", " ").split())
    if not words:
        return NotATime(f"When? {_EXAMPLE}")
    if _ISO.match(text.strip().upper()):
        moment = _iso(text.strip().upper(), tz, now_ns)
    elif words.startswith("in "):
        moment = _relative(words, tz, now_ns)
    else:
        moment = _calendar(words, tz, now_ns)
    if isinstance(moment, Moment):
        if moment.ns < now_ns:
            return NotATime(f"{text.strip()} is in the past, e.g. tomorrow 19:00")
        if moment.ns // 10**9 > MAX_POSIX:
            return NotATime(f"{text.strip()} is after the year 9999, e.g. dec 5 19:00")
    return moment


def _iso(text: str, tz: zoneinfo.ZoneInfo, now_ns: int) -> Moment | NotATime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return NotATime(f"{text} is not an ISO 8601 time, e.g. 2099-12-05T19:00+01:00")
    if moment.tzinfo is None:
        return _localize(moment.date(), moment.time(), tz, now_ns)
    return Moment(_ns(moment))


def _relative(words: str, tz: zoneinfo.ZoneInfo, now_ns: int) -> Moment | NotATime:
    """`in <n> <unit> [at <clock>]`."""
    match = _IN.match(words)
    if match is None:
        return NotATime(f"I can't read “{words}”: say e.g. in 2 hours, in 30 min or in 3 days")
    count = 1 if match[1] in ("a", "an") else int(match[1])
    if count == 0:
        return NotATime("That is now: say e.g. in 30 min")
    unit = match[2][0]
    seconds = _UNITS.get(unit)
    if seconds is not None:
        if match[3] is not None:
            return NotATime(
                f"“in {match[1]} {match[2]}” already says the time of day, e.g. in 3 days at 19:00"
            )
        minute_ns = 60 * 10**9
        return Moment((now_ns + count * seconds * 10**9) // minute_ns * minute_ns)
    now = datetime.fromtimestamp(now_ns // 10**9, tz)
    clock = now.time().replace(second=0) if match[3] is None else _clock_or_none(match[3])
    if clock is None:
        return NotATime(f"{match[3]} is not a time of day, e.g. in 3 days at 19:00")
    day = now.date() + timedelta(days=count * (7 if unit == "w" else 1))
    return _localize(day, clock, tz, now_ns)


def _clock_or_none(word: str) -> time | None:
    clock = parse_clock(word)
    return None if clock is None else time(*clock)


@dataclass(slots=True)
class _Parts:
    """What the words of a calendar time said, each at most once."""

    weekday: int | None = None
    relative: int | None = None
    month: int | None = None
    day: int | None = None
    bare_day: bool = False  # a number without an ordinal suffix: a day only next to a month
    year: int | None = None
    iso_date: date | None = None
    clock: time | None = None


def _calendar(words: str, tz: zoneinfo.ZoneInfo, now_ns: int) -> Moment | NotATime:
    """A day (weekday, today/tomorrow, a date) and a clock, in either order."""
    parts = _read_parts(words)
    if isinstance(parts, NotATime):
        return parts
    today = datetime.fromtimestamp(now_ns // 10**9, tz).date()
    if parts.day is not None and parts.month is None:
        if parts.bare_day and parts.clock is None and parts.day <= 23:
            hint = f" or {parts.day}pm" if parts.day <= 12 else ""
            return NotATime(f"Is {parts.day} a time? Write {parts.day}:00{hint}")
        return NotATime(f"The {_ordinal(parts.day)} of which month? e.g. dec {parts.day} 19:00")
    if parts.month is not None and parts.day is None:
        return NotATime(f"Which day of {_MONTH_NAMES[parts.month - 1]}? e.g. dec 5 19:00")
    dates = sum(x is not None for x in (parts.relative, parts.month, parts.iso_date))
    if dates > 1 or (parts.relative is not None and parts.weekday is not None):
        return NotATime(f"“{words}” names more than one day; {_EXAMPLE}")
    if parts.year is not None and parts.month is None:
        return NotATime(f"A year needs a date, e.g. dec 5 {parts.year} 19:00")
    if parts.clock is None:
        return NotATime(f"At what time? e.g. {words} 19:00")
    candidates = _days(parts, today)
    if isinstance(candidates, NotATime):
        return candidates
    clock = parts.clock
    ahead = [d for d in candidates if _ns(datetime.combine(d, clock, tzinfo=tz)) > now_ns]
    day = ahead[0] if ahead else candidates[-1]
    if parts.weekday is not None and day.weekday() != parts.weekday:
        weekday = _FULL_DAY_NAMES[day.weekday()]
        example = (
            f"{weekday[:3].lower()} {_MONTH_NAMES[day.month - 1].lower()} {day.day} {clock:%H:%M}"
        )
        return NotATime(
            f"{_day_name(day, today)} is a {weekday}, not a {_FULL_DAY_NAMES[parts.weekday]}; "
            f"e.g. {example}"
        )
    if not ahead and parts.relative == 0:
        return NotATime(f"{words} has passed; e.g. tomorrow {clock:%H:%M}")
    return _localize(day, clock, tz, now_ns)


def _read_parts(words: str) -> _Parts | NotATime:
    parts = _Parts()
    for word in words.split():
        if word in _FILLER:
            continue
        if word == "next":
            return NotATime(
                "“next” can mean this coming one or the one after: give the date, e.g. dec 12 19:00"
            )
        if word == "midnight":
            return NotATime("Midnight at the start or the end of the day? Say 00:00 or 23:59")
        clock = parse_clock(word)
        taken: object
        if word in _RELATIVE_DAYS:
            taken, parts.relative = parts.relative, _RELATIVE_DAYS[word]
        elif word in _WEEKDAYS:
            taken, parts.weekday = parts.weekday, _WEEKDAYS[word]
        elif word in _MONTHS:
            taken, parts.month = parts.month, _MONTHS[word]
        elif clock is not None:
            taken, parts.clock = parts.clock, time(*clock)
        elif (match := _ISO_DATE.match(word)) is not None:
            try:
                taken, parts.iso_date = parts.iso_date, date(*map(int, match.groups()))
            except ValueError:
                return NotATime(f"{word} is not a date in the calendar")
        elif _NUMERIC_DATE.match(word):
            return NotATime(
                f"{word} reads differently in different countries: write dec 5, 2099-12-05 or 19:30"
            )
        elif (match := _DAY.match(word)) is not None and 1 <= int(match[1]) <= 31:
            taken, parts.day, parts.bare_day = parts.day, int(match[1]), match[2] is None
        elif _YEAR.match(word):
            taken, parts.year = parts.year, int(word)
        else:
            return NotATime(f"I don't understand “{word}” in a time; {_EXAMPLE}")
        if taken is not None:
            return NotATime(f"“{words}” says that twice; {_EXAMPLE}")
    return parts


def _days(parts: _Parts, today: date) -> list[date] | NotATime:
    """The days the words can mean, soonest first: the first whose time is ahead is taken, else
    the last (which is then refused as past)."""
    if parts.iso_date is not None:
        return [parts.iso_date]
    if parts.relative is not None:
        return [today + timedelta(days=parts.relative)]
    if parts.month is not None and parts.day is not None:
        years = [parts.year] if parts.year is not None else range(today.year, today.year + 9)
        found = []
        for year in years:
            try:
                found.append(date(year, parts.month, parts.day))
            except ValueError:
                continue
        if parts.year is None:
            found = [day for day in found if day >= today]
        if not found:
            year_text = "" if parts.year is None else f" {parts.year}"
            month = _MONTH_NAMES[parts.month - 1]
            return NotATime(
                f"There is no {month} {parts.day}{year_text} in the calendar, e.g. dec 5 19:00"
            )
        return found[:2]
    if parts.weekday is not None:
        ahead = (parts.weekday - today.weekday()) % 7
        return [today + timedelta(days=ahead), today + timedelta(days=ahead + 7)]
    return [today, today + timedelta(days=1)]


def _localize(day: date, clock: time, tz: zoneinfo.ZoneInfo, now_ns: int) -> Moment | NotATime:
    """A wall time in `tz`: refused in a spring-forward gap, the first of two when it happens
    twice."""
    if day.year > _LAST_YEAR:  # converting to UTC could leave the calendar
        return NotATime(f"{day.year} is too far ahead, e.g. dec 5 19:00")
    wall = datetime.combine(day, clock)
    first = wall.replace(tzinfo=tz)
    second = wall.replace(tzinfo=tz, fold=1)
    back = first.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    today = datetime.fromtimestamp(now_ns // 10**9, tz).date()
    when = f"{clock:%H:%M} on {_day_name(day, today)}"
    if back != wall:
        return NotATime(
            f"There is no {when} in {tz.key}: the clocks go forward then. Try {back:%H:%M}"
        )
    if first.utcoffset() != second.utcoffset():
        offset = first.strftime("%z")
        note = (
            f"{when} happens twice in {tz.key} (the clocks go back); I took the first, "
            f"UTC{offset[:3]}:{offset[3:]}"
        )
        return Moment(_ns(first), note)
    return Moment(_ns(first))


def _ns(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1) * 10**9


def _day_name(day: date, today: date) -> str:
    """`Sun 29 Mar`, with the year when it is not this one."""
    text = f"{_DAY_NAMES[day.weekday()]} {day.day} {_MONTH_NAMES[day.month - 1]}"
    return text if day.year == today.year else f"{text} {day.year}"


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10)
    return f"{number}{suffix or 'th'}"
