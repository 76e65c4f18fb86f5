"""Notifications end to end: a herd configured with `[smtp]`, a real SMTP server in a process of
its own (so a test can stop it and start it again on the same port), users made with `herd user
add`, and line clients that authenticate and plan.

Two SMTP programs, both keeping every message as `<dir>/mail/*.eml` (the envelope first, as
`X-MailFrom`/`X-RcptTo` headers, then the message exactly as received):

- `python -m notifier.mailsink DIR --port P`: the project's own sink, as `herd up` runs it;
- `python -m tests.e2e.notify_harness DIR --port P [--refuse ADDR]... [--stall]`: a small
  aiosmtpd server of the tests that answers 550 at RCPT for the `--refuse` addresses, and with
  `--stall` keeps each message and then never answers its DATA (the sender cannot know whether it
  got through: what a crash mid-delivery looks like from the far side).

Blocking code only, like `harness.py`; every wait is a poll with a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from .harness import HOST, LINKS, NAMES, REPO, Client, Herd, HerdError, free_ports, wait_until

SENDER = "Renga <renga@example.org>"
CLI_SECONDS = 30.0
SMTP_START_SECONDS = 15.0
SMTP_STOP_SECONDS = 5.0


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


# --- the herd command ---------------------------------------------------------------------------


def herd_cli(config: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`herd ARGUMENTS --config CONFIG` as an operator types it (no HERD_SECRET inherited)."""
    env = {key: value for key, value in os.environ.items() if key != "HERD_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "herd", *arguments, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=CLI_SECONDS,
        cwd=REPO,
        env=env,
        check=False,
    )


def add_user(config: Path, user: str, address: str, server: str | None = None) -> str:
    """`herd user add USER --email ADDRESS [--server SERVER]`; the token it prints once."""
    where = () if server is None else ("--server", server)
    done = herd_cli(config, "user", "add", user, "--email", address, *where)
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(rf"^user {re.escape(user)}: token (\S+)$", done.stdout, re.MULTILINE)
    assert match is not None, done.stdout + done.stderr
    return match[1]


# --- line clients -------------------------------------------------------------------------------


