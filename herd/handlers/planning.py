"""Planning on the line: state commands become ops (new op ids made here), which are applied,
stored, flooded and published to the change feed (`accept_op`); `SUGGEST` asks the places
provider; `run_as` runs a line for a user without a connection of theirs (the Jabber bot, the
web)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IConsumer, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from herd.changes import ChangeFeed
from herd.handlers.core import Core
from herd.handlers.locations import Flood
from herd.handlers.sessions import ClientHandler
from herd.ops import OPERATOR, Body, Op
from herd.protocol import LineConnection
from herd.records import op_origin
from herd.replies import respond, suggest_reply
from herd.rules import execute, suggestion_query
from herd.venues import Venue
from herd.wire.peer import OpUpdate
from herd.wire.planning import PlanningError, StateCommand, Suggest
from herd.zones import PositionOf

if TYPE_CHECKING:
    from herd.peers import PeerSession
    from herd.places.answers import PlacesAnswer, PlacesProvider

_log = Logger()
_BOT_ADDRESS = UNIXAddress(None)
SUGGEST_LIMIT = 20


class Planning:
    """Planning commands, and the one way an operation enters the herd here (`accept_op`)."""

    def __init__(
        self,
        core: Core,
        places: PlacesProvider,
        flood: Flood,
        feed: ChangeFeed,
        position_of: PositionOf,
        op_ids: OpIds,
    ) -> None:
        self.core = core
        self.places = places
        self.flood = flood
        self.feed = feed
        self.position_of = position_of
        self.op_ids = op_ids

    def state_command(
        self,
        connection: LineConnection,
        session: ClientHandler,
        command: StateCommand,
        line: bytes,
    ) -> None:
        core = self.core
        result = execute(core.planning, session.user, command, core.clock.now_ns(), self.op_ids.new)
        if not isinstance(result, PlanningError):
            result = self._floodable(result)
        if isinstance(result, PlanningError):
            core.reply(connection, result.line())
            return
        for op in result:
            self.accept_op(op)
        assert session.user is not None
        core.reply(
            connection, respond(core.planning, session.user, command, result, self.position_of)
        )

    def _floodable(self, ops: list[Op]) -> list[Op] | PlanningError:
        """`ops`, or `ERR too-long` if one of them could not be flooded (its JSON, where text
        outside ASCII takes up to 12 bytes a character, is over what a peer line holds)."""
        for op in ops:
            if len(op.to_json()) > self.core.settings.max_op_payload:
                return PlanningError("too-long", "the change would not fit a line between servers")
        return ops

    def accept_op(self, op: Op, source: PeerSession | None = None) -> None:
        """Apply, store and flood a new operation, and tell the change feed's listeners (they
        may add durable writes, such as notifications, to the same transaction)."""
        core = self.core
        payload = op.to_json()
        logged = core.ops.add(op.op_id, payload)
        core.committer.add_op(logged)
        changes = core.planning.apply(op)
        self.flood(OpUpdate(logged.seq, payload).to_line(), source, op_origin(op.op_id))
        self.feed.publish(changes, accepted_here=source is None)

    def accept_body(self, body: Body) -> None:
        """Make an operation of this server's own (the notifier's records) and accept it."""
        time_ns = self.core.planning.next_time(self.core.clock.now_ns())
        self.accept_op(Op(self.op_ids.new(), time_ns, OPERATOR, body))

    def suggest(
        self, connection: LineConnection, session: ClientHandler, command: Suggest, line: bytes
    ) -> None:
        core = self.core
        query = suggestion_query(core.planning, session.user, command, self.position_of)
        if isinstance(query, PlanningError):
            core.reply(connection, query.line())
            return
        slot = connection.reserve()
        latitude, longitude = query.center

        def answered(places: PlacesAnswer) -> None:
            results = places.get("results")
            venues = []
            for result in results if isinstance(results, list) else []:
                if isinstance(result, dict) and (position := _lat_lng(result)) is not None:
                    venues.append(Venue(str(result.get("name", "")), *position))
            core.reply_later(connection, slot, suggest_reply(query, venues))

        def failed(failure: Failure) -> None:
            _log.failure("places lookup failed for SUGGEST", failure)
            core.reply_later(connection, slot, suggest_reply(query, []))

        self.places.nearby(latitude, longitude, query.radius_km, SUGGEST_LIMIT).addCallback(
            answered
        ).addErrback(failed)


class OpIds:
    """`<server>.<store instance>.<n>`: unique without coordination, short enough to type;
    `n` goes on from the greatest this store already holds."""

    def __init__(self, name: str, instance: bytes, held: Iterable[str]) -> None:
        self.prefix = f"{name}.{instance[:6].decode()}."
        self._counter = max(
            (int(op_id[len(self.prefix) :]) for op_id in held if op_id.startswith(self.prefix)),
            default=0,
        )

    def new(self) -> str:
        self._counter += 1
        return f"{self.prefix}{self._counter}"


def run_as(
    connect: Callable[[str], LineConnection], user: str, line: bytes, channel: str = "bot"
) -> Deferred[bytes]:
    """Run one line as `user` on a connection from `connect(label)`, as if they had sent it
    on an authenticated connection (the Jabber bot and the web speak the line protocol for the
    people they serve); fires with the reply."""
    answered: Deferred[bytes] = Deferred()
    connection = connect(f"{channel}:{user}")
    handler = connection.handler
    assert isinstance(handler, ClientHandler)
    handler.user = user
    connection.makeConnection(_Answer(answered))  # type: ignore[no-untyped-call]
    connection.dataReceived(line + b"\n")
    return answered


@implementer(ITransport, IConsumer)
class _Answer:
    """The transport of a `run_as` connection: the first write is the answer."""

    def __init__(self, answered: Deferred[bytes]) -> None:
        self._answered = answered

    def write(self, data: bytes) -> None:
        if not self._answered.called:
            self._answered.callback(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def registerProducer(self, producer: object, streaming: bool) -> None:
        return

    def unregisterProducer(self) -> None:
        return

    def loseConnection(self) -> None:
        return

    def getPeer(self) -> IAddress:
        return _BOT_ADDRESS

    def getHost(self) -> IAddress:
        return _BOT_ADDRESS


def _lat_lng(result: dict[str, object]) -> tuple[float, float] | None:
    geometry = result.get("geometry")
    location = geometry.get("location") if isinstance(geometry, dict) else None
    if not isinstance(location, dict):
        return None
    lat, lng = location.get("lat"), location.get("lng")
    if isinstance(lat, int | float) and isinstance(lng, int | float):
        return float(lat), float(lng)
    return None
