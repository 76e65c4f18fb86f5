"""Where the participants are, relative to the leading place, as a small SVG drawn by the server
(pure: no I/O, no map tiles: nothing outside the herd is fetched, by the server or the browser).

A local flat projection around the centre (the leading place, else the participants' middle):
east is right, north is up, one scale for both axes, chosen so the farthest participant sits
just inside the frame; rings at a round distance say the scale.  Every name is escaped, every
coordinate is a finite number inside the view box, whatever the positions are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from herd.api import Position

__all__ = ["SIZE", "Located", "PositionsFigure", "distance_km", "positions_figure"]

SIZE: Final = 320  # the view box is SIZE x SIZE
_MARGIN: Final = 40  # room for labels at the edge
_EARTH_KM: Final = 6371.0088
_MAX_NAME: Final = 24  # characters of a name drawn; the table beside the figure has them all
_UNSHOWABLE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_MAX_PEOPLE: Final = 200  # drawn; beyond, the figure would be a blot (the count is said)
_SAME_SPOT_KM: Final = 1e-6  # closer than a millimetre: drawn on the centre


@dataclass(frozen=True, slots=True)
class Located:
    """One participant's place on the figure, and their distance from the centre."""

    user: str
    km: float
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class PositionsFigure:
    svg: str  # a complete <svg> element, safe to put into HTML as it is
    people: tuple[Located, ...]  # farthest last
    centre_is_place: bool  # False: no leading place with a position; centred on the people
    place_name: str | None = None


def _text(value: str, limit: int = _MAX_NAME) -> str:
    """`value` cut to `limit` characters, escaped, control characters (which XML cannot hold
    even escaped) and lone surrogates shown as U+FFFD."""
    return escape(_UNSHOWABLE.sub("\ufffd", value[:limit]))


def distance_km(a: Position, b: Position) -> float:
    """Great-circle distance (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * _EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def _middle(positions: Sequence[Position]) -> Position:
    """The mean of the positions as unit vectors (so ±180° averages right)."""
    x = y = z = 0.0
    for lat, lon in positions:
        la, lo = math.radians(lat), math.radians(lon)
        x += math.cos(la) * math.cos(lo)
        y += math.cos(la) * math.sin(lo)
        z += math.sin(la)
    if math.hypot(x, y, z) < 1e-9:
        return positions[0]
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


def _offset_km(centre: Position, point: Position) -> tuple[float, float]:
    """East and north of `centre`, km, on the flat projection."""
    dlon = (point[1] - centre[1] + 540.0) % 360.0 - 180.0
    east = math.radians(dlon) * _EARTH_KM * math.cos(math.radians(centre[0]))
    north = math.radians(point[0] - centre[0]) * _EARTH_KM
    return east, north


def _inside(coordinate: float) -> float:
    """A coordinate rounded to a tenth of a pixel and kept inside the view box."""
    return round(min(max(coordinate, 0.0), float(SIZE)), 1)


def _round_ring(km: float) -> float:
    """A round distance (1, 2 or 5 times a power of ten) at most `km`, for the scale ring."""
    if km <= 0:
        return 0.0
    power = 10.0 ** math.floor(math.log10(km))
    for step in (5.0, 2.0, 1.0):
        if step * power <= km:
            return step * power
    return power


def _km_text(km: float) -> str:
    if km < 1:
        return f"{round(km * 1000)} m"
    return f"{km:.0f} km" if km >= 10 else f"{km:.1f} km"


def positions_figure(
    place: Position | None, place_name: str | None, people: Sequence[tuple[str, Position]]
) -> PositionsFigure | None:
    """The figure, or None when nobody taking part has a known position."""
    if not people:
        return None
    shown = list(people)[:_MAX_PEOPLE]
    centre = place if place is not None else _middle([position for _, position in shown])
    offsets = [(user, *_offset_km(centre, position)) for user, position in shown]
    far = max(math.hypot(east, north) for _, east, north in offsets)
    radius = SIZE / 2 - _MARGIN
    scale = radius / far if far > _SAME_SPOT_KM else 0.0  # px per km
    mid = SIZE / 2
    located = sorted(
        (
            Located(
                user,
                distance_km(centre, position),
                _inside(mid + east * scale),
                _inside(mid - north * scale),
            )
            for (user, east, north), (_, position) in zip(offsets, shown, strict=True)
        ),
        key=lambda person: (person.km, person.user),
    )
    title = (
        f"Where the {len(people)} participants with a known position are, around "
        + (place_name or "the leading place")
        if place is not None
        else f"Where the {len(people)} participants with a known position are"
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {SIZE} {SIZE}" width="{SIZE}" '
        f'height="{SIZE}" role="img" aria-labelledby="positions-title" class="positions">',
        f'<title id="positions-title">{_text(title, 400)}</title>',
        f'<rect x="0" y="0" width="{SIZE}" height="{SIZE}" class="frame"/>',
    ]
    ring_km = _round_ring(far) if scale > 0 else 0.0
    if ring_km > 0:
        ring = round(ring_km * scale, 1)
        parts.append(f'<circle cx="{mid}" cy="{mid}" r="{ring}" class="ring"/>')
        parts.append(
            f'<text x="{mid}" y="{round(mid - ring - 4, 1)}" class="scale" '
            f'text-anchor="middle">{escape(_km_text(ring_km))}</text>'
        )
    parts.append(f'<text x="{mid}" y="14" class="compass" text-anchor="middle">N</text>')
    if place is not None:
        parts.append(
            f'<rect x="{mid - 6}" y="{mid - 6}" width="12" height="12" class="place"/>'
            f'<text x="{mid + 9}" y="{mid + 4}" class="place-name">'
            f"{_text(place_name or '')}</text>"
        )
    for person in located:
        anchor = "start" if person.x <= mid else "end"
        dx = 7 if person.x <= mid else -7
        parts.append(
            f'<circle cx="{person.x}" cy="{person.y}" r="5" class="person"/>'
            f'<text x="{round(person.x + dx, 1)}" y="{round(person.y + 4, 1)}" '
            f'text-anchor="{anchor}" class="name">{_text(person.user)}</text>'
        )
    parts.append("</svg>")
    return PositionsFigure("".join(parts), tuple(located), place is not None, place_name)
