"""Great-circle distance, midpoints and search boxes: known values and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from herd.geo import EARTH_RADIUS_M, bounding_box, distance_m, midpoint

UCLA = (34.068930, -118.445127)
LAX = (33.9425, -118.408056)
JFK = (40.639722, -73.778889)
LA_CITY_HALL = (34.0537, -118.2428)

latitudes = st.floats(-90, 90)
longitudes = st.floats(-180, 180)
points = st.tuples(latitudes, longitudes)
near_pole = st.tuples(st.floats(85, 90) | st.floats(-90, -85), longitudes)
near_antimeridian = st.tuples(latitudes, st.floats(175, 180) | st.floats(-180, -175))
any_point = points | near_pole | near_antimeridian


def test_lax_to_jfk_is_about_3974_km() -> None:
    assert distance_m(*LAX, *JFK) == pytest.approx(3_974_000, rel=0.005)


def _vincenty_sphere(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """An independent great-circle formula (Vincenty's, on a sphere) to check haversine against."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    y = math.hypot(
        math.cos(p2) * math.sin(dl),
        math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl),
    )
    x = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return EARTH_RADIUS_M * math.atan2(y, x)


def test_ucla_to_places_nearby() -> None:
    assert distance_m(*UCLA, *LA_CITY_HALL) == pytest.approx(18_715, abs=5)
    assert distance_m(*UCLA, *LAX) == pytest.approx(14_468, abs=5)
    for other in (LA_CITY_HALL, LAX, JFK):
        assert distance_m(*UCLA, *other) == pytest.approx(_vincenty_sphere(*UCLA, *other))


def test_zero_and_antipodes() -> None:
    assert distance_m(*UCLA, *UCLA) == 0
    assert distance_m(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_M)
    assert distance_m(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_M)
    assert distance_m(-33.9, 18.4, 33.9, 18.4 - 180) == pytest.approx(math.pi * EARTH_RADIUS_M)


def test_the_antimeridian_is_no_seam() -> None:
    assert distance_m(0, 179.9, 0, -179.9) == pytest.approx(distance_m(0, -0.1, 0, 0.1))
    assert distance_m(10, 180, 10, -180) == pytest.approx(0, abs=1e-6)


@given(any_point, any_point)
def test_symmetric_and_bounded(a: tuple[float, float], b: tuple[float, float]) -> None:
    assert distance_m(*a, *b) == pytest.approx(distance_m(*b, *a), abs=1e-6)
    assert 0 <= distance_m(*a, *b) <= math.pi * EARTH_RADIUS_M + 1e-6


@given(any_point, any_point, any_point)
def test_triangle_inequality(
    a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]
) -> None:
    assert distance_m(*a, *c) <= distance_m(*a, *b) + distance_m(*b, *c) + 1e-3


def test_midpoint_known_values() -> None:
    assert midpoint([UCLA]) == pytest.approx(UCLA)
    assert midpoint([(0, 0), (0, 90)]) == pytest.approx((0, 45))
    lat, lon = midpoint([(10, 179), (10, -179)])
    assert lat == pytest.approx(10, abs=0.01)
    assert abs(lon) == pytest.approx(180)
    assert midpoint([(89, 0), (89, 180)])[0] == pytest.approx(90)


def test_midpoint_without_a_middle() -> None:
    with pytest.raises(ValueError, match="no points"):
        midpoint([])
    with pytest.raises(ValueError, match="balance"):
        midpoint([(0, 0), (0, 180)])


@given(st.lists(any_point, min_size=1, max_size=6))
def test_midpoint_is_no_farther_than_the_farthest_point(pts: list[tuple[float, float]]) -> None:
    try:
        middle = midpoint(pts)
    except ValueError:
        return
    # Only meaningful for points within a hemisphere, where the vector mean stays inside it.
    assume(max(distance_m(*p, *q) for p in pts for q in pts) < 0.9 * math.pi / 2 * EARTH_RADIUS_M)
    farthest = max(distance_m(*middle, *p) for p in pts)
    assert farthest <= max(distance_m(*p, *q) for p in pts for q in pts) + 1e-3


