"""Where to meet, pure: venues ranked by the trips people would make, who is near a place, what
`SUGGEST` asks the places provider, and the places proposed in events as venues of the offline
provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from herd.geo import distance_m
from herd.ops import AddPlace, Choice
from herd.views import Event, PlaceOption
from herd.zones import Position

if TYPE_CHECKING:
    from herd.changes import Change, ChangeContext
    from herd.places.offline import OfflinePlaces
    from herd.state import PlanningState

__all__ = [
    "ProposedVenues",
    "RankedVenue",
    "SuggestionQuery",
    "Venue",
    "coming",
    "leading_place",
    "rank_venues",
    "who_is_near",
]


@dataclass(frozen=True, slots=True)
class Venue:
    """A candidate place from the places provider."""

    name: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class RankedVenue:
    """A venue with the great-circle distances (metres) the people would travel to it, and
    its rank by the longest of those trips (1: the fairest)."""

    venue: Venue
    total_m: float
    max_m: float
    rank_max: int


def rank_venues(venues: Iterable[Venue], people: Sequence[Position]) -> list[RankedVenue]:
    """Venues by total trip of `people`, shortest first, each with its rank by longest trip.
    Ties fall to the other measure, then name and position, so the order is deterministic."""
    if not people:
        raise ValueError("ranking venues needs at least one position")
    measured = []
    for venue in venues:
        trips = [distance_m(lat, lon, venue.lat, venue.lon) for lat, lon in people]
        measured.append((sum(trips), max(trips), venue.name, venue.lat, venue.lon, venue))
    measured.sort(key=lambda m: m[:5])
    by_max = sorted(range(len(measured)), key=lambda i: (measured[i][1], i))
    rank_max = {index: rank for rank, index in enumerate(by_max, start=1)}
    return [
        RankedVenue(venue, total, longest, rank_max[index])
        for index, (total, longest, _, _, _, venue) in enumerate(measured)
    ]


def who_is_near(place: Position, positions: Mapping[str, Position], radius_km: float) -> list[str]:
    """The users within `radius_km` of a place, sorted."""
    limit = radius_km * 1000.0
    return sorted(
        user
        for user, (lat, lon) in positions.items()
        if distance_m(lat, lon, place[0], place[1]) <= limit
    )


@dataclass(frozen=True, slots=True)
class SuggestionQuery:
    """What `SUGGEST` asks the places provider (venues within `radius_km` of `center`) and
    what the answer is ranked with.  `people` are the users the trips are measured from: those
    who said YES to the decided or leading time, else every participant; `positions` holds the
    current position of every participant who has one."""

    event_id: str
    people: tuple[str, ...]
    positions: Mapping[str, Position]
    center: Position
    radius_km: float
    leading: PlaceOption | None


def coming(event: Event) -> tuple[str, ...]:
    """Who said YES to the decided time, or to the time most said YES to."""
    if event.decision is not None:
        return event.tally(event.decision[0])[Choice.YES]
    best: tuple[str, ...] = ()
    for option in event.times:  # stamp order: the first of equals wins
        yes = event.tally(option.id)[Choice.YES]
        if len(yes) > len(best):
            best = yes
    return best


def leading_place(event: Event) -> PlaceOption | None:
    """The decided place, else the one with most YES, then most MAYBE, then fewest NO, then
    proposed first."""
    if event.decision is not None:
        return event.place(event.decision[1])
    best, best_key = None, (0, 0, 0)
    for option in event.places:
        tally = event.tally(option.id)
        key = (len(tally[Choice.YES]), len(tally[Choice.MAYBE]), -len(tally[Choice.NO]))
        if best is None or key > best_key:
            best, best_key = option, key
    return best


class ProposedVenues:
    """Places proposed in events (with a position) become venues of the offline provider, so
    WHATSAT and SUGGEST know the herd's own places."""

    def __init__(self, places: OfflinePlaces) -> None:
        self._places = places

    def add_all(self, planning: PlanningState) -> None:
        for place in planning.places():
            if place.lat is not None and place.lon is not None:
                self._places.add_venue(place.id, place.name, place.lat, place.lon)

    def changed(self, change: Change, context: ChangeContext) -> None:
        body = change.op.body
        if isinstance(body, AddPlace) and body.lat is not None and body.lon is not None:
            self._places.add_venue(change.op.op_id, body.name, body.lat, body.lon)
