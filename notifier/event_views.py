"""What templates see of an event (`event_view`): its options with their tallies and labels in
the recipient's zone (`local_time`, with the year when it is not the current one), the decision
or the leading options, and who has not answered.  Notifications, digests and the bot's replies
all show an event through it.  Pure: the current time is passed in."""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from datetime import datetime
from typing import Final, TypedDict

from herd.api import Choice, Event, PlaceOption, TimeOption
from notifier.message import Recipient

__all__ = ["EventView", "OptionView", "event_view", "local_time"]

_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    *("Jan", "Feb", "Mar", "Apr", "May", "Jun"),
    *("Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
)


def local_time(posix: int, tz: str, now: int) -> str:
    """`Fri 5 Dec 19:00 CET`: POSIX seconds on the wall clock of zone `tz`, with the year when
    it is not the year of `now` (POSIX seconds) in that zone: `Mon 1 Jun 2099 12:00 UTC`.
    Names are spelt here, not by the C locale, so the output does not depend on the host."""
    zone = zoneinfo.ZoneInfo(tz)
    moment = datetime.fromtimestamp(posix, zone)
    day, month = _DAYS[moment.weekday()], _MONTHS[moment.month - 1]
    year = "" if moment.year == datetime.fromtimestamp(now, zone).year else f" {moment.year}"
    return f"{day} {moment.day} {month}{year} {moment:%H:%M} {moment.tzname()}"


class OptionView(TypedDict):
    """A time or place option as templates see it; `label` is the time in the recipient's
    zone, or the place's name."""

    id: str
    kind: str  # "time" | "place"
    label: str
    at: int | None  # POSIX seconds, times only
    by: str
    yes: list[str]
    maybe: list[str]
    no: list[str]


class EventView(TypedDict):
    """An event as templates see it."""

    id: str
    title: str
    organiser: str
    status: str
    invitees: list[str]
    times: list[OptionView]
    places: list[OptionView]
    decided_time: OptionView | None
    decided_place: OptionView | None
    leading_time: OptionView | None
    leading_place: OptionView | None
    not_answered: list[str]  # invitees who have voted on nothing
    tz: str  # the zone times are shown in


def event_view(event: Event, recipient: Recipient, now_ns: int) -> EventView:
    """What templates see of an event: options with their tallies and labels in the
    recipient's zone (as `local_time` shows them at `now_ns`), the decision or the leading
    options, and who has not answered."""
    now = now_ns // 1_000_000_000
    times = [_option_view(event, o, recipient.tz, now) for o in event.times]
    places = [_option_view(event, o, recipient.tz, now) for o in event.places]
    decided_time = decided_place = None
    if event.decision is not None:
        decided_time = next((o for o in times if o["id"] == event.decision[0]), None)
        decided_place = next((o for o in places if o["id"] == event.decision[1]), None)
    voted = {voter for votes in event.votes.values() for voter in votes}
    return {
        "id": event.id,
        "title": event.title,
        "organiser": event.organiser,
        "status": event.status.value,
        "invitees": list(event.invitees),
        "times": times,
        "places": places,
        "decided_time": decided_time,
        "decided_place": decided_place,
        "leading_time": _leading(times),
        "leading_place": _leading(places),
        "not_answered": [user for user in event.invitees if user not in voted],
        "tz": recipient.tz,
    }


def _option_view(event: Event, option: TimeOption | PlaceOption, tz: str, now: int) -> OptionView:
    tally = event.tally(option.id)
    if isinstance(option, TimeOption):
        kind, label, at = "time", local_time(option.at, tz, now), option.at
    else:
        kind, label, at = "place", option.name, None
    return {
        "id": option.id,
        "kind": kind,
        "label": label,
        "at": at,
        "by": option.by,
        "yes": list(tally[Choice.YES]),
        "maybe": list(tally[Choice.MAYBE]),
        "no": list(tally[Choice.NO]),
    }


def _leading(options: Sequence[OptionView]) -> OptionView | None:
    """Most YES, then most MAYBE, then fewest NO; the first proposed of equals.  None when
    nobody said YES or MAYBE to any."""

    def score(option: OptionView) -> tuple[int, int, int]:
        return len(option["yes"]), len(option["maybe"]), -len(option["no"])

    best = max(options, key=score, default=None)  # max keeps the first of equals
    return None if best is None or score(best)[:2] == (0, 0) else best
