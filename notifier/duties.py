"""Which server sends what is held for a user (their digest, the coalesced vote notices to an
organiser, their reminders and nudges), pure: the one that holds the user's duties
(`herd.leases`), their home server (the one named in their `user_add` op id) while its lease
is alive, else the next one; and a server that comes back leaves to the others what fell to
them while it was away."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from herd.api import AddUser, Leases, Op, Stamp, op_server

__all__ = ["Duties"]

_SECOND: Final = 10**9


class Duties:
    """This server's share of the held notices.  `started_ns` is when it started, `alive_ns`
    when it last renewed its lease before (None: never), `user_adds` the `user_add` ops the
    state was restored from."""

    def __init__(
        self,
        server_name: str,
        leases: Leases,
        started_ns: int,
        alive_ns: int | None,
        user_adds: Iterable[Op],
    ) -> None:
        self._server_name = server_name
        self._leases = leases
        self._started_ns = started_ns
        # Changes made (reminders due) after this, up to the start, fell to another server.
        # One renewal later than the lease ran out at the peers, so that at the edge a notice
        # goes out twice rather than not at all.
        settings = leases.settings
        self._away_from = (
            None
            if alive_ns is None
            else alive_ns + round((settings.valid + settings.renew) * _SECOND)
        )
        self._added: dict[str, Stamp] = {}  # user -> stamp of the first op that added them
        for op in user_adds:
            self.learn_user(op)

    def learn_user(self, op: Op) -> None:
        """Remember which op added a user: the server in its id is the user's home.  Should
        two servers add one user concurrently, the earliest stamp seen wins."""
        if isinstance(op.body, AddUser):
            known = self._added.get(op.body.user)
            if known is None or op.stamp < known:
                self._added[op.body.user] = op.stamp

    def mine(self, user: str, now_ns: int) -> bool:
        """Whether this server holds `user`'s duties now."""
        return self._leases.mine(self._home(user), now_ns)

    def owes(self, user: str, made_ns: int, now_ns: int) -> bool:
        """Whether this server sends a held notice to `user` about something made (or due) at
        `made_ns`: it holds their duties now, and did not leave this one to another."""
        if self._leases.responsible(self._home(user), now_ns) != self._server_name:
            return False
        away = self._away_from
        return away is None or not away < made_ns <= self._started_ns

    def _home(self, user: str) -> str:
        added = self._added.get(user)
        return "" if added is None else op_server(added[1])
