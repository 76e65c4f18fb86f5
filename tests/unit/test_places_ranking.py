"""The nearby ranking over index rows, without an index: radius, order, ties, limit."""

from __future__ import annotations

from herd.places.answers import Place
from herd.places.ranking import nearest_answer, place_row

CENTER = (34.0, -118.0)


def _row(row_id: int, place_id: str, name: str, latitude: float) -> tuple[object, ...]:
    return (row_id, *place_row(Place(place_id, name, latitude, -118.0, ("cafe",), "LA")))


def test_nearest_first_within_the_radius_each_row_once() -> None:
    rows = [
        _row(1, "far", "Far", 34.02),  # ~2.2 km
        _row(2, "near", "Near", 34.001),  # ~110 m
        _row(3, "out", "Outside", 34.2),  # ~22 km
        _row(1, "far", "Far", 34.02),  # the same row from a second longitude range
    ]
    answer = nearest_answer(rows, *CENTER, 5000, 20)
    assert answer["status"] == "OK"
    assert [r["place_id"] for r in answer["results"]] == ["near", "far"]  # type: ignore[attr-defined,index]
    assert answer["results"][0] == {  # type: ignore[index]
        "geometry": {"location": {"lat": 34.001, "lng": -118.0}},
        "name": "Near",
        "place_id": "near",
        "types": ["cafe"],
        "vicinity": "LA",
    }


def test_ties_go_by_name_then_id_and_the_limit_cuts() -> None:
    rows = [
        _row(1, "b", "Same", 34.01),
        _row(2, "a", "Same", 34.01),
        _row(3, "c", "Alpha", 34.01),
    ]
    answer = nearest_answer(rows, *CENTER, 5000, 2)
    assert [r["place_id"] for r in answer["results"]] == ["c", "a"]  # type: ignore[attr-defined,index]


def test_nothing_within_the_radius() -> None:
    answer = nearest_answer([_row(1, "out", "Outside", 35.0)], *CENTER, 5000, 20)
    assert answer == {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}
