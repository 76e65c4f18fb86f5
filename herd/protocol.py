"""Twisted adapters for the line protocol: framing, strict line order, budgets, reply order (thin).

`LineConnection` does what every connection on the client port shares:

- framing: split lines (`\\n`, with an optional `\\r`); what an over-long line or an
  unterminated last line at EOF does is the connection's `Framing`;
- order: complete lines wait in a per-connection queue and run strictly one after another; a
  handler that answers a line with a Deferred (an `AUTH` being checked) holds every later line
  of the connection until it fires, so each line sees the effect of every line before it;
- fairness: a connection runs at most `slice_lines` lines at once; the rest wait for their turn
  in the server's `SliceScheduler` (`herd.slices`), which runs the waiting connections round
  robin for at most `turn_seconds` per reactor turn, then lets the reactor serve I/O (other
  clients, peer keepalives, store commits);
- budgets: a client connection whose replies are not being read (its transport's write buffer
  is over `output_budget`, or replies held for it in order are) runs no line and is not read
  until they drain; and it is not read while more than `input_budget` bytes of its lines wait
  to run.  A peer link (`keep_reading()`) is never stopped from reading, since two ends waiting
  for each other to read would never move, but its lines run in slices too;
- replies: kept in request order even when some are answered later;
- life: a connection's `ConnectionState` (open, closing, disconnected) and `InputState` (open,
  refused after an over-long line, ended by a half-close) say what may still happen on it.

What a line *means* is decided elsewhere (`herd.server`), through the small `LineHandler`
interface.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from herd.errors import HerdError
from herd.slices import SliceScheduler

SKIPPED_HEAD: Final = 64  # bytes of a skipped peer line kept: enough for `U <seq> `

LineSkipped = Callable[[bytes, int, bool], None]
"""Told of a peer line that is not handed on: its head, its length so far, and whether it was
terminated (over-long) or not (cut by the end of the connection)."""


@dataclass(frozen=True, slots=True)
class _Skipped:
    """A line the framing cut out, kept in the queue so it is reported in line order (a peer
    link marks an over-long update read only after every update before it has been applied)."""

    head: bytes
    length: int


_log = Logger()


class LineHandler(TypingProtocol):
    """What a connection's lines are handed to; replaced when a connection becomes a peer link."""

    def line_received(self, connection: LineConnection, line: bytes) -> Deferred[None] | None:
        """`line` is without its terminator (`\n`, or `\r\n`); a last line that had none
        before the client half-closed comes as it was.  A Deferred means the line's effect is
        not complete yet: the connection's next line runs once it fires."""

    def connection_lost(self, connection: LineConnection, reason: Failure) -> None: ...


