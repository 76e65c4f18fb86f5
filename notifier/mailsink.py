"""The local mail sink: an SMTP server on loopback that keeps every message as a file.

`herd up` starts it when the config has no `[smtp]` relay, so a newcomer can read what Renga
would have mailed (`herd mail`).  It runs on the asyncio loop it is started from: the herd's
shared loop (bridge with `notifier.aio`), or its own with `python -m notifier.mailsink DATA_DIR`.

Each message is kept as `<data_dir>/mail/<UTC time>-<n>.eml`, exactly as received, after two
headers recording the envelope (`X-MailFrom`, `X-RcptTo`).  Files are written by one writer
thread, never on the loop, and a message is acknowledged (250) only once its file exists, so a
client that got 250 can count on the file; a size limit bounds each write.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import ipaddress
import itertools
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

MAX_SIZE = 10 * 1024 * 1024
HEADER_PEEK = 64 * 1024  # `list_mail` reads at most this much of each file
_ID = re.compile(r"\d{8}T\d{6}\.\d{6}Z-\d+")
_POLICY = email.policy.default


@dataclass(frozen=True, slots=True)
class MailSummary:
    """One kept message, for `herd mail`."""

    id: str
    received: str  # UTC, from the id
    mail_from: str  # envelope sender
    to: str  # envelope recipients
    subject: str
    size: int


class _Keeper:
    """aiosmtpd handler: writes each message to its file on the writer thread."""

    def __init__(
        self, directory: Path, now: Callable[[], float], writer: ThreadPoolExecutor, serial: int
    ) -> None:
        self.directory = directory
        self._now = now
        self._writer = writer
        self._serial = itertools.count(serial)
        self.writes: set[asyncio.Future[None]] = set()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.original_content is not None
        name = _mail_id(self._now(), next(self._serial))
        trace = f"X-MailFrom: {envelope.mail_from}\r\nX-RcptTo: {', '.join(envelope.rcpt_tos)}\r\n"
        data = trace.encode("utf-8", "surrogateescape") + envelope.original_content
        write = asyncio.get_running_loop().run_in_executor(
            self._writer, _write_file, self.directory, name, data
        )
        self.writes.add(write)  # until written, even if this session is closed meanwhile
        write.add_done_callback(self.writes.discard)
        try:
            await write
        except OSError as error:
            return f"451 4.3.0 cannot keep the message: {error.strerror or error}"
        return f"250 2.0.0 kept as {name}"


class _Session(SMTP):
    """An SMTP session the sink can find again, to close it when the sink stops."""

    def __init__(self, sink: MailSink, handler: _Keeper, max_size: int) -> None:
        super().__init__(
            handler,
            hostname="renga-mailsink",
            data_size_limit=max_size,
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._sink.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._sink.sessions.discard(self)
        self._sink.session_closed()


class MailSink:
    """An aiosmtpd server on loopback keeping mail under `<data_dir>/mail/`."""

    def __init__(
        self,
        data_dir: Path,
        now: Callable[[], float],
        host: str = "127.0.0.1",
        port: int = 0,
        max_size: int = MAX_SIZE,
    ) -> None:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the mail sink listens on loopback only, not {host}")
        self.directory = data_dir / "mail"
        self.host = host
        self.port = port
        self._now = now
        self._max_size = max_size
        self._writer: ThreadPoolExecutor | None = None
        self._keeper: _Keeper | None = None
        self._server: asyncio.Server | None = None
        self.sessions: set[_Session] = set()
        self._all_closed: asyncio.Future[None] | None = None

    async def start(self) -> int:
        """Listen; returns the port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailsink")
        last = await loop.run_in_executor(self._writer, _prepare, self.directory)
        keeper = self._keeper = _Keeper(self.directory, self._now, self._writer, last + 1)
        self._server = await loop.create_server(
            lambda: _Session(self, keeper, self._max_size), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening, close open sessions, and wait for files being written."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self.sessions:
            self._all_closed = asyncio.get_running_loop().create_future()
            for session in list(self.sessions):
                if session.transport is not None:
                    session.transport.close()
            await self._all_closed
            self._all_closed = None
        if server is not None:
            await server.wait_closed()  # after the sessions: from 3.12 it waits for them
        if self._keeper is not None and self._keeper.writes:
            await asyncio.wait(self._keeper.writes)
        if self._writer is not None:
            self._writer.shutdown(wait=False)
            self._writer = None

    def session_closed(self) -> None:
        if not self.sessions and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)


def _mail_id(now: float, serial: int) -> str:
    whole = int(now)
    micros = min(999_999, round((now - whole) * 1_000_000))
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(whole))}.{micros:06d}Z-{serial}"


def _prepare(directory: Path) -> int:
    """Create the directory, drop files a crash left half-written, and return the highest
    serial kept so far: numbering goes on from there, so a restarted sink never reuses a name."""
    directory.mkdir(parents=True, exist_ok=True)
    for partial in directory.glob(".*.tmp"):
        partial.unlink()
    serials = [_sort_key(p.stem)[1] for p in directory.glob("*.eml") if _ID.fullmatch(p.stem)]
    return max(serials, default=0)


