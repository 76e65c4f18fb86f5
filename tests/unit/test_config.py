"""The config loader: the default herd, every refusal naming file and key, env overrides."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from herd.config import (
    SECRET_REQUIRED,
    ConfigError,
    HerdConfig,
    LimitsConfig,
    LogConfig,
    NotificationsConfig,
    PlacesConfig,
    ServerConfig,
    SmtpConfig,
    XmppConfig,
    default_config_path,
    load_config,
)
from tests.support.testca import CertAuthority

ONE_SERVER = """
[servers.Bailey]
port = 12001
"""

SECRET = """
[herd]
secret = "s3cret"
"""

XMPP = """
[xmpp]
jid = "renga@example.org"
password_file = "bot.secret"
"""

SMTP = """
[smtp]
host = "smtp.example.org"
sender = "Renga <renga@example.org>"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "herd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> HerdConfig:
    return load_config(write(tmp_path, text), env or {})


def refusal(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    """The ConfigError `text` is refused with, checked to name the file and its key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env or {})
    error = caught.value
    assert error.path == path.resolve()
    assert str(error) == f"{path.resolve()}: {error.key}: {error.problem}"
    return error


# The default herd


def test_default_config_is_the_five_server_herd() -> None:
    config = load_config(default_config_path(), {})

    assert config.path == default_config_path()
    assert config.data_dir == default_config_path().parent.parent / "var"
    assert config.max_line == 65536
    assert {name: (s.host, s.port) for name, s in config.servers.items()} == {
        "Bailey": ("127.0.0.1", 12001),
        "Bona": ("127.0.0.1", 12002),
        "Campbell": ("127.0.0.1", 12003),
        "Clark": ("127.0.0.1", 12004),
        "Jaquez": ("127.0.0.1", 12005),
    }
    assert list(config.servers) == ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"]
    assert config.places == PlacesConfig()
    assert config.xmpp is None
    assert config.smtp is None


def test_default_config_has_the_six_links_both_ways() -> None:
    config = load_config(default_config_path(), {})
    links = {
        ("Clark", "Jaquez"),
        ("Clark", "Bona"),
        ("Campbell", "Bailey"),
        ("Campbell", "Bona"),
        ("Campbell", "Jaquez"),
        ("Bona", "Bailey"),
    }

    assert config.links == frozenset(frozenset(link) for link in links)
    for name, server in config.servers.items():
        expected = sorted({b for a, b in links if a == name} | {a for a, b in links if b == name})
        assert server.peers == tuple(expected), name
    assert config.servers["Campbell"].peers == ("Bailey", "Bona", "Jaquez")


def test_default_config_has_no_secret_and_warns() -> None:
    config = load_config(default_config_path(), {})

    assert config.secret == b""
    assert config.secret_warning is not None
    assert "HERD_SECRET" in config.secret_warning


def test_example_deployment_loads_with_its_secrets_from_the_environment() -> None:
    path = default_config_path().parent / "example-deployment.toml"
    env = {
        "HERD_SECRET": "herd-secret",
        "PLACES_API_KEY": "places-key",
        "RENGA_XMPP_PASSWORD": "bot-password",
        "RENGA_SMTP_PASSWORD": "mail-password",
    }

    config = load_config(path, env)

    assert config.secret == b"herd-secret"
    assert config.secret_warning is None
    assert len(config.servers) == 5
    assert len(config.links) == 6
    assert config.places.provider == "google"
    assert config.places.key == "places-key"
    assert config.xmpp is not None
    assert config.xmpp.password == "bot-password"
    assert config.smtp is not None
    assert config.smtp.password == "mail-password"


# Values, defaults and resolution


def test_minimal_config_gets_the_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, ONE_SERVER)

    assert config.path == (tmp_path / "herd.toml").resolve()
    assert config.data_dir == (tmp_path / "var").resolve()
    assert config.max_line == 65536
    assert config.servers == {"Bailey": ServerConfig("Bailey", "127.0.0.1", 12001, ())}
    assert config.links == frozenset()
    assert config.places == PlacesConfig()


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    text = f"""
[herd]
data_dir = "data/herd"
{ONE_SERVER}
[places]
files = ["venues/a.geojson", "../b.csv"]
"""
    config = load(tmp_path, text)

    assert config.data_dir == (tmp_path / "data" / "herd").resolve()
    assert config.places.files == (
        (tmp_path / "venues" / "a.geojson").resolve(),
        (tmp_path.parent / "b.csv").resolve(),
    )


def test_config_path_may_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, ONE_SERVER)

    assert load_config(str(path), {}).path == path.resolve()


def test_a_link_listed_on_both_sides_is_one_link(tmp_path: Path) -> None:
    text = """
[servers.A]
port = 1
peers = ["B", "B"]
[servers.B]
port = 2
peers = ["A"]
"""
    config = load(tmp_path, text)

    assert config.links == {frozenset({"A", "B"})}
    assert config.servers["A"].peers == ("B",)
    assert config.servers["B"].peers == ("A",)


def test_same_port_on_different_hosts_is_fine(tmp_path: Path) -> None:
    text = (
        SECRET
        + """
[servers.A]
host = "10.0.0.1"
port = 12000
[servers.B]
host = "10.0.0.2"
port = 12000
"""
    )
    config = load(tmp_path, text)

    assert [s.port for s in config.servers.values()] == [12000, 12000]


def test_server_lookup(tmp_path: Path) -> None:
    config = load(tmp_path, ONE_SERVER)

    assert config.server("Bailey").port == 12001
    with pytest.raises(ConfigError) as caught:
        config.server("Bailee")
    assert caught.value.key == "servers"
    assert str(caught.value) == (f"{config.path}: servers: no server named 'Bailee'; known: Bailey")


def test_xmpp_and_smtp_tables(tmp_path: Path) -> None:
    (tmp_path / "bot.secret").write_text("  from-file\n", encoding="utf-8")
    config = load(tmp_path, ONE_SERVER + XMPP + SMTP)

    assert config.xmpp == XmppConfig(
        jid="renga@example.org", password="from-file", host=None, port=5222, tls="starttls"
    )
    assert config.smtp == SmtpConfig(
        host="smtp.example.org",
        port=587,
        sender="Renga <renga@example.org>",
        username="",
        password="",
        tls="starttls",
    )


def test_loopback_xmpp_and_smtp_may_go_without_tls(tmp_path: Path) -> None:
    text = (
        ONE_SERVER
        + """
[xmpp]
jid = "renga@localhost"
host = "::1"
tls = "none"
[smtp]
host = "localhost"
sender = "renga@localhost"
username = "renga"
tls = "none"
"""
    )
    config = load(tmp_path, text, {"RENGA_XMPP_PASSWORD": "pw"})

    assert config.xmpp is not None
    assert (config.xmpp.host, config.xmpp.port, config.xmpp.tls) == ("::1", 5222, "none")
    assert config.smtp is not None
    assert (config.smtp.port, config.smtp.tls) == (25, "none")


# Environment overrides


def test_herd_secret_from_file_and_environment(tmp_path: Path) -> None:
    assert load(tmp_path, SECRET + ONE_SERVER).secret == b"s3cret"
    overridden = load(tmp_path, SECRET + ONE_SERVER, {"HERD_SECRET": "from-env"})
    assert overridden.secret == b"from-env"
    assert overridden.secret_warning is None
    assert load(tmp_path, SECRET + ONE_SERVER, {"HERD_SECRET": ""}).secret == b"s3cret"


def test_herd_secret_from_environment_allows_real_hosts(tmp_path: Path) -> None:
    text = """
[servers.A]
host = "herd.example.org"
port = 12000
"""
    config = load(tmp_path, text, {"HERD_SECRET": "from-env"})

    assert config.secret == b"from-env"
    assert config.secret_warning is None


def test_places_api_key_from_environment(tmp_path: Path) -> None:
    text = ONE_SERVER + '[places]\nprovider = "google"\nkey = "in-file"\n'

    assert load(tmp_path, text).places.key == "in-file"
    assert load(tmp_path, text, {"PLACES_API_KEY": "from-env"}).places.key == "from-env"
    assert load(tmp_path, text, {"PLACES_API_KEY": ""}).places.key == "in-file"


def test_google_without_a_key_is_allowed(tmp_path: Path) -> None:
    places = load(tmp_path, ONE_SERVER + '[places]\nprovider = "google"\n').places

    assert (places.provider, places.key) == ("google", "")


def test_xmpp_password_from_environment_skips_the_file(tmp_path: Path) -> None:
    (tmp_path / "bot.secret").write_text("from-file\n", encoding="utf-8")
    env = {"RENGA_XMPP_PASSWORD": "from-env"}
    xmpp = load(tmp_path, ONE_SERVER + XMPP, env).xmpp
    assert xmpp is not None
    assert xmpp.password == "from-env"

    (tmp_path / "bot.secret").unlink()
    xmpp = load(tmp_path, ONE_SERVER + XMPP, env).xmpp
    assert xmpp is not None
    assert xmpp.password == "from-env"


def test_smtp_password_from_environment(tmp_path: Path) -> None:
    smtp = load(tmp_path, ONE_SERVER + SMTP, {"RENGA_SMTP_PASSWORD": "pw"}).smtp

    assert smtp is not None
    assert smtp.password == "pw"


# Refusals: each names the file and the key


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.path == path.resolve()
    assert caught.value.key == ""
    assert str(caught.value) == f"{path.resolve()}: : no such file"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, {})
    assert caught.value.key == ""
    assert "cannot read" in caught.value.problem


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "herd.toml"
    path.write_bytes(b'[herd]\ndata_dir = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.key == ""
    assert "UTF-8" in caught.value.problem


def test_toml_syntax_error_gives_the_position(tmp_path: Path) -> None:
    error = refusal(tmp_path, "[servers.Bailey]\nport 12001\n")

    assert error.key == ""
    assert "line 2" in error.problem


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        # Unknown tables and keys: typos must not pass silently.
        (ONE_SERVER + "[plcaes]\n", "plcaes", "unknown table 'plcaes'"),
        ("[servers.Bailey]\nprot = 12001\n", "servers.Bailey.prot", "unknown key 'prot'"),
        (ONE_SERVER + "[herd]\nmax_lines = 2048\n", "herd.max_lines", "unknown key 'max_lines'"),
        (ONE_SERVER + "[places]\nkeys = 'k'\n", "places.keys", "unknown key 'keys'"),
        (ONE_SERVER + XMPP + "password = 'pw'\n", "xmpp.password", "unknown key 'password'"),
        (ONE_SERVER + SMTP + "password = 'pw'\n", "smtp.password", "unknown key 'password'"),
        # Wrong types.
        ("herd = 1\n" + ONE_SERVER, "herd", "must be a table, got an integer"),
        ("servers = []\n", "servers", "must be a table, got an array"),
        ("[servers]\nBailey = 12001\n", "servers.Bailey", "must be a table, got an integer"),
        ("[servers.Bailey]\nport = '12001'\n", "servers.Bailey.port", "must be an integer"),
        ("[servers.Bailey]\nport = true\n", "servers.Bailey.port", "got a boolean"),
        ("[servers.Bailey]\nport = 12001.0\n", "servers.Bailey.port", "got a float"),
        ("[servers.Bailey]\nport = 1\nhost = 1\n", "servers.Bailey.host", "must be a string"),
        ("[servers.Bailey]\nport = 1\npeers = 'A'\n", "servers.Bailey.peers", "must be an array"),
        ("[servers.Bailey]\nport = 1\npeers = [1]\n", "servers.Bailey.peers[0]", "a string"),
        ("[herd]\nmax_line = true\n" + ONE_SERVER, "herd.max_line", "got a boolean"),
        ("[herd]\nsecret = 1\n" + ONE_SERVER, "herd.secret", "must be a string"),
        ("[herd]\ndata_dir = 1979-05-27\n" + ONE_SERVER, "herd.data_dir", "got a date/time"),
        (ONE_SERVER + "[places]\nfiles = 'a.csv'\n", "places.files", "must be an array"),
        # Values.
        ("[herd]\nmax_line = 1023\n" + ONE_SERVER, "herd.max_line", "at least 1024"),
        ("[servers.Bailey]\nport = 0\n", "servers.Bailey.port", "between 1 and 65535"),
        ("[servers.Bailey]\nport = 65536\n", "servers.Bailey.port", "between 1 and 65535"),
        ("[servers.Bailey]\n", "servers.Bailey.port", "is required"),
        ("[servers.Bailey]\nport = 1\nhost = ''\n", "servers.Bailey.host", "host name"),
        (ONE_SERVER + "[places]\nprovider = 'bing'\n", "places.provider", "'offline', 'google'"),
        (ONE_SERVER + "[places]\nurl = 'ftp://x/'\n", "places.url", "http or https URL"),
    ],
)
def test_refused(tmp_path: Path, text: str, key: str, problem: str) -> None:
    error = refusal(tmp_path, text)

    assert error.key == key
    assert problem in error.problem


@pytest.mark.parametrize(
    ("servers", "key", "problem"),
    [
        ("", "servers", "at least one server"),
        ("[servers]\n", "servers", "at least one server"),
        ('[servers."Bai ley"]\nport = 1\n', "servers", "'Bai ley'"),
        ('[servers.""]\nport = 1\n', "servers", "non-empty"),
        ('[servers."Baïley"]\nport = 1\n', "servers", "printable ASCII"),
        ('[servers."Bai\\tley"]\nport = 1\n', "servers", "without whitespace"),
        (
            "[servers.A]\nport = 1\n[servers.B]\nport = 1\n",
            "servers.B.port",
            "port 1 on 127.0.0.1 is already used by A",
        ),
        (
            "[servers.A]\nhost = '::1'\nport = 1\n[servers.B]\nhost = '0:0::1'\nport = 1\n",
            "servers.B.port",
            "already used by A",
        ),
        ("[servers.A]\nport = 1\npeers = ['A']\n", "servers.A.peers", "cannot peer with itself"),
        (
            "[servers.A]\nport = 1\npeers = ['B']\n",
            "servers.A.peers",
            "unknown server 'B'; known: A",
        ),
    ],
)
def test_refused_servers(tmp_path: Path, servers: str, key: str, problem: str) -> None:
    error = refusal(tmp_path, SECRET + servers)

    assert error.key == key
    assert problem in error.problem


@pytest.mark.parametrize("host", ["10.0.0.1", "herd.example.org", "0.0.0.0", "::"])
def test_no_secret_with_a_non_loopback_host(tmp_path: Path, host: str) -> None:
    text = f"[servers.A]\nport = 1\n[servers.B]\nhost = '{host}'\nport = 2\n"
    error = refusal(tmp_path, text)

    assert error.key == "herd.secret"
    assert error.problem == SECRET_REQUIRED
    assert error.problem == (
        "a herd with non-loopback hosts needs a secret: set [herd] secret or HERD_SECRET"
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LocalHost"])
def test_no_secret_on_loopback_is_allowed_with_a_warning(tmp_path: Path, host: str) -> None:
    config = load(tmp_path, f"[servers.A]\nhost = '{host}'\nport = 1\n")

    assert config.secret == b""
    assert config.secret_warning is not None


def test_empty_secret_counts_as_none(tmp_path: Path) -> None:
    text = "[herd]\nsecret = ''\n[servers.A]\nhost = '10.0.0.1'\nport = 1\n"

    assert refusal(tmp_path, text).key == "herd.secret"


JID = "[xmpp]\njid = 'renga@example.org'\n"


@pytest.mark.parametrize(
    ("xmpp", "key", "problem"),
    [
        ("[xmpp]\npassword_file = 'bot.secret'\n", "xmpp.jid", "is required"),
        ("[xmpp]\njid = 'renga'\n", "xmpp.jid", "bare JID"),
        ("[xmpp]\njid = 'renga@example.org/Bailey'\n", "xmpp.jid", "bare JID"),
        (JID + "tls = 'ssl'\n", "xmpp.tls", "'starttls', 'direct', 'none'"),
        (JID + "tls = 'none'\n", "xmpp.tls", "loopback"),
        (JID + "tls = 'none'\nhost = 'xmpp.example.org'\n", "xmpp.tls", "loopback"),
        (JID + "port = 0\n", "xmpp.port", "between 1 and 65535"),
        (JID + "host = ''\n", "xmpp.host", "host name"),
        (JID + "password_file = 1\n", "xmpp.password_file", "must be a string"),
    ],
)
def test_refused_xmpp(tmp_path: Path, xmpp: str, key: str, problem: str) -> None:
    error = refusal(tmp_path, ONE_SERVER + xmpp, {"RENGA_XMPP_PASSWORD": "pw"})

    assert error.key == key
    assert problem in error.problem


def test_xmpp_password_file_missing(tmp_path: Path) -> None:
    error = refusal(tmp_path, ONE_SERVER + XMPP)

    assert error.key == "xmpp.password_file"
    assert str((tmp_path / "bot.secret").resolve()) in error.problem


def test_xmpp_password_file_empty(tmp_path: Path) -> None:
    (tmp_path / "bot.secret").write_text(" \n", encoding="utf-8")
    error = refusal(tmp_path, ONE_SERVER + XMPP)

    assert error.key == "xmpp.password_file"
    assert "empty" in error.problem


def test_xmpp_without_any_password(tmp_path: Path) -> None:
    error = refusal(tmp_path, ONE_SERVER + JID)

    assert error.key == "xmpp.password_file"
    assert "RENGA_XMPP_PASSWORD" in error.problem


@pytest.mark.parametrize(
    ("smtp", "key", "problem"),
    [
        ("[smtp]\nsender = 'renga@example.org'\n", "smtp.host", "is required"),
        ("[smtp]\nhost = 'smtp.example.org'\n", "smtp.sender", "is required"),
        ("[smtp]\nhost = 'smtp.example.org'\nsender = 'Renga'\n", "smtp.sender", "an address"),
        (SMTP + "tls = 'tls'\n", "smtp.tls", "'starttls', 'direct', 'none'"),
        (SMTP + "tls = 'none'\nusername = 'renga'\n", "smtp.tls", "in clear"),
        (SMTP + "port = 70000\n", "smtp.port", "between 1 and 65535"),
        (SMTP + "username = 1\n", "smtp.username", "must be a string"),
    ],
)
def test_refused_smtp(tmp_path: Path, smtp: str, key: str, problem: str) -> None:
    error = refusal(tmp_path, ONE_SERVER + smtp)

    assert error.key == key
    assert problem in error.problem


def test_smtp_without_tls_to_a_relay_without_auth_is_allowed(tmp_path: Path) -> None:
    smtp = load(tmp_path, ONE_SERVER + SMTP + "tls = 'none'\n").smtp

    assert smtp is not None
    assert (smtp.host, smtp.port, smtp.tls) == ("smtp.example.org", 25, "none")


# CA files for TLS ([xmpp] ca_file, [smtp] ca_file)

TLS_LOOPBACK = """
[xmpp]
jid = "renga@localhost"
host = "127.0.0.1"
tls = "{xmpp_tls}"
ca_file = "{xmpp_ca}"
[smtp]
host = "localhost"
sender = "renga@localhost"
tls = "{smtp_tls}"
ca_file = "{smtp_ca}"
"""
GOOD_CA = "tls/ours.ca.pem"


def tls_tables(table: str = "", tls: str = "starttls", ca: str = GOOD_CA) -> str:
    """Both tables with TLS and our CA file, but `table` ("xmpp" or "smtp") with `tls`, `ca`."""
    settings = {"xmpp_tls": "starttls", "xmpp_ca": GOOD_CA, "smtp_tls": "starttls"}
    settings["smtp_ca"] = GOOD_CA
    if table:
        settings[f"{table}_tls"], settings[f"{table}_ca"] = tls, ca
    return ONE_SERVER + TLS_LOOPBACK.format(**settings)


def test_ca_files_default_to_the_system_store_and_are_read_relative_to_the_config(
    tmp_path: Path,
) -> None:
    config = load(tmp_path, ONE_SERVER + XMPP + SMTP, {"RENGA_XMPP_PASSWORD": "pw"})
    assert config.xmpp is not None and config.xmpp.ca_file is None
    assert config.smtp is not None and config.smtp.ca_file is None

    authority = CertAuthority(tmp_path / "tls", "ours")
    config = load(tmp_path, tls_tables(), {"RENGA_XMPP_PASSWORD": "pw"})
    assert config.xmpp is not None and config.smtp is not None
    assert config.xmpp.ca_file == config.smtp.ca_file == authority.ca_file.resolve()


@pytest.mark.parametrize("table", ["xmpp", "smtp"])
@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        (b"", "holds no PEM certificate"),
        (b"\xff\xfe", "not a PEM file"),
        (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n", "valid"),
    ],
)
def test_unusable_ca_file_is_refused_at_start(
    tmp_path: Path, table: str, content: bytes | None, problem: str
) -> None:
    CertAuthority(tmp_path / "tls", "ours")  # the other table's CA file is fine
    if content is not None:
        (tmp_path / "bad.pem").write_bytes(content)
    text = tls_tables(table, ca="bad.pem")
    error = refusal(tmp_path, text, {"RENGA_XMPP_PASSWORD": "pw"})

    assert error.key == f"{table}.ca_file"
    assert problem in error.problem
    assert str((tmp_path / "bad.pem").resolve()) in error.problem


@pytest.mark.parametrize("table", ["xmpp", "smtp"])
def test_a_ca_file_without_tls_is_refused(tmp_path: Path, table: str) -> None:
    CertAuthority(tmp_path / "tls", "ours")
    error = refusal(tmp_path, tls_tables(table, tls="none"), {"RENGA_XMPP_PASSWORD": "pw"})

    assert error.key == f"{table}.ca_file"
    assert "tls = 'none'" in error.problem


# The [log] table


def test_log_limits_default_and_may_be_set(tmp_path: Path) -> None:
    assert load(tmp_path, ONE_SERVER).log == LogConfig(16 * 1024 * 1024, 5, 100, 1024)
    text = ONE_SERVER + "[log]\nmax_bytes = 65536\nbackups = 0\nlines_per_second = 1\n"
    assert load(tmp_path, text + "line_bytes = 4096\n").log == LogConfig(65536, 0, 1, 4096)


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ("max_byte = 1000000\n", "log.max_byte", "unknown key 'max_byte'"),
        ("max_bytes = 65535\n", "log.max_bytes", "must be at least 65536, got 65535"),
        ("max_bytes = '1M'\n", "log.max_bytes", "must be an integer, got a string"),
        ("backups = -1\n", "log.backups", "must be between 0 and 100, got -1"),
        ("backups = 101\n", "log.backups", "must be between 0 and 100, got 101"),
        ("lines_per_second = 0\n", "log.lines_per_second", "must be at least 1, got 0"),
        ("line_bytes = 63\n", "log.line_bytes", "must be between 64 and max_bytes / 16"),
        (
            "max_bytes = 65536\nline_bytes = 4097\n",
            "log.line_bytes",
            "must be between 64 and max_bytes / 16 (4096), got 4097",
        ),
    ],
)
def test_bad_log_limits_are_refused(tmp_path: Path, table: str, key: str, problem: str) -> None:
    error = refusal(tmp_path, ONE_SERVER + "[log]\n" + table)
    assert error.key == key
    assert problem in error.problem


# [limits]


def test_limits_default_when_absent(tmp_path: Path) -> None:
    assert load(tmp_path, ONE_SERVER).limits == LimitsConfig()


def test_limits_are_read(tmp_path: Path) -> None:
    limits = load(
        tmp_path,
        ONE_SERVER
        + """
[limits]
output_budget = 131072
input_budget = 8192
replies_pending = 8
slice_lines = 4
slice_ms = 1
turn_ms = 2.5
auth_per_address = 3
listen_backlog = 4096
""",
    ).limits
    assert limits == LimitsConfig(
        output_budget=131072,
        input_budget=8192,
        replies_pending=8,
        slice_lines=4,
        slice_ms=1.0,
        turn_ms=2.5,
        auth_per_address=3,
        listen_backlog=4096,
    )


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ("output_budget = 0", "limits.output_budget", "must be between 4096 and 1073741824, got 0"),
        ("input_budget = -1", "limits.input_budget", "must be between 1024 and 1073741824, got -1"),
        ("slice_lines = 0", "limits.slice_lines", "must be between 1 and 1048576, got 0"),
        ("slice_lines = 2.5", "limits.slice_lines", "must be an integer, got a float"),
        ("turn_ms = true", "limits.turn_ms", "must be a number, got a boolean"),
        ("slice_ms = 20", "limits.slice_ms", "must not be more than turn_ms"),
        (
            "listen_backlog = 70000",
            "limits.listen_backlog",
            "must be between 1 and 65535, got 70000",
        ),
        ("auth_per_address = 0", "limits.auth_per_address", "must be between 1 and 1048576, got 0"),
        ("max_conns = 5", "limits.max_conns", "unknown key 'max_conns'"),
    ],
)
def test_refused_limits(tmp_path: Path, table: str, key: str, problem: str) -> None:
    error = refusal(tmp_path, ONE_SERVER + "[limits]\n" + table + "\n")
    assert error.key == key
    assert error.problem.startswith(problem)


# Anti-entropy between peers


def test_anti_entropy_interval_has_a_default_and_takes_integers_and_floats(
    tmp_path: Path,
) -> None:
    assert load(tmp_path, ONE_SERVER).anti_entropy_seconds == 30.0
    config = load(tmp_path, "[herd]\nanti_entropy_seconds = 5\n" + ONE_SERVER)
    assert config.anti_entropy_seconds == 5.0
    config = load(tmp_path, "[herd]\nanti_entropy_seconds = 0.5\n" + ONE_SERVER)
    assert config.anti_entropy_seconds == 0.5


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("'30'", "must be a number, got a string"),
        ("true", "must be a number, got a boolean"),
        ("0", "between 0.1 and 86400"),
        ("-1", "between 0.1 and 86400"),
        ("nan", "between 0.1 and 86400"),
        ("inf", "between 0.1 and 86400"),
        ("86401", "between 0.1 and 86400"),
    ],
)
def test_anti_entropy_interval_is_refused_unless_a_sensible_number(
    tmp_path: Path, value: str, problem: str
) -> None:
    error = refusal(tmp_path, f"[herd]\nanti_entropy_seconds = {value}\n" + ONE_SERVER)
    assert error.key == "herd.anti_entropy_seconds"


# [notifications]


def test_notifications_default_to_a_minute_and_leases_of_ten_and_thirty_seconds(
    tmp_path: Path,
) -> None:
    assert load(tmp_path, ONE_SERVER).notifications == NotificationsConfig(
        lease_renew=10.0, lease_valid=30.0, look_every=60.0, coalesce_window=60.0
    )
    assert NotificationsConfig().digest_at == time(8, 0)


def test_notifications_table(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        ONE_SERVER
        + "[notifications]\nlease_renew = 0.5\nlease_valid = 2\nlook_every = 1\n"
        + "coalesce_window = 3.5\ndigest_at = '07:30:15'\n",
    )
    assert config.notifications == NotificationsConfig(0.5, 2.0, 1.0, 3.5, time(7, 30, 15))


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ("lease_renew = 0\n", "notifications.lease_renew", "above 0"),
        ("lease_renew = 'often'\n", "notifications.lease_renew", "number of seconds"),
        ("lease_renew = true\n", "notifications.lease_renew", "number of seconds"),
        ("lease_renew = nan\n", "notifications.lease_renew", "above 0"),
        ("lease_renew = 20\n", "notifications.lease_valid", "twice lease_renew"),
        ("lease_valid = 100000\n", "notifications.lease_valid", "at most 86400"),
        ("look_every = -1\n", "notifications.look_every", "above 0"),
        ("coalesce_window = inf\n", "notifications.coalesce_window", "at most 86400"),
        ("digest_at = '8:00'\n", "notifications.digest_at", "HH:MM"),
        ("digest_at = '25:00'\n", "notifications.digest_at", "HH:MM"),
        ("digest_at = '08:00+01:00'\n", "notifications.digest_at", "HH:MM"),
        ("digest_at = 8\n", "notifications.digest_at", "must be a string"),
        ("lease = 3\n", "notifications.lease", "unknown key"),
    ],
)
def test_refused_notifications(tmp_path: Path, table: str, key: str, problem: str) -> None:
    error = refusal(tmp_path, ONE_SERVER + "[notifications]\n" + table)
    assert error.key == key
    assert problem in error.problem


# [web]: the live streams' limits


def test_the_live_streams_limits_have_defaults(tmp_path: Path) -> None:
    web = load(tmp_path, ONE_SERVER + "\n[web]\nport = 12002\n").web
    assert web is not None
    assert (web.streams, web.stream_buffer_bytes, web.stream_history) == (20_000, 262_144, 200)
    assert (web.streams_per_user, web.streams_per_address, web.heartbeat_seconds) == (8, 64, 15.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("streams", "0"),
        ("streams", '"many"'),
        ("stream_buffer_bytes", "1023"),
        ("stream_history", "0"),
        ("stream_history", "65537"),
        ("heartbeat_seconds", "0.5"),
    ],
)
def test_a_live_stream_limit_out_of_range_is_refused(tmp_path: Path, key: str, value: str) -> None:
    error = refusal(tmp_path, ONE_SERVER + f"\n[web]\nport = 12002\n{key} = {value}\n")
    assert error.key == f"web.{key}"
