"""The one SMTP sink of the tests and benchmarks: a real aiosmtpd server on loopback that can
refuse recipients, stall, keep each message as a file and count what it got.

In process (`SmtpServer`, on the running asyncio loop: the reactor's in reactor tests) it can die,
sessions and all, and come back on the same port; it can also offer STARTTLS or speak implicit
TLS with a test CA's certificate (`tests.support.testca`) and require AUTH against a table of
accounts, recording each login (`logins`) and whether it was made over TLS.  As a process of
its own (`SmtpProcess`, running `python -m tests.support.smtp`) it can be stopped and started
again by an end-to-end test, or measured by a benchmark (`python -m bench smtpsink` runs the
same `main`).  The
product's own sink, `notifier.mailsink` (what `herd up` runs), is started by `SmtpProcess` when
nothing is to be refused or stalled: the end-to-end tests exercise it as a user meets it.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import DATA_SIZE_DEFAULT, SMTP, AuthResult, Envelope, LoginPassword, Session
from twisted.internet.defer import Deferred

from notifier.aio import as_deferred
from tests.support.polling import HerdError, wait_until
from tests.support.ports import HOST

START_SECONDS = 15.0
LOGIN_FILE = "logins.jsonl"  # under a process sink's directory: its AUTH attempts
STOP_SECONDS = 5.0
REPO = Path(__file__).resolve().parents[2]

Refusal = Callable[[str], "str | None"]  # a recipient -> the reply refusing it, or None
Hold = Callable[[Sequence[str]], bool]  # a message's recipients -> whether DATA waits


def refuse_by_name(address: str) -> str | None:
    """Recipients named for what they get: `bad@…` a 550, `busy@…` a 451."""
    if address.startswith("bad@"):
        return "550 5.1.1 no such user"
    if address.startswith("busy@"):
        return "451 4.3.2 try again later"
    return None


def hold_by_name(recipients: Sequence[str]) -> bool:
    """A message to `slow@…` waits at DATA."""
    return any(rcpt.startswith("slow@") for rcpt in recipients)


def hold_nothing(recipients: Sequence[str]) -> bool:
    return False


class Mailbox:
    """aiosmtpd handler.  Refuses recipients by `refuse` (by default, by their names); holds
    a message whose recipients `hold` names until `release` is set; counts each message (and
    the monotonic time of its 250); records it (`raw`, `received`) unless only counting; keeps
    it as a file under `directory` if given; with `stall_after_keeping`, never answers the DATA
    it kept (a crash mid-delivery: the sender cannot know whether it got through)."""

    def __init__(
        self,
        *,
        refuse: Refusal = refuse_by_name,
        hold: Hold = hold_by_name,
        directory: Path | None = None,
        stall_after_keeping: bool = False,
        record: bool = True,
    ) -> None:
        self.refuse = refuse
        self.hold = hold
        self.directory = directory
        self.stall_after_keeping = stall_after_keeping
        self.record = record
        self.release = asyncio.Event()
        self.messages = 0
        self.bytes = 0
        self.times: list[float] = []
        self.raw: list[bytes] = []  # each message's data as received, after the SMTP layer
        self.recipients: list[list[str]] = []
        self._serial = itertools.count(1)

    @property
    def received(self) -> list[tuple[list[str], EmailMessage]]:
        """Each recorded message's envelope recipients and parsed content."""
        parser = BytesParser(policy=email.policy.default)
        parsed = []
        for rcpts, data in zip(self.recipients, self.raw, strict=True):
            message = parser.parsebytes(data)
            assert isinstance(message, EmailMessage)
            parsed.append((rcpts, message))
        return parsed

    def ids(self) -> list[str]:
        return [str(mail["Message-ID"]) for _, mail in self.received]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refusal = self.refuse(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold(envelope.rcpt_tos):
            await self.release.wait()
        content = envelope.original_content
        assert content is not None
        self.messages += 1
        self.bytes += len(content)
        self.times.append(time.monotonic())
        if self.record:
            self.raw.append(content)
            self.recipients.append(list(envelope.rcpt_tos))
        if self.directory is not None:
            self._keep(envelope, content)
        if self.stall_after_keeping:
            await asyncio.Event().wait()  # kept, but the sender never hears so
        return "250 2.0.0 OK"

    def _keep(self, envelope: Envelope, content: bytes) -> None:
        """The envelope first, as `X-MailFrom`/`X-RcptTo` headers, then the message exactly as
        received (as `notifier.mailsink` keeps it); renamed into place, never seen half-written."""
        assert self.directory is not None
        rcpt = ", ".join(envelope.rcpt_tos)
        trace = f"X-MailFrom: {envelope.mail_from}\r\nX-RcptTo: {rcpt}\r\n"
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._serial)}"
        partial = self.directory / f".{name}.tmp"
        partial.write_bytes(trace.encode("utf-8", "surrogateescape") + content)
        os.replace(partial, self.directory / f"{name}.eml")