def _write_file(directory: Path, name: str, data: bytes) -> None:
    """Write under a hidden name, then rename: readers never see half a message."""
    partial = directory / f".{name}.tmp"
    partial.write_bytes(data)
    os.replace(partial, directory / f"{name}.eml")


def _sort_key(mail_id: str) -> tuple[str, int]:
    stamp, _, serial = mail_id.rpartition("-")
    return stamp, int(serial)


def list_mail(data_dir: Path) -> list[MailSummary]:
    """Every kept message, oldest first (blocking; for the CLI)."""
    directory = data_dir / "mail"
    if not directory.is_dir():
        return []
    ids = sorted(
        (path.stem for path in directory.glob("*.eml") if _ID.fullmatch(path.stem)),
        key=_sort_key,
    )
    summaries = []
    for mail_id in ids:
        path = directory / f"{mail_id}.eml"
        with path.open("rb") as file:
            head = file.read(HEADER_PEEK)
            size = os.fstat(file.fileno()).st_size
        headers = BytesParser(policy=_POLICY).parsebytes(head, headersonly=True)
        stamp = mail_id.partition(".")[0]
        summaries.append(
            MailSummary(
                id=mail_id,
                received=(
                    f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T"
                    f"{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"
                ),
                mail_from=str(headers.get("X-MailFrom", "")),
                to=str(headers.get("X-RcptTo", "")),
                subject=str(headers.get("Subject", "")),
                size=size,
            )
        )
    return summaries


def format_mail_list(summaries: list[MailSummary]) -> list[str]:
    """Aligned lines for a terminal: a header, then one line per message."""
    table = [("ID", "RECEIVED", "TO", "SUBJECT")]
    table += [(s.id, s.received, _printable(s.to), _printable(s.subject)) for s in summaries]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[3]]).rstrip()
        for row in table
    ]


def _read_mail(data_dir: Path, mail_id: str) -> bytes:
    """A kept message's file; `KeyError` for an unknown id (or one that is not an id at all:
    nothing outside the mail folder is ever read)."""
    if not _ID.fullmatch(mail_id):
        raise KeyError(mail_id)
    path = data_dir / "mail" / f"{mail_id}.eml"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyError(mail_id) from None


def _parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=_POLICY).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def show_mail(data_dir: Path, mail_id: str, raw: bool = False) -> str:
    """One kept message for reading: its main headers, its text, and a list of its other parts
    (or, with `raw`, the file as received).  Raises `KeyError` for an unknown id."""
    data = _read_mail(data_dir, mail_id)
    if raw:
        return data.decode("utf-8", "replace")
    message = _parse(data)
    lines = [
        f"{name}: {_printable(str(message[name]))}"
        for name in ("From", "To", "Date", "Subject", "Message-ID", "In-Reply-To")
        if message[name] is not None
    ]
    body = message.get_body(preferencelist=("plain", "html"))
    lines.append("")
    if body is not None:
        lines += [_printable(line) for line in body.get_content().splitlines()]
    for part in message.walk():
        if part is body or part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        filename = part.get_filename()
        label = f"{filename}, " if filename else ""
        lines.append(f"[{label}{part.get_content_type()}, {size} bytes]")
    return "\n".join(lines) + "\n"


def html_part(data_dir: Path, mail_id: str) -> bytes | None:
    """The HTML body of a kept message, its bytes as written (undone from their transfer
    encoding, in the charset the part declares), or None if it has none.  `KeyError` for an
    unknown id."""
    body = _parse(_read_mail(data_dir, mail_id)).get_body(preferencelist=("html",))
    return None if body is None else _payload(body)


CALENDAR_TYPES = ("text/calendar", "application/ics")


def calendar_part(data_dir: Path, mail_id: str) -> bytes | None:
    """The first calendar part (`text/calendar`, an event's `.ics`) of a kept message, as
    attached, or None if it has none.  `KeyError` for an unknown id."""
    for part in _parse(_read_mail(data_dir, mail_id)).walk():
        if not part.is_multipart() and part.get_content_type() in CALENDAR_TYPES:
            return _payload(part)
    return None


def _payload(part: MIMEPart) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _printable(text: str) -> str:
    """No control characters: what a mail says must not drive the reader's terminal."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


async def serve(data_dir: Path, host: str, port: int) -> None:
    """Run a sink until SIGINT or SIGTERM; prints one line once it listens."""
    sink = MailSink(data_dir, time.time, host, port)
    bound = await sink.start()
    print(f"mailsink listening on {host}:{bound}, keeping mail in {sink.directory}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await sink.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m notifier.mailsink", description="Keep every mail sent to it as a file."
    )
    parser.add_argument("data_dir", type=Path, help="mail goes to DATA_DIR/mail/")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    options = parser.parse_args(argv)
    asyncio.run(serve(options.data_dir, options.host, options.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
