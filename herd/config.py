"""Load and validate a herd config (docs/operations.md, "Configuration").

The config is a contract that users and outside programs write against, so every key name is
exact and anything unexpected is refused at start with the file, the key and what is wrong:
a typo must never pass silently and leave a server running with a default the operator did not
choose. The loader reads the config file, the XMPP password file, the CA files that `[xmpp]` and
`[smtp]` name and the environment it is given, and nothing else, so tests can pass their own
environment.
"""

from __future__ import annotations

import ipaddress
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from email.utils import parseaddr
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from herd.errors import HerdError

__all__ = [
    "ConfigError",
    "HerdConfig",
    "LimitsConfig",
    "LogConfig",
    "NotificationsConfig",
    "PlacesConfig",
    "ServerConfig",
    "ServerWeb",
    "SmtpConfig",
    "TlsConfig",
    "WebConfig",
    "XmppConfig",
    "default_config_path",
    "load_config",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_DATA_DIR = "var"
SECRET_FILE = "herd.secret"  # under data_dir, when no secret is configured (herd.secretfile)
DEFAULT_MAX_LINE = 65536
MIN_MAX_LINE = 1024
# Anti-entropy between linked peers (docs/operations.md "Peer links").
DEFAULT_ANTI_ENTROPY_SECONDS = 30.0
MIN_ANTI_ENTROPY_SECONDS = 0.1
PLACES_PROVIDERS = ("offline", "google")
TLS_MODES = ("starttls", "direct", "none")
XMPP_PORTS = {"starttls": 5222, "direct": 5223, "none": 5222}
SMTP_PORTS = {"starttls": 587, "direct": 465, "none": 25}

_T = TypeVar("_T")

SECRET_REQUIRED = "a herd with non-loopback hosts needs a secret: set [herd] secret or HERD_SECRET"
SECRET_WARNING = (
    "no [herd] secret or HERD_SECRET: the servers use the secret generated in "
    "{path} (mode 0600), so only who can read that file can open a peer link or run "
    "`herd user`; allowed only because every server is on loopback"
)


class ConfigError(HerdError):
    """A config that cannot be used: names the file, the key and the problem."""

    def __init__(self, path: Path, key: str, problem: str) -> None:
        super().__init__(path, key, problem)  # all three in args, so it pickles
        self.path = path
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.problem}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One server: where it listens for clients and peers, and whom it links to."""

    name: str
    host: str
    port: int
    peers: tuple[str, ...]  # every neighbour, whichever side listed the link; sorted
    web_port: int | None = None  # `[servers.X] web_port`: this server's web port, over `[web]`
    web_base_url: str | None = None  # ... its public URL prefix, over `[web] base_url`
    status_port: int | None = None  # ... its status listener's port, over `[web] status_port`


def dial_host(host: str) -> str:
    """Where a client reaches a server listening on `host`: the wildcard addresses are this
    machine's loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS on every server's client port and peer links (`[tls]`): the herd's CA, which peers
    and the CLI trust (and nothing else), and each server's certificate chain and key, whose
    paths may hold `{server}` for the server's name."""

    ca: Path
    certificate: str  # an absolute path, with `{server}` where the name goes
    key: str

    def files(self, server: str) -> tuple[Path, Path]:
        """Server `server`'s certificate chain and private key."""
        return (
            Path(self.certificate.replace(TLS_NAME, server)),
            Path(self.key.replace(TLS_NAME, server)),
        )


TLS_NAME = "{server}"


