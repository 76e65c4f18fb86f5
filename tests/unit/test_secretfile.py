"""The herd secret generated under data_dir when the config gives none: which secret wins, the
file's format and mode, and many servers starting at once agreeing on one."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from herd.config import HerdConfig, load_config
from herd.secretfile import (
    SecretFileError,
    choose_secret,
    format_secret,
    parse_secret,
    read_or_create_secret,
    read_secret,
    secret_path,
    too_open,
)

NO_SECRET = "[herd]\ndata_dir = 'var'\n[servers.A]\nport = 12001\n"


def config(tmp_path: Path, env: dict[str, str] | None = None, text: str = NO_SECRET) -> HerdConfig:
    path = tmp_path / "herd.toml"
    path.write_text(text)
    return load_config(path, env or {})


def test_format_and_parse() -> None:
    contents = format_secret(bytes(range(32)))
    assert contents == bytes(range(32)).hex().encode() + b"\n"
    assert parse_secret(contents) == bytes(range(32)).hex().encode()
    assert parse_secret(contents[:-1]) == contents[:-1]
    for bad in (b"", b"\n", contents[:-2], contents.upper(), contents + b"x", b" " + contents):
        assert parse_secret(bad) is None, bad
    with pytest.raises(ValueError):
        format_secret(bytes(16))


def test_only_the_owner_may_read_or_write() -> None:
    assert not too_open(0o100600) and not too_open(0o400)
    assert too_open(0o640) and too_open(0o604) and too_open(0o620) and too_open(0o602)


def test_a_configured_secret_wins_over_the_file(tmp_path: Path) -> None:
    def never(path: Path) -> bytes:
        raise AssertionError("the file must not be read")

    chosen = choose_secret(config(tmp_path, {"HERD_SECRET": "from-env"}), never)
    assert chosen.secret == b"from-env"


def test_without_one_the_data_dir_file_is_the_secret(tmp_path: Path) -> None:
    asked: list[Path] = []

    def generated(path: Path) -> bytes:
        asked.append(path)
        return b"f" * 64

    loaded = config(tmp_path)
    assert loaded.secret == b""
    assert loaded.secret_warning is not None and str(secret_path(loaded.data_dir)) in (
        loaded.secret_warning
    )
    chosen = choose_secret(loaded, generated)
    assert chosen.secret == b"f" * 64
    assert asked == [tmp_path / "var" / "herd.secret"]
    with pytest.raises(ValueError):
        loaded.with_secret(b"")


def test_the_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "var" / "herd.secret"
    with pytest.raises(SecretFileError, match="does not exist yet"):
        read_secret(path)
    first = read_or_create_secret(path)
    assert parse_secret(path.read_bytes()) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_or_create_secret(path) == first == read_secret(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["herd.secret"]


def test_servers_starting_at_once_agree(tmp_path: Path) -> None:
    path = tmp_path / "var" / "herd.secret"
    start = threading.Barrier(16)
    results: list[bytes] = []

    def one_server() -> None:
        start.wait()
        results.append(read_or_create_secret(path))

    threads = [threading.Thread(target=one_server) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 16 and len(set(results)) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["herd.secret"]


def test_a_file_others_can_read_or_that_was_edited_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "herd.secret"
    read_or_create_secret(path)
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        read_or_create_secret(path)
    os.chmod(path, 0o600)
    path.write_text("hunter2\n")
    with pytest.raises(SecretFileError, match="not a herd secret"):
        read_secret(path)
