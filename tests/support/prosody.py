"""The one Prosody of the tests and benchmarks: `notifier.localxmpp.LocalProsody` (the product's
dev tooling), installed if missing, started with its accounts, always stopped."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from notifier.localxmpp import LocalProsody, ensure_prosody_installed


@contextmanager
def running_prosody(
    folder: Path,
    accounts: Mapping[str, str],
    *,
    certificate: Path | None = None,
    key: Path | None = None,
    direct_tls: bool = False,
) -> Iterator[LocalProsody]:
    """A Prosody under `folder` on a free loopback port with `accounts` (user ->
    password) registered; stopped when the block ends, however it ends.  Prosody is installed
    when missing (we run as root in CI); if it cannot be, this fails with the reason.

    Plain by default; with a `certificate` and its `key` (e.g. from `tests.support.testca`) it
    requires STARTTLS, and with `direct_tls` also listens for direct TLS on a free port of its
    own (`server.direct_tls_port`)."""
    ensure_prosody_installed()
    server = LocalProsody(folder, certificate=certificate, key=key, direct_tls=direct_tls)
    try:
        server.start()
        for user, password in accounts.items():
            server.register(user, password)
        yield server
    finally:
        server.stop()
