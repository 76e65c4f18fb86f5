"""Personal links to event pages, as notifications carry them (pure: the time comes from the
clock passed in).  The wiring hands `PersonalLinks.event_link` to the notifier's templates, so
the notifier itself knows nothing of the web."""

from __future__ import annotations

from dataclasses import dataclass

from herd.api import Clock, StateView, is_id, link_token

__all__ = ["DAY", "PersonalLinks"]

DAY = 86_400


@dataclass(frozen=True, slots=True)
class PersonalLinks:
    """Links under `base_url` that work for `link_days` from when they are made, until the user
    revokes their links (`LINKS REVOKE`)."""

    secret: bytes
    base_url: str  # no trailing slash
    link_days: int
    state: StateView
    clock: Clock

    def event_link(self, user: str, event_id: str) -> str | None:
        """`<base_url>/e/<event>?t=<token>` for `user`, or None for an unknown user."""
        found = self.state.user(user)
        if found is None or not is_id(event_id):
            return None
        expires = self.clock.now_ns() // 10**9 + self.link_days * DAY
        token = link_token(self.secret, user, event_id, expires, found.link_generation)
        return f"{self.base_url}/e/{event_id}?t={token}"
