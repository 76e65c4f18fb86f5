"""Fixtures for tests against real services on loopback.

Prosody is installed when missing (we run as root in CI); if it cannot be, the fixture fails with
the reason: nothing here is ever skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from notifier.localxmpp import LocalProsody, ensure_prosody_installed

XMPP_PASSWORD = "not-a-secret"
BOT_USER = "renga"
_serial = itertools.count(1)


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProsody]:
    """One Prosody for the session, on a free loopback port, with the bot's account."""
    ensure_prosody_installed()
    server = LocalProsody(tmp_path_factory.mktemp("prosody"))
    server.start()
    try:
        server.register(BOT_USER, XMPP_PASSWORD)
        yield server
    finally:
        server.stop()


@pytest.fixture
def xmpp_account(prosody: LocalProsody) -> Callable[[str], str]:
    """Register a fresh account per call (``alice`` -> ``alice7@localhost``), so tests never
    share rosters or offline messages; all use ``XMPP_PASSWORD``."""

    def register(name: str) -> str:
        return prosody.register(f"{name}{next(_serial)}", XMPP_PASSWORD)

    return register
