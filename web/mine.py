"""The "my events" page's model, pure (no Twisted, no I/O): one row per event the user
organises or is invited to, with what the page shows of it and the link that opens it.

What a row shows is what `web.live.event_state` says of the event (so the page's script,
which updates the rows from `/u/stream`'s frames, works the same sums): the status, the
leading (or decided) time and place, and how many of the participants have answered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from herd.api import Event
from web.model import event_page

__all__ = ["MyEvent", "my_events"]


@dataclass(frozen=True, slots=True)
class MyEvent:
    """One event as the "my events" page lists it."""

    id: str
    title: str
    organiser: str
    status: str  # planning, decided, cancelled
    link: str  # opens the event page (a personal link: a session for that event)
    leading_time: str | None  # the label, on the viewer's clock
    leading_time_iso: str | None
    leading_place: str | None
    answered: int  # participants who answered at least one option
    people: int  # participants, the organiser included


def my_events(
    events: Iterable[Event], viewer: str, zone: str, link: Callable[[str], str]
) -> tuple[MyEvent, ...]:
    """The rows of `viewer`'s events (`link(event_id)`: the address that opens one), those
    still being planned first, each group newest first."""
    rows: list[MyEvent] = []
    for event in events:
        page = event_page(event, viewer, zone)
        said = {user for row in page.options for user in (*row.yes, *row.maybe, *row.no)}
        people = [row.user for row in page.answers]
        rows.append(
            MyEvent(
                id=page.id,
                title=page.title,
                organiser=page.organiser,
                status=page.status,
                link=link(page.id),
                leading_time=None if page.leading_time is None else page.leading_time.label,
                leading_time_iso=None if page.leading_time is None else page.leading_time.iso,
                leading_place=None if page.leading_place is None else page.leading_place.label,
                answered=sum(1 for user in people if user in said),
                people=len(people),
            )
        )
    rows.reverse()  # the state lists them oldest first
    rows.sort(key=lambda row: row.status != "planning")  # stable: newest first in each group
    return tuple(rows)
