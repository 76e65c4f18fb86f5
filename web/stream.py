"""The live streams (Server-Sent Events), a thin twisted.web adapter over `web.live`'s rules.

`StreamHub` is a `ChangeListener` on the server's change feed, as the notifier's is: every change
applied here (a client's line, the Jabber bot's, a form's, or an operation flooded from a peer)
that concerns an event is filed in that event's bounded history and, once durable (after the
commit, on the next reactor turn, as the line pushes are), framed once and written to every
open stream of the event (`GET /e/<event>/stream`) and of its participants (`GET /u/stream`).

Limits (`[web]`): open streams per user, per client address and in all on this server (a stream
over a limit is refused with 429 and `Retry-After`); a stream whose reader stalls keeps at most
`stream_buffer_bytes` waiting beyond the socket's own buffer (on a plain TCP connection, that
buffer is bounded by it too), and at most `idle_seconds` of stall, then it is dropped (the
browser reconnects with `Last-Event-ID` and misses nothing that is still retained).

Writing.  A change is framed once (the SSE event and its HTTP/1.1 chunk) and the same bytes go
to every stream; on a plain TCP connection with nothing buffered they go straight to the socket
(`_send`), so a fan-out does not register and unregister every socket with the reactor.

One heartbeat timer for all streams writes a comment line to each every `heartbeat_seconds`.

A stream also says the user is watching the event (`watching`): the notifier's routing asks it,
through the wiring, before it sends a mail or a chat message for a change the user sees live.
"""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Final

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from herd.api import USER_SCOPE, Change, ChangeContext, ChangeKind, Clock, StateView, open_session
from herd.config import WebConfig
from web.live import (
    HEARTBEAT,
    RESET,
    EventHistory,
    change_data,
    change_record,
    checkpoint,
    chunk,
    end_frame,
    event_state,
    frame,
    is_checkpoint,
    resume,
    start_frame,
)
from web.rules import SESSION_COOKIE, cookie_values

__all__ = ["EventStreamResource", "StreamHub", "UserStreamResource"]

_log = Logger()
_RETRY_AFTER: Final = b"10"
_LAST_EVENT_ID: Final = b"last-event-id"
_HEARTBEAT_CHUNK: Final = chunk(HEARTBEAT)


def _plain_tcp(request: Request) -> tcp.Server | None:
    """The request's transport when it is a plain TCP connection (what `_send` may write
    below), else None (TLS, or anything else: the stream writes through `Request.write`)."""
    transport = getattr(request.channel, "transport", None)
    return transport if type(transport) is tcp.Server else None


def _cap_send_buffer(transport: tcp.Server, size: int) -> None:
    """Bound what the kernel keeps for a stalled reader (Linux would grow a loopback socket's
    send buffer to megabytes): `stream_buffer_bytes` is also the socket's send buffer, so what
    waits for a stream that stopped reading is at most that (twice: the kernel doubles it for
    its bookkeeping), the transport's own buffer, and `stream_buffer_bytes` in `_Stream`."""
    try:
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        _log.failure("could not bound a live stream's send buffer")


