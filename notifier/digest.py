"""Digests, pure: when each user's is due, and what it says.

Routing folds a digest reader's non-urgent notifications into `DigestItem`s, which
`notifier.held_digests` holds until the user's next digest time (`next_digest_at`: their own
`digest_at`, else the herd's, 08:00 unless configured, on their wall clock, daily or on
Mondays, moved to the end of their quiet hours if those cover it; never a second one on a
local day that had one).  `compose_digest` turns the items gathered since the last digest
into one message: what changed, per event (votes folded into one line per event), then the
current state of each of the user's open events.
No items, no digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Final

from herd.api import Event, StateView, Status
from notifier.event_views import EventView
from notifier.message import FOLDABLE, Digest, Kind, Medium, Outgoing, Recipient, Routed
from notifier.render import RenderCache, Unsubscribe, render_email

__all__ = ["DIGEST_AT", "DigestItem", "compose_digest", "next_digest_at"]

DIGEST_AT: Final = time(8, 0)
_SECOND: Final = 10**9


def next_digest_at(
    recipient: Recipient, after_ns: int, at_time: time = DIGEST_AT, *, last_ns: int = 0
) -> int:
    """The first digest time strictly after `after_ns` (ns): the next digest hour local (the
    user's own `digest_at`, else `at_time`: 08:00 unless the operator set `[notifications]
    digest_at`; a Monday's for weekly digests), or the end of quiet hours that cover it.
    Wall-clock arithmetic in the user's zone, so it stays at that hour across DST changes (an
    hour that a spring-forward skips is read before the gap, so it comes an hour later on the
    wall clock; one that occurs twice in autumn is the first).

    `last_ns` is when the user's last digest went out (0: never).  One digest per local day:
    the time returned is never on the local calendar day of `last_ns`.  So a user who moves
    their hour later on a day that had its digest gets the next one tomorrow, and one who moves
    it earlier, past today's new hour, on a day that had none, gets a time already passed: due
    at once, rather than the day skipped."""
    if recipient.digest is Digest.OFF:
        raise ValueError(f"{recipient.user} takes no digest")
    zone = recipient.zone
    hour = recipient.digest_at or at_time
    last_day = datetime.fromtimestamp(last_ns // _SECOND, zone).date() if last_ns > 0 else None
    day = datetime.fromtimestamp(after_ns // _SECOND, zone).date()
    while True:
        at = int(datetime.combine(day, hour, tzinfo=zone).timestamp()) * _SECOND
        if at > after_ns and (recipient.digest is Digest.DAILY or day.weekday() == 0):
            out = recipient.out_of_quiet(at)
            if last_day is None or datetime.fromtimestamp(out // _SECOND, zone).date() > last_day:
                return out
        day += timedelta(days=1)


@dataclass(frozen=True, slots=True)
class DigestItem:
    """One folded notification, as `notifier.tables` stores it until the digest (all fields are
    plain values; rebuild `kind` with `Kind(text)`).  `id` is the notification's: a change routed
    twice is one item."""

    id: str
    kind: Kind
    event_id: str
    actor: str | None
    option_id: str | None
    cause: str
    at_ns: int

    @classmethod
    def of(cls, routed: Routed) -> DigestItem:
        n = routed.notification
        return cls(n.id, n.kind, n.event_id, n.actor, n.option_id, n.cause, n.at_ns)


def compose_digest(
    recipient: Recipient,
    state: StateView,
    items: Iterable[DigestItem],
    now_ns: int,
    unsubscribe: Unsubscribe,
    cache: RenderCache,
) -> Outgoing | None:
    """The digest of `items` (by email, or by XMPP for a user who has since dropped email), or
    None when nothing changed that still exists, or the user can no longer be reached.  Its
    key hashes the items, so composing the same items again gives the same key.  Pass one
    `cache` to all the digests of a run: they share most of their events."""
    unique = sorted({item.id: item for item in items}.values(), key=lambda i: (i.at_ns, i.id))
    changed = []
    for event_id in dict.fromkeys(item.event_id for item in unique):
        event = state.event(event_id)
        if event is None:
            continue
        view = cache.view(event, recipient)
        changes = _changes(event, view, [i for i in unique if i.event_id == event_id])
        if changes:
            changed.append({"event": view, "changes": changes})
    if not changed:
        return None
    context = {
        "user": recipient.user,
        "tz": recipient.tz,
        "frequency": recipient.digest.value,
        "count": sum(len(entry["changes"]) for entry in changed),
        "changed": changed,
        "events": [
            cache.view(event, recipient)
            for event in state.events_of(recipient.user)
            if _open(event, now_ns)
        ],
        "partial": cache.partial,
        "event_link": cache.event_link,  # once per (user, event) for the run's cache
        "prefs_link": cache.prefs_link,
    }
    ids = "\n".join(sorted(item.id for item in unique))
    key = "digest-" + hashlib.sha256(f"{recipient.user}\n{ids}".encode()).hexdigest()[:32]
    if recipient.by_email and recipient.email is not None:
        return render_email(
            cache.templates,
            f"{key}.{Medium.EMAIL}",
            recipient.user,
            recipient.email,
            "digest",
            context,
            unsubscribe,
            thread=None,
        )
    if recipient.by_xmpp and recipient.jid is not None:
        text = cache.templates.text("xmpp", "digest", "body.txt", context)
        return Outgoing(f"{key}.{Medium.XMPP}", Medium.XMPP.value, recipient.jid, "", text)
    return None


def _changes(event: Event, view: EventView, items: list[DigestItem]) -> list[dict[str, object]]:
    """One entry per item in order, except votes: one entry for all of them, at the first."""
    options = {option["id"]: option for option in (*view["times"], *view["places"])}
    comments = {comment.id: comment for comment in event.comments}
    voters = list(dict.fromkeys(i.actor for i in items if i.kind is Kind.VOTES and i.actor))
    entries: list[dict[str, object]] = []
    for item in items:
        if item.kind not in FOLDABLE:
            continue
        entry: dict[str, object] = {"kind": item.kind.value, "actor": item.actor}
        match item.kind:
            case Kind.VOTES:
                if any(e["kind"] == Kind.VOTES for e in entries):
                    continue
                count = sum(1 for i in items if i.kind is Kind.VOTES)
                entry.update(voters=voters, count=count)
            case Kind.NEW_OPTION:
                option = options.get(item.option_id or "")
                if option is None:
                    continue
                entry["option"] = option
            case Kind.COMMENT:
                comment = comments.get(item.cause)
                if comment is None:
                    continue
                entry["text"] = comment.text
        entries.append(entry)
    return entries


def _open(event: Event, now_ns: int) -> bool:
    """Still ahead: being planned, or decided for a time not yet past."""
    if event.status is Status.PLANNING:
        return True
    if event.status is Status.DECIDED and event.decision is not None:
        time_option = event.time(event.decision[0])
        return time_option is not None and time_option.at * _SECOND >= now_ns
    return False
