"""The command tables: for each port, a line's first word to the parser of its wire class.

Kept apart from `herd.wire`'s `__init__` because the planning commands' values (`Choice`,
`UserField`) come from `herd.ops`, which itself needs `herd.wire.grammar`: a package
`__init__` importing every submodule would make that a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from herd.wire.client import CLIENT_PARSERS, ClientCommand
from herd.wire.grammar import WireError
from herd.wire.operator import OPERATOR_PARSERS, OperatorCommand
from herd.wire.peer import PEER_PARSERS, PeerMessage
from herd.wire.planning import NOTIFIER_PARSERS, PLANNING_PARSERS, NotifierCommand, PlanningCommand

ClientPortCommand = ClientCommand | PlanningCommand | NotifierCommand
"""Every command a line on the client port can be."""

CLIENT_PORT: Final[dict[bytes, Callable[[list[bytes], bytes], ClientPortCommand]]] = {
    **CLIENT_PARSERS,
    **PLANNING_PARSERS,
    **NOTIFIER_PARSERS,
}
"""The client port: the location service, planning, and the notifier's commands (served where
an extension registered them)."""

PEER_LINK: Final[dict[bytes, Callable[[list[bytes], bytes], PeerMessage]]] = PEER_PARSERS
"""An authenticated peer link (`parse_peer_line`)."""

OPERATOR: Final[dict[bytes, Callable[[bytes], OperatorCommand]]] = OPERATOR_PARSERS
"""An authenticated operator connection (`parse_operator_line`: the parser takes the line)."""


def parse_client_port_line(line: bytes) -> ClientPortCommand | None:
    """Any line of the client port to its command; None for a blank line."""
    fields = line.split()
    if not fields:
        return None
    parse = CLIENT_PORT.get(fields[0])
    if parse is None:
        raise WireError("unknown command")
    return parse(fields, line)