@dataclass(frozen=True, slots=True)
class PlacesConfig:
    """Where WHATSAT and venue suggestions get places.

    "google" with no key is accepted, so a herd can start before it has a key: every lookup
    then answers REQUEST_DENIED, as Google itself would.
    """

    provider: str = "offline"
    files: tuple[Path, ...] = ()
    url: str = "https://maps.googleapis.com/maps/api/place/nearbysearch/json"
    key: str = ""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How much each server's log may hold and take in (`[log]`, docs/operations.md "Logs").

    The file is rotated at `max_bytes` and `backups` older files are kept, so the log never
    holds more than `max_bytes * (backups + 1)` bytes; at most `lines_per_second` lines of one
    connection are logged each second (then one line counts the rest), each cut to
    `line_bytes`.
    """

    max_bytes: int = 16 * 1024 * 1024
    backups: int = 5
    lines_per_second: int = 100
    line_bytes: int = 1024


MIN_LOG_MAX_BYTES = 65536
MAX_LOG_BACKUPS = 100
MIN_LOG_LINE_BYTES = 64


@dataclass(frozen=True, slots=True)
class XmppConfig:
    """The bot's account; each server logs in with resource = its own name."""

    jid: str
    password: str
    host: str | None  # None: find the server from the JID's domain (SRV/A records)
    port: int
    tls: str  # "starttls", "direct" or "none" (loopback host only)
    ca_file: Path | None = None  # PEM CAs the server's certificate must chain to; None: system's


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """The mail server that email notifications are handed to."""

    host: str
    port: int
    sender: str
    username: str  # "" means no AUTH
    password: str
    tls: str  # "starttls", "direct" or "none"
    ca_file: Path | None = None  # PEM CAs the server's certificate must chain to; None: system's


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What one client connection may make a server hold and do (`[limits]`); see
    docs/operations.md for how they bound a server's memory and delays."""

    output_budget: int = 64 * 1024  # reply bytes held for a connection before its lines wait
    input_budget: int = 64 * 1024  # received bytes waiting to run before reading stops
    replies_pending: int = 64  # replies not yet written (places lookups) before lines wait
    slice_lines: int = 32  # lines a connection runs before the next connection's turn
    slice_ms: float = 2.0  # ... or once its turn has taken this long
    turn_ms: float = 5.0  # the reactor serves I/O at least this often while lines wait
    auth_per_address: int = 32  # AUTH checks waiting from one client address
    listen_backlog: int = 1024  # connections the kernel queues before the server accepts
    push_backlog: int = 4 * 1024 * 1024  # pushes waiting for a subscriber before it is dropped


LIMIT_RANGES: dict[str, tuple[int, int] | tuple[float, float]] = {
    "output_budget": (4096, 1 << 30),
    "input_budget": (1024, 1 << 30),
    "replies_pending": (1, 1 << 20),
    "slice_lines": (1, 1 << 20),
    "slice_ms": (0.1, 1000.0),
    "turn_ms": (0.1, 1000.0),
    "auth_per_address": (1, 1 << 20),
    "listen_backlog": (1, 65535),
    "push_backlog": (4096, 1 << 30),
}


