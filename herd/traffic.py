"""The per-server log: every line received and sent, every peer link opened and dropped.

Recording a line costs an append on the reactor thread; formatting and writing happen in
batches on a log thread, to the server's log file and to stderr, so logging every line does not
block the reactor or cost a system call per line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer

from herd.wire import REDACTED, SECRET_LINE_START, redact_secrets

RunBlocking = Callable[[Callable[[], None]], Deferred[None]]

_Record = tuple[float, str, str, bytes]

FLUSH_SECONDS = 0.1
MAX_PENDING = 20_000


_TOKEN_HASH = re.compile(rb"scrypt\$[^\"\s]*")
_ECHOED_SECRET = re.compile(rb"(?m)^\? (" + SECRET_LINE_START + rb".*)$")


def scrub(payload: bytes) -> bytes:
    """What must not reach the log even when a line carries it: token hashes (in the
    operations that set them, flooded between peers) and the secret of an `AUTH`, `USER-ADD` or
    `USER-TOKEN` line echoed in an error reply (`? <line>`), redacted by the same rule as the
    received line (`redact_secrets`)."""
    if b"scrypt$" in payload:
        payload = _TOKEN_HASH.sub(b"scrypt$" + REDACTED, payload)
    if b"? " in payload:
        payload = _ECHOED_SECRET.sub(lambda echo: b"? " + redact_secrets(echo[1]), payload)
    return payload


def format_records(server: bytes, records: list[_Record]) -> bytes:
    """`<UTC time> <server> <direction> <who> <line>` for every line of every record (the
    server's name, because `herd up` merges every server's stderr)."""
    out: list[bytes] = []
    last_whole = -1
    stamp = b""
    for seconds, direction, who, payload in records:
        whole = int(seconds)
        if whole != last_whole:
            last_whole = whole
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode()
        head = b"%s.%03dZ %s %s %s " % (
            stamp,
            int((seconds - whole) * 1000),
            server,
            direction.encode(),
            who.encode(),
        )
        body = scrub(payload[:-1] if payload.endswith(b"\n") else payload)
        out.append(head + body.replace(b"\n", b"\n" + head) + b"\n")
    return b"".join(out)


class TrafficLog:
    """Batched log of one server's traffic, to a file and a stream."""

    def __init__(
        self,
        server: str,
        path: Path,
        stream: BinaryIO | None,
        clock: IReactorTime,
        run_blocking: RunBlocking,
    ) -> None:
        self._server = server.encode()
        self._path = path
        self._stream = stream
        self._clock = clock
        self._run_blocking = run_blocking
        self._pending: list[_Record] = []
        self._dropped = 0
        self._writing: Deferred[None] | None = None
        self._file: BinaryIO | None = None
        self._loop = LoopingCall(self.flush)
        self._loop.clock = clock

    def start(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._path, "ab")  # noqa: SIM115 - open for the server's lifetime
        self._loop.start(FLUSH_SECONDS, now=False)

    def received(self, who: str, lines: list[bytes]) -> None:
        """Lines that arrived together: one record, one line each in the log."""
        self._add("recv", who, b"\n".join(lines))

    def sent(self, who: str, data: bytes) -> None:
        self._add("sent", who, data)

    def event(self, text: str) -> None:
        self._add("note", "-", text.encode("utf-8", "backslashreplace"))

    def _add(self, direction: str, who: str, payload: bytes) -> None:
        if len(self._pending) >= MAX_PENDING:
            # The log thread is behind by a whole batch: count what is dropped rather than
            # let memory grow without bound; the count itself is logged.
            self._dropped += 1
            return
        self._pending.append((self._clock.seconds(), direction, who, payload))

    def flush(self) -> Deferred[None]:
        """Write what has gathered (one batch at a time); fires when it is written."""
        if self._writing is not None or (not self._pending and not self._dropped):
            return self._writing if self._writing is not None else succeed(None)
        records, self._pending = self._pending, []
        if self._dropped:
            note = f"log overloaded: {self._dropped} records dropped".encode()
            records.append((self._clock.seconds(), "note", "-", note))
            self._dropped = 0
        writing = self._run_blocking(lambda: self._write(records))
        self._writing = writing

        def done(result: None) -> None:
            self._writing = None

        writing.addBoth(done)
        return writing

    def _write(self, records: list[_Record]) -> None:
        data = format_records(self._server, records)
        if self._file is not None:
            self._file.write(data)
            self._file.flush()
        if self._stream is not None:
            self._stream.write(data)
            self._stream.flush()

    def stop(self) -> Deferred[None]:
        """Flush everything and close the file."""
        if self._loop.running:
            self._loop.stop()

        def drain(_: object = None) -> Deferred[None] | None:
            if self._writing is not None:
                return self._writing.addCallback(drain)
            if self._pending or self._dropped:
                return self.flush().addCallback(drain)
            if self._file is not None:
                self._file.close()
                self._file = None
            return None

        return succeed(None).addCallback(drain)

    def observer(self) -> ILogObserver:
        """A Twisted log observer that writes the server's own messages to this log."""
        return _Observer(self)


@implementer(ILogObserver)
class _Observer:
    def __init__(self, log: TrafficLog) -> None:
        self._log = log

    def __call__(self, event: LogEvent) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        self._log.event(text)
