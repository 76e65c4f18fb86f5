"""`[web]` in the config: the defaults, each server's own port and URL, and the refusals (every
one naming its key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from herd.config import ConfigError, HerdConfig, WebConfig, load_config

TWO = """
[herd]
secret = "s"
[servers.A]
port = 12000
{a}
[servers.B]
port = 12001
{b}
"""


def load(tmp_path: Path, text: str) -> HerdConfig:
    path = tmp_path / "herd.toml"
    path.write_text(text)
    return load_config(path, {})


def refused(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value


def test_no_web_table_no_web(tmp_path: Path) -> None:
    config = load(tmp_path, TWO.format(a="", b=""))
    assert config.web is None and config.web_of("A") is None


def test_each_server_its_own_port_and_the_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, TWO.format(a="web_port = 8001", b="web_port = 8002") + "[web]\n")
    assert config.web == WebConfig()
    a, b = config.web_of("A"), config.web_of("B")
    assert a is not None and b is not None
    assert (a.host, a.port, a.base_url, a.status_port) == (
        "127.0.0.1",
        8001,
        "http://127.0.0.1:8001",
        None,
    )
    assert b.base_url == "http://127.0.0.1:8002" and not b.secure
    assert a.settings.link_days == 30 and a.settings.body_bytes == 16384


def test_shared_settings_and_overrides(tmp_path: Path) -> None:
    text = TWO.format(
        a='web_port = 8001\nweb_base_url = "https://a.example.org/"\nstatus_port = 9101',
        b="web_port = 8002",
    ) + (
        '[web]\nhost = "0.0.0.0"\nbase_url = "https://renga.example.org"\nstatus_port = 9100\n'
        "link_days = 7\nsession_hours = 2\nheartbeat_seconds = 5\nidle_seconds = 30.5\n"
    )
    config = load(tmp_path, text)
    a, b = config.web_of("A"), config.web_of("B")
    assert a is not None and b is not None
    assert a.base_url == "https://a.example.org" and a.secure and a.status_port == 9101
    assert b.base_url == "https://renga.example.org" and b.status_port == 9100
    assert a.host == b.host == "0.0.0.0"
    assert a.settings.link_days == 7 and a.settings.idle_seconds == 30.5


def test_one_port_for_servers_on_different_hosts(tmp_path: Path) -> None:
    text = (
        '[herd]\nsecret = "s"\n[servers.A]\nhost = "10.0.0.1"\nport = 1\n'
        '[servers.B]\nhost = "10.0.0.2"\nport = 1\n[web]\nport = 8080\n'
    )
    config = load(tmp_path, text)
    site = config.web_of("B")
    assert site is not None and site.port == 8080 and site.base_url == "http://10.0.0.2:8080"


@pytest.mark.parametrize(
    ("a", "b", "web", "key", "says"),
    [
        ("", "", "[web]\n", "servers.A.web_port", "is required"),
        ("web_port = 8001", "web_port = 8001", "[web]\n", "servers.B.web_port", "already used"),
        ("", "", "[web]\nport = 8001\n", "servers.B.web_port", "already used"),
        ("web_port = 12001", "web_port = 8002", "[web]\n", "servers.A.web_port", "already used"),
        ("web_port = 8001", "", "", "servers.A.web_port", "needs a [web] table"),
        ('web_base_url = "https://x.org"', "", "", "servers.A.web_base_url", "needs a [web]"),
        ("web_port = 0", "web_port = 8002", "[web]\n", "servers.A.web_port", "between 1"),
        ('web_port = "8001"', "", "[web]\nport = 9\n", "servers.A.web_port", "an integer"),
        ("", "", '[web]\nport = 8001\nbase_url = "ftp://x"\n', "web.base_url", "http or https"),
        ("", "", '[web]\nport = 8001\nbase_url = "https://x/?a=1"\n', "web.base_url", "URL"),
        ("", "", '[web]\nport = 8001\nbase_url = "https://x/<b>"\n', "web.base_url", "URL"),
        ("", "", '[web]\nport = 8001\nbase_url = "https://u@x"\n', "web.base_url", "URL"),
        ("", "", "[web]\nport = 8001\nlink_days = 0\n", "web.link_days", "between"),
        ("", "", "[web]\nport = 8001\nbody_bytes = 10\n", "web.body_bytes", "between"),
        ("", "", "[web]\nport = 8001\nheartbeat_seconds = 90\n", "web.heartbeat_seconds", "less"),
        ("", "", "[web]\nport = 8001\nlinks_days = 3\n", "web.links_days", "unknown key"),
        ("", "", '[web]\nport = 8001\nhost = ""\n', "web.host", "host name"),
        ("web_port = 8001", "web_port = 8002", "[web]\nstatus_port = 8002\n", "servers.B", "used"),
    ],
)
def test_refusals_name_the_key(
    tmp_path: Path, a: str, b: str, web: str, key: str, says: str
) -> None:
    error = refused(tmp_path, TWO.format(a=a, b=b) + web)
    assert error.key.startswith(key) and says in error.problem, error