@dataclass(frozen=True, slots=True)
class NotificationsConfig:
    """When held notifications go out and who sends them (`[notifications]`; seconds)."""

    lease_renew: float = 10.0  # a server announces it is running this often
    lease_valid: float = 30.0  # silent this long, its users' duties pass to the next server
    look_every: float = 60.0  # due digests and reminders are looked for this often
    coalesce_window: float = 60.0  # a vote notice waits this long for more votes
    digest_at: time = time(8, 0)  # digests go out at this local time


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The web channel (`[web]`, docs/web.md): off when the table is absent.  `port`,
    `base_url` and `status_port` are defaults a server's own `web_port`, `web_base_url` and
    `status_port` override (`HerdConfig.web_of` resolves them for one server)."""

    port: int | None = None  # None: every server names its own `web_port`
    host: str | None = None  # None: the server's own host
    base_url: str | None = None  # None: http://<host>:<port>
    status_port: int | None = None  # None: no status listener (unless a server sets one)
    link_days: int = 30  # a personal link in a notification works this long
    session_hours: int = 24  # a session a link opened lasts at most this long
    body_bytes: int = 16 * 1024  # the largest request body (a form) a server reads
    header_bytes: int = 16 * 1024  # the request line and headers of one request, together
    idle_seconds: float = 60.0  # a connection with no request in flight is closed after this
    streams_per_user: int = 8  # open live streams of one user on one server
    streams_per_address: int = 64  # open live streams from one client address on one server
    heartbeat_seconds: float = 15.0  # a live stream gets a comment line this often when idle
    writes_per_address: int = 8  # form posts from one client address waiting for their line
    streams: int = 20_000  # open live streams on one server, in all
    stream_buffer_bytes: int = 256 * 1024  # waiting for a stalled stream's reader, then dropped
    stream_history: int = 200  # changes kept per event for streams that reconnect


WEB_RANGES: dict[str, tuple[int, int] | tuple[float, float]] = {
    "link_days": (1, 366),
    "session_hours": (1, 24 * 366),
    "body_bytes": (1024, 1 << 24),
    "header_bytes": (1024, 1 << 20),
    "idle_seconds": (1.0, 86400.0),
    "streams_per_user": (1, 1 << 16),
    "streams_per_address": (1, 1 << 20),
    "heartbeat_seconds": (1.0, 3600.0),
    "writes_per_address": (1, 1 << 16),
    "streams": (1, 1 << 20),
    "stream_buffer_bytes": (1024, 1 << 26),
    "stream_history": (1, 1 << 16),
}


@dataclass(frozen=True, slots=True)
class ServerWeb:
    """One server's web listener as the config resolves it (`HerdConfig.web_of`)."""

    host: str  # the interface the site listens on
    port: int
    base_url: str  # the public URL prefix links in notifications use, no trailing slash
    status_port: int | None  # the status listener's port on 127.0.0.1, or None: off
    settings: WebConfig

    @property
    def secure(self) -> bool:
        """Whether people reach the site over HTTPS (cookies are then marked Secure)."""
        return self.base_url.startswith("https://")


@dataclass(frozen=True, slots=True)
class HerdConfig:
    """A whole herd: every server of it loads the same file and picks itself by name."""

    path: Path
    data_dir: Path
    secret: bytes
    secret_warning: str | None
    max_line: int
    servers: dict[str, ServerConfig]
    anti_entropy_seconds: float
    places: PlacesConfig
    xmpp: XmppConfig | None
    smtp: SmtpConfig | None
    log: LogConfig = LogConfig()
    limits: LimitsConfig = LimitsConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    tls: TlsConfig | None = None  # None: plain TCP on the client port and the peer links
    web: WebConfig | None = None

    def web_of(self, name: str) -> ServerWeb | None:
        """Server `name`'s web listener, or None when the herd has no `[web]`."""
        web = self.web
        if web is None:
            return None
        server = self.server(name)
        port = server.web_port if server.web_port is not None else web.port
        assert port is not None  # load_config refuses a server with neither
        host = web.host or server.host
        base_url = server.web_base_url or web.base_url or f"http://{_url_host(host)}:{port}"
        status_port = server.status_port if server.status_port is not None else web.status_port
        return ServerWeb(host, port, base_url.rstrip("/"), status_port, web)

    def with_secret(self, secret: bytes) -> HerdConfig:
        """This config with the secret its servers really use (the generated one, when the
        file and the environment give none: see herd.secretfile)."""
        if not secret:
            raise ValueError("the herd secret cannot be empty")
        return replace(self, secret=secret)

    def server(self, name: str) -> ServerConfig:
        """The server called `name`; a ConfigError (not KeyError) so `herd run` can report it."""
        try:
            return self.servers[name]
        except KeyError:
            known = ", ".join(self.servers)
            raise ConfigError(
                self.path, "servers", f"no server named {name!r}; known: {known}"
            ) from None

    @property
    def links(self) -> frozenset[frozenset[str]]:
        """Every undirected link, once."""
        return frozenset(
            frozenset((server.name, peer))
            for server in self.servers.values()
            for peer in server.peers
        )


def default_config_path() -> Path:
    """The repository's config/herd.toml, the five-server development herd."""
    return Path(__file__).resolve().parent.parent / "config" / "herd.toml"


