"""`GooglePlaces`: the provider that asks Google's legacy Nearby Search endpoint over HTTP, with
a bounded body reader and the agent protocols it needs."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Protocol, cast
from urllib.parse import urlencode

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from herd.places.answers import PlacesAnswer, places_answer

_log = Logger(namespace="herd.places")  # one namespace for every provider, as before the split


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
            return succeed(places_answer("REQUEST_DENIED", []))
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
        return places_answer("UNKNOWN_ERROR", [])

    def _forget(self, answer: PlacesAnswer, pending: Deferred[PlacesAnswer]) -> PlacesAnswer:
        self._pending.discard(pending)
        return answer
