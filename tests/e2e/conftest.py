"""Fixtures for the end-to-end tests: herds of real `herd run` processes on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.herd import Herd, running_herd


@pytest.fixture(scope="session")
def places_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir whose places index is built (once per session, by a real server), so each
    herd's WHATSAT does not wait seconds for its own build."""
    root = tmp_path_factory.mktemp("seed")
    with running_herd(root, names=("Bailey",), links=()) as seed:
        seed.up()
        seed.warm_up()
        assert seed.terminate("Bailey") == 0
    return seed.data_dir


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory, places_seed: Path) -> Iterator[Herd]:
    """The default five-server herd, up with every link, shared by a module's gentle tests."""
    with running_herd(tmp_path_factory.mktemp("herd"), seed=places_seed) as started:
        started.up()
        started.warm_up()
        yield started


@pytest.fixture
def fresh_herd(tmp_path: Path, places_seed: Path) -> Iterator[Herd]:
    """A five-server herd of the test's own, up with every link, for tests that break it."""
    with running_herd(tmp_path, seed=places_seed) as started:
        started.up()
        started.warm_up()
        yield started


@pytest.fixture
def idle_herd(tmp_path: Path, places_seed: Path) -> Iterator[Herd]:
    """A five-server herd config of the test's own, not started: the test starts what it needs."""
    with running_herd(tmp_path, seed=places_seed) as created:
        yield created
