"""Venue files, GeoJSON and CSV, read into places (no index, no reactor)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from herd.places.venue_files import VenueFileError, read_venue_file


def _feature(geometry: object = None, **properties: object) -> dict[str, object]:
    return {
        "type": "Feature",
        "geometry": geometry or {"type": "Point", "coordinates": [2.35, 48.85]},
        "properties": properties,
    }


def _collection(*features: object) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": list(features)}).encode()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("v.geojson", b"{not json", r"v\.geojson: not valid JSON"),
        ("v.geojson", b"[]", r"v\.geojson: not a GeoJSON FeatureCollection"),
        ("v.json", json.dumps({"type": "Feature"}).encode(), "not a GeoJSON FeatureCollection"),
        ("v.geojson", _collection(_feature(name="A"), {"type": "Point"}), r"features\[1\]: not a"),
        ("v.geojson", _collection(_feature()), r"features\[0\]: name must be"),
        ("v.geojson", _collection(_feature(name=7)), r"features\[0\]: name must be"),
        (
            "v.geojson",
            _collection(_feature({"type": "Polygon", "coordinates": [[[0, 0]]]}, name="A")),
            r"features\[0\]: geometry must be a Point",
        ),
        (
            "v.geojson",
            _collection(_feature({"type": "Point", "coordinates": [0, 95]}, name="A")),
            r"features\[0\]: latitude 95.0 is not within",
        ),
        (
            "v.geojson",
            _collection(_feature({"type": "Point", "coordinates": [True, 5]}, name="A")),
            r"features\[0\]: geometry must be a Point",
        ),
        ("v.geojson", _collection(_feature(name="A", types="cafe")), r"features\[0\]: types"),
        ("v.geojson", _collection(_feature(name="A", types=[])), r"features\[0\]: types"),
        ("v.geojson", _collection(_feature(name="A", vicinity=3)), r"features\[0\]: vicinity"),
        (
            "v.geojson",
            _collection({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}}),
            r"features\[0\]: properties must be",
        ),
        ("v.csv", b"", r"v\.csv, line 1: the header must be"),
        ("v.csv", b"name,lat,lng\nA,1,2\n", r"v\.csv, line 1: the header must be"),
        ("v.csv", b"name,latitude,longitude\nA,1\n", r"v\.csv, line 2: 2 fields where"),
        ("v.csv", b"name,latitude,longitude\nA,1,2\n,3,4\n", r"v\.csv, line 3: name must"),
        ("v.csv", b"name,latitude,longitude\nA,1,200\n", r"line 2: longitude 200.0 is not"),
        ("v.csv", b"name,latitude,longitude\nA,inf,2\n", r"line 2: latitude inf is not"),
        ("v.csv", b"name,latitude,longitude\n\xff,1,2\n", r"v\.csv: not UTF-8"),
        ("v.txt", b"name,latitude,longitude\n", r"v\.txt: unknown venue file type '\.txt'"),
    ],
)
def test_bad_venue_files(name: str, data: bytes, message: str) -> None:
    with pytest.raises(VenueFileError, match=message):
        read_venue_file(Path(name), data)


def test_good_venue_files() -> None:
    csv = read_venue_file(
        Path("v.csv"), "\ufeffname,latitude,longitude\r\nCafé, 1.5 ,2\r\n".encode()
    )
    assert [(v.name, v.latitude, v.longitude, v.types, v.vicinity) for v in csv] == [
        ("Café", 1.5, 2.0, ("point_of_interest",), "")
    ]
    geojson = read_venue_file(Path("v.GEOJSON"), _collection(_feature(name="Louvre")))
    assert [(v.name, v.latitude, v.longitude) for v in geojson] == [("Louvre", 48.85, 2.35)]
    assert geojson[0].place_id.startswith("venue:")
    again = read_venue_file(Path("other.geojson"), _collection(_feature(name="Louvre")))
    assert again[0].place_id == geojson[0].place_id
