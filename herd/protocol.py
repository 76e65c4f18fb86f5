"""Twisted adapters for the line protocol: framing, reply ordering, backpressure (thin).

`LineConnection` does what every connection on the client port shares: split lines (`\\n`, with
an optional `\\r`), refuse an over-long line by closing, answer a last line that had no newline
when the client half-closes, keep replies in request order even when some are answered later,
and stop reading from a client that does not read its replies.  What a line *means* is decided
elsewhere (`herd.server`), through the small `LineHandler` interface.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

SKIPPED_HEAD: Final = 64  # bytes of a skipped peer line kept: enough for `U <seq> `

LineSkipped = Callable[[bytes, int, bool], None]
"""Told of a peer line that is not handed on: its head, its length so far, and whether it was
terminated (over-long) or not (cut by the end of the connection)."""


class LineHandler(TypingProtocol):
    """What a connection's lines are handed to; replaced when a connection becomes a peer link."""

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        """`line` is without its terminator (`\n`, or `\r\n`); a last line that had none
        before the client half-closed comes as it was."""

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None: ...


class Traffic(TypingProtocol):
    """Where a connection records what it receives and writes (the server's log)."""

    def received(self, who: str, lines: list[bytes]) -> None: ...

    def sent(self, who: str, data: bytes) -> None: ...


class Slot:
    """A place in a connection's reply order, filled when the reply is ready.  A slot may
    gather several replies (`parts`) that are released together, e.g. every reply that waits
    for the same store commit."""

    __slots__ = ("data", "parts", "token")

    def __init__(self, token: object = None) -> None:
        self.data: bytes | None = None
        self.parts: list[bytes] = []
        self.token = token