def load_config(path: Path | str, env: Mapping[str, str]) -> HerdConfig:
    """Read, validate and resolve the config at `path`, with secrets taken from `env`.

    Environment variables override the file only when set and non-empty, so an exported but
    empty variable does not silently blank a value the file gives.
    """
    path = Path(path).resolve()
    root = _Table(path, "", _read_toml(path))
    root.only(
        "herd",
        "servers",
        "places",
        "xmpp",
        "smtp",
        "log",
        "limits",
        "notifications",
        "tls",
        "web",
        what="table",
    )

    herd = root.table("herd") or _Table(path, "herd", {})
    herd.only("data_dir", "secret", "max_line", "anti_entropy_seconds")
    data_dir = (path.parent / herd.string("data_dir", DEFAULT_DATA_DIR)).resolve()
    max_line = herd.integer("max_line", DEFAULT_MAX_LINE)
    if max_line < MIN_MAX_LINE:
        raise herd.error("max_line", f"must be at least {MIN_MAX_LINE}, got {max_line}")

    anti_entropy_seconds = _anti_entropy_seconds(herd)
    file_secret = herd.string("secret", "")
    servers = _servers(root)
    secret = (env.get("HERD_SECRET") or file_secret).encode()
    secret_warning = None
    if not secret:
        if not all(_is_loopback(server.host) for server in servers.values()):
            raise herd.error("secret", SECRET_REQUIRED)
        secret_warning = SECRET_WARNING.format(path=data_dir / SECRET_FILE)

    places_table = root.table("places")
    xmpp_table = root.table("xmpp")
    smtp_table = root.table("smtp")
    log_table = root.table("log")
    limits_table = root.table("limits")
    notifications_table = root.table("notifications")
    tls_table = root.table("tls")
    web_table = root.table("web")
    web = _web(web_table) if web_table else None
    _check_web_ports(root, servers, web)
    return HerdConfig(
        path=path,
        data_dir=data_dir,
        secret=secret,
        secret_warning=secret_warning,
        max_line=max_line,
        servers=servers,
        anti_entropy_seconds=anti_entropy_seconds,
        places=_places(places_table, env) if places_table else PlacesConfig(),
        xmpp=_xmpp(xmpp_table, env) if xmpp_table else None,
        smtp=_smtp(smtp_table, env) if smtp_table else None,
        log=_log(log_table) if log_table else LogConfig(),
        limits=_limits(limits_table) if limits_table else LimitsConfig(),
        notifications=_notifications(notifications_table)
        if notifications_table
        else NotificationsConfig(),
        tls=_tls_files(tls_table) if tls_table else None,
        web=web,
    )