class Session(Client):
    """A line client authenticated as `user` (AUTH is retried on new connections until the
    server knows the user: users are made on one server and flooded to the others)."""

    def __init__(self, port: int, user: str, token: str, timeout: float = 5.0) -> None:
        self.user = user
        deadline = time.monotonic() + timeout
        while True:
            super().__init__(port, timeout)
            try:
                reply = self.request(f"AUTH {user} {token}".encode())
            except BaseException:
                self.close()
                raise
            if reply.startswith(b"USER "):
                return
            self.close()
            if time.monotonic() >= deadline:
                raise HerdError(f"AUTH {user} at port {port}: {reply!r}")
            time.sleep(0.05)

    def __enter__(self) -> Session:
        return self

    def event(self, line: str | bytes) -> dict[str, Any]:
        """Send a planning line; its `EVENT` reply decoded (anything else fails the test)."""
        reply = self.request(line.encode() if isinstance(line, str) else line)
        assert reply.startswith(b"EVENT "), (line, reply)
        document = json.loads(reply[len(b"EVENT ") :])
        assert isinstance(document, dict)
        return document

    def user_set(self, field: str, value: str) -> dict[str, Any]:
        reply = self.request(f"USER SET {field} {value}".encode())
        assert reply.startswith(b"USER "), reply
        document = json.loads(reply[len(b"USER ") :])
        assert isinstance(document, dict)
        return document

    def wait_event(
        self, event_id: str, holds: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Until this server's view of the event satisfies `holds` (the flood has arrived)."""
        seen: list[bytes] = []

        def check() -> dict[str, Any] | None:
            reply = self.request(f"EVENT {event_id}".encode())
            seen[:] = [reply]
            if not reply.startswith(b"EVENT "):
                return None
            document = json.loads(reply[len(b"EVENT ") :])
            return document if holds(document) else None

        return wait_until(check, timeout, lambda: f"{event_id} as expected; last {seen!r}")


def option_ids(event: dict[str, Any], kind: str) -> list[str]:
    options = event[kind]
    assert isinstance(options, list)
    return [str(option["id"]) for option in options]


# --- SMTP servers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mail:
    """One kept message: its file, envelope recipients and parsed content."""

    name: str
    rcpt_to: tuple[str, ...]
    message: EmailMessage

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


def read_mails(directory: Path) -> list[Mail]:
    """Every message kept under `directory/mail` so far, by file name."""
    parser = BytesParser(policy=email.policy.default)
    mails = []
    for path in sorted((directory / "mail").glob("*.eml")):
        message = parser.parsebytes(path.read_bytes())
        assert isinstance(message, EmailMessage)
        rcpt = tuple(
            address.strip() for address in str(message["X-RcptTo"]).split(",") if address.strip()
        )
        mails.append(Mail(path.stem, rcpt, message))
    return mails


class SmtpProcess:
    """An SMTP server process on a fixed loopback port that can be stopped and started again."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = directory / "smtp.stderr"
        directory.mkdir(parents=True, exist_ok=True)

    def start(self, refuse: Sequence[str] = (), stall: bool = False) -> None:
        """The project's mail sink, or (to refuse or stall) the tests' own server."""
        assert self.proc is None or self.proc.poll() is not None, "SMTP server is running"
        if refuse or stall:
            program = ["-m", "tests.e2e.notify_harness"]
            program += [f"--refuse={address}" for address in refuse]
            program += ["--stall"] if stall else []
        else:
            program = ["-m", "notifier.mailsink"]
        with self.stderr.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, *program, str(self.directory), "--port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=REPO,
            )
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise HerdError(f"SMTP server exited with {proc.returncode}\n{self.diagnose()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(listening, SMTP_START_SECONDS, lambda: f"SMTP server up\n{self.diagnose()}")

    def stop(self) -> None:
        """SIGTERM (the mail sink closes its sessions), SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(SMTP_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(SMTP_STOP_SECONDS)

    def close(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(SMTP_STOP_SECONDS)

    def mails(self) -> list[Mail]:
        return read_mails(self.directory)

    def diagnose(self) -> str:
        text = self.stderr.read_bytes()[-2000:] if self.stderr.exists() else b""
        return "--- SMTP server stderr tail:\n" + text.decode("utf-8", "replace")


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


# --- the tests' own SMTP server (run as a program) -----------------------------------------------


class _Keeper:
    """aiosmtpd handler: 550 for refused addresses; keeps each message; optionally stalls."""

    def __init__(self, directory: Path, refuse: frozenset[str], stall: bool) -> None:
        self.directory = directory
        self.refuse = refuse
        self.stall = stall
        self.serial = itertools.count(1)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address.lower() in self.refuse:
            return "550 5.1.1 <" + address + ">: no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        content = envelope.original_content
        assert content is not None
        rcpt = ", ".join(envelope.rcpt_tos)
        trace = f"X-MailFrom: {envelope.mail_from}\r\nX-RcptTo: {rcpt}\r\n"
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self.serial)}"
        partial = self.directory / f".{name}.tmp"
        partial.write_bytes(trace.encode("utf-8", "surrogateescape") + content)
        os.replace(partial, self.directory / f"{name}.eml")
        if self.stall:
            await asyncio.Event().wait()  # kept, but the sender never hears so
        return "250 2.0.0 kept"


async def _serve(directory: Path, port: int, refuse: frozenset[str], stall: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    keeper = _Keeper(directory, refuse, stall)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(keeper, hostname="e2e-smtp", enable_SMTPUTF8=True, loop=loop), HOST, port
    )
    print(f"e2e smtp listening on {HOST}:{port}", flush=True)
    async with server:
        await asyncio.Event().wait()  # until SIGTERM or SIGKILL ends the process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.notify_harness")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--refuse", action="append", default=[])
    parser.add_argument("--stall", action="store_true")
    options = parser.parse_args(argv)
    refuse = frozenset(address.lower() for address in options.refuse)
    asyncio.run(_serve(options.directory / "mail", options.port, refuse, options.stall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