def _send(transport: tcp.Server, framed: bytes) -> None:
    """Write one chunk-framed frame on a plain TCP connection, in order and reliably, as
    `transport.write` would, but without registering the socket for writing when it can take
    the frame at once: when the transport holds nothing (both its buffers empty, its producer
    not paused, not closing), one non-blocking `send`; what the kernel did not take goes to
    `transport.write` (buffered behind nothing, so the order holds, and counted by its buffer
    and producer pause as any write is).  An error (`EAGAIN`, or a broken connection) leaves
    the whole frame to `transport.write`, whose own send meets the error and closes."""
    if (
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
        and not transport.producerPaused
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(framed)
        except OSError:
            sent = 0
        if sent >= len(framed):
            return
        if sent > 0:
            framed = framed[sent:]
    transport.write(framed)


@implementer(IPushProducer)
class _Stream:
    """One open stream: its request, whose it is, and what waits while the socket is full."""

    def __init__(
        self,
        hub: StreamHub,
        request: Request,
        user: str,
        generation: int,
        expires: int,
        event_id: str | None,
        address: str,
    ) -> None:
        self.hub = hub
        self.request = request
        self.user = user
        self.generation = generation
        self.expires = expires
        self.event_id = event_id  # None: every event of the user
        self.address = address
        self.paused_at: float | None = None
        self.waiting: list[bytes] = []
        self.waiting_bytes = 0
        self.closed = False
        self.direct: tcp.Server | None = None  # set once the headers are out (`open`)

    def write(self, data: bytes, framed: bytes | None = None) -> None:
        """Send `data` (`framed`: the same bytes in an HTTP/1.1 chunk, made once per change
        for every stream), or keep it while the reader is paused."""
        if self.closed:
            return
        if self.paused_at is None:
            request = self.request
            direct = self.direct
            if (
                framed is not None
                and direct is not None
                and request.chunked
                and not request.finished
                and not request._disconnected
            ):
                request.sentLength += len(data)
                _send(direct, framed)
            else:
                request.write(data)
            return
        self.waiting.append(data)
        self.waiting_bytes += len(data)
        if self.waiting_bytes > self.hub.settings.stream_buffer_bytes:
            self.hub.dropped += 1
            self.drop()

    def end(self, reason: str) -> None:
        """The server ends the stream (`reason`: a key of `web.live.END_REASONS`): a last
        `end` event telling the page why, then the response is finished properly (the chunked
        body's last chunk) and the connection closed.  What waits for a paused socket is
        dropped: the page reloads or reconnects and gets the state anew."""
        if self.closed:
            return
        self._forget()
        try:
            request = self.request
            request.unregisterProducer()
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(end_frame(reason))
                request.finish()
            transport = request.channel.transport if request.channel else None
            if transport is not None:
                transport.loseConnection()  # after what it holds: the end is sent first
        except Exception:
            _log.failure("ending a live stream")

    def drop(self) -> None:
        """At once, dropping what the socket still holds: a reader that stalled would
        otherwise keep the connection, and its buffer, until TCP gives up."""
        if self.closed:
            return
        self._forget()
        try:
            self.request.unregisterProducer()
            transport = self.request.channel.transport if self.request.channel else None
            if transport is not None:
                abort_now = getattr(transport, "abortConnection", None)
                (abort_now or transport.loseConnection)()
        except Exception:
            _log.failure("dropping a live stream")

    def gone(self) -> None:
        """The reader left (or the connection failed): forget the stream."""
        if not self.closed:
            self._forget()

    def _forget(self) -> None:
        self.closed = True
        self.hub.forget(self)
        self.waiting.clear()
        self.waiting_bytes = 0

    # IPushProducer: the HTTP channel pauses us when the socket's buffer is full.
    def pauseProducing(self) -> None:
        if self.paused_at is None:
            self.paused_at = self.hub.clock.seconds()

    def resumeProducing(self) -> None:
        self.paused_at = None
        waiting, self.waiting, self.waiting_bytes = self.waiting, [], 0
        if waiting and not self.closed:
            self.request.write(b"".join(waiting))

    def stopProducing(self) -> None:
        self.gone()


class StreamHub:
    """Every open stream of this server, the events' recent changes, and the heartbeat."""

    def __init__(
        self,
        state: StateView,
        clock: Clock,
        settings: WebConfig,
        secret: bytes,
        after_commit: Callable[[Callable[[], None]], None],
    ) -> None:
        self.state = state
        self.clock = clock
        self.settings = settings
        self.secret = secret
        self._after_commit = after_commit
        self._histories: dict[str, EventHistory] = {}
        self._restart_floor: str | None = None
        self._latest: str | None = None
        self._streams: set[_Stream] = set()
        self._by_event: dict[str, set[_Stream]] = defaultdict(set)
        self._by_user: dict[str, set[_Stream]] = defaultdict(set)  # user streams only
        self._per_user: dict[str, int] = defaultdict(int)
        self._per_address: dict[str, int] = defaultdict(int)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock.scheduler
        self.dropped = 0  # streams dropped for a stalled reader
        self.refused = 0  # streams refused over a limit

    # --- lifetime --------------------------------------------------------------------------

    def start(self, replayed: Iterable[Change], complete: bool) -> None:
        """File the changes the herd replayed at start (`complete`: all of its operations;
        else a stream older than the oldest of them is reset), then beat."""
        oldest: str | None = None
        for change in replayed:
            if change.event_id is None:
                continue
            mark = checkpoint(change.op.time_ns, change.op.op_id)
            oldest = mark if oldest is None or mark < oldest else oldest
            self._file(change.event_id, mark, change_record(change))
        if not complete and oldest is not None:
            self._restart_floor = oldest
        self._heartbeat.start(self.settings.heartbeat_seconds, now=False).addErrback(
            lambda failure: _log.failure("the live streams' heartbeat stopped", failure)
        )

    def stop(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()
        for stream in list(self._streams):
            stream.end("stopping")

    # --- the change feed -------------------------------------------------------------------

    def changed(self, change: Change, context: ChangeContext) -> None:
        """Never raises: the op is applied whatever happens here."""
        try:
            if change.event_id is None:
                if change.kind is ChangeKind.USER_UPDATED:
                    users = change.users
                    self._after_commit(lambda: self._recheck(users))
                return
            event_id = change.event_id
            mark = checkpoint(change.op.time_ns, change.op.op_id)
            record = change_record(change)

            def soon() -> None:
                self.clock.callLater(0, self._publish, event_id, mark, record)

            self._after_commit(soon)
        except Exception:
            _log.failure("live streams: could not take op {op_id}", op_id=change.op.op_id)

    def _file(self, event_id: str, mark: str, record: dict[str, object]) -> bool:
        history = self._histories.get(event_id)
        if history is None:
            history = self._histories[event_id] = EventHistory(self.settings.stream_history)
        if self._latest is None or mark > self._latest:
            self._latest = mark
        return history.add(mark, record)

    def _publish(self, event_id: str, mark: str, record: dict[str, object]) -> None:
        if not self._file(event_id, mark, record):
            return
        event = self.state.event(event_id)
        state = None if event is None else event_state(event)
        data = frame("change", change_data(event_id, record, state), mark)
        framed = chunk(data)
        participants = frozenset(() if event is None else event.participants)
        valid = self._validity()
        for stream in tuple(self._by_event.get(event_id, ())):
            if stream.user in participants and valid(stream):
                stream.write(data, framed)
            else:
                stream.end("session")  # uninvited, or the links revoked: the session is over
        for user in participants:
            for stream in tuple(self._by_user.get(user, ())):
                if valid(stream):
                    stream.write(data, framed)
                else:
                    stream.end("session")

    def _recheck(self, users: Iterable[str]) -> None:
        """A user's fields changed: their streams end if their links were revoked."""
        for user in users:
            for stream in [s for s in self._streams if s.user == user]:
                if not self._still_valid(stream):
                    stream.end("session")

    def _still_valid(self, stream: _Stream) -> bool:
        return self._validity()(stream)

    def _validity(self) -> Callable[[_Stream], bool]:
        """Whether a stream's session still holds (unexpired, of its user's current link
        generation): the time read once and each user looked up once, for a fan-out."""
        now = self.clock.now_ns() // 10**9
        generations: dict[str, int | None] = {}

        def valid(stream: _Stream) -> bool:
            if stream.user in generations:
                generation = generations[stream.user]
            else:
                user = self.state.user(stream.user)
                generation = generations[stream.user] = (
                    None if user is None else user.link_generation
                )
            return generation == stream.generation and now < stream.expires

        return valid

    def _beat(self) -> None:
        now = self.clock.seconds()
        stall = self.settings.idle_seconds
        valid = self._validity()
        for stream in tuple(self._streams):
            if stream.paused_at is not None and now - stream.paused_at > stall:
                self.dropped += 1
                stream.drop()
            elif not valid(stream):
                stream.end("session")
            else:
                stream.write(HEARTBEAT, _HEARTBEAT_CHUNK)

    # --- what the pages and the notifier ask -------------------------------------------------

    def latest(self) -> str | None:
        """The newest checkpoint this server has filed: a page rendered now resumes from it."""
        return self._latest

    def watching(self, user: str, event_id: str) -> bool:
        """Whether `user` has a live stream open here on `event_id` (or on all their events)."""
        if self._by_user.get(user):
            return True
        return any(stream.user == user for stream in self._by_event.get(event_id, ()))

    def count(self) -> int:
        return len(self._streams)

    # --- opening and closing -----------------------------------------------------------------

    def open(
        self,
        request: Request,
        user: str,
        generation: int,
        expires: int,
        event_id: str | None,
        since: str | None,
    ) -> bytes | int:
        """Start a stream for `request` (the session already checked), or refuse it over a
        limit."""
        settings = self.settings
        peer = request.getClientAddress()
        address = str(getattr(peer, "host", "-"))
        if (
            len(self._streams) >= settings.streams
            or self._per_user.get(user, 0) >= settings.streams_per_user
            or self._per_address.get(address, 0) >= settings.streams_per_address
        ):
            self.refused += 1
            request.setResponseCode(429)
            request.setHeader(b"Retry-After", _RETRY_AFTER)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"too many live streams\n"
        if event_id is None:
            events = [event.id for event in self.state.events_of(user)]
        else:
            events = [event_id]
        histories = {event: history for event in events if (history := self._histories.get(event))}
        start = resume(since, histories, self._restart_floor)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        channel = request.channel
        if channel is not None:
            channel.setTimeout(None)  # the heartbeat and the stall limit take over
        stream = _Stream(self, request, user, generation, expires, event_id, address)
        self._streams.add(stream)
        if event_id is None:
            self._by_user[user].add(stream)
        else:
            self._by_event[event_id].add(stream)
        self._per_user[user] += 1
        self._per_address[address] += 1
        request.registerProducer(stream, True)
        request.notifyFinish().addBoth(lambda _: stream.gone())
        first = [start_frame()]
        if start.reset:
            first.append(RESET)
        else:
            last = len(start.missed) - 1
            for index, (mark, event, record) in enumerate(start.missed):
                state = None
                if index == last:
                    current = self.state.event(event)
                    state = None if current is None else event_state(current)
                first.append(frame("change", change_data(event, record, state), mark))
        stream.write(b"".join(first))  # through `Request.write`: the headers go first
        stream.direct = _plain_tcp(request)
        if stream.direct is not None:
            _cap_send_buffer(stream.direct, settings.stream_buffer_bytes)
        return NOT_DONE_YET

    def forget(self, stream: _Stream) -> None:
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        group = self._by_user if stream.event_id is None else self._by_event
        key = stream.user if stream.event_id is None else stream.event_id
        members = group.get(key)
        if members is not None:
            members.discard(stream)
            if not members:
                del group[key]
        for counts, key in ((self._per_user, stream.user), (self._per_address, stream.address)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]


def _since(request: Request) -> str | None:
    """`Last-Event-ID` (a reconnecting browser), else `?since=` (the page's first connection,
    from the checkpoint it was rendered at)."""
    header = request.requestHeaders.getRawHeaders(_LAST_EVENT_ID)
    if header:
        return header[0].decode("ascii", "replace").strip()
    values = (request.args or {}).get(b"since")
    if values:
        text = values[0].decode("ascii", "replace")
        return text if is_checkpoint(text) else None
    return None


def _claims(request: Request, secret: bytes, now: int) -> Iterable[tuple[str, str, int, int]]:
    """(user, scope, generation, expires) of each genuine unexpired session cookie."""
    headers = request.requestHeaders.getRawHeaders(b"cookie") or []
    for value in cookie_values(headers, SESSION_COOKIE):
        claim = open_session(secret, value, now)
        if claim is not None:
            yield claim.user, claim.scope, claim.generation, claim.expires


def _refused(request: Request) -> bytes:
    request.setResponseCode(http.FORBIDDEN)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"no session for this stream: open the link in your most recent Renga message\n"


class EventStreamResource(Resource):
    """`GET /e/<event>/stream`: the event's changes, for a session of one of its participants
    (the cookie the personal link set, or a session good for all the user's events)."""

    isLeaf = True

    def __init__(self, hub: StreamHub, event_id: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hub = hub
        self.event_id = event_id

    def render_GET(self, request: Request) -> bytes | int:
        hub = self.hub
        event = hub.state.event(self.event_id) if self.event_id else None
        if event is None:
            return _refused(request)
        now = hub.clock.now_ns() // 10**9
        for user_id, scope, generation, expires in _claims(request, hub.secret, now):
            user = hub.state.user(user_id)
            if (
                scope in (self.event_id, USER_SCOPE)
                and user is not None
                and user.link_generation == generation
                and user_id in event.participants
            ):
                return hub.open(
                    request, user_id, generation, expires, self.event_id, _since(request)
                )
        return _refused(request)


class UserStreamResource(Resource):
    """`GET /u/stream`: the changes of every event of the user, for a session good for all of
    them (`USER_SCOPE`)."""

    isLeaf = True

    def __init__(self, hub: StreamHub) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.hub = hub

    def render_GET(self, request: Request) -> bytes | int:
        hub = self.hub
        now = hub.clock.now_ns() // 10**9
        for user_id, scope, generation, expires in _claims(request, hub.secret, now):
            user = hub.state.user(user_id)
            if scope == USER_SCOPE and user is not None and user.link_generation == generation:
                return hub.open(request, user_id, generation, expires, None, _since(request))
        return _refused(request)
