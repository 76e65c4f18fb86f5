"""`herd up`'s local services: a mail sink and a Prosody, for a config that has no `[smtp]` or
`[xmpp]` of its own, a web port for each server when it has no `[web]`, and demo users to try
the bot with (wiring, blocking code: it runs in the `herd up` process, never in a server).

The servers are then run with a derived config, written beside the user's (so every relative
path in it still means the same), that adds the `[smtp]`/`[xmpp]` tables pointing at these
services, and `[web]` with each server's `web_port`.
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from herd.config import HerdConfig
from herd.demousers import DEMO_USERS, issue_demo_token
from herd.operator import OperatorError
from herd.processes import die_with_parent
from herd.secretfile import SecretFileError, choose_secret, read_secret
from notifier.localxmpp import LocalProsody, port_is_free

BOT_USER = "renga"
SINK_START_SECONDS = 10.0
XMPP_PORT = 5222  # the Jabber client port a newcomer's client tries first, when it is free
SMTP_PORT = 2525  # the mail sink's port, when it is free
WEB_PORT = 8001  # the first server's web port, when it is free; the next free ones after it


@dataclass
class LocalServices:
    """What `herd up` started besides the servers, and how to reach it."""

    config_path: Path
    derived: Path | None = None  # the derived config, when one was written
    sink: subprocess.Popen[bytes] | None = None
    sink_port: int | None = None
    prosody: LocalProsody | None = None
    web: dict[str, str] = field(default_factory=dict)  # server -> its site's URL
    _gone: set[str] = field(default_factory=set)

    def exited(self) -> list[str]:
        """The services that exited since this was last asked (each said once)."""
        gone = []
        if self.sink is not None and self.sink.poll() is not None and "sink" not in self._gone:
            self._gone.add("sink")
            gone.append(f"the mail sink exited ({self.sink.returncode})")
        if self.prosody is not None and not self.prosody.running and "xmpp" not in self._gone:
            self._gone.add("xmpp")
            gone.append(f"Prosody exited (its log: {self.prosody.log_path})")
        return gone

    def stop(self, shown: Callable[[Path], str] = str) -> list[str]:
        """Stop what was started and remove the derived config; says what it did."""
        done: list[str] = []
        if self.sink is not None:
            if self.sink.poll() is None:
                self.sink.terminate()
                try:
                    self.sink.wait(5)
                    done.append(f"the mail sink on 127.0.0.1:{self.sink_port}")
                except subprocess.TimeoutExpired:
                    self.sink.kill()
                    self.sink.wait()
                    done.append(f"the mail sink on 127.0.0.1:{self.sink_port} (killed)")
            self.sink = None
        if self.prosody is not None:
            if self.prosody.running:
                self.prosody.stop()
                done.append(f"Prosody on {self.prosody.host}:{self.prosody.port}")
            self.prosody = None
        if self.derived is not None:
            self.derived.unlink(missing_ok=True)
            done.append(f"removed {shown(self.derived)}")
            self.derived = None
        return done


def derived_config_path(config_path: Path) -> Path:
    """Beside the user's config, so every relative path in it still means the same."""
    return config_path.with_name(f".{config_path.stem}.up.toml")


def start_local_services(
    config: HerdConfig,
    smtp_port: int = SMTP_PORT,
    xmpp_port: int = XMPP_PORT,
    web_port: int = WEB_PORT,
) -> LocalServices:
    """Start what the config lacks, on the given ports when they are free (else on free ones;
    0: any free port), and write the derived config the servers run with."""
    extra: list[str] = []
    services = LocalServices(config.path)
    web_ports: dict[str, int] = {}
    if config.web is None:
        web_ports = web_ports_from(config, web_port)
    else:
        for name in config.servers:
            site = config.web_of(name)
            if site is not None:
                services.web[name] = site.base_url
    try:
        if config.smtp is None:
            port = port_or_free(smtp_port)
            config.data_dir.mkdir(parents=True, exist_ok=True)
            with (config.data_dir / "mailsink.stderr").open("wb") as stderr:
                services.sink = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "notifier.mailsink",
                        str(config.data_dir),
                        "--port",
                        str(port),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,  # a Ctrl-C to `herd up` is for `herd up` to handle
                    preexec_fn=die_with_parent,
                )
            services.sink_port = port
            _wait_listening(port, services.sink)
            extra.append(
                f'[smtp]\nhost = "127.0.0.1"\nport = {port}\n'
                f'sender = "Renga <{BOT_USER}@localhost>"\ntls = "none"\n'
            )
        if config.xmpp is None:
            services.prosody, table = _start_prosody(config.data_dir / "prosody", xmpp_port)
            extra.append(table)
        if extra or web_ports:
            derived = derived_config_path(config.path)
            text = config.path.read_text(encoding="utf-8")
            if web_ports:
                text = with_web_ports(text, web_ports)
                services.web = {
                    name: f"http://127.0.0.1:{port}" for name, port in web_ports.items()
                }
            derived.write_text(
                text + "\n# added by herd up, removed when it stops\n" + "\n".join(extra),
                encoding="utf-8",
            )
            services.derived = services.config_path = derived
    except BaseException:
        services.stop()
        raise
    return services


