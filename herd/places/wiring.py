"""`make_provider`: the places provider the config asks for, built and already starting."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, HTTPConnectionPool

from herd.config import PlacesConfig
from herd.offload import RunBlocking
from herd.places.answers import PlacesProvider
from herd.places.google import GooglePlaces
from herd.places.offline import OfflinePlaces

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFromThreads, IReactorTime

    class PlacesReactor(IReactorTime, IReactorFromThreads):
        """Make-believe interface: the reactor parts the providers use (any real reactor)."""


T = TypeVar("T")


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
        offline = OfflinePlaces(data_dir, config.files, index_thread(reactor))
        offline.start().addErrback(_logged_by_provider)
        return offline
    raise ValueError(f"unknown places provider {config.provider!r}")


def index_thread(reactor: IReactorFromThreads) -> RunBlocking:
    """Where OfflinePlaces loads its index: a thread of its own, started for that one job and
    stopped after it, so the load neither waits behind nor delays the store's work, and no idle
    thread keeps the process from exiting."""

    def run(work: Callable[[], T]) -> Deferred[T]:
        pool = ThreadPool(minthreads=0, maxthreads=1, name="places-index")
        pool.start()
        return deferToThreadPool(reactor, pool, work).addBoth(_stop_pool, pool)

    return run


def _stop_pool(result: T, pool: ThreadPool) -> T:
    """The loading thread has done its one job; stopping it lets the process exit."""
    pool.stop()
    return result


def tls_available() -> bool:
    """Whether Twisted can speak https here (twisted[tls]).

    Not a core dependency: once pyOpenSSL is installed every server imports it at start
    (twisted.internet.endpoints does), ~60 ms of the 0.5 s a server gets, for an opt-in provider.
    """
    return all(importlib.util.find_spec(name) for name in ("OpenSSL", "service_identity"))


def _logged_by_provider(failure: Failure) -> None:
    """OfflinePlaces logs its own start failure; make_provider's caller need not hear it twice."""
