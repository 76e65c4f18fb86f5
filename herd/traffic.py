"""The per-server log: the lines received and sent, every peer link opened and dropped.

Recording a line costs an append on the reactor thread (after the rules of `herd.logrules`:
no blank lines, long lines cut, a budget of lines per second for each connection); formatting,
writing and rotating happen in batches on a log thread, to the server's log file and to
stderr, so logging does not block the reactor or cost a system call per line.

The log is best-effort: when its file or stderr cannot be written (disk full, file too large),
those lines are dropped with a note on the other output, and the server goes on.  The store is
not best-effort: a failed store write stops the server (`herd.service`).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from zope.interface import implementer

from herd.config import LogConfig
from herd.logrules import LineBudget, cut
from herd.offload import RunBlocking
from herd.wire.grammar import REDACTED, SECRET_LINE_START, redact_secrets

_Record = tuple[float, str, str, bytes]

FLUSH_SECONDS = 0.1
MAX_PENDING = 20_000
_URGENT = (LogLevel.error, LogLevel.critical)


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
    server's name, because `herd up --verbose` shows every server's log in one terminal)."""
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


class RotatingFile:
    """The log file, never past `max_bytes`: when the next lines would not fit, it becomes
    `<name>.1` (`<name>.1` becomes `<name>.2`, and so on; the one past `backups` is replaced)
    and a new file starts.  Blocking: used on the log thread only."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = -1
        self._size = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        """Whole lines go to one file: rotation happens between two lines."""
        if self._fd < 0:
            self.open()
        while data:
            room = self.max_bytes - self._size
            if len(data) <= room:
                self._write_all(data)
                return
            end = data.rfind(b"\n", 0, room) + 1
            if end == 0 and self._size == 0:
                end = room  # one line longer than a whole file: it is split
            if end:
                self._write_all(data[:end])
                data = data[end:]
            self._rotate()

    def _write_all(self, data: bytes) -> None:
        """All of `data`, or nothing: a write that fails halfway is taken back, so the file
        never holds half a line."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(FileNotFoundError):  # moved or deleted by someone else
            if self.backups:
                for number in range(self.backups - 1, 0, -1):
                    older = Path(f"{self.path}.{number}")
                    if older.exists():
                        older.replace(f"{self.path}.{number + 1}")
                self.path.replace(f"{self.path}.1")
            else:
                self.path.unlink()
        self.open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Output:
    """One place the log goes (its file, stderr), written best-effort: a write that fails
    (disk full, file too large, a closed pipe) drops those lines and does not stop the server;
    the first failure and the recovery are noted on the other output."""

    def __init__(self, name: str, write: Callable[[bytes], None]) -> None:
        self.name = name
        self._write = write
        self.dropped = 0

    def put(self, data: bytes) -> str:
        """Write `data`; what to note on the other output ("" if nothing changed)."""
        try:
            self._write(data)
        except (OSError, ValueError) as error:
            first = self.dropped == 0
            self.dropped += len(data)
            if first:
                return f"the log cannot be written to {self.name} ({error}): dropped until it can"
            return ""
        if self.dropped:
            note = f"the log is written to {self.name} again; {self.dropped} bytes were dropped"
            self.dropped = 0
            return note
        return ""


class TrafficLog:
    """Batched log of one server's traffic, to a rotated file and a stream, within the limits
    of `LogConfig` (see `herd.logrules`)."""

    def __init__(
        self,
        server: str,
        path: Path,
        stream: BinaryIO | None,
        clock: IReactorTime,
        run_blocking: RunBlocking,
        limits: LogConfig = LogConfig(),  # noqa: B008 - frozen
    ) -> None:
        self._server = server.encode()
        self._path = path
        self._clock = clock
        self._run_blocking = run_blocking
        self._budget = LineBudget(limits.lines_per_second, limits.line_bytes)
        self._pending: list[_Record] = []
        self._dropped = 0
        self._writing: Deferred[None] | None = None
        self._file = RotatingFile(path, limits.max_bytes, limits.backups)
        self._outputs = [_Output(str(path), self._file.write)]
        if stream is not None:
            self._outputs.append(_Output("stderr", partial(_write_stream, stream)))
        self._loop = LoopingCall(self.flush)
        self._loop.clock = clock

    def start(self) -> None:
        self._file.open()
        self._loop.start(FLUSH_SECONDS, now=False)

    def received(self, who: str, lines: list[bytes]) -> None:
        """Lines that arrived together: one record, one line each in the log."""
        self._add("recv", who, lines)

    def sent(self, who: str, data: bytes) -> None:
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        self._add("sent", who, lines)

    def event(self, text: str, urgent: bool = False) -> None:
        """The server's own message; `urgent` ones (errors) are not held to the budget."""
        lines = text.encode("utf-8", "backslashreplace").split(b"\n")
        if urgent:
            line_bytes = self._budget.line_bytes
            self._record("note", "-", b"\n".join(cut(line, line_bytes) for line in lines))
        else:
            self._add("note", "-", lines)

    def _add(self, direction: str, who: str, lines: list[bytes]) -> None:
        kept, summary = self._budget.admit(who, lines, self._clock.seconds())
        if summary:
            self._record("note", "-", summary.encode())
        if kept:
            self._record(direction, who, b"\n".join(kept))

    def _record(self, direction: str, who: str, payload: bytes) -> None:
        if len(self._pending) >= MAX_PENDING:
            # The log thread is behind by a whole batch: count what is dropped rather than
            # let memory grow without bound; the count itself is logged.
            self._dropped += 1
            return
        self._pending.append((self._clock.seconds(), direction, who, payload))

    def flush(self) -> Deferred[None]:
        """Write what has gathered (one batch at a time); fires when it is written."""
        for summary in self._budget.ended(self._clock.seconds()):
            self._record("note", "-", summary.encode())
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
        """On the log thread: format, rotate, write; a failing output is noted on the other."""
        data = format_records(self._server, records)
        notes = [(output, output.put(data)) for output in self._outputs]
        for failing, note in notes:
            if note:
                line = format_records(
                    self._server, [(self._clock.seconds(), "note", "-", note.encode())]
                )
                for output in self._outputs:
                    if output is not failing:
                        output.put(line)

    def stop(self) -> Deferred[None]:
        """Flush everything and close the file."""
        if self._loop.running:
            self._loop.stop()
        for summary in self._budget.ended(None):
            self._record("note", "-", summary.encode())

        def drain(_: object = None) -> Deferred[None] | None:
            if self._writing is not None:
                return self._writing.addCallback(drain)
            if self._pending or self._dropped:
                return self.flush().addCallback(drain)
            self._file.close()
            return None

        return succeed(None).addCallback(drain)

    def observer(self) -> ILogObserver:
        """A Twisted log observer that writes the server's own messages to this log."""
        return _Observer(self)


def _write_stream(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)
    stream.flush()


@implementer(ILogObserver)
class _Observer:
    def __init__(self, log: TrafficLog) -> None:
        self._log = log

    def __call__(self, event: LogEvent) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        self._log.event(text, urgent=event.get("log_level") in _URGENT)
