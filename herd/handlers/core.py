"""What every handler shares with the server: its settings (`ServerSettings`), and the state
and ordered replies it reaches through `Core` (which `herd.server.HerdServer` implements), so
that no handler imports the server."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from herd.clock import Clock
from herd.config import DEFAULT_ANTI_ENTROPY_SECONDS, HerdConfig, LimitsConfig
from herd.wire.peer import max_at_line, max_op_payload

if TYPE_CHECKING:
    from herd.leases import Leases
    from herd.peers import PeerSession
    from herd.protocol import LineConnection, Slot
    from herd.records import LocationTable, OpLog
    from herd.state import PlanningState
    from herd.store import GroupCommitter


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Who this server is and the bounds it works within: fixed for its lifetime."""

    name: str
    peers: tuple[str, ...]
    secret: bytes
    max_line: int
    limits: LimitsConfig = LimitsConfig()  # noqa: RUF009 (frozen)
    anti_entropy_seconds: float = DEFAULT_ANTI_ENTROPY_SECONDS
    jitter: Callable[[], float] = random.random
    name_bytes: bytes = field(init=False)
    max_at_line: int = field(init=False)
    max_op_payload: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name_bytes", self.name.encode())
        object.__setattr__(self, "max_at_line", max_at_line(self.max_line))
        object.__setattr__(self, "max_op_payload", max_op_payload(self.max_line))

    @classmethod
    def from_config(
        cls, config: HerdConfig, name: str, jitter: Callable[[], float] = random.random
    ) -> ServerSettings:
        """Server `name` of the herd `config` describes."""
        return cls(
            name=name,
            peers=config.servers[name].peers,
            secret=config.secret,
            max_line=config.max_line,
            limits=config.limits,
            anti_entropy_seconds=config.anti_entropy_seconds,
            jitter=jitter,
        )


class Core(Protocol):
    """The server as its handlers see it: shared state, and replies in request order held
    until every change made before them is durable."""

    settings: ServerSettings
    table: LocationTable
    ops: OpLog
    planning: PlanningState
    instance: bytes
    marks: dict[str, tuple[bytes, int]]
    committer: GroupCommitter
    clock: Clock
    links: dict[str, PeerSession]
    leases: Leases | None

    def reply(self, connection: LineConnection, data: bytes) -> None: ...

    def reply_later(self, connection: LineConnection, slot: Slot, data: bytes) -> None: ...
