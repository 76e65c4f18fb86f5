"""`herd up`'s local services: a mail sink and a Prosody, for a config that has no `[smtp]` or
`[xmpp]` of its own, and demo users to try the bot with (wiring, blocking code: it runs in the
`herd up` process, never in a server).

The servers are then run with a derived config, written beside the user's (so every relative
path in it still means the same), that adds the `[smtp]`/`[xmpp]` tables pointing at these
services.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from herd.config import HerdConfig
from herd.demousers import DEMO_USERS, issue_demo_token
from herd.operator import OperatorError
from herd.processes import die_with_parent
from herd.secretfile import SecretFileError, choose_secret, read_secret
from notifier.localxmpp import LocalProsody

BOT_USER = "renga"
SINK_START_SECONDS = 10.0


@dataclass
class LocalServices:
    """What `herd up` started besides the servers, and how to reach it."""

    config_path: Path
    notes: list[str] = field(default_factory=list)
    sink: subprocess.Popen[bytes] | None = None
    prosody: LocalProsody | None = None

    def stop(self) -> None:
        if self.sink is not None and self.sink.poll() is None:
            self.sink.terminate()
            try:
                self.sink.wait(5)
            except subprocess.TimeoutExpired:
                self.sink.kill()
                self.sink.wait()
        if self.prosody is not None:
            self.prosody.stop()


def start_local_services(config: HerdConfig) -> LocalServices:
    """Start what the config lacks and write the derived config the servers run with."""
    extra: list[str] = []
    services = LocalServices(config.path)
    try:
        if config.smtp is None:
            port = _free_port()
            services.sink = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "notifier.mailsink",
                    str(config.data_dir),
                    "--port",
                    str(port),
                ],
                stdout=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
            _wait_listening(port, services.sink)
            extra.append(
                f'[smtp]\nhost = "127.0.0.1"\nport = {port}\n'
                f'sender = "Renga <{BOT_USER}@localhost>"\ntls = "none"\n'
            )
            services.notes.append(
                f"mail: kept under {config.data_dir / 'mail'}; read it with `herd mail`"
            )
        if config.xmpp is None:
            services.prosody, table = _start_prosody(config.data_dir / "prosody")
            extra.append(table)
            services.notes.append(
                f"jabber: a local Prosody on 127.0.0.1:{services.prosody.port} (plain, no TLS);"
                f" log in as alice@localhost / alice-demo (also bob, carol) and chat with"
                f" {BOT_USER}@localhost"
            )
    except BaseException:
        services.stop()
        raise
    if extra:
        derived = config.path.with_name(f".{config.path.stem}.up.toml")
        derived.write_text(
            config.path.read_text(encoding="utf-8") + "\n# added by herd up\n" + "\n".join(extra),
            encoding="utf-8",
        )
        services.config_path = derived
    return services


def _start_prosody(folder: Path) -> tuple[LocalProsody, str]:
    folder.mkdir(parents=True, exist_ok=True)
    secret_file = folder / "bot.secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(24), encoding="utf-8")
        secret_file.chmod(0o600)
    prosody = LocalProsody(folder)
    prosody.register(BOT_USER, secret_file.read_text(encoding="utf-8").strip())
    for user in DEMO_USERS:
        prosody.register(user, f"{user}-demo")
    prosody.start()
    table = (
        f'[xmpp]\njid = "{BOT_USER}@localhost"\npassword_file = "{secret_file}"\n'
        f'host = "127.0.0.1"\nport = {prosody.port}\ntls = "none"\n'
    )
    return prosody, table


def create_demo_users(config: HerdConfig) -> list[str]:
    """Renga users for the demo Jabber accounts, with fresh tokens (printed, never stored)."""
    try:
        config = choose_secret(config, read_secret)
    except SecretFileError as error:
        return [f"demo users: not created ({error})"]
    lines = []
    for user in DEMO_USERS:
        try:
            token, reply = issue_demo_token(config, user, list(config.servers))
        except OperatorError as error:
            return [f"demo users: not created ({error})"]
        if reply.startswith("OK "):
            lines.append(f"  AUTH {user} {token}")
        else:
            lines.append(f"  {user}: {reply}")
    return ["demo users (line protocol):", *lines]


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
