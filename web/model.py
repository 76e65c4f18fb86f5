"""The event page as a pure model (no I/O, no Twisted): what one viewer sees of one event.

Built from an `Event` view of the herd's state and the viewer's time zone in one pass over the
votes, so the cost is O(participants x options): the options with their tallies, who answered
what (a grid of participants by options), the leading time and place (the decision once there
is one; else most YES, then most MAYBE, then fewest NO, the first proposed of equals — the rule
the notification mails use), the comments, and every time on the viewer's wall clock.
The templates (`templates/web/`) only lay it out.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Literal

from herd.api import Choice, Event, PlaceOption, Position, Status, TimeOption

__all__ = [
    "AnswerRow",
    "CommentRow",
    "EventPage",
    "OptionRow",
    "event_page",
    "local_time",
    "zone_or_utc",
]

_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    *("Jan", "Feb", "Mar", "Apr", "May", "Jun"),
    *("Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
)
_MARKS: Final = {Choice.YES: "yes", Choice.MAYBE: "maybe", Choice.NO: "no"}


def zone_or_utc(name: str) -> zoneinfo.ZoneInfo:
    """The zone called `name`, or UTC when the name is not one this machine knows."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def local_time(posix: int, zone: zoneinfo.ZoneInfo) -> str:
    """`Sat 5 Dec 2026 19:00 CET`: POSIX seconds on the wall clock of `zone`, names spelt here
    so the page does not depend on the host's locale."""
    moment = datetime.fromtimestamp(posix, zone)
    day, month = _DAYS[moment.weekday()], _MONTHS[moment.month - 1]
    return f"{day} {moment.day} {month} {moment.year} {moment:%H:%M} {moment.tzname()}"


@dataclass(frozen=True, slots=True)
class OptionRow:
    """One time or place option: its label (a time on the viewer's clock, or a place name),
    who said what, and what the viewer said (None: not yet)."""

    id: str
    kind: Literal["time", "place"]
    label: str
    iso: str | None  # the time in ISO 8601 (UTC), for a <time datetime=…>; None for places
    by: str
    yes: tuple[str, ...]
    maybe: tuple[str, ...]
    no: tuple[str, ...]
    mine: str | None  # "yes", "maybe", "no" or None
    leading: bool
    decided: bool
    position: Position | None  # places only

    @property
    def score(self) -> tuple[int, int, int]:
        return len(self.yes), len(self.maybe), -len(self.no)


@dataclass(frozen=True, slots=True)
class AnswerRow:
    """One participant's answers, one cell per option in the page's option order ("" for no
    answer)."""

    user: str
    is_organiser: bool
    is_viewer: bool
    answers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommentRow:
    id: str
    by: str
    when: str  # on the viewer's clock
    iso: str
    text: str


@dataclass(frozen=True, slots=True)
class EventPage:
    """Everything the event page shows to `viewer`."""

    id: str
    title: str
    organiser: str
    status: str  # planning, decided, cancelled
    viewer: str
    zone: str  # the zone times are shown in
    times: tuple[OptionRow, ...]
    places: tuple[OptionRow, ...]
    leading_time: OptionRow | None
    leading_place: OptionRow | None
    answers: tuple[AnswerRow, ...]  # the organiser first, then the invitees by id
    not_answered: tuple[str, ...]
    comments: tuple[CommentRow, ...]

    @property
    def options(self) -> tuple[OptionRow, ...]:
        return self.times + self.places

    @property
    def open(self) -> bool:
        """Whether votes and comments are still taken (a cancelled event takes none)."""
        return self.status != Status.CANCELLED.value


def event_page(event: Event, viewer: str, zone_name: str) -> EventPage:
    """The page of `event` as `viewer` sees it, times in `zone_name` (UTC when unknown)."""
    zone = zone_or_utc(zone_name)
    times, places = option_rows(event, viewer, zone)
    options = times + places
    people = (event.organiser, *(user for user in event.invitees if user != event.organiser))
    answers = tuple(
        AnswerRow(
            user,
            user == event.organiser,
            user == viewer,
            tuple(_answer(event.votes, option.id, user) for option in options),
        )
        for user in people
    )
    return EventPage(
        id=event.id,
        title=event.title,
        organiser=event.organiser,
        status=event.status.value,
        viewer=viewer,
        zone=zone.key,
        times=tuple(times),
        places=tuple(places),
        leading_time=next((row for row in times if row.leading), None),
        leading_place=next((row for row in places if row.leading), None),
        answers=answers,
        not_answered=tuple(
            row.user for row in answers if not row.is_organiser and not any(row.answers)
        ),
        comments=tuple(
            CommentRow(
                comment.id,
                comment.by,
                local_time(comment.stamp[0] // 10**9, zone),
                _iso(comment.stamp[0] // 10**9),
                comment.text,
            )
            for comment in event.comments
        ),
    )


def option_rows(
    event: Event, viewer: str, zone: zoneinfo.ZoneInfo
) -> tuple[list[OptionRow], list[OptionRow]]:
    """The event's times and places as the page shows them (`leading` and `decided` marked),
    without the rest of the page: what the live streams' summary of a change needs."""
    decided = event.decision or ("", "")
    times = [_row(event, option, viewer, zone, option.id == decided[0]) for option in event.times]
    places = [_row(event, option, viewer, zone, option.id == decided[1]) for option in event.places]
    leading_time = _leading(times, event.decision is not None)
    leading_place = _leading(places, event.decision is not None)
    return (
        [_mark(row, leading_time) for row in times],
        [_mark(row, leading_place) for row in places],
    )


def _row(
    event: Event,
    option: TimeOption | PlaceOption,
    viewer: str,
    zone: zoneinfo.ZoneInfo,
    decided: bool,
) -> OptionRow:
    votes = event.votes.get(option.id, {})
    said: dict[Choice, list[str]] = {choice: [] for choice in Choice}
    for voter, choice in votes.items():
        said[choice].append(voter)
    mine = votes.get(viewer)
    common = {
        "id": option.id,
        "by": option.by,
        "yes": tuple(sorted(said[Choice.YES])),
        "maybe": tuple(sorted(said[Choice.MAYBE])),
        "no": tuple(sorted(said[Choice.NO])),
        "mine": None if mine is None else _MARKS[mine],
        "leading": False,
        "decided": decided,
    }
    if isinstance(option, TimeOption):
        return OptionRow(
            kind="time",
            label=local_time(option.at, zone),
            iso=_iso(option.at),
            position=None,
            **common,  # type: ignore[arg-type]
        )
    position = None if option.lat is None or option.lon is None else (option.lat, option.lon)
    return OptionRow(kind="place", label=option.name, iso=None, position=position, **common)  # type: ignore[arg-type]


def _leading(rows: Sequence[OptionRow], decided: bool) -> OptionRow | None:
    """The decided option; else the one with most YES, most MAYBE, fewest NO (the first of
    equals), and None when nobody said YES or MAYBE to any."""
    if decided:
        return next((row for row in rows if row.decided), None)
    best = max(rows, key=lambda row: row.score, default=None)  # max keeps the first of equals
    return None if best is None or best.score[:2] == (0, 0) else best


def _mark(row: OptionRow, leading: OptionRow | None) -> OptionRow:
    return row if leading is None or row.id != leading.id else replace(row, leading=True)


def _answer(votes: Mapping[str, Mapping[str, Choice]], option: str, user: str) -> str:
    choice = votes.get(option, {}).get(user)
    return "" if choice is None else _MARKS[choice]


def _iso(posix: int) -> str:
    return datetime.fromtimestamp(posix, zoneinfo.ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
