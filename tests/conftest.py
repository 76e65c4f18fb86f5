"""Session-wide test hygiene."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from herd import zones

pytest_plugins = ["tests.support.fixtures", "tests.support.browser"]


@pytest.fixture(scope="session", autouse=True)
def _time_zone_finder_released() -> Iterator[None]:
    """The time zone finder lives as long as the process (`zones._finder`); a test run that
    made one releases it before the interpreter's exit, where its memory maps would otherwise
    be collected unclosed and print warnings after pytest's summary."""
    yield
    if zones._finder.cache_info().currsize:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            zones._finder().cleanup()
        zones._finder.cache_clear()