def _anti_entropy_seconds(herd: _Table) -> float:
    """How often each peer link compares digests (seconds, each round jittered by +-50%)."""
    value = herd.data.get("anti_entropy_seconds", DEFAULT_ANTI_ENTROPY_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise herd.error("anti_entropy_seconds", f"must be a number, got {_type_name(value)}")
    if not MIN_ANTI_ENTROPY_SECONDS <= value <= 86400:
        raise herd.error(
            "anti_entropy_seconds",
            f"must be between {MIN_ANTI_ENTROPY_SECONDS} and 86400 seconds, got {value}",
        )
    return float(value)


def _read_toml(path: Path) -> dict[str, object]:
    """The parsed file, or a ConfigError with key "" for anything that is not readable TOML."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(path, "", f"not UTF-8 (byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None


def _servers(root: _Table) -> dict[str, ServerConfig]:
    """The servers in file order, with each link recorded on both of its ends."""
    table = root.table("servers")
    if table is None or not table.data:
        raise ConfigError(root.path, "servers", "at least one server is needed")
    listed: dict[str, tuple[str, int, tuple[str, ...]]] = {}
    web_overrides: dict[str, tuple[int | None, str | None, int | None]] = {}
    used: dict[tuple[str, int], str] = {}
    for name in table.data:
        if not name or not all("!" <= char <= "~" for char in name):
            raise ConfigError(
                root.path,
                "servers",
                f"server name {name!r} must be non-empty printable ASCII without whitespace",
            )
        server = table.table(name)
        assert server is not None  # name is one of table's keys
        server.only("host", "port", "peers", "web_port", "web_base_url", "status_port")
        host = _host(server, server.string("host", DEFAULT_HOST))
        port = server.port("port", None)
        other = used.setdefault((_host_identity(host), port), name)
        if other != name:
            raise server.error("port", f"port {port} on {host} is already used by {other}")
        listed[name] = (host, port, server.strings("peers"))
        web_base_url = server.optional_string("web_base_url")
        web_overrides[name] = (
            None if "web_port" not in server.data else server.port("web_port", None),
            None if web_base_url is None else _base_url(server, "web_base_url", web_base_url),
            None if "status_port" not in server.data else server.port("status_port", None),
        )

    neighbours: dict[str, set[str]] = {name: set() for name in listed}
    for name, (_, _, peers) in listed.items():
        for peer in peers:
            key = f"servers.{name}.peers"
            if peer == name:
                raise ConfigError(root.path, key, f"{name} cannot peer with itself")
            if peer not in listed:
                known = ", ".join(listed)
                raise ConfigError(root.path, key, f"unknown server {peer!r}; known: {known}")
            neighbours[name].add(peer)
            neighbours[peer].add(name)
    return {
        name: ServerConfig(name, host, port, tuple(sorted(neighbours[name])), *web_overrides[name])
        for name, (host, port, _) in listed.items()
    }


def _web(table: _Table) -> WebConfig:
    """`[web]`: where each server's site listens and what it may be made to hold."""
    table.only("port", "host", "base_url", "status_port", *WEB_RANGES)
    port = None if "port" not in table.data else table.port("port", None)
    host = table.optional_string("host")
    if host is not None:
        _host(table, host)
    base_url = table.optional_string("base_url")
    if base_url is not None:
        base_url = _base_url(table, "base_url", base_url)
    status_port = None if "status_port" not in table.data else table.port("status_port", None)
    values = _in_ranges(table, WebConfig(), WEB_RANGES)
    if values["heartbeat_seconds"] >= values["idle_seconds"]:
        raise table.error("heartbeat_seconds", "must be less than idle_seconds")
    return WebConfig(port, host, base_url, status_port, **values)  # type: ignore[arg-type]


def _base_url(table: _Table, key: str, url: str) -> str:
    """An http(s) URL prefix without query or fragment, as links in mails will start."""
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or parts.username is not None
        or any(char.isspace() or char in "\"'<>" for char in url)
    ):
        raise table.error(
            key, f"must be an http or https URL prefix like https://renga.example, got {url!r}"
        )
    return url.rstrip("/")


def _check_web_ports(
    root: _Table, servers: Mapping[str, ServerConfig], web: WebConfig | None
) -> None:
    """Every server's web and status ports: given when the web is on, and clashing with no
    other listener on the same host (a line port, another server's web or status port)."""
    if web is None:
        for server in servers.values():
            for key in ("web_port", "web_base_url", "status_port"):
                if getattr(server, key) is not None:
                    raise ConfigError(
                        root.path, f"servers.{server.name}.{key}", "needs a [web] table"
                    )
        return
    used = {(_host_identity(s.host), s.port): f"{s.name} (port)" for s in servers.values()}
    for server in servers.values():
        port = server.web_port if server.web_port is not None else web.port
        if port is None:
            raise ConfigError(
                root.path,
                f"servers.{server.name}.web_port",
                "is required when [web] has no port",
            )
        status = server.status_port if server.status_port is not None else web.status_port
        listeners = [("web_port", _host_identity(web.host or server.host), port)]
        if status is not None:
            # Always 127.0.0.1, but of the server's own machine: servers on other hosts may
            # all use the same status_port.
            local = _is_loopback(server.host) or server.host in ("0.0.0.0", "::", "")
            loopback = "127.0.0.1" if local else f"127.0.0.1 of {_host_identity(server.host)}"
            listeners.append(("status_port", loopback, status))
        for key, host, number in listeners:
            other = used.setdefault((host, number), f"{server.name} ({key})")
            if other != f"{server.name} ({key})":
                raise ConfigError(
                    root.path,
                    f"servers.{server.name}.{key}",
                    f"port {number} is already used by {other}; give each server its own {key}",
                )


