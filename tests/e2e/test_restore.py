"""Restoring a server from a backup as docs/operations.md ("Backups") says: a copy taken while it
runs (`VACUUM INTO`), later changes made, the server stopped, the copy put back and given a new
store instance. The restored server gets back what was made after the copy, and what it makes
next reaches its peer (under its old instance, a new operation could reuse the id of one made
after the copy, and the peer would ignore it as known)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.herd import Herd, running_herd
from tests.support.lines import exchange, now_time
from tests.support.polling import wait_until
from tests.support.users import add_user

NAMES = ("Bailey", "Bona")
LINKS = (("Bailey", "Bona"),)


@pytest.fixture
def pair(tmp_path: Path, places_seed: Path) -> Iterator[Herd]:
    with running_herd(tmp_path, NAMES, LINKS, seed=places_seed) as herd:
        herd.up()
        yield herd


def _authenticates(herd: Herd, name: str, user: str, token: str) -> bool:
    reply = exchange(herd.port(name), f"AUTH {user} {token}\n".encode())
    return reply.startswith(b"USER ")


def _iamat(herd: Herd, name: str, client: bytes) -> bytes:
    return herd.iamat(name, client, b"+34.068930-118.445127", now_time())


def test_a_restored_backup_with_a_new_instance_catches_up_and_its_new_ops_reach_the_peer(
    pair: Herd, tmp_path: Path
) -> None:
    herd = pair
    early = add_user(herd.config_path, "early", "early@example.org", server="Bailey")
    before = _iamat(herd, "Bailey", b"before")
    herd.wait_knows(NAMES, b"before", before, 10.0)

    database = herd.data_dir / "Bailey.sqlite"
    backup = tmp_path / "Bailey-backup.sqlite"
    with sqlite3.connect(database) as db:  # while Bailey runs
        db.execute("VACUUM INTO ?", (str(backup),))
    db.close()

    late = add_user(herd.config_path, "late", "late@example.org", server="Bailey")
    after = _iamat(herd, "Bailey", b"after")
    herd.wait_knows(NAMES, b"after", after, 10.0)
    wait_until(lambda: _authenticates(herd, "Bona", "late", late), 10.0, "late at Bona")

    assert herd.terminate("Bailey") == 0
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    database.write_bytes(backup.read_bytes())
    # the documented step; without it, Bailey never got "after" back (measured: the peer took
    # Bailey for the store it last read from, which has everything Bailey made)
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM meta WHERE key = 'instance'")
    db.close()
    herd.up("Bailey")

    # what was made after the copy comes back from the peer
    herd.wait_knows(["Bailey"], b"after", after, 15.0)
    wait_until(lambda: _authenticates(herd, "Bailey", "late", late), 15.0, "late at Bailey")
    assert _authenticates(herd, "Bailey", "early", early)

    # and what the restored server makes now reaches the peer
    fresh = add_user(herd.config_path, "fresh", "fresh@example.org", server="Bailey")
    wait_until(lambda: _authenticates(herd, "Bona", "fresh", fresh), 15.0, "fresh at Bona")
    newest = _iamat(herd, "Bailey", b"newest")
    herd.wait_knows(NAMES, b"newest", newest, 10.0)
