"""Positions and time zones: where a user is now (from their devices' reports) and the time zone
a user's times are shown in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from herd.ops import client_bytes

if TYPE_CHECKING:
    from timezonefinder import TimezoneFinder

    from herd.records import LocationTable
    from herd.state import PlanningState

__all__ = ["Position", "PositionOf", "position_lookup", "timezone_of"]

Position = tuple[float, float]
"""(latitude, longitude) in degrees."""

PositionOf = Callable[[str], Position | None]
"""A user's current position, if any of their clients has reported one."""


def position_lookup(state: PlanningState, table: LocationTable) -> PositionOf:
    """Where each user is now: the newest report among their clients."""

    def position_of(user_id: str) -> Position | None:
        newest = None
        for client in state.clients_of(user_id):
            location = table.get(client_bytes(client))
            if location is not None and (newest is None or location.key > newest.key):
                newest = location
        return None if newest is None else (newest.at.latitude, newest.at.longitude)

    return position_of


@functools.cache
def _finder() -> TimezoneFinder:
    """One lookup for the process, made on first use: importing and loading it costs ~0.15 s
    and ~30 MB, which servers that never need a time zone should not pay."""
    from timezonefinder import TimezoneFinder

    return TimezoneFinder()


def timezone_of(explicit: str | None, position: Position | None) -> str:
    """A user's time zone: the one they set, else the zone at their position, else UTC."""
    if explicit is not None:
        return explicit
    if position is not None:
        found = _finder().timezone_at(lat=position[0], lng=position[1])
        if found is not None:
            return found
    return "UTC"