def test_bounding_box_plain() -> None:
    box = bounding_box(*UCLA, 10_000)
    assert box.min_lat == pytest.approx(UCLA[0] - 10_000 / 111_195, rel=1e-4)
    assert box.max_lat == pytest.approx(UCLA[0] + 10_000 / 111_195, rel=1e-4)
    ((low, high),) = box.lon_ranges
    assert low < UCLA[1] < high
    assert not box.contains(*LAX)
    assert box.contains(*UCLA)


def test_bounding_box_across_the_antimeridian() -> None:
    box = bounding_box(-18.1416, 178.4419, 200_000)  # Suva, Fiji
    assert len(box.lon_ranges) == 2
    (west_low, west_high), (east_low, east_high) = box.lon_ranges
    assert west_high == 180 and east_low == -180
    assert 176 < west_low < 178.4419 and -180 < east_high < -178
    assert box.contains(-18, -179.8) and box.contains(-18, 179.5)
    assert not box.contains(-18, 170) and not box.contains(-18, -170)


def test_bounding_box_around_a_pole() -> None:
    box = bounding_box(89.9, 30, 50_000)
    assert box.max_lat == 90
    assert box.lon_ranges == ((-180.0, 180.0),)
    box = bounding_box(-89.99, 0, 2_000)
    assert box.min_lat == -90 and box.lon_ranges == ((-180.0, 180.0),)


def test_bounding_box_near_a_pole_is_wider_than_r_over_cos() -> None:
    # At 80°N a 400 km circle reaches meridians ~20.7° away; r / cos(lat) says only ~20.6°.
    box = bounding_box(80, 0, 400_000)
    ((low, high),) = box.lon_ranges
    r = 400_000 / EARTH_RADIUS_M
    assert high == pytest.approx(math.degrees(math.asin(math.sin(r) / math.cos(math.radians(80)))))
    assert high > math.degrees(r / math.cos(math.radians(80)))
    assert low == pytest.approx(-high)


def test_negative_radius() -> None:
    with pytest.raises(ValueError):
        bounding_box(0, 0, -1)


def _offset(center: tuple[float, float], dlat: float, dlon: float) -> tuple[float, float]:
    lat = max(-90.0, min(90.0, center[0] + dlat))
    lon = (center[1] + dlon + 180) % 360 - 180
    return lat, lon


@given(
    any_point,
    st.floats(-1, 1),
    st.floats(-3, 3),
    st.floats(1, 3),
)
def test_bounding_box_holds_every_point_within_the_radius(
    center: tuple[float, float], dlat: float, dlon: float, slack: float
) -> None:
    # A nearby point (small offsets, wrapped across ±180) and a radius that just reaches it.
    point = _offset(center, dlat, dlon)
    radius = distance_m(*center, *point) * slack
    assert bounding_box(*center, radius).contains(*point)


@given(any_point, any_point, st.floats(1, 1.5))
def test_bounding_box_holds_far_points_too(
    center: tuple[float, float], point: tuple[float, float], slack: float
) -> None:
    radius = distance_m(*center, *point) * slack
    assert bounding_box(*center, radius).contains(*point)


@given(any_point, any_point)
def test_a_point_exactly_on_the_circle_is_inside(
    center: tuple[float, float], point: tuple[float, float]
) -> None:
    assert bounding_box(*center, distance_m(*center, *point)).contains(*point)


@given(st.tuples(st.floats(-89, 89), longitudes), st.floats(0, 50_000))
def test_bounding_box_is_not_much_bigger_than_the_circle(
    center: tuple[float, float], radius: float
) -> None:
    box = bounding_box(*center, radius)
    degrees = math.degrees(radius / EARTH_RADIUS_M)
    assert box.max_lat - box.min_lat <= 2 * degrees + 1e-5
    if box.lon_ranges != ((-180.0, 180.0),):
        width = sum(high - low for low, high in box.lon_ranges)
        cos_lat = math.cos(math.radians(center[0]))
        assert (
            width
            <= 2 * math.degrees(math.asin(min(1, math.sin(radius / EARTH_RADIUS_M) / cos_lat)))
            + 1e-5
        )
