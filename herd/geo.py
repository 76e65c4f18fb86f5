"""Great-circle geometry on a spherical Earth: distances, midpoints and search boxes.

Pure functions over degrees. A sphere of the mean Earth radius is within ~0.5% of the ellipsoid,
plenty for "what is within 10 km", and its formulas are exact, so a bounding box computed here
provably contains every point that `distance_m` puts inside the radius.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG), metres."""

# Widen search boxes by this relative amount so that rounding never drops a point on the edge.
_BOX_SLACK = 1e-9


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine: well conditioned for short distances)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, h)))


def midpoint(points: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """The geographic midpoint (latitude, longitude) of points: their mean on the unit sphere.

    Averaging vectors rather than degrees keeps it right across the antimeridian and near the poles.
    Raises ValueError for no points or points that balance out (e.g. two antipodes), which have
    no meaningful middle.
    """
    x = y = z = 0.0
    count = 0
    for lat, lon in points:
        phi, lam = math.radians(lat), math.radians(lon)
        x += math.cos(phi) * math.cos(lam)
        y += math.cos(phi) * math.sin(lam)
        z += math.sin(phi)
        count += 1
    if count == 0:
        raise ValueError("midpoint of no points")
    if math.hypot(x, y, z) < 1e-9 * count:
        raise ValueError("points balance out on the sphere: no midpoint")
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """Latitude and longitude ranges (degrees, inclusive) that hold a whole circle.

    `lon_ranges` has two ranges when the circle crosses the antimeridian, and is the full
    [-180, 180] when it covers a pole.
    """

    min_lat: float
    max_lat: float
    lon_ranges: tuple[tuple[float, float], ...]

    def contains(self, lat: float, lon: float) -> bool:
        return self.min_lat <= lat <= self.max_lat and any(
            low <= lon <= high for low, high in self.lon_ranges
        )


def bounding_box(lat: float, lon: float, radius_m: float) -> BoundingBox:
    """The smallest latitude/longitude box around the circle of radius_m around (lat, lon).

    Longitude half-width is asin(sin r / cos lat), the meridians tangent to the circle (exact on
    a sphere, unlike r / cos lat, which is too narrow near the poles).
    """
    if radius_m < 0:
        raise ValueError(f"negative radius {radius_m!r}")
    angle = radius_m / EARTH_RADIUS_M * (1 + _BOX_SLACK) + _BOX_SLACK
    phi = math.radians(lat)
    low_phi, high_phi = phi - angle, phi + angle
    if high_phi >= math.pi / 2 or low_phi <= -math.pi / 2:
        return BoundingBox(
            max(-90.0, math.degrees(low_phi)), min(90.0, math.degrees(high_phi)), ((-180.0, 180.0),)
        )
    half_width = math.degrees(math.asin(min(1.0, math.sin(angle) / math.cos(phi))))
    low, high = lon - half_width, lon + half_width
    ranges: tuple[tuple[float, float], ...]
    if low < -180.0:
        ranges = ((low + 360.0, 180.0), (-180.0, high))
    elif high > 180.0:
        ranges = ((low, 180.0), (-180.0, high - 360.0))
    else:
        ranges = ((low, high),)
    return BoundingBox(math.degrees(low_phi), math.degrees(high_phi), ranges)
