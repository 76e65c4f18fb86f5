"""Notifications end to end: a herd configured with `[smtp]` for an SMTP server in a process of
its own (`tests.support.smtp.SmtpProcess`: a test can stop it and start it again on the same
port), and the outbox read back from a server's database.

Blocking code only, like the rest of tests/e2e; every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.herd import LINKS, NAMES, Herd
from tests.support.ports import HOST, free_ports
from tests.support.smtp import SmtpProcess

SENDER = "Renga <renga@example.org>"


def smtp_table(port: int) -> str:
    return "\n".join(
        [
            "",
            "[smtp]",
            f"host = {json.dumps(HOST)}",
            f"port = {port}",
            f"sender = {json.dumps(SENDER)}",
            'tls = "none"',
            "",
        ]
    )


class NotifyHerd(Herd):
    """A herd (the default five servers unless `names` and `links` say otherwise), its config
    with an `[smtp]` table for `smtp_port` and the `notifications` text (TOML) after it."""

    def __init__(
        self,
        root: Path,
        smtp_port: int,
        seed: Path | None = None,
        names: tuple[str, ...] = NAMES,
        links: tuple[tuple[str, str], ...] = LINKS,
    ) -> None:
        self.smtp_port = smtp_port
        self.notifications = ""
        super().__init__(root, names=names, links=links, seed=seed)

    def write_config(self, path: Path, links: Iterable[tuple[str, str]]) -> Path:
        super().write_config(path, links)
        with path.open("a") as config:
            config.write(smtp_table(self.smtp_port))
            config.write(self.notifications)
        return path

    def database(self, name: str) -> Path:
        return self.data_dir / f"{name}.sqlite"


@contextmanager
def notify_setup(
    root: Path,
    seed: Path | None,
    names: tuple[str, ...] = NAMES,
    links: tuple[tuple[str, str], ...] = LINKS,
) -> Iterator[tuple[NotifyHerd, SmtpProcess]]:
    """A mail sink on a free port and a (not yet started) herd configured to send through it;
    every process is gone afterwards, whatever happened."""
    herd = NotifyHerd(root / "herd", smtp_port=0, seed=seed, names=names, links=links)
    # The SMTP port comes from the same free-port choice as the herd's ports (below the
    # ephemeral range, distinct from them): rewrite the config with it.
    port = next(p for p in free_ports(len(herd.ports) + 1) if p not in herd.ports.values())
    herd.smtp_port = port
    herd.write_config(herd.config_path, herd.links)
    smtp = SmtpProcess(root / "smtp", port)
    try:
        yield herd, smtp
    finally:
        try:
            herd.close()
        finally:
            smtp.close()


# --- the outbox, read from a server's database --------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRow:
    key: str
    channel: str
    recipient: str
    subject: str
    state: str
    possible_duplicate: bool


def outbox_rows(database: Path) -> list[OutboxRow]:
    """Every outbox row of a server's database (read only; the server may be running)."""
    if not database.exists():
        return []
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10.0)) as db:
        rows = db.execute(
            "SELECT key, channel, recipient, subject, state, possible_duplicate FROM outbox"
        ).fetchall()
    return [
        OutboxRow(_text(key), _text(channel), _text(recipient), _text(subject), state, bool(dup))
        for key, channel, recipient, subject, state, dup in rows
    ]


def _text(value: str | bytes) -> str:
    """A TEXT column, or the BLOB the outbox keeps for text that is not valid UTF-8."""
    return value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")
