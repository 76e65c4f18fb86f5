"""Whom the bot talks to, as bookkeeping (pure; the time is passed in): a stranger gets one polite
reply and a few tries at linking per cooldown, with bounded memory; a user whose presence the bot
does not see is asked to share it once per cooldown; a contact's presence is read over all their
devices.

`notifier.channels.xmpp` asks this on each stanza from a stranger or a contact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Final, Literal

PresenceState = Literal["available", "away", "unavailable"]

LINK_ATTEMPTS: Final = 5
ASK_AGAIN_AFTER: Final = 24 * 3600.0  # seconds before asking again one who did not accept
REMEMBERED: Final = 1024  # strangers kept per kind; the least recently seen are forgotten first


class Strangers:
    """JIDs that are not Renga users, each remembered for one cooldown: so the bot never loops
    with another bot, and a link code cannot be guessed by trying many."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self._answered: OrderedDict[str, float] = OrderedDict()
        self._link_attempts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def may_try_link(self, bare: str, now: float) -> bool:
        """A few linking attempts per JID per cooldown (this one counted)."""
        since, count = self._link_attempts.get(bare, (now, 0))
        if now - since >= self.cooldown:
            since, count = now, 0
        self._link_attempts[bare] = (since, count + 1)
        self._link_attempts.move_to_end(bare)
        while len(self._link_attempts) > REMEMBERED:
            self._link_attempts.popitem(last=False)
        return count < LINK_ATTEMPTS

    def should_answer(self, bare: str, now: float) -> bool:
        """One polite line per stranger per cooldown (answering it now is counted)."""
        last = self._answered.get(bare)
        if last is not None and now - last < self.cooldown:
            return False
        self._answered[bare] = now
        self._answered.move_to_end(bare)
        while len(self._answered) > REMEMBERED:
            self._answered.popitem(last=False)
        return True


class PresenceAsks:
    """Linked users asked to let the bot see their presence (so notices reach them here while
    they are online): asked when they link and when they chat without sharing it, but once, not
    on every message.  The roster says what the server knows (subscribed already, a request
    pending); this remembers who was asked, so one who declined is not asked again within the
    cooldown.  Bounded memory, like `Strangers`."""

    def __init__(self, cooldown: float = ASK_AGAIN_AFTER) -> None:
        self.cooldown = cooldown
        self._asked: OrderedDict[str, float] = OrderedDict()

    def should_ask(self, bare: str, now: float, *, receiving: bool, pending: bool) -> bool:
        """Whether to send `bare` a subscription request now (asking it is counted).
        `receiving`: the bot gets their presence already; `pending`: a request awaits them."""
        if receiving or pending:
            return False
        last = self._asked.get(bare)
        if last is not None and now - last < self.cooldown:
            return False
        self._asked[bare] = now
        self._asked.move_to_end(bare)
        while len(self._asked) > REMEMBERED:
            self._asked.popitem(last=False)
        return True


def presence_of(shows: Sequence[str]) -> PresenceState:
    """A contact's state from the `show` of each of their available resources (`""` is plain
    available): available if any device is, away if all that are there are away, else
    unavailable."""
    if any(show in ("", "chat") for show in shows):
        return "available"
    if shows:
        return "away"
    return "unavailable"