class Traffic(TypingProtocol):
    """Where a connection records what it receives and writes (the server's log)."""

    def received(self, who: str, lines: list[bytes]) -> None: ...

    def sent(self, who: str, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection may hold and run at once (`[limits]` in the config)."""

    output_budget: int = 64 * 1024  # reply bytes held for a client before its lines stop
    input_budget: int = 64 * 1024  # received bytes waiting to run before reading stops
    slice_lines: int = 32  # lines run before another connection gets a turn
    replies_pending: int = 64  # replies not yet written (say, places lookups) before lines stop
    push_backlog: int = 4 * 1024 * 1024  # pushes waiting for a subscriber before it is dropped


@dataclass(frozen=True, slots=True)
class Framing:
    """Per-role framing rules: what an over-long line does (close the connection, or skip it
    to the next newline) and whether an unterminated last line at EOF is a line."""

    close_on_overlong: bool = True
    last_line_at_eof: bool = True


CLIENT_FRAMING = Framing()
PEER_FRAMING = Framing(close_on_overlong=False, last_line_at_eof=False)
LINE_OVERHEAD = 64  # what Python holds per queued line beyond its bytes (object, deque slot)
PEER_SEND_BUFFER = 4 * 1024 * 1024  # a peer link's kernel send buffer: floods and catch-ups


class Slot:
    """A place in a connection's reply order, filled when the reply is ready.  A slot may
    gather several replies (`parts`) that are released together, e.g. every reply that waits
    for the same store commit."""

    __slots__ = ("data", "parts", "token")

    def __init__(self, token: object = None) -> None:
        self.data: bytes | None = None
        self.parts: list[bytes] = []
        self.token = token


class ConnectionState(Enum):
    """Where a connection is in its life."""

    OPEN = "open"  # lines run and replies are written
    CLOSING = "closing"  # closed by us or its transport: no more lines run, input is dropped
    DISCONNECTED = "disconnected"  # gone: nothing more is written


class InputState(Enum):
    """What may still come in on a connection (while it is open)."""

    OPEN = "open"  # more lines may come
    REFUSED = "refused"  # an over-long line: what came before it runs, then the connection closes
    ENDED = "ended"  # the other side half-closed: what came runs and is answered, then it closes


# Enum members looked up through their class cost ~85 ns each on Python 3.11, ten times a plain
# attribute: the checks made for every line compare against these instead.
_OPEN: Final = ConnectionState.OPEN
_CLOSING: Final = ConnectionState.CLOSING
_DISCONNECTED: Final = ConnectionState.DISCONNECTED
_INPUT_OPEN: Final = InputState.OPEN
_INPUT_ENDED: Final = InputState.ENDED


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
        scheduler: SliceScheduler | None = None,
        limits: ConnectionLimits = ConnectionLimits(),
    ) -> None:
        self.handler = handler
        self.max_line = max_line
        self.traffic = traffic
        self.label = log_label
        self.redact = redact
        self.scheduler = scheduler
        self.limits = limits
        self.framing = CLIENT_FRAMING
        self.scheduled = False  # in the scheduler's ready queue
        self._buffer = b""
        self._skipping: tuple[bytes, int] | None = None  # head and length of a line being cut
        self._skipped: LineSkipped | None = None  # told of lines the peer framing cuts out
        self._lines: deque[bytes | _Skipped] = deque()
        self._queued_bytes = 0
        self._waiting = False  # a line's Deferred has not fired yet
        self._running = False
        self._slots: deque[Slot] | None = None
        self._held = 0  # reply bytes in slots, not yet written
        self._gathering: Slot | None = None
        self._state = ConnectionState.OPEN
        self._input = InputState.OPEN
        self._reading_paused = False
        self._output_paused = False
        self._lost_reason: Failure | None = None
        self._unregistered = False
        self.backlog = 0
        # A client that does not read its replies stops being read; a peer link never does:
        # both ends write, and two ends waiting for each other to read would never move.
        self.pause_reading_when_full = True

    @property
    def disconnected(self) -> bool:
        return self._state is _DISCONNECTED

    # --- framing ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if not self.label:
            peer = transport.getPeer()  # type: ignore[union-attr]
            self.label = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        if hasattr(transport, "bufferSize"):
            # The write buffer pauses us (`pauseProducing`) past the output budget.
            setattr(transport, "bufferSize", self.limits.output_budget)  # noqa: B010
        if self.pause_reading_when_full:
            # And the kernel's send buffer holds about as much (Linux doubles the figure)
            # instead of growing to megabytes of replies nobody reads.
            _set_send_buffer(transport, self.limits.output_budget)
        transport.registerProducer(self, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._state is _CLOSING or self._input is not _INPUT_OPEN:
            return
        if self._skipping is not None:
            head, length = self._skipping
            end = data.find(b"\n")
            if end < 0:
                self._skipping = (head, length + len(data))
                return
            self._skipping = None
            self._skip(head, length + end)
            data = data[end + 1 :]
        whole = self._buffer + data if self._buffer else data
        lines = whole.split(b"\n")
        self._buffer = rest = lines.pop()
        if lines:
            self._log_received(lines)
            if b"\r" in whole:
                lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
            if len(whole) - len(rest) > self.max_line + 1:  # a line may be too long
                self._queue_fitting(lines)
            else:
                self._lines.extend(lines)
                self._queued_bytes += sum(map(len, lines)) + len(lines) * LINE_OVERHEAD
        # An unfinished line is too long once it cannot end within the limit, even with a CR.
        if len(rest) > self.max_line + 1 or (
            len(rest) == self.max_line + 1 and not rest.endswith(b"\r")
        ):
            if self.framing.close_on_overlong:
                self._overflow(len(rest))
            else:
                self._buffer = b""
                self._skipping = (rest[:SKIPPED_HEAD], len(rest))
        self._proceed(now=True)

    def _queue_fitting(self, lines: list[bytes]) -> None:
        """Queue the lines up to the first too-long one (which closes the connection), or, when
        the framing skips them, every line, each too-long one as a `_Skipped`."""
        limit = self.max_line
        for line in lines:
            if len(line) <= limit:
                self._lines.append(line)
                self._queued_bytes += len(line) + LINE_OVERHEAD
            elif self.framing.close_on_overlong:
                self._overflow(len(line))
                break
            else:
                self._skip(line[:SKIPPED_HEAD], len(line))

    def _cut_at_eof(self, head: bytes, length: int) -> None:
        """A peer link ended in the middle of a line: it is never a command and marks nothing,
        so it is reported at once (the lines still queued before it may never run: the link
        is going)."""
        if self._skipped is not None:
            self._skipped(head, length, False)

    def _skip(self, head: bytes, length: int) -> None:
        self._lines.append(_Skipped(head, length))
        self._queued_bytes += len(head) + LINE_OVERHEAD

    def readConnectionLost(self) -> None:
        """The client half-closed: its last line is answered (if the framing says so), then
        the connection closes once every line has run and every reply is out."""
        self._input = InputState.ENDED
        if self._skipping is not None:
            head, length = self._skipping
            self._skipping = None
            self._cut_at_eof(head, length)
        elif self._buffer and self._state is not _CLOSING:
            line, self._buffer = self._buffer, b""
            if not self.framing.last_line_at_eof:
                self._cut_at_eof(line[:SKIPPED_HEAD], len(line))
            elif len(line) > self.max_line:
                self._overflow(len(line))
            else:
                self._log_received([line])
                self._lines.append(line)
                self._queued_bytes += len(line) + LINE_OVERHEAD
        self._proceed(now=True)

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._state = ConnectionState.DISCONNECTED
        self._slots = None
        self._gathering = None
        self._lines.clear()
        self._queued_bytes = 0
        self.handler.connection_lost(self, self._lost_reason or reason)

    def _log_received(self, lines: list[bytes]) -> None:
        if self.traffic is None:
            return
        if self.redact is not None:
            lines = [self.redact(line) for line in lines]
        self.traffic.received(self.label, lines)

    def _overflow(self, length: int) -> None:
        """An over-long line: the lines before it still run, nothing after it is read, and
        the connection closes without answering it."""
        if self._input is _INPUT_OPEN:
            self._input = InputState.REFUSED
        self._buffer = b""
        self._lost_reason = Failure(LineTooLong(length, self.max_line))
        if self._input is not _INPUT_ENDED and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    # --- running lines in order, in slices, within the budgets -----------------------------

    def _proceed(self, now: bool = False) -> None:
        """Go on with the waiting lines: a slice at once (`now`, for fresh input) when no other
        connection waits for its turn, else in the scheduler's turns."""
        scheduler = self.scheduler
        if now and self._lines and not self.scheduled and (scheduler is None or scheduler.idle):
            self._run_lines()
        self._flow()

    def _output_full(self) -> bool:
        """Whether this client's replies are backing up (never true of a peer link)."""
        if not self.pause_reading_when_full:
            return False
        slots = self._slots
        return self._output_paused or (
            slots is not None
            and (self._held > self.limits.output_budget or len(slots) > self.limits.replies_pending)
        )

    def _blocked(self) -> bool:
        """Whether this connection may not run a line now."""
        return self._waiting or self._state is not _OPEN or self._output_full()

    def run_slice(self) -> None:
        """The scheduler's turn for this connection."""
        self._run_lines()
        self._flow()

    def _run_lines(self) -> None:
        """Run up to `slice_lines` waiting lines (for at most the scheduler's slice time), in
        order, stopping at a line that has to be waited for or once the output budget is
        spent."""
        if self._running:
            return
        self._running = True
        lines = self._lines
        scheduler = self.scheduler
        clock, deadline = None, 0.0
        if scheduler is not None:
            clock, deadline = scheduler.clock, scheduler.clock.seconds() + scheduler.slice_seconds
        limits = self.limits
        client = self.pause_reading_when_full
        try:
            for _ in range(limits.slice_lines):
                if not lines or self._waiting or self._state is not _OPEN:
                    break
                slots = self._slots
                if client and (
                    self._output_paused
                    or (
                        slots
                        and (
                            self._held > limits.output_budget or len(slots) > limits.replies_pending
                        )
                    )
                ):
                    break
                line = lines.popleft()
                if type(line) is _Skipped:
                    self._queued_bytes -= len(line.head) + LINE_OVERHEAD
                    if self._skipped is not None:
                        self._skipped(line.head, line.length, True)
                    continue
                assert type(line) is bytes
                self._queued_bytes -= len(line) + LINE_OVERHEAD
                pending = self.handler.line_received(self, line)
                if pending is not None and not pending.called:
                    self._waiting = True
                    pending.addBoth(self._done_waiting)
                if clock is not None and clock.seconds() >= deadline:
                    break
        finally:
            self._running = False

    def _done_waiting(self, result: object) -> None:
        self._waiting = False
        if self._state is not _DISCONNECTED:
            self._proceed()

    def _flow(self) -> None:
        """Ask for another slice if lines may still run, pause or resume reading, and close a
        half-closed (or overflowed) connection once everything is answered."""
        if self._state is _DISCONNECTED:
            return
        if self.scheduler is None:
            while self._lines and not self._blocked() and not self._running:
                self._run_lines()
        elif self._lines and not self._blocked():
            self.scheduler.want(self)
        if (
            self.pause_reading_when_full
            and self._input is _INPUT_OPEN
            and self._state is _OPEN
            and not self._unregistered
        ):
            full = self._queued_bytes > self.limits.input_budget or self._output_full()
            if full != self._reading_paused:
                self._reading_paused = full
                if full:
                    self.transport.pauseProducing()  # type: ignore[union-attr]
                else:
                    self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._input is not _INPUT_OPEN and not self._lines:
            self._close_when_drained()

    # --- replies in request order ----------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write now, after any reply still being prepared."""
        if self._slots:
            slot = Slot()
            slot.data = data
            self._slots.append(slot)
            self._held += len(data)
        else:
            self._write(data)

    def push(self, data: bytes) -> None:
        """Write what the client subscribed to (not a reply to a line, so no budget holds it
        back): a subscriber that stopped reading while more than `push_backlog` bytes wait for
        it is disconnected, so it cannot grow the server's memory; it resumes from the last
        checkpoint it read when it subscribes again."""
        if self._state is not _OPEN:
            return
        self.send(data)
        if self.backlog + self._held > self.limits.push_backlog:
            _log.warn(
                "closed {client}: a subscriber not reading ({count} bytes of pushes waiting)",
                client=self.label,
                count=self.backlog + self._held,
            )
            self._state = ConnectionState.CLOSING
            self.transport.abortConnection()  # type: ignore[union-attr]

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
        self._held += len(data)

    def release(self, slot: Slot) -> None:
        """The slot's gathered replies are ready: write them (in order) with one write."""
        if self._gathering is slot:
            self._gathering = None
        slot.data = b"".join(slot.parts)
        slot.parts = []
        self._drain(slot)

    def fill(self, slot: Slot, data: bytes) -> None:
        slot.data = data
        self._held += len(data)
        self._drain(slot)

    def _drain(self, slot: Slot) -> None:
        slots = self._slots
        if not slots or slots[0] is not slot:
            return
        ready: list[bytes] = []
        while slots and slots[0].data is not None:
            ready.append(slots.popleft().data or b"")
        data = b"".join(ready)
        self._held -= len(data)
        self._write(data)
        if self._lines or self._reading_paused or self._input is not _INPUT_OPEN:
            self._proceed()

    def _write(self, data: bytes) -> None:
        if self._state is _DISCONNECTED or not data:
            return
        if self.backlog:
            self.backlog += len(data)
        if self.traffic is not None:
            self.traffic.sent(self.label, data)
        self.transport.write(data)  # type: ignore[union-attr]

    def _close_when_drained(self) -> None:
        if not self._slots and not self._waiting and self._state is not _DISCONNECTED:
            self._lose()

    def close(self) -> None:
        self._stop_running()
        self._lose()

    def _stop_running(self) -> None:
        """Closed by us or by the transport: no more lines run (a connection already gone
        stays so)."""
        if self._state is _OPEN:
            self._state = ConnectionState.CLOSING

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
        """The peer is not reading: run none of its lines, and stop reading them, until it
        catches up (a peer link keeps reading and running, see `keep_reading`).  The transport
        says so again at each write while its buffer is full: `backlog` keeps counting."""
        self.backlog = self.backlog or 1
        self._output_paused = True
        self._flow()

    def resumeProducing(self) -> None:
        self.backlog = 0
        self._output_paused = False
        if self._state is _OPEN:
            self._proceed()

    def keep_reading(self, skipped: LineSkipped | None = None) -> None:
        """From now on, never stop reading for a full write buffer (a peer link: its own
        bound is the backlog it may leave unsent, see `herd.peers`).  With `skipped`, also
        frame as a peer link: an over-long line is skipped instead of closing, and a last
        line without its newline is dropped instead of answered (both go to `skipped`, in
        line order)."""
        self.pause_reading_when_full = False
        if skipped is not None:
            self.framing = PEER_FRAMING
            self._skipped = skipped
        _set_send_buffer(self.transport, PEER_SEND_BUFFER)
        if self._reading_paused and self._state is _OPEN and self._input is not _INPUT_ENDED:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        self._proceed()

    def stopProducing(self) -> None:
        self._stop_running()


def _set_send_buffer(transport: object, size: int) -> None:
    """SO_SNDBUF of a TCP transport (nothing for the in-memory ones of tests and `run_as`)."""
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if isinstance(handle, socket.socket):
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:
            return


class LineTooLong(HerdError):
    """A line longer than `max_line`: the connection is closed without a reply.  `length` is
    how much of it had arrived when it was refused."""

    def __init__(self, length: int, max_line: int) -> None:
        super().__init__(length, max_line)  # both in args, so it pickles
        self.length = length
        self.max_line = max_line

    def __str__(self) -> str:
        return f"line of {self.length}+ bytes exceeds max_line {self.max_line}"