def _places(table: _Table, env: Mapping[str, str]) -> PlacesConfig:
    table.only("provider", "files", "url", "key")
    defaults = PlacesConfig()
    provider = table.string("provider", defaults.provider)
    if provider not in PLACES_PROVIDERS:
        raise table.error("provider", f"must be one of {_choices(PLACES_PROVIDERS)}")
    url = table.string("url", defaults.url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise table.error("url", f"must be an http or https URL, got {url!r}")
    files = tuple((table.path.parent / file).resolve() for file in table.strings("files"))
    key = table.string("key", defaults.key)
    return PlacesConfig(provider, files, url, env.get("PLACES_API_KEY") or key)


def _xmpp(table: _Table, env: Mapping[str, str]) -> XmppConfig:
    table.only("jid", "password_file", "host", "port", "tls", "ca_file")
    jid = table.string("jid", None)
    local, at, domain = jid.partition("@")
    if not (local and at and domain) or "/" in jid or any(char.isspace() for char in jid):
        raise table.error("jid", f"must be a bare JID like 'renga@example.org', got {jid!r}")
    host = table.optional_string("host")
    if host is not None:
        _host(table, host)
    tls = _tls(table)
    if tls == "none" and (host is None or not _is_loopback(host)):
        raise table.error("tls", "'none' is allowed only with a loopback host")
    password_file = table.optional_string("password_file")
    return XmppConfig(
        jid=jid,
        password=env.get("RENGA_XMPP_PASSWORD") or _read_password(table, password_file),
        host=host,
        port=table.port("port", XMPP_PORTS[tls]),
        tls=tls,
        ca_file=_ca_file(table, tls),
    )


def _read_password(table: _Table, name: str | None) -> str:
    """The bot's password from `password_file`, read only when the environment gives none."""
    if name is None:
        raise table.error("password_file", "no password: set password_file or RENGA_XMPP_PASSWORD")
    file = table.path.parent / name
    try:
        password = file.read_text(encoding="utf-8").strip()
    except OSError as error:
        problem = f"cannot read {file}: {error.strerror or error}"
        raise table.error("password_file", problem) from None
    except UnicodeDecodeError:
        raise table.error("password_file", f"{file} is not UTF-8") from None
    if not password:
        raise table.error("password_file", f"{file} is empty")
    return password


def _smtp(table: _Table, env: Mapping[str, str]) -> SmtpConfig:
    table.only("host", "port", "sender", "username", "tls", "ca_file")
    host = _host(table, table.string("host", None))
    sender = table.string("sender", None)
    if "@" not in parseaddr(sender)[1]:
        raise table.error("sender", "must be an address like 'Renga <renga@example.org>'")
    username = table.string("username", "")
    tls = _tls(table)
    if tls == "none" and username and not _is_loopback(host):
        raise table.error("tls", "'none' with a username would send the password in clear")
    return SmtpConfig(
        host=host,
        port=table.port("port", SMTP_PORTS[tls]),
        sender=sender,
        username=username,
        password=env.get("RENGA_SMTP_PASSWORD", ""),
        tls=tls,
        ca_file=_ca_file(table, tls),
    )


def _ca_file(table: _Table, tls: str) -> Path | None:
    """`ca_file`, relative to the config's folder: a readable file of PEM certificates, the
    only CAs the server's certificate may chain to (absent: the system's trust store)."""
    name = table.optional_string("ca_file")
    if name is None:
        return None
    if tls == "none":
        raise table.error("ca_file", "is for TLS, and tls = 'none' has none: remove one of them")
    file = (table.path.parent / name).resolve()
    try:
        data = file.read_bytes()
    except OSError as error:
        raise table.error("ca_file", f"cannot read {file}: {error.strerror or error}") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise table.error("ca_file", f"{file} is not a PEM file (not ASCII text)") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise table.error("ca_file", f"{file} holds no PEM certificate") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as error:
        problem = f"{file} is not a valid PEM certificate file: {error}"
        raise table.error("ca_file", problem) from None
    return file


def _tls_files(table: _Table) -> TlsConfig:
    """`[tls]`: three paths, relative to the config file. The files themselves are read where
    they are used (a server reads its own certificate and key at start, and each machine holds
    only its own), so a missing one is refused by `herd run`, naming the key."""
    table.only("ca", "certificate", "key")
    paths: dict[str, str] = {}
    for key in ("ca", "certificate", "key"):
        value = table.string(key, None)
        if not value.strip():
            raise table.error(key, "must be a file path, got an empty string")
        rest = value.replace(TLS_NAME, "")
        if "{" in rest or "}" in rest:
            raise table.error(key, f"the only placeholder is {TLS_NAME}, got {value!r}")
        if key == "ca" and TLS_NAME in value:
            raise table.error(key, f"one CA serves the whole herd: no {TLS_NAME} here")
        paths[key] = str(table.path.parent / value)
    return TlsConfig(Path(paths["ca"]), paths["certificate"], paths["key"])


def _log(table: _Table) -> LogConfig:
    table.only("max_bytes", "backups", "lines_per_second", "line_bytes")
    defaults = LogConfig()
    max_bytes = table.integer("max_bytes", defaults.max_bytes)
    if max_bytes < MIN_LOG_MAX_BYTES:
        raise table.error("max_bytes", f"must be at least {MIN_LOG_MAX_BYTES}, got {max_bytes}")
    backups = table.integer("backups", defaults.backups)
    if not 0 <= backups <= MAX_LOG_BACKUPS:
        raise table.error("backups", f"must be between 0 and {MAX_LOG_BACKUPS}, got {backups}")
    rate = table.integer("lines_per_second", defaults.lines_per_second)
    if rate < 1:
        raise table.error("lines_per_second", f"must be at least 1, got {rate}")
    line_bytes = table.integer("line_bytes", defaults.line_bytes)
    # A cut line and its stamp must fit a file many times over, so rotation never splits one.
    longest = max_bytes // 16
    if not MIN_LOG_LINE_BYTES <= line_bytes <= longest:
        raise table.error(
            "line_bytes",
            f"must be between {MIN_LOG_LINE_BYTES} and max_bytes / 16 ({longest}), "
            f"got {line_bytes}",
        )
    return LogConfig(max_bytes, backups, rate, line_bytes)


def _in_ranges(
    table: _Table, defaults: object, ranges: Mapping[str, tuple[int, int] | tuple[float, float]]
) -> dict[str, float]:
    """Each key of `ranges` from the table (else its default in `defaults`), an integer or a
    number as its default is, within its range."""
    values: dict[str, float] = {}
    for key, (low, high) in ranges.items():
        default = getattr(defaults, key)
        if isinstance(default, float):
            value: float = table.number(key, default)
        else:
            value = table.integer(key, default)
        if not low <= value <= high:
            raise table.error(key, f"must be between {low} and {high}, got {value}")
        values[key] = value
    return values


def _limits(table: _Table) -> LimitsConfig:
    """Each limit a number in its range: 0 or a negative would switch a protection off."""
    table.only(*LIMIT_RANGES)
    values = _in_ranges(table, LimitsConfig(), LIMIT_RANGES)
    if values["slice_ms"] > values["turn_ms"]:
        raise table.error("slice_ms", "must not be more than turn_ms")
    return LimitsConfig(**values)  # type: ignore[arg-type]


def _notifications(table: _Table) -> NotificationsConfig:
    table.only("lease_renew", "lease_valid", "look_every", "coalesce_window", "digest_at")
    defaults = NotificationsConfig()
    lease_renew = table.seconds("lease_renew", defaults.lease_renew, 3600.0)
    lease_valid = table.seconds("lease_valid", defaults.lease_valid, 86400.0)
    if lease_valid < 2 * lease_renew:
        problem = f"must be at least twice lease_renew ({lease_renew}), got {lease_valid}"
        raise table.error("lease_valid", problem)
    text = table.string("digest_at", defaults.digest_at.strftime("%H:%M"))
    try:
        digest_at = time.fromisoformat(text)
    except ValueError:
        digest_at = None
    if digest_at is None or digest_at.tzinfo is not None or len(text) not in (5, 8):
        raise table.error("digest_at", f"must be a local time HH:MM or HH:MM:SS, got {text!r}")
    return NotificationsConfig(
        lease_renew=lease_renew,
        lease_valid=lease_valid,
        look_every=table.seconds("look_every", defaults.look_every, 3600.0),
        coalesce_window=table.seconds("coalesce_window", defaults.coalesce_window, 86400.0),
        digest_at=digest_at,
    )


def _host(table: _Table, host: str) -> str:
    """`host` as given, once it is at least plausible as a name or address."""
    if not host or any(char.isspace() for char in host):
        raise table.error("host", f"must be a host name or address, got {host!r}")
    return host


def _tls(table: _Table) -> str:
    tls = table.string("tls", "starttls")
    if tls not in TLS_MODES:
        raise table.error("tls", f"must be one of {_choices(TLS_MODES)}, got {tls!r}")
    return tls


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(repr(value) for value in values)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """A host as it stands in a URL: an IPv6 address in brackets; any address for 'all
    interfaces' as 127.0.0.1, which a browser on this machine can open."""
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _host_identity(host: str) -> str:
    """One spelling per host, so '::1' and '0:0::1' clash on the same port."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def _type_name(value: object) -> str:
    """What TOML calls the type of `value`, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (datetime, date, time)):
        return "a date/time"
    names = {str: "a string", int: "an integer", float: "a float", list: "an array"}
    return names.get(type(value), "a table")


