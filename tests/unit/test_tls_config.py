"""`[tls]` in the config: three paths relative to the config file, `{server}` the only
placeholder, every key required and no other; absent, the herd runs plain TCP."""

from __future__ import annotations

from pathlib import Path

import pytest

from herd.config import ConfigError, load_config

ONE_SERVER = """
[servers.Bailey]
port = 12001
"""


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "herd.toml"
    path.write_text(ONE_SERVER + text)
    return load_config(path, {})


def test_no_tls_table_is_plain(tmp_path: Path) -> None:
    path = tmp_path / "herd.toml"
    path.write_text(ONE_SERVER)
    assert load_config(path, {}).tls is None


def test_paths_are_relative_to_the_config_and_name_the_server(tmp_path: Path) -> None:
    path = tmp_path / "herd.toml"
    path.write_text(
        ONE_SERVER
        + '[tls]\nca = "tls/ca.pem"\ncertificate = "tls/{server}.pem"\nkey = "/etc/k/{server}"\n'
    )
    tls = load_config(path, {}).tls
    assert tls is not None
    assert tls.ca == tmp_path / "tls" / "ca.pem"
    assert tls.files("Bona") == (tmp_path / "tls" / "Bona.pem", Path("/etc/k/Bona"))


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ('ca = "ca.pem"\ncertificate = "c.pem"', "tls.key", "is required"),
        ('ca = "ca.pem"\ncertificate = "c.pem"\nkey = "k"\ncert = "x"', "tls.cert", "unknown key"),
        ('ca = "ca.pem"\ncertificate = "{name}.pem"\nkey = "k"', "tls.certificate", "placeholder"),
        ('ca = "{server}.pem"\ncertificate = "c.pem"\nkey = "k"', "tls.ca", "one CA"),
        ('ca = ""\ncertificate = "c.pem"\nkey = "k"', "tls.ca", "empty"),
        ('ca = 1\ncertificate = "c.pem"\nkey = "k"', "tls.ca", "must be a string"),
    ],
)
def test_refusals_name_the_key(tmp_path: Path, table: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, "[tls]\n" + table + "\n")
    assert raised.value.key == key
    assert problem in raised.value.problem
