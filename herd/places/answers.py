"""What every places provider promises: the `PlacesProvider` interface, the `Place` it finds
and the Google legacy Nearby Search answer it gives (pure: no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


PlacesAnswer = dict[str, object]
"""Google's legacy Nearby Search answer: html_attributions, results (cut to the limit), status."""


class PlacesProvider(Protocol):
    """Where WHATSAT gets places. `nearby` never fails: errors come back as a status."""

    def nearby(
        self, latitude: float, longitude: float, radius_km: float, limit: int
    ) -> Deferred[PlacesAnswer]: ...

    def close(self) -> Deferred[None]: ...


@dataclass(frozen=True, slots=True)
class Place:
    """One place that nearby() can find."""

    place_id: str
    name: str
    latitude: float
    longitude: float
    types: tuple[str, ...]
    vicinity: str

    def result(self) -> dict[str, object]:
        """This place as a result of Google's legacy Nearby Search (only Google's keys)."""
        return {
            "geometry": {"location": {"lat": self.latitude, "lng": self.longitude}},
            "name": self.name,
            "place_id": self.place_id,
            "types": list(self.types),
            "vicinity": self.vicinity,
        }


DEFAULT_VENUE_TYPES = ("point_of_interest",)


def places_answer(status: str, results: list[object]) -> PlacesAnswer:
    """An answer of our own making (Google's carry their own attributions)."""
    return {"html_attributions": [], "results": results, "status": status}


def checked_place(
    place_id: str, name: object, latitude: float, longitude: float, types: object, vicinity: object
) -> Place:
    """A validated Place; ValueError says which field is wrong."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string, not {name!r}")
    if not (math.isfinite(latitude) and -90 <= latitude <= 90):
        raise ValueError(f"latitude {latitude!r} is not within [-90, 90]")
    if not (math.isfinite(longitude) and -180 <= longitude <= 180):
        raise ValueError(f"longitude {longitude!r} is not within [-180, 180]")
    if (
        isinstance(types, str)
        or not isinstance(types, list | tuple)
        or not types
        or not all(isinstance(kind, str) and kind for kind in types)
    ):
        raise ValueError(f"types must be a non-empty list of non-empty strings, not {types!r}")
    if not isinstance(vicinity, str):
        raise ValueError(f"vicinity must be a string, not {vicinity!r}")
    return Place(place_id, name, float(latitude), float(longitude), tuple(types), vicinity)