@implementer(IHalfCloseableProtocol, IPushProducer)
class LineConnection(Protocol):
    """One TCP connection on the client port (or a dialed peer link)."""

    def __init__(
        self,
        handler: LineHandler,
        max_line: int,
        traffic: Traffic | None = None,
        log_label: str = "",
        redact: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.handler = handler
        self.max_line = max_line
        self.traffic = traffic
        self.label = log_label
        self.redact = redact
        self._buffer = b""
        self._slots: deque[Slot] | None = None
        self._gathering: Slot | None = None
        self._closing = False
        self._read_closed = False
        self.disconnected = False
        self._unregistered = False
        self.backlog = 0
        # A client that does not read its replies stops being read; a peer link never does:
        # both ends write, and two ends waiting for each other to read would never move.
        self.pause_reading_when_full = True
        # A peer link's framing (set by `keep_reading`): lines it cannot take go here instead.
        self._skipped: LineSkipped | None = None
        self._skipping: tuple[bytes, int] | None = None  # head and length of a line being cut

    # --- framing ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        if not self.label:
            peer = self.transport.getPeer()  # type: ignore[union-attr]
            self.label = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._skipped is not None:
            data = self._skip_over_long(data)
        lines = (self._buffer + data if self._buffer else data).split(b"\n")
        self._buffer = lines.pop()
        if lines:
            self._log_received(lines)
        for line in lines:
            if len(line) > self.max_line + 1 or (
                len(line) == self.max_line + 1 and not line.endswith(b"\r")
            ):
                self._overflow(len(line))
                return
            self.handler.line_received(self, line[:-1] if line.endswith(b"\r") else line)
            if self._closing:
                return
        if len(self._buffer) > self.max_line + 1:
            self._overflow(len(self._buffer))

    def readConnectionLost(self) -> None:
        """The client half-closed: answer its last line, then close once every reply is out."""
        self._read_closed = True
        if self._skipped is not None:
            self._cut_at_eof()
        elif self._buffer and not self._closing:
            line, self._buffer = self._buffer, b""
            self._log_received([line])
            self.handler.line_received(self, line)
        self._close_when_drained()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.disconnected = True
        self._slots = None
        self._gathering = None
        self.handler.connection_lost(self, reason)

    def _log_received(self, lines: list[bytes]) -> None:
        if self.traffic is None:
            return
        if self.redact is not None:
            lines = [self.redact(line) for line in lines]
        self.traffic.received(self.label, lines)

    def _skip_over_long(self, data: bytes) -> bytes:
        """A peer link: cut out of `data` every line longer than `max_line`, telling `_skipped`
        its head and length, with bounded memory (a line being cut is dropped as it comes)."""
        skipped = self._skipped
        assert skipped is not None
        if self._skipping is not None:
            head, length = self._skipping
            end = data.find(b"\n")
            if end < 0:
                self._skipping = (head, length + len(data))
                return b""
            self._skipping = None
            skipped(head, length + end, True)
            data = data[end + 1 :]
        limit = self.max_line + 1
        if len(self._buffer) + len(data) <= limit:
            return data
        pieces = (self._buffer + data).split(b"\n")
        tail = pieces.pop()

        def too_long(line: bytes) -> bool:
            return len(line) > limit or (len(line) == limit and not line.endswith(b"\r"))

        if len(tail) <= limit and not any(too_long(line) for line in pieces):
            return data
        self._buffer = b""
        kept: list[bytes] = []
        for line in pieces:
            if too_long(line):
                skipped(line[:SKIPPED_HEAD], len(line), True)
            else:
                kept.append(line + b"\n")
        if len(tail) > limit:
            self._skipping = (tail[:SKIPPED_HEAD], len(tail))
            tail = b""
        return b"".join(kept) + tail

    def _cut_at_eof(self) -> None:
        """A peer link ended in the middle of a line: that line is never a command (its sender
        died while writing it); `_skipped` is told, and it is dropped."""
        assert self._skipped is not None
        if self._skipping is not None:
            head, length = self._skipping
            self._skipping = None
            self._skipped(head, length, False)
        elif self._buffer and not self._closing:
            line, self._buffer = self._buffer, b""
            self._skipped(line[:SKIPPED_HEAD], len(line), False)

    def _overflow(self, length: int) -> None:
        self._closing = True
        self._buffer = b""
        self.handler.connection_lost(self, Failure(LineTooLong(length, self.max_line)))
        self.handler = _Closed()
        self._lose()

    # --- replies in request order ----------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write now, after any reply still being prepared."""
        if self._slots:
            slot = Slot()
            slot.data = data
            self._slots.append(slot)
        else:
            self._write(data)

    def reserve(self) -> Slot:
        """Hold this reply's place; later replies wait behind it."""
        slot = Slot()
        if self._slots is None:
            self._slots = deque()
        self._slots.append(slot)
        return slot

    def gather(self, token: object) -> Slot | None:
        """Add a reply to the slot of `token` (say, a store batch): returns a new slot when
        there is none for it yet at the end of the order (the caller arranges its release),
        else None (the reply joined that slot)."""
        gathering = self._gathering
        if (
            gathering is not None
            and gathering.token is token
            and self._slots  # a later reply (`reserve`, `send`) ends the gathering
            and self._slots[-1] is gathering
        ):
            return None
        slot = self.reserve()
        slot.token = token
        self._gathering = slot
        return slot

    def add(self, data: bytes) -> None:
        """Append a reply to the slot `gather` last returned."""
        assert self._gathering is not None
        self._gathering.parts.append(data)

    def release(self, slot: Slot) -> None:
        """The slot's gathered replies are ready: write them (in order) with one write."""
        if self._gathering is slot:
            self._gathering = None
        self.fill(slot, b"".join(slot.parts))

    def fill(self, slot: Slot, data: bytes) -> None:
        slot.data = data
        slots = self._slots
        if not slots or slots[0] is not slot:
            return
        ready: list[bytes] = []
        while slots and slots[0].data is not None:
            ready.append(slots.popleft().data or b"")
        self._write(b"".join(ready))
        if self._read_closed:
            self._close_when_drained()

    def _write(self, data: bytes) -> None:
        if self.disconnected or not data:
            return
        if self.backlog:
            self.backlog += len(data)
        if self.traffic is not None:
            self.traffic.sent(self.label, data)
        self.transport.write(data)  # type: ignore[union-attr]

    def _close_when_drained(self) -> None:
        if not self._slots and not self.disconnected:
            self._lose()

    def close(self) -> None:
        self._closing = True
        self._lose()

    def _lose(self) -> None:
        """Close once the write buffer is flushed.  We stop being the transport's producer
        first: a paused producer would be resumed when the buffer drains, instead of the
        connection being closed (see `ITransport.loseConnection`)."""
        if not self._unregistered:
            self._unregistered = True
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    # --- backpressure: the transport tells us when its write buffer is full ----------------

    def pauseProducing(self) -> None:
        """The peer is not reading: stop reading its requests until it catches up."""
        self.backlog = 1
        if self.pause_reading_when_full:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self.backlog = 0
        if not self._closing and not self._read_closed:
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def keep_reading(self, skipped: LineSkipped | None = None) -> None:
        """From now on, never stop reading for a full write buffer (a peer link: its own
        bound is the backlog it may leave unsent, see `herd.peers`).  With `skipped`, also
        frame as a peer link: an over-long line is skipped instead of closing, and a last
        line without its newline is dropped instead of answered (both go to `skipped`)."""
        self.pause_reading_when_full = False
        self._skipped = skipped
        if self.backlog and not self._closing and not self._read_closed:
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        self._closing = True


class LineTooLong(Exception):
    """A line longer than `max_line`: the connection is closed without a reply."""

    def __init__(self, length: int, max_line: int) -> None:
        super().__init__(f"line of {length}+ bytes exceeds max_line {max_line}")


class _Closed:
    """The handler of a connection being closed: lines still buffered are ignored."""

    def line_received(self, connection: LineConnection, line: bytes) -> None:
        return

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None:
        return