@dataclass(frozen=True, slots=True)
class Login:
    """One AUTH attempt the server saw: who, whether the password was right, and the TLS
    version of the connection it came over (None: in clear)."""

    user: str
    accepted: bool
    tls: str | None


class _Session(SMTP):
    """An SMTP session its server can find again, to close it when the server dies."""

    def __init__(self, server: SmtpServer) -> None:
        starttls = server.tls_context is not None and not server.implicit_tls
        with warnings.catch_warnings():
            # Over implicit TLS aiosmtpd does not see the encryption, so it would refuse AUTH
            # unless told TLS is not required, and warns that it is not: `authenticate` checks.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            super().__init__(
                server.mailbox,
                hostname="test-smtp",
                enable_SMTPUTF8=server.smtputf8,
                data_size_limit=server.data_size_limit,
                loop=asyncio.get_running_loop(),
                tls_context=server.tls_context if starttls else None,
                require_starttls=starttls,
                auth_require_tls=not server.implicit_tls,
                auth_required=server.accounts is not None,
                authenticator=None if server.accounts is None else server.authenticate,
            )
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server.sessions.add(self)
        self._server.connections += 1

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._server.sessions.discard(self)


class SmtpServer:
    """A real SMTP server on 127.0.0.1, on the running asyncio loop, that can die (sessions and
    all) and come back on the same port.  `listen`/`close` are asyncio coroutines; `start`/`stop`
    the same as Deferreds, for tests on the reactor."""

    def __init__(
        self,
        mailbox: Mailbox | None = None,
        smtputf8: bool = False,
        data_size_limit: int = DATA_SIZE_DEFAULT,
        *,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        accounts: Mapping[str, str] | None = None,
        login_file: Path | None = None,
    ) -> None:
        """Plain SMTP by default.  With a server-side `tls_context` it offers STARTTLS and
        requires it before MAIL, or with `implicit_tls` speaks TLS from the first byte (port
        465 style).  With `accounts` (user -> password) it offers AUTH only over TLS and
        requires it before MAIL; each attempt is also appended to `login_file` (JSON lines)."""
        if implicit_tls and tls_context is None:
            raise ValueError("implicit TLS needs a tls_context")
        self.mailbox = Mailbox() if mailbox is None else mailbox
        self.smtputf8 = smtputf8
        self.data_size_limit = data_size_limit
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.accounts = None if accounts is None else dict(accounts)
        self.logins: list[Login] = []
        self.login_file = login_file
        self.port = 0
        self.sessions: set[_Session] = set()
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> Deferred[None]:
        async def listen() -> None:
            await self.listen()

        return as_deferred(listen())

    def stop(self) -> Deferred[None]:
        return as_deferred(self.close())

    async def listen(self, port: int | None = None) -> int:
        """Listen (on `port`, else the last one, else a free one); returns the port."""
        loop = asyncio.get_running_loop()
        wanted = self.port if port is None else port
        self._server = await loop.create_server(
            lambda: _Session(self),
            HOST,
            wanted,
            ssl=self.tls_context if self.implicit_tls else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        """aiosmtpd's authenticator: the accounts' passwords, only over TLS; each attempt is
        recorded in `logins`."""
        if not isinstance(data, LoginPassword) or self.accounts is None:
            return AuthResult(success=False, handled=False)
        user = data.login.decode("utf-8", "replace")
        password = data.password.decode("utf-8", "replace")
        transport = server.transport
        tls = None if transport is None else transport.get_extra_info("ssl_object")
        version = tls.version() if isinstance(tls, ssl.SSLObject) else None
        accepted = version is not None and self.accounts.get(user) == password
        login = Login(user, accepted, version)
        self.logins.append(login)
        if self.login_file is not None:
            with self.login_file.open("a", encoding="utf-8") as file:
                file.write(json.dumps([login.user, login.accepted, login.tls]) + "\n")
        return AuthResult(success=accepted, handled=False, auth_data=data if accepted else None)

    async def close(self) -> None:
        """Stop listening and drop every session, releasing held messages first."""
        server, self._server = self._server, None
        assert server is not None
        server.close()
        self.mailbox.release.set()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        while self.sessions:
            await asyncio.sleep(0.002)
        await server.wait_closed()


# --- kept mail, read back -------------------------------------------------------------------------


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


# --- as a process of its own ----------------------------------------------------------------------


class SmtpProcess:
    """An SMTP server process on a fixed loopback port that can be stopped and started again;
    it keeps every message under `directory/mail`."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = directory / "smtp.stderr"
        directory.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        refuse: Sequence[str] = (),
        stall: bool = False,
        *,
        certificate: tuple[Path, Path] | None = None,
        implicit_tls: bool = False,
        accounts: Mapping[str, str] | None = None,
    ) -> None:
        """The project's mail sink, or (to refuse or stall, or with a `certificate` and key
        for STARTTLS or `implicit_tls`, or `accounts` to require AUTH) this module's sink."""
        assert self.proc is None or self.proc.poll() is not None, "SMTP server is running"
        if refuse or stall or certificate is not None or accounts is not None:
            program = ["-m", "tests.support.smtp", "--keep", str(self.directory)]
            program += [f"--refuse={address}" for address in refuse]
            program += ["--stall"] if stall else []
            if certificate is not None:
                program += [f"--tls-cert={certificate[0]}", f"--tls-key={certificate[1]}"]
            program += ["--implicit-tls"] if implicit_tls else []
            for user, password in (accounts or {}).items():
                program += [f"--account={user}:{password}"]
        else:
            program = ["-m", "notifier.mailsink", str(self.directory)]
        with self.stderr.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, *program, "--port", str(self.port)],
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

        wait_until(listening, START_SECONDS, lambda: f"SMTP server up\n{self.diagnose()}")

    def stop(self) -> None:
        """SIGTERM (the sink closes its sessions), SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_SECONDS)

    def close(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_SECONDS)

    def mails(self) -> list[Mail]:
        return read_mails(self.directory)

    def logins(self) -> list[Login]:
        """Every AUTH attempt the sink saw (this module's sink, with `accounts`)."""
        path = self.directory / LOGIN_FILE
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [Login(*json.loads(line)) for line in lines if line]

    def diagnose(self) -> str:
        text = self.stderr.read_bytes()[-2000:] if self.stderr.exists() else b""
        return "--- SMTP server stderr tail:\n" + text.decode("utf-8", "replace")


def refusing(addresses: Sequence[str]) -> Refusal:
    """550 for each of `addresses` (any case), as a mail server without such a user answers."""
    refused = frozenset(address.lower() for address in addresses)

    def refuse(address: str) -> str | None:
        if address.lower() in refused:
            return "550 5.1.1 <" + address + ">: no such user here"
        return None

    return refuse


async def serve(port: int, mailbox: Mailbox, **options: Any) -> SmtpServer:
    """Listen until SIGTERM or SIGINT; prints `ready <port>` once listening.  `options` go to
    `SmtpServer` (TLS, accounts)."""
    server = SmtpServer(mailbox, smtputf8=True, data_size_limit=10 * 1024 * 1024, **options)
    bound = await server.listen(port)
    print(f"ready {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close()
    return server


def main(
    argv: list[str] | None = None,
    prog: str = "python -m tests.support.smtp",
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] | None = None,
) -> int:
    """Run the sink until SIGTERM, then print one JSON line: messages, bytes, connections and
    the CLOCK_MONOTONIC time of each message's 250 (comparable across processes on Linux)."""
    choices = {"asyncio": asyncio.new_event_loop, **(loops or {})}
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep each message under KEEP/mail/")
    parser.add_argument("--refuse", action="append", default=[], help="answer 550 at RCPT")
    parser.add_argument("--stall", action="store_true", help="keep, then never answer DATA")
    parser.add_argument("--loop", choices=sorted(choices), default=next(reversed(choices)))
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: offer STARTTLS")
    parser.add_argument("--tls-key", type=Path, help="the certificate's PEM key")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte")
    parser.add_argument(
        "--account", action="append", default=[], help="USER:PASSWORD; AUTH is then required"
    )
    options = parser.parse_args(argv)
    server_options: dict[str, Any] = {}
    if options.tls_cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(options.tls_cert, options.tls_key)
        server_options.update(tls_context=context, implicit_tls=options.implicit_tls)
    if options.account:
        server_options["accounts"] = dict(item.split(":", 1) for item in options.account)
        if options.keep is not None:
            server_options["login_file"] = options.keep / LOGIN_FILE
    directory = None if options.keep is None else options.keep / "mail"
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    loop = choices[options.loop]()
    try:
        mailbox = Mailbox(
            refuse=refusing(options.refuse),
            hold=hold_nothing,
            directory=directory,
            stall_after_keeping=options.stall,
            record=False,
        )
        server = loop.run_until_complete(serve(options.port, mailbox, **server_options))
    finally:
        loop.close()
    counts = {
        "messages": mailbox.messages,
        "bytes": mailbox.bytes,
        "connections": server.connections,
        "times": mailbox.times,
        "loop": options.loop,
    }
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
