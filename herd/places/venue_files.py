"""The herd's own venue files, GeoJSON or CSV, read into `Place`s with stable ids; a file that
cannot be used is a `VenueFileError` naming the file and row (pure: bytes in, places out)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path

from herd.errors import HerdError
from herd.places.answers import DEFAULT_VENUE_TYPES, Place, checked_place


class VenueFileError(HerdError, ValueError):
    """A venue file that cannot be used; the message names the file and the row or feature."""


_CSV_COLUMNS = ("name", "latitude", "longitude", "types", "vicinity")


def read_venue_file(path: Path, data: bytes) -> list[Place]:
    """The venues of one file: GeoJSON (.geojson, .json) or CSV (.csv), by its suffix."""
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        return _geojson_venues(path, data)
    if suffix == ".csv":
        return _csv_venues(path, data)
    raise VenueFileError(f"{path}: unknown venue file type {suffix!r}: use .geojson, .json or .csv")


def _venue_id(name: str, latitude: float, longitude: float) -> str:
    """A stable id for a file venue, the same on every server and every build."""
    digest = hashlib.sha256(f"{name}\n{latitude!r}\n{longitude!r}".encode()).hexdigest()
    return f"venue:{digest[:20]}"


def _file_venue(
    where: str, name: object, latitude: float, longitude: float, types: object, vicinity: object
) -> Place:
    try:
        place = checked_place("", name, latitude, longitude, types, vicinity)
    except ValueError as exc:
        raise VenueFileError(f"{where}: {exc}") from None
    return replace(place, place_id=_venue_id(place.name, place.latitude, place.longitude))


def _geojson_venues(path: Path, data: bytes) -> list[Place]:
    """A FeatureCollection of Point features with properties.name[, types][, vicinity]."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise VenueFileError(f"{path}: not valid JSON: {exc}") from None
    if (
        not isinstance(document, dict)
        or document.get("type") != "FeatureCollection"
        or not isinstance(features := document.get("features"), list)
    ):
        raise VenueFileError(f"{path}: not a GeoJSON FeatureCollection with a features list")
    venues = []
    for index, feature in enumerate(features):
        where = f"{path}: features[{index}]"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise VenueFileError(f"{where}: not a GeoJSON Feature")
        geometry = feature.get("geometry")
        coordinates = geometry.get("coordinates") if isinstance(geometry, dict) else None
        if (
            not isinstance(geometry, dict)
            or geometry.get("type") != "Point"
            or not isinstance(coordinates, list)
            or len(coordinates) not in (2, 3)
            or not all(
                isinstance(value, int | float) and not isinstance(value, bool)
                for value in coordinates
            )
        ):
            raise VenueFileError(f"{where}: geometry must be a Point with [longitude, latitude]")
        properties = feature.get("properties")
        if not isinstance(properties, dict):
            raise VenueFileError(f"{where}: properties must be an object with a name")
        venues.append(
            _file_venue(
                where,
                properties.get("name"),
                float(coordinates[1]),
                float(coordinates[0]),
                properties.get("types", list(DEFAULT_VENUE_TYPES)),
                properties.get("vicinity", ""),
            )
        )
    return venues


def _csv_venues(path: Path, data: bytes) -> list[Place]:
    """Header `name,latitude,longitude[,types][,vicinity]`; types separated by `;`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise VenueFileError(f"{path}: not UTF-8: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [column.strip() for column in next(reader, [])]
    if len(header) < 3 or tuple(header) != _CSV_COLUMNS[: len(header)]:
        raise VenueFileError(
            f"{path}, line 1: the header must be name,latitude,longitude[,types][,vicinity],"
            f" not {','.join(header)!r}"
        )
    venues = []
    for row in reader:
        if not row:
            continue
        where = f"{path}, line {reader.line_num}"
        if len(row) != len(header):
            raise VenueFileError(f"{where}: {len(row)} fields where the header has {len(header)}")
        fields = dict(zip(header, row, strict=True))
        try:
            latitude, longitude = float(fields["latitude"]), float(fields["longitude"])
        except ValueError as exc:
            raise VenueFileError(f"{where}: {exc}") from None
        types = [kind.strip() for kind in fields.get("types", "").split(";") if kind.strip()]
        venues.append(
            _file_venue(
                where,
                fields["name"].strip(),
                latitude,
                longitude,
                types or list(DEFAULT_VENUE_TYPES),
                fields.get("vicinity", "").strip(),
            )
        )
    return venues