def web_ports_from(config: HerdConfig, first: int = WEB_PORT) -> dict[str, int]:
    """A web port for each server: the first free ones from `first` up (0: any free port),
    none a port the herd itself uses."""
    taken = {server.port for server in config.servers.values()}
    ports: dict[str, int] = {}
    candidate = first
    for name, server in config.servers.items():
        if not first:
            ports[name] = _free_port()
            continue
        host = "127.0.0.1" if server.host in ("0.0.0.0", "", "localhost") else server.host
        while candidate in taken or not port_is_free(candidate, host):
            candidate += 1
            if candidate > 65535:
                raise RuntimeError(f"no free web port from {first} up")
        ports[name] = candidate
        taken.add(candidate)
    return ports


def with_web_ports(text: str, ports: dict[str, int]) -> str:
    """The config `text` with `[web]` and each server's `web_port` added: read as TOML and
    written out again whole, since keys cannot be added to a table already closed.  Comments
    are not kept; this file is for the servers, and is removed when `herd up` stops."""
    document = tomllib.loads(text)
    servers = document.get("servers")
    assert isinstance(servers, dict)  # the config loaded
    for name, port in ports.items():
        server = servers[name]
        assert isinstance(server, dict)
        server["web_port"] = port
    document["web"] = {}
    return "# derived by herd up from the config beside it\n" + _toml(document)


def _toml(document: dict[str, object], prefix: str = "") -> str:
    """TOML for what `tomllib` read from a herd config: strings, numbers, booleans, arrays of
    those, tables (dates and times do not occur in a valid config)."""
    plain = [
        f"{_key(key)} = {_toml_value(value)}"
        for key, value in document.items()
        if not isinstance(value, dict)
    ]
    out = ""
    if plain or (prefix and not any(isinstance(v, dict) for v in document.values())):
        out = (f"[{prefix}]\n" if prefix else "") + "".join(line + "\n" for line in plain) + "\n"
    for key, value in document.items():
        if isinstance(value, dict):
            out += _toml(value, f"{prefix}.{_key(key)}" if prefix else _key(key))
    return out


def _key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else json.dumps(key, ensure_ascii=False)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):  # JSON's escapes are TOML's, but for DEL, which TOML escapes
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise ValueError(f"cannot write {type(value).__name__} in a derived config")


def _start_prosody(folder: Path, preferred_port: int) -> tuple[LocalProsody, str]:
    folder.mkdir(parents=True, exist_ok=True)
    secret_file = folder / "bot.secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(24), encoding="utf-8")
        secret_file.chmod(0o600)
    prosody = LocalProsody(
        folder, preferred_port=preferred_port or None, preexec_fn=die_with_parent
    )
    prosody.register(BOT_USER, secret_file.read_text(encoding="utf-8").strip())
    for user in DEMO_USERS:
        prosody.register(user, f"{user}-demo")
    prosody.start()
    table = (
        f'[xmpp]\njid = "{BOT_USER}@localhost"\npassword_file = "{secret_file}"\n'
        f'host = "127.0.0.1"\nport = {prosody.port}\ntls = "none"\n'
    )
    return prosody, table


def demo_accounts() -> list[tuple[str, str]]:
    """The demo Jabber accounts of the local Prosody: (JID, password)."""
    return [(f"{user}@localhost", f"{user}-demo") for user in DEMO_USERS]


def create_demo_users(config: HerdConfig) -> tuple[list[tuple[str, str]], str | None]:
    """Renga users for the demo Jabber accounts, with fresh tokens (shown, never stored):
    (user, token) pairs, and why some are missing (None if none is)."""
    try:
        config = choose_secret(config, read_secret)
    except SecretFileError as error:
        return [], f"not created ({error})"
    tokens: list[tuple[str, str]] = []
    problems: list[str] = []
    for user in DEMO_USERS:
        try:
            token, reply = issue_demo_token(config, user, list(config.servers))
        except OperatorError as error:
            return tokens, f"not created ({error})"
        if reply.startswith("OK "):
            tokens.append((user, token))
        else:
            problems.append(f"{user}: {reply}")
    return tokens, "; ".join(problems) or None


def port_or_free(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` if nothing listens there now, else (or for 0) a free port."""
    if preferred and port_is_free(preferred, host):
        return preferred
    return _free_port()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SINK_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the mail sink exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the mail sink did not start listening")
