"""The location service: `IAMAT` stores and floods a report, `WHATSAT` asks the places
provider about a known client, `STATUS` tells who this server is linked to.  IAMAT is the hot
path: no object is made per line beyond the parsed report and its AT record."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.handlers.core import Core
from herd.handlers.sessions import ClientHandler
from herd.protocol import LineConnection
from herd.wire.client import (
    IAmAt,
    Status,
    WhatsAt,
    error_reply,
    format_at,
    format_whatsat_reply,
    status_reply,
)
from herd.wire.peer import update_line

if TYPE_CHECKING:
    from herd.peers import PeerSession
    from herd.places.answers import PlacesAnswer, PlacesProvider

_log = Logger()
Flood = Callable[[bytes, "PeerSession | None", bytes], None]
"""Send a line to the peers once the batch holding it commits (`Flooding.flood`)."""


class Locations:
    """IAMAT, WHATSAT and STATUS against the location table."""

    def __init__(self, core: Core, places: PlacesProvider, flood: Flood) -> None:
        self.core = core
        self.places = places
        self.flood = flood
        self.now_ns = core.clock.now_ns  # bound once: IAMAT is the hot path
        self.name_bytes = core.settings.name_bytes
        self.max_at_line = core.settings.max_at_line

    def iamat(
        self, connection: LineConnection, session: ClientHandler, report: IAmAt, line: bytes
    ) -> None:
        core = self.core
        table = core.table
        current = table.get(report.client)
        if not table.is_newer_report(report.client, report.time):
            assert current is not None
            core.reply(connection, current.at.to_line())
            return
        at = format_at(self.name_bytes, self.now_ns(), report)
        if len(at.line) > self.max_at_line:
            # No peer could take its update: refused, so that nothing unfloodable is stored.
            core.reply(connection, error_reply(line))
            return
        location = table.report(at, current)
        core.committer.add_location(location)
        self.flood(update_line(location.seq, at), None, self.name_bytes)
        core.reply(connection, at.to_line())

    def whatsat(
        self, connection: LineConnection, session: ClientHandler, query: WhatsAt, line: bytes
    ) -> None:
        stored = self.core.table.get(query.client)
        if stored is None:
            self.core.reply(connection, error_reply(line))
            return
        slot = connection.reserve()
        answer = self.places.nearby(
            stored.at.latitude, stored.at.longitude, query.radius_km, query.max_items
        )

        def answered(places: PlacesAnswer) -> None:
            # Not held for the store: a query changes nothing.  It may show a report whose own
            # AT reply still waits for the store (flooded ones are durable where accepted).
            connection.fill(slot, format_whatsat_reply(stored.at.line, places))

        def failed(failure: Failure) -> None:
            _log.failure("places lookup failed for {line!r}", failure, line=line)
            data = format_whatsat_reply(
                stored.at.line,
                {"html_attributions": [], "results": [], "status": "UNKNOWN_ERROR"},
            )
            connection.fill(slot, data)

        answer.addCallback(answered).addErrback(failed)

    def status(
        self, connection: LineConnection, session: ClientHandler, command: Status, line: bytes
    ) -> None:
        links = self.core.links
        peers = {peer: ("up" if peer in links else "down") for peer in self.core.settings.peers}
        self.core.reply(connection, status_reply(self.core.settings.name, peers))
