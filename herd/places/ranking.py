"""The nearby ranking: which index rows a WHATSAT or SUGGEST gets, nearest first, and the row
format places are stored in (pure: the SQLite queries live in `index`)."""

from __future__ import annotations

import functools
import heapq
import json
from collections.abc import Iterable
from typing import Any

from herd.geo import distance_m
from herd.places.answers import Place, PlacesAnswer, places_answer

PlaceRow = tuple[str, str, float, float, str, str]
"""A place as the index stores it: place_id, name, lat, lng, types (a JSON list), vicinity."""


def place_row(place: Place) -> PlaceRow:
    return (
        place.place_id,
        place.name,
        place.latitude,
        place.longitude,
        json.dumps(place.types),
        place.vicinity,
    )


@functools.lru_cache(maxsize=256)
def _types(stored: str) -> tuple[str, ...]:
    """Decoded once per distinct list: most places share a handful."""
    return tuple(json.loads(stored))


def nearest_answer(
    rows: Iterable[tuple[Any, ...]], latitude: float, longitude: float, radius_m: float, limit: int
) -> PlacesAnswer:
    """The answer from candidate rows (row id, then a PlaceRow; a row may come twice): those
    within radius_m, nearest first, cut to limit.

    Ties go by name, then id, so every server answers the same. Only the places kept become
    results: a 50 km radius in New York holds ~450 places, and 20 are shown at most.
    """
    hits: dict[int, tuple[float, tuple[Any, ...]]] = {}
    for row in rows:
        distance = distance_m(latitude, longitude, row[3], row[4])
        if distance <= radius_m:
            hits[row[0]] = (distance, row)
    if not hits:
        return places_answer("ZERO_RESULTS", [])
    nearest = heapq.nsmallest(limit, hits.values(), key=lambda hit: (hit[0], hit[1][2], hit[1][1]))
    return places_answer(
        "OK",
        [
            Place(place_id, name, lat, lng, _types(types), vicinity).result()
            for _, (_, place_id, name, lat, lng, types, vicinity) in nearest
        ],
    )