@dataclass(frozen=True, slots=True)
class _Table:
    """One TOML table being read; it knows its dotted name so every error can name its key."""

    path: Path
    name: str
    data: Mapping[str, object]

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(key), problem)

    def only(self, *known: str, what: str = "key") -> None:
        """Refuse any key not in `known`: a misspelt key must not leave a silent default."""
        for key in self.data:
            if key not in known:
                raise self.error(key, f"unknown {what} {key!r} (known: {', '.join(known)})")

    def _get(self, key: str, kind: type[_T], kind_name: str) -> _T | None:
        value = self.data.get(key)
        if value is None:
            return None
        # bool is a subclass of int, but `port = true` is a mistake, not port 1.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise self.error(key, f"must be {kind_name}, got {_type_name(value)}")
        return value

    def table(self, key: str) -> _Table | None:
        value = self._get(key, dict, "a table")
        return None if value is None else _Table(self.path, self.key(key), value)

    def string(self, key: str, default: str | None) -> str:
        """A string; `default` None means the key is required."""
        return self._required(key, self._get(key, str, "a string"), default)

    def optional_string(self, key: str) -> str | None:
        return self._get(key, str, "a string")

    def integer(self, key: str, default: int | None) -> int:
        """An integer; `default` None means the key is required."""
        return self._required(key, self._get(key, int, "an integer"), default)

    def number(self, key: str, default: float) -> float:
        """An integer or a float (`2` and `2.0` are both fine for milliseconds)."""
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {_type_name(value)}")
        return float(value)

    def seconds(self, key: str, default: float, most: float) -> float:
        """A duration in seconds, integer or not, above 0 and at most `most`."""
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number of seconds, got {_type_name(value)}")
        if not 0 < value <= most:
            raise self.error(key, f"must be above 0 and at most {most:g}, got {value}")
        return float(value)

    def port(self, key: str, default: int | None) -> int:
        port = self.integer(key, default)
        if not 1 <= port <= 65535:
            raise self.error(key, f"must be between 1 and 65535, got {port}")
        return port

    def strings(self, key: str) -> tuple[str, ...]:
        """An array of strings, duplicates dropped (order kept); absent means empty."""
        value = self._get(key, list, "an array of strings")
        if value is None:
            return ()
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{index}]", f"must be a string, got {_type_name(item)}")
        return tuple(dict.fromkeys(value))

    def _required(self, key: str, value: _T | None, default: _T | None) -> _T:
        if value is not None:
            return value
        if default is None:
            raise self.error(key, "is required")
        return default
