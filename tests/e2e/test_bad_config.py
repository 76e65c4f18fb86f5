"""`herd run` refuses a bad config at start: non-zero exit, a message naming the file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.herd import REPO
from tests.support.ports import free_ports

pytestmark = pytest.mark.timeout(60)


def run(config: Path, name: str = "Bailey") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "herd", "run", name, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )


def two_servers(bailey: str = "", herd: str = "", same_port: bool = False) -> str:
    """Bailey and Bona on free ports; extra lines for [servers.Bailey] and [herd]."""
    bailey_port, bona_port = free_ports(2)
    return f"""
[herd]
secret = "s"
{herd}

[servers.Bailey]
port = {bailey_port}
{bailey}

[servers.Bona]
port = {bailey_port if same_port else bona_port}
"""


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (two_servers('peers = ["Bona", "Nobody"]'), "servers.Bailey.peers", "Nobody"),
        (two_servers('peers = ["Bailey"]'), "servers.Bailey.peers", "itself"),
        (two_servers("peers = [1]"), "servers.Bailey.peers[0]", "string"),
        (two_servers('host = "x y"'), "servers.Bailey.host", "host"),
        (two_servers('colour = "red"'), "servers.Bailey.colour", "unknown"),
        (two_servers(herd="max_line = 10"), "herd.max_line", "1024"),
        (two_servers(herd='secrte = "t"'), "herd.secrte", "unknown"),
        (two_servers(same_port=True), "servers.Bona.port", "already used by Bailey"),
        ('[herd]\nsecret = "s"\n[servers.Bailey]\nport = "12001"\n', "servers.Bailey.port", ""),
        ('[herd]\nsecret = "s"\n[servers.Bailey]\nport = 0\n', "servers.Bailey.port", ""),
        ('[herd]\nsecret = "s"\n[serverz.Bailey]\nport = 12001\n', "serverz", "unknown"),
        ('[herd]\nsecret = "s"\n', "servers", ""),
    ],
    ids=[
        "unknown-peer",
        "self-peer",
        "peer-not-a-string",
        "bad-host",
        "unknown-server-key",
        "max-line-too-small",
        "unknown-herd-key",
        "duplicate-port",
        "port-a-string",
        "port-zero",
        "unknown-table",
        "no-servers",
    ],
)
def test_a_bad_config_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run(config)
    assert result.returncode != 0
    message = result.stderr
    assert str(config.resolve()) in message, message
    assert f": {key}: " in message, message
    assert problem in message, message
    assert "Traceback" not in message, message
    assert not (tmp_path / "var").exists(), "nothing may start"


def test_running_a_server_the_config_does_not_name_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "herd.toml"
    config.write_text(two_servers())
    result = run(config, name="Mallory")
    assert result.returncode != 0
    assert str(config.resolve()) in result.stderr
    assert ": servers: " in result.stderr and "Mallory" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("name", "text"),
    [("missing.toml", None), ("broken.toml", "[herd\nsecret = 's'\n"), ("latin1.toml", "é")],
)
def test_an_unreadable_config_is_refused_naming_the_file(
    tmp_path: Path, name: str, text: str | None
) -> None:
    config = tmp_path / name
    if text is not None:
        config.write_bytes(text.encode("latin-1"))
    result = run(config)
    assert result.returncode != 0
    assert str(config.resolve()) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_sender_name_no_from_header_can_carry_is_refused_naming_the_key(tmp_path: Path) -> None:
    """The display name must fit one encoded word (several would read back with spaces in
    between); found out at start, not at the first mail."""
    config = tmp_path / "herd.toml"
    name = "Рассылка планов и встреч нашей компании"
    smtp = f'[smtp]\nhost = "127.0.0.1"\nport = 2525\nsender = "{name} <r@example.org>"\n'
    smtp += 'tls = "none"\n'
    config.write_text(two_servers() + smtp)
    result = run(config)
    assert result.returncode == 1, result.stderr
    assert f"{config.resolve()}: smtp.sender: " in result.stderr, result.stderr
    assert "too long to encode" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
