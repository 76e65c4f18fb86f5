"""The offline places provider over the real GeoNames index plus venue files, and make_provider."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList

from herd.config import PlacesConfig
from herd.geo import distance_m
from herd.offload import RunBlocking
from herd.places.answers import PlacesAnswer
from herd.places.google import GooglePlaces
from herd.places.index import open_index
from herd.places.offline import OfflinePlaces, Stage
from herd.places.venue_files import VenueFileError
from herd.places.wiring import index_thread, make_provider, tls_available

UCLA = (34.068930, -118.445127)
SUVA = (-18.1416, 178.4419)
MID_PACIFIC = (0.0, -140.0)
RESULT_KEYS = {"geometry", "name", "place_id", "types", "vicinity"}

GEOJSON = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [-118.4422, 34.0729]},
            "properties": {
                "name": "Royce Hall",
                "types": ["point_of_interest", "establishment"],
                "vicinity": "10745 Dickson Ct, Los Angeles",
            },
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [-118.4468, 34.0703, 120.0]},
            "properties": {"name": "Pauley Pavilion"},
        },
    ],
}
CSV = (
    "name,latitude,longitude,types,vicinity\n"
    '"Diddy Riese",34.0630,-118.4468,bakery;food,"926 Broxton Ave, Los Angeles"\n'
    "\n"
    "Dateline Cafe,-16.80,-179.995,cafe,Taveuni\n"
    "Waiyevo Jetty,-16.79,179.985,,Taveuni\n"
)


def _reactor():  # type: ignore[no-untyped-def]
    from twisted.internet import reactor

    return reactor


def _load_thread() -> RunBlocking:
    """The index loads on a thread of its own, as make_provider has it."""
    return index_thread(_reactor())


@pytest.fixture(scope="session")
def venue_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    folder = tmp_path_factory.mktemp("venues")
    geojson, csv = folder / "campus.geojson", folder / "more.csv"
    geojson.write_text(json.dumps(GEOJSON), encoding="utf-8")
    csv.write_text(CSV, encoding="utf-8")
    return geojson, csv


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory, venue_files: tuple[Path, ...]) -> Path:
    """The real index (GeoNames cities ≥ 5,000 plus the venue files), built once per session."""
    data_dir = tmp_path_factory.mktemp("data")
    open_index(data_dir, venue_files, 5000).close()
    return data_dir


@pytest_twisted.async_yield_fixture
async def places(index_dir: Path, venue_files: tuple[Path, ...]) -> AsyncIterator[OfflinePlaces]:
    provider = OfflinePlaces(index_dir, venue_files, _load_thread())
    await provider.start()
    yield provider
    await provider.close()


def _names(answer: PlacesAnswer) -> list[str]:
    return [result["name"] for result in answer["results"]]  # type: ignore[attr-defined,index]


def _distances(answer: PlacesAnswer, center: tuple[float, float]) -> list[float]:
    return [
        distance_m(*center, r["geometry"]["location"]["lat"], r["geometry"]["location"]["lng"])
        for r in answer["results"]  # type: ignore[attr-defined]
    ]


@pytest_twisted.ensureDeferred
async def test_ucla_10_km(places: OfflinePlaces) -> None:
    answer = await places.nearby(*UCLA, 10, 20)
    assert answer["status"] == "OK"
    assert answer["html_attributions"] == []
    assert _names(answer)[:5] == [
        "Pauley Pavilion",
        "Royce Hall",
        "Diddy Riese",
        "Bel Air",
        "Century City",
    ]
    assert {"Beverly Hills", "Santa Monica", "Culver City"} <= set(_names(answer))
    distances = _distances(answer, UCLA)
    assert distances == sorted(distances)
    assert all(distance <= 10_000 for distance in distances)
    results = answer["results"]
    assert isinstance(results, list)
    assert all(set(result) == RESULT_KEYS for result in results)
    json.dumps(answer)  # plain JSON all the way down


@pytest_twisted.ensureDeferred
async def test_result_shapes(places: OfflinePlaces) -> None:
    results = (await places.nearby(*UCLA, 10, 20))["results"]
    assert isinstance(results, list)
    by_name = {result["name"]: result for result in results}
    assert by_name["Royce Hall"] == {
        "geometry": {"location": {"lat": 34.0729, "lng": -118.4422}},
        "name": "Royce Hall",
        "place_id": by_name["Royce Hall"]["place_id"],
        "types": ["point_of_interest", "establishment"],
        "vicinity": "10745 Dickson Ct, Los Angeles",
    }
    assert by_name["Pauley Pavilion"]["types"] == ["point_of_interest"]
    assert by_name["Pauley Pavilion"]["vicinity"] == ""
    assert by_name["Diddy Riese"]["types"] == ["bakery", "food"]
    assert by_name["Beverly Hills"] == {
        "geometry": {"location": {"lat": 34.07362, "lng": -118.40036}},
        "name": "Beverly Hills",
        "place_id": "geonames:5328041",
        "types": ["locality", "political"],
        "vicinity": "California, United States",
    }


@pytest_twisted.ensureDeferred
async def test_limit_cuts_after_the_status(places: OfflinePlaces) -> None:
    full = await places.nearby(*UCLA, 10, 20)
    three = await places.nearby(*UCLA, 10, 3)
    none = await places.nearby(*UCLA, 10, 0)
    assert three == {**full, "results": full["results"][:3]}  # type: ignore[index]
    assert none == {"html_attributions": [], "results": [], "status": "OK"}


@pytest_twisted.ensureDeferred
async def test_small_radius(places: OfflinePlaces) -> None:
    answer = await places.nearby(*UCLA, 0.3, 20)
    assert _names(answer) == ["Pauley Pavilion"]


@pytest_twisted.ensureDeferred
async def test_middle_of_the_pacific(places: OfflinePlaces) -> None:
    for limit in (0, 20):
        answer = await places.nearby(*MID_PACIFIC, 50, limit)
        assert answer == {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}


@pytest_twisted.ensureDeferred
async def test_suva(places: OfflinePlaces) -> None:
    answer = await places.nearby(*SUVA, 50, 20)
    assert answer["status"] == "OK"
    assert _names(answer) == ["Suva", "Lami", "Nasinu", "Navua"]
    results = answer["results"]
    assert isinstance(results, list)
    assert results[0]["vicinity"] == "Fiji"


@pytest_twisted.ensureDeferred
async def test_across_the_antimeridian(places: OfflinePlaces) -> None:
    west = await places.nearby(-16.80, 179.999, 5, 20)
    east = await places.nearby(-16.80, -179.999, 5, 20)
    assert _names(west) == ["Dateline Cafe", "Waiyevo Jetty"]
    assert _names(east) == ["Dateline Cafe", "Waiyevo Jetty"]


@pytest_twisted.ensureDeferred
async def test_near_the_north_pole(places: OfflinePlaces) -> None:
    places.add_venue("pole", "North Pole", 90.0, 0.0)
    places.add_venue("camp", "Ice Camp", 89.8, 135.0)
    answer = await places.nearby(89.9, -45.0, 50, 20)
    assert _names(answer) == ["North Pole", "Ice Camp"]


@pytest_twisted.ensureDeferred
async def test_add_venue(places: OfflinePlaces) -> None:
    places.add_venue("event:1", "Picnic spot", 34.0690, -118.4450, ("park",), "Dickson Plaza")
    answer = await places.nearby(*UCLA, 10, 2)
    assert _names(answer) == ["Picnic spot", "Pauley Pavilion"]
    assert answer["results"][0] == {  # type: ignore[index]
        "geometry": {"location": {"lat": 34.0690, "lng": -118.4450}},
        "name": "Picnic spot",
        "place_id": "event:1",
        "types": ["park"],
        "vicinity": "Dickson Plaza",
    }
    places.add_venue("event:1", "Picnic spot, moved", -18.1416, 178.4419)
    assert "Picnic spot" not in _names(await places.nearby(*UCLA, 10, 20))
    assert _names(await places.nearby(*SUVA, 1, 1)) == ["Picnic spot, moved"]


@pytest_twisted.ensureDeferred
async def test_venues_added_before_the_index_is_ready(
    index_dir: Path, venue_files: tuple[Path, ...]
) -> None:
    provider = OfflinePlaces(index_dir, venue_files, _load_thread())
    try:
        provider.add_venue("event:1", "First try", 1, 1)
        provider.add_venue("event:1", "Picnic spot", 34.0690, -118.4450)
        provider.add_venue("event:2", "Elsewhere", -18.1416, 178.4419)
        answer = provider.nearby(*UCLA, 10, 1)
        await provider.start()
        assert _names(await answer) == ["Picnic spot"]
        assert _names(await provider.nearby(1, 1, 1, 5)) == []
        assert _names(await provider.nearby(*SUVA, 1, 5)) == ["Elsewhere"]
    finally:
        await provider.close()


def test_add_venue_rejects_bad_values(tmp_path: Path) -> None:
    provider = OfflinePlaces(tmp_path, (), _load_thread(), min_population=None)
    with pytest.raises(ValueError, match="latitude"):
        provider.add_venue("a", "A", 91, 0)
    with pytest.raises(ValueError, match="longitude"):
        provider.add_venue("a", "A", 0, float("nan"))
    with pytest.raises(ValueError, match="name"):
        provider.add_venue("a", " ", 0, 0)
    with pytest.raises(ValueError, match="types"):
        provider.add_venue("a", "A", 0, 0, "cafe")
    with pytest.raises(ValueError, match="place_id"):
        provider.add_venue("", "A", 0, 0)


@pytest_twisted.ensureDeferred
async def test_deterministic(index_dir: Path, venue_files: tuple[Path, ...]) -> None:
    first = OfflinePlaces(index_dir, venue_files, _load_thread())
    second = OfflinePlaces(index_dir, venue_files, _load_thread())
    try:
        for center in (UCLA, SUVA, (35.68, 139.69)):
            a, b = await first.nearby(*center, 50, 20), await second.nearby(*center, 50, 20)
            assert json.dumps(a) == json.dumps(b)
    finally:
        await first.close()
        await second.close()


@pytest_twisted.ensureDeferred
async def test_nearby_before_start_waits(index_dir: Path, venue_files: tuple[Path, ...]) -> None:
    provider = OfflinePlaces(index_dir, venue_files, _load_thread())
    try:
        answers = await DeferredList(
            [provider.nearby(*UCLA, 1, 5) for _ in range(3)], fireOnOneErrback=True
        )
        assert [_names(answer)[0] for _, answer in answers] == ["Pauley Pavilion"] * 3
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_closed_provider_answers_unknown_error(
    index_dir: Path, venue_files: tuple[Path, ...]
) -> None:
    provider = OfflinePlaces(index_dir, venue_files, _load_thread())
    await provider.start()
    await provider.close()
    answer = await provider.nearby(*UCLA, 1, 5)
    assert answer == {"html_attributions": [], "results": [], "status": "UNKNOWN_ERROR"}


@pytest_twisted.ensureDeferred
async def test_stages_from_new_to_closed(index_dir: Path, venue_files: tuple[Path, ...]) -> None:
    provider = OfflinePlaces(index_dir, venue_files, _load_thread())
    assert provider.stage is Stage.NEW
    started = provider.start()
    assert provider.stage is Stage.LOADING
    await started
    assert provider.stage is Stage.READY
    await provider.close()
    assert provider.stage is Stage.CLOSED
    await provider.start()  # a start that worked stays worked


@pytest_twisted.ensureDeferred
async def test_close_while_loading(index_dir: Path, venue_files: tuple[Path, ...]) -> None:
    provider = OfflinePlaces(index_dir, venue_files, _load_thread())
    started = provider.start()
    closed = provider.close()
    assert provider.stage is Stage.CLOSING
    assert (await provider.nearby(*UCLA, 1, 5))["status"] == "UNKNOWN_ERROR"
    await closed
    assert provider.stage is Stage.CLOSED
    await started
    assert (await provider.nearby(*UCLA, 1, 5))["status"] == "UNKNOWN_ERROR"


@pytest_twisted.ensureDeferred
async def test_a_failed_start_stays_failed_once_closed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text("{}", encoding="utf-8")
    provider = OfflinePlaces(tmp_path / "data", [bad], _load_thread(), min_population=None)
    with pytest.raises(VenueFileError):
        await provider.start()
    assert provider.stage is Stage.FAILED
    await provider.close()
    assert provider.stage is Stage.CLOSED
    with pytest.raises(VenueFileError):
        await provider.start()


@pytest_twisted.ensureDeferred
async def test_close_before_start(tmp_path: Path) -> None:
    provider = OfflinePlaces(tmp_path, (), _load_thread())
    await provider.close()
    with pytest.raises(RuntimeError, match="closed"):
        await provider.start()
    assert (await provider.nearby(*UCLA, 1, 5))["status"] == "UNKNOWN_ERROR"
    assert list(tmp_path.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_servers_racing_build_one_index(
    tmp_path: Path, venue_files: tuple[Path, ...]
) -> None:
    providers = [
        OfflinePlaces(tmp_path, venue_files, _load_thread(), min_population=None) for _ in range(5)
    ]
    try:
        await DeferredList([p.start() for p in providers], fireOnOneErrback=True)
        answers = [await p.nearby(*UCLA, 1, 20) for p in providers]
        assert all(_names(a) == ["Pauley Pavilion", "Royce Hall", "Diddy Riese"] for a in answers)
    finally:
        for provider in providers:
            await provider.close()
    assert len(list(tmp_path.glob("places-*.sqlite"))) == 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest_twisted.ensureDeferred
async def test_changed_sources_replace_the_old_index(tmp_path: Path) -> None:
    venues = tmp_path / "venues.csv"
    data_dir = tmp_path / "data"
    for name in ("Old Cafe", "New Cafe"):
        venues.write_text(f"name,latitude,longitude\n{name},1,1\n", encoding="utf-8")
        provider = OfflinePlaces(data_dir, [venues], _load_thread(), min_population=None)
        try:
            assert _names(await provider.nearby(1, 1, 1, 5)) == [name]
        finally:
            await provider.close()
        assert len(list(data_dir.glob("places-*.sqlite"))) == 1


@pytest_twisted.ensureDeferred
async def test_bad_file_fails_the_start_and_answers_unknown_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,latitude,longitude\nCafe,1,1\nBar,north,1\n", encoding="utf-8")
    provider = OfflinePlaces(tmp_path / "data", [bad], _load_thread(), min_population=None)
    try:
        with pytest.raises(VenueFileError, match=r"bad\.csv, line 3: could not convert"):
            await provider.start()
        with pytest.raises(VenueFileError):
            await provider.start()
        answer = await provider.nearby(1, 1, 1, 5)
        assert answer["status"] == "UNKNOWN_ERROR"
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_lookups_waiting_for_a_failed_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text("{}", encoding="utf-8")
    provider = OfflinePlaces(tmp_path / "data", [bad], _load_thread(), min_population=None)
    try:
        answers = [provider.nearby(1, 1, 1, 5), provider.nearby(2, 2, 1, 5)]
        for answer in answers:
            assert (await answer)["status"] == "UNKNOWN_ERROR"
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_missing_file(tmp_path: Path) -> None:
    provider = OfflinePlaces(tmp_path, [tmp_path / "nowhere.geojson"], _load_thread())
    try:
        with pytest.raises(VenueFileError, match=r"nowhere\.geojson: cannot read"):
            await provider.start()
    finally:
        await provider.close()


def test_unknown_population_threshold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_population"):
        OfflinePlaces(tmp_path, (), _load_thread(), min_population=100)


@pytest_twisted.ensureDeferred
async def test_make_provider_offline(index_dir: Path, venue_files: tuple[Path, ...]) -> None:
    provider = make_provider(PlacesConfig(files=venue_files), index_dir, _reactor())
    try:
        assert isinstance(provider, OfflinePlaces)
        assert _names(await provider.nearby(*UCLA, 0.3, 5)) == ["Pauley Pavilion"]
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_make_provider_google_without_key(tmp_path: Path) -> None:
    provider = make_provider(PlacesConfig(provider="google", key=""), tmp_path, _reactor())
    try:
        assert isinstance(provider, GooglePlaces)
        answer = await provider.nearby(*UCLA, 10, 5)
        assert answer == {"html_attributions": [], "results": [], "status": "REQUEST_DENIED"}
    finally:
        await provider.close()


@pytest_twisted.ensureDeferred
async def test_make_provider_google_needs_tls_for_https(tmp_path: Path) -> None:
    config = PlacesConfig(provider="google", key="k")
    if not tls_available():
        with pytest.raises(ValueError, match=r"needs TLS.*twisted\[tls\]"):
            make_provider(config, tmp_path, _reactor())
    else:
        provider = make_provider(config, tmp_path, _reactor())
        assert isinstance(provider, GooglePlaces)
        await provider.close()
    plain = make_provider(
        PlacesConfig("google", (), "http://127.0.0.1:9/", "k"), tmp_path, _reactor()
    )
    assert isinstance(plain, GooglePlaces)
    await plain.close()


def test_make_provider_unknown(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown places provider 'bing'"):
        make_provider(PlacesConfig(provider="bing"), tmp_path, _reactor())
