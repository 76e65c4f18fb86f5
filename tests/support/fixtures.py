"""The kit's pytest fixtures (a plugin, loaded by tests/conftest.py): one Prosody for the session
with accounts made per test, and an in-process SMTP sink per test on the reactor's loop."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_twisted

from notifier.localxmpp import LocalProsody
from tests.support.prosody import running_prosody
from tests.support.smtp import SmtpServer

XMPP_PASSWORD = "not-a-secret"
BOT_USER = "renga"
_serial = itertools.count(1)


@pytest.fixture(scope="session")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProsody]:
    """One Prosody for the session, on a free loopback port, with the bot's account."""
    with running_prosody(tmp_path_factory.mktemp("prosody"), {BOT_USER: XMPP_PASSWORD}) as server:
        yield server


@pytest.fixture
def xmpp_account(prosody: LocalProsody) -> Callable[[str], str]:
    """Register a fresh account per call (``alice`` -> ``alice7@localhost``), so tests never
    share rosters or offline messages; all use ``XMPP_PASSWORD``."""

    def register(name: str) -> str:
        return prosody.register(f"{name}{next(_serial)}", XMPP_PASSWORD)

    return register


@pytest_twisted.async_yield_fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    """A real SMTP server for the test, on the reactor's loop; recipients named `bad@…`,
    `busy@…`, `slow@…` are refused, deferred and held (`tests.support.smtp.Mailbox`)."""
    server = SmtpServer()
    await server.start()
    yield server
    if server.listening:
        await server.stop()
