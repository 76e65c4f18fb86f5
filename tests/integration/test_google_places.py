"""GooglePlaces against a real local HTTP server answering in the legacy Nearby Search format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from herd.places.answers import PlacesAnswer
from herd.places.google import GooglePlaces

UCLA = (34.068930, -118.445127)
KEY = "k&y=1/ä"
RESULTS = [
    {
        "geometry": {"location": {"lat": 34.07 + i / 1000, "lng": -118.44}},
        "name": f"Place {i}",
        "place_id": f"id{i}",
        "types": ["point_of_interest"],
        "vicinity": "Los Angeles",
    }
    for i in range(6)
]


def _reactor():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    return reactor


class FakeNearbySearch(Resource):
    """Answers by path: /ok, /none, /denied, /500, /garbage, /list, /big, /slow."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[dict[bytes, list[bytes]]] = []
        self.slow: list[Request] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.queries.append(dict(request.args or {}))
        path = request.path
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        if path == b"/ok":
            return _json({"html_attributions": ["<a>x</a>"], "results": RESULTS, "status": "OK"})
        if path == b"/none":
            return _json({"html_attributions": [], "results": [], "status": "ZERO_RESULTS"})
        if path == b"/denied":
            answer = {"error_message": "bad key", "results": [], "status": "REQUEST_DENIED"}
            return _json({"html_attributions": [], **answer})
        if path == b"/500":
            request.setResponseCode(500)
            return _json({"status": "UNKNOWN_ERROR"})
        if path == b"/garbage":
            return b"<html>not json</html>"
        if path == b"/list":
            return b"[1, 2]"
        if path == b"/big":
            return _json({"html_attributions": [], "results": RESULTS * 100, "status": "OK"})
        self.slow.append(request)
        return NOT_DONE_YET


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """What the providers log, as text."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "herd.places":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@dataclass
class Server:
    resource: FakeNearbySearch
    url: str
    pool: HTTPConnectionPool
    providers: list[GooglePlaces] = field(default_factory=list)

    def provider(self, path: str, **options: float) -> GooglePlaces:
        reactor = _reactor()
        provider = GooglePlaces(
            self.url + path,
            KEY,
            Agent(reactor, pool=self.pool),
            reactor,
            pool=self.pool,
            **options,  # type: ignore[arg-type]
        )
        self.providers.append(provider)
        return provider


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    reactor = _reactor()
    resource = FakeNearbySearch()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=False)
    fake = Server(resource, f"http://127.0.0.1:{port.getHost().port}", pool)
    yield fake
    for provider in fake.providers:
        await provider.close()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_query_string(server: Server) -> None:
    await server.provider("/ok").nearby(*UCLA, 10, 5)
    await server.provider("/ok").nearby(-0.00001, 179.5, 0.0005, 5)
    await server.provider("/ok").nearby(1, 2, 1.25, 5)
    assert server.resource.queries == [
        {b"location": [b"34.06893,-118.445127"], b"radius": [b"10000"], b"key": [KEY.encode()]},
        {b"location": [b"-0.00001,179.5"], b"radius": [b"0.5"], b"key": [KEY.encode()]},
        {b"location": [b"1,2"], b"radius": [b"1250"], b"key": [KEY.encode()]},
    ]


@pytest_twisted.ensureDeferred
async def test_url_with_a_query_already(server: Server) -> None:
    await server.provider("/ok?language=fr").nearby(*UCLA, 10, 5)
    assert server.resource.queries[0][b"language"] == [b"fr"]
    assert server.resource.queries[0][b"radius"] == [b"10000"]


@pytest_twisted.ensureDeferred
async def test_answer_cut_to_limit(server: Server) -> None:
    provider = server.provider("/ok")
    answer = await provider.nearby(*UCLA, 10, 3)
    assert answer == {"html_attributions": ["<a>x</a>"], "results": RESULTS[:3], "status": "OK"}
    assert (await provider.nearby(*UCLA, 10, 20))["results"] == RESULTS
    assert await provider.nearby(*UCLA, 10, 0) == {
        "html_attributions": ["<a>x</a>"],
        "results": [],
        "status": "OK",
    }


@pytest_twisted.ensureDeferred
async def test_status_passes_through(server: Server, logged: list[str]) -> None:
    none = await server.provider("/none").nearby(*UCLA, 10, 5)
    assert none == {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}
    assert logged == []
    denied = await server.provider("/denied").nearby(*UCLA, 10, 5)
    assert denied == {"html_attributions": [], "results": [], "status": "REQUEST_DENIED"}
    assert logged == ["Google Places answered REQUEST_DENIED: bad key"]


UNKNOWN: PlacesAnswer = {"html_attributions": [], "results": [], "status": "UNKNOWN_ERROR"}


@pytest_twisted.ensureDeferred
async def test_failures_answer_unknown_error(server: Server, logged: list[str]) -> None:
    for path in ("/500", "/garbage", "/list"):
        assert await server.provider(path).nearby(*UCLA, 10, 5) == UNKNOWN, path
    assert len(logged) == 3
    assert "HTTP 500" in logged[0]
    assert "not JSON" in logged[1] and "<html>not json</html>" in logged[1]
    assert "not a JSON object" in logged[2]


@pytest_twisted.ensureDeferred
async def test_body_too_big(server: Server, logged: list[str]) -> None:
    assert await server.provider("/big", max_body=10_000).nearby(*UCLA, 10, 5) == UNKNOWN
    assert len(logged) == 1 and "body larger than 10000 bytes" in logged[0]
    answer = await server.provider("/big").nearby(*UCLA, 10, 5)
    assert answer["status"] == "OK"


@pytest_twisted.ensureDeferred
async def test_slow_server_times_out(server: Server, logged: list[str]) -> None:
    reactor = _reactor()
    started = reactor.seconds()
    assert await server.provider("/slow", timeout=0.2).nearby(*UCLA, 10, 5) == UNKNOWN
    assert 0.15 < reactor.seconds() - started < 1.5
    assert len(logged) == 1 and "no answer within 0.2 s" in logged[0]


@pytest_twisted.ensureDeferred
async def test_nobody_listening(server: Server, logged: list[str]) -> None:
    reactor = _reactor()
    port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/"
    await port.stopListening()
    provider = GooglePlaces(url, KEY, Agent(reactor, pool=server.pool), reactor)
    assert await provider.nearby(*UCLA, 10, 5) == UNKNOWN
    assert len(logged) == 1 and "ConnectionRefusedError" in logged[0]


@pytest_twisted.ensureDeferred
async def test_close_cancels_lookups_in_flight(server: Server) -> None:
    provider = server.provider("/slow")
    pending: Deferred[PlacesAnswer] = provider.nearby(*UCLA, 10, 5)
    while not server.resource.slow:
        await _tick()
    await provider.close()
    assert await pending == UNKNOWN


def _tick() -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(_reactor(), 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_no_key_sends_nothing(server: Server) -> None:
    reactor = _reactor()
    provider = GooglePlaces(server.url + "/ok", "", Agent(reactor, pool=server.pool), reactor)
    answer = await provider.nearby(*UCLA, 10, 5)
    assert answer == {"html_attributions": [], "results": [], "status": "REQUEST_DENIED"}
    assert server.resource.queries == []
