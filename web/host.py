"""What the web uses of the herd server it runs on (`WebHost`), built by the wiring
(`herd.service`) and passed to `web.site.build_site`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time
from typing import TYPE_CHECKING

from herd.api import Clock, PositionOf, StateView
from herd.config import ServerWeb
from web.prefs import HERD_DIGEST_AT
from web.templates import StaticFile, WebTemplates

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from web.stream import StreamHub

__all__ = ["RunAs", "WebHost"]

RunAs = Callable[[str, bytes], "Deferred[bytes]"]
"""Run one planning line as a user (`HerdServer.run_as`), firing with the reply line."""


@dataclass(frozen=True, slots=True)
class WebHost:
    """The server's name, its resolved `[web]` settings, the herd secret, a read-only view of
    the state, where users are, how to run a line as a user, the clock, the traffic log, and
    the templates and static files read at start, and the live streams."""

    name: str
    web: ServerWeb
    secret: bytes
    state: StateView
    position_of: PositionOf
    run_as: RunAs
    clock: Clock
    log: Callable[[str, list[bytes]], None]  # the server's traffic log: (who, lines)
    templates: WebTemplates
    static: Mapping[str, StaticFile] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)  # client address -> posts in flight
    live: StreamHub | None = None  # the live streams (`web.stream`), when the wiring runs them
    digest_at: time = HERD_DIGEST_AT  # `[notifications] digest_at`: users without their own

    def now(self) -> int:
        """POSIX seconds, from the server's one clock."""
        return self.clock.now_ns() // 10**9
