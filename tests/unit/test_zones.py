"""Time zones: the one a user set, else the zone at their position, else UTC."""

from __future__ import annotations

from herd.zones import timezone_of


def test_a_zone_set_explicitly_wins_over_the_position() -> None:
    assert timezone_of("America/New_York", (48.8566, 2.3522)) == "America/New_York"


def test_the_zone_at_the_position() -> None:
    assert timezone_of(None, (48.8566, 2.3522)) == "Europe/Paris"
    assert timezone_of(None, (35.6762, 139.6503)) == "Asia/Tokyo"


def test_utc_without_either() -> None:
    assert timezone_of(None, None) == "UTC"
