"""Which server sends a user's held notifications, pure: leases and duties.

Digests, coalesced notices and reminders are composed from state every server holds, so any of
them could send them; exactly one must.  Each user has a home server (the one that added them)
and after it the others in the config's cyclic order.  The user's duties belong to the first
server of that order whose lease is alive.

Every server renews its lease every `renew` seconds with a new value (its clock in ns, made
larger than any value seen for it) that the herd floods on the peer links (`LEASE <server>
<ns>`, forwarded when newer) and sends whole on each new link.  Only the newest value per
server is kept, in memory: a lease is about the present, so nothing about it is stored, and the
register does not grow.  A lease is alive while a newer value reached this server less than
`valid` seconds ago on this server's own clock, so clock skew between servers does not matter.

At start every server is deemed alive (as if renewed then) and this server takes up no duty
before `valid` seconds have passed: by then the links are up, the peers have caught it up with
what was sent while it was away (`digest` operations), and they have seen its lease again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["LeaseSettings", "Leases", "duty_order"]

_SECOND: Final = 10**9


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """Seconds between renewals, and how long a lease lasts without one."""

    renew: float = 10.0
    valid: float = 30.0


def duty_order(servers: Sequence[str], home: str) -> tuple[str, ...]:
    """`home`, then the other servers in cyclic config order after it (a home no longer in the
    config comes first and the others follow in config order)."""
    if home not in servers:
        return (home, *servers)
    at = servers.index(home)
    return (*servers[at:], *servers[:at])


class Leases:
    """This server's view of every server's lease (see the module docstring)."""

    def __init__(
        self, own: str, servers: Sequence[str], settings: LeaseSettings, now_ns: int
    ) -> None:
        self.own = own
        self.servers = tuple(servers)
        self.settings = settings
        self._valid_ns = round(settings.valid * _SECOND)
        self._started_ns = now_ns
        self._newest: dict[str, int] = {}  # server -> newest value seen (that server's clock)
        self._grew: dict[str, int] = dict.fromkeys(self.servers, now_ns)  # our clock

    def renew(self, now_ns: int) -> int:
        """This server's next lease value, larger than any seen for it."""
        value = max(now_ns, self._newest.get(self.own, 0) + 1)
        self._newest[self.own] = value
        self._grew[self.own] = now_ns
        return value

    def offer(self, server: str, value: int, now_ns: int) -> bool:
        """Take a value from a peer; whether it was newer (and so is to be forwarded).  A value
        for this server (a previous run's) only makes the next renewal larger."""
        if server not in self.servers or value <= self._newest.get(server, -1):
            return False
        self._newest[server] = value
        if server == self.own:
            return False
        self._grew[server] = now_ns
        return True

    def entries(self) -> list[tuple[str, int]]:
        """Every newest value, for a new link."""
        return sorted(self._newest.items())

    def alive(self, server: str, now_ns: int) -> bool:
        if server == self.own:
            return True
        grew = self._grew.get(server)
        return grew is not None and now_ns - grew < self._valid_ns

    def settled(self, now_ns: int) -> bool:
        """Whether the start grace is over (see the module docstring)."""
        return now_ns - self._started_ns >= self._valid_ns

    def responsible(self, home: str, now_ns: int) -> str:
        """The server that holds the duties of a user whose home is `home`, as seen here."""
        for server in duty_order(self.servers, home):
            if self.alive(server, now_ns):
                return server
        return self.own  # unreachable: this server is always alive to itself

    def mine(self, home: str, now_ns: int) -> bool:
        """Whether this server sends the held notifications of a user whose home is `home`."""
        return self.settled(now_ns) and self.responsible(home, now_ns) == self.own
