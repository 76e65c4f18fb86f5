"""What is held for each digest reader until their digest, pure: the folded notifications
(`DigestItem`s) not yet covered by a digest, and when each user's next digest falls due.  The
listener (`notifier.feed`) composes, stores and sends; this decides whose digest is due."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from datetime import time

from herd.api import StateView, User
from notifier.digest import DigestItem, next_digest_at
from notifier.message import Digest, Recipient

__all__ = ["HeldDigests"]


class HeldDigests:
    """Every digest reader's held items, from `items` as saved (those a `digest` op has since
    covered are left out) and `sent`, when each user's last digest was made here."""

    def __init__(
        self,
        state: StateView,
        zone_of: Callable[[User], str],
        digest_at: time,
        items: Mapping[str, Mapping[str, DigestItem]],
        sent: Mapping[str, int],
    ) -> None:
        self._state = state
        self._zone_of = zone_of
        self._digest_at = digest_at
        self._items: dict[str, dict[str, DigestItem]] = {}
        for user, held in items.items():
            upto = state.digest_sent(user)[1]
            kept = {item_id: item for item_id, item in held.items() if item.at_ns > upto}
            if kept:
                self._items[user] = kept
        self._sent = dict(sent)
        self._digest_due: dict[str, int] = {}  # user -> digest time (ns), checked when reached

    def hold(self, user: str, item: DigestItem) -> bool:
        """Hold `item` for `user`'s digest unless it is held already; whether it was new."""
        held = self._items.setdefault(user, {})
        if item.id in held:
            return False
        held[item.id] = item
        self._digest_due.pop(user, None)  # a late item may make it sooner
        return True

    def reschedule(self, user: str) -> None:
        """Work the user's digest time out again (their zone, quiet hours or frequency may
        have changed)."""
        self._digest_due.pop(user, None)

    def drop_covered(self, users: Iterable[str]) -> list[tuple[str, str]]:
        """A `digest` op arrived (or was made here): drop the items it covered, and say which
        (user, item id)."""
        gone: list[tuple[str, str]] = []
        for user in users:
            held = self._items.get(user)
            if held is None:
                continue
            upto = self._state.digest_sent(user)[1]
            covered = [item_id for item_id, item in held.items() if item.at_ns <= upto]
            for item_id in covered:
                del held[item_id]
                gone.append((user, item_id))
            if not held:
                del self._items[user]
            self._digest_due.pop(user, None)
        return gone

    def maybe_due(self, now_ns: int, mine: Callable[[str], bool]) -> list[str]:
        """The users whose digest may be due (its time is not known, or reached) and whose
        duties `mine`, in order of zone, since digests in one zone share the rendering of their
        events."""
        known = self._digest_due
        users = [
            u for u in self._items if ((due := known.get(u)) is None or due <= now_ns) and mine(u)
        ]
        users.sort(key=self._zone_of_id)
        return users

    def take_due(
        self, user_id: str, now_ns: int
    ) -> tuple[Recipient, Collection[DigestItem]] | None:
        """The user as their digest is addressed and the items it covers, if it is due now;
        it counts as made now (the items stay held until the `digest` op that records it)."""
        if user_id not in self._items:  # a `digest` op covered them since
            return None
        due = self._digest_due.get(user_id)
        if due is not None and due > now_ns:
            return None
        schedule = self._schedule(user_id)  # again at the due time: zones move
        if schedule is None:
            return None
        recipient, due = schedule
        self._digest_due[user_id] = due
        if due > now_ns:
            return None
        del self._digest_due[user_id]
        self._sent[user_id] = now_ns
        return recipient, self._items[user_id].values()

    def _schedule(self, user_id: str) -> tuple[Recipient, int] | None:
        """The user as their digest is addressed, and its time: the first digest hour (theirs,
        else the herd's) after both their last digest and their oldest held item, on a local
        day after their last digest's (`next_digest_at`: one a day, whatever hour they move
        to; a new hour already past on a day without one is due at once).  Items held for a
        user who has since turned digests off go out at the next daily hour rather than
        never."""
        user = self._state.user(user_id)
        if user is None:
            return None
        recipient = Recipient.of(user, self._zone_of(user))
        if recipient.digest is Digest.OFF:
            recipient = replace(recipient, digest=Digest.DAILY)
        oldest = min(item.at_ns for item in self._items[user_id].values())
        sent = max(self._sent.get(user_id, 0), self._state.digest_sent(user_id)[0])
        due = next_digest_at(recipient, max(sent, oldest), self._digest_at, last_ns=sent)
        return recipient, due

    def _zone_of_id(self, user_id: str) -> str:
        user = self._state.user(user_id)
        return "" if user is None else self._zone_of(user)
