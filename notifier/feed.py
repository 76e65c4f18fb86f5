"""The notifier on a herd server's change feed: routes each applied change, renders it, and hands
the messages to the outbox (email, XMPP), the line hub (line) or the user's next digest.

Who does what, so that each message goes out once though every server applies every op:

- email and XMPP sent at once: only the server that accepted the op (`accepted_here` in the
  change's context).  It enqueues the messages inside the transaction of the change (the
  context's `add_write`), so the change and its notifications are durable together or not at
  all, and wakes the outbox once that commits;
- line: every server, for every change, pushes to its own subscribers after the commit.
  `route` is deterministic and checkpoints are the same everywhere, so a subscriber may move
  to another server and resume;
- what is held for a user (their digest, the coalesced vote notices to an organiser, their
  reminders and nudges): the server that holds the user's duties (`herd.leases`): their home
  server (the one named in their `user_add` op id) while its lease is alive, else the next
  one.  Every server keeps every digest reader's folded notifications durably, so whichever
  holds the duties at the digest hour composes the digest, and records it with a `digest` op
  in the transaction that enqueues it: every server then drops what it covered;
- a server that comes back leaves to the others what fell to them while it was away: it takes
  up digests only once the start grace is over (the peers have caught it up with their `digest`
  ops by then), and skips the vote notices and reminders of changes made, or due, after its
  lease had expired (its last renewal is marked durably) and before it started.

Everything the listener needs at run time is in memory (the planning state, what
`notifier.tables.load` read back at start), so nothing here reads the database on the reactor.
What is held for digests is `notifier.held_digests`'s, who sends it `notifier.duties`'s.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from herd.api import (
    Body,
    Change,
    ChangeContext,
    ChangeKind,
    Clock,
    DigestSent,
    DurableWrite,
    Leases,
    Op,
    PositionOf,
    StateView,
    User,
    timezone_of,
)
from notifier.channels.line import LinePush, checkpoint
from notifier.digest import DigestItem, compose_digest
from notifier.duties import Duties
from notifier.held_digests import HeldDigests
from notifier.message import Medium, Outgoing, Routed
from notifier.outbox_table import enqueue
from notifier.render import RenderCache, Templates, Unsubscribe, render
from notifier.routing import (
    Presence,
    Timing,
    Watching,
    due_reminders,
    nobody_watching,
    offline,
    route,
)
from notifier.tables import Saved, forget_items, hold_items, mark, record_digests

__all__ = ["DIGESTS_PER_TURN", "TICK", "NotifierListener"]

TICK: Final = 60.0
"""Seconds between looks for due reminders and digests, unless `[notifications] look_every`."""
DIGESTS_PER_TURN: Final = 25
"""Digests composed in one reactor turn: ~20 ms of work with ten events each."""
_LOOKS_PER_TURN: Final = 20 * DIGESTS_PER_TURN
"""Users whose digest time is worked out in one turn, due or not (~20 µs each)."""

_SECOND: Final = 10**9

_log = Logger()


@dataclass(frozen=True, slots=True)
class _Batch:
    """Rendered messages that share a due time and a coalesce key."""

    messages: list[Outgoing]
    due: float  # seconds
    coalesce: str | None


class NotifierListener:
    """A `ChangeListener` for one server (see the module docstring for the division of work).

    `add_write`/`after_commit` are the server's group committer's (for what the loops write;
    what a change causes is written through its `ChangeContext`); `wake` is the outbox's;
    `saved` is what `notifier.tables.load` read back; `user_adds` are the `user_add` ops the
    state was restored from, read once to learn which server added each user.  `leases` is this
    server's view of who holds which duties, shared with the server, whose `renew` announces
    this server's lease; `accept` makes and accepts an op of the given body (the `digest`
    records).  `start()` begins the loops, `stop()` ends them.
    """

    def __init__(
        self,
        server_name: str,
        state: StateView,
        position_of: PositionOf,
        add_write: Callable[[DurableWrite], None],
        after_commit: Callable[[Callable[[], None]], None],
        wake: Callable[[], None],
        push: LinePush,
        unsubscribe: Unsubscribe,
        clock: Clock,
        presence: Presence = offline,
        *,
        templates: Templates,
        saved: Saved,
        user_adds: Iterable[Op],
        leases: Leases,
        renew: Callable[[], None],
        accept: Callable[[Body], None],
        timing: Timing,
        look_every: float,
        watching: Watching = nobody_watching,
    ) -> None:
        self._state = state
        self._position_of = position_of
        self._add_write = add_write
        self._after_commit = after_commit
        self._wake = wake
        self._push = push
        self._unsubscribe = unsubscribe
        self._clock = clock
        self._presence = presence
        self._watching = watching
        self._templates = templates
        self._leases = leases
        self._renew = renew
        self._accept = accept
        self._timing = timing
        self._look_every = look_every
        self._started_ns = self._clock.now_ns()
        self._duties = Duties(server_name, leases, self._started_ns, saved.alive_ns, user_adds)
        self._held = HeldDigests(
            state, self._zone_of, timing.digest_at, saved.digest_items, saved.digest_sent
        )
        self._reminders_ns = saved.reminders_ns
        self._reminders = LoopingCall(self._remind)
        self._reminders.clock = clock.scheduler
        self._digests = LoopingCall(self._send_digests)
        self._digests.clock = clock.scheduler
        self._lease = LoopingCall(self._renew_lease)
        self._lease.clock = clock.scheduler
        self._digest_run: IDelayedCall | None = None  # the next turn of a digest run

    # --- the change feed ------------------------------------------------------------------

    def changed(self, change: Change, context: ChangeContext) -> None:
        """Route one applied change.  Never raises: the op is applied whatever happens here."""
        if change.kind is ChangeKind.USER_ADDED:
            self._duties.learn_user(change.op)
            return
        if change.kind is ChangeKind.USER_UPDATED:
            for user in change.users:  # zone, quiet hours or digest frequency may have changed
                self._held.reschedule(user)
            return
        if change.kind is ChangeKind.DIGEST_SENT:
            self._digest_sent(change.users, context.add_write)
            return
        now_ns = self._clock.now_ns()
        try:
            routed = self._route(change, now_ns)
        except Exception:
            _log.failure("notifier: could not route op {op_id}", op_id=change.op.op_id)
            return
        accepted_here = context.accepted_here
        made_ns = change.op.time_ns

        def sends(placed: Routed) -> bool:
            if self._watched(placed):
                return False
            if placed.coalesce is None:
                return accepted_here
            return self._duties.owes(placed.notification.recipient.user, made_ns, now_ns)

        self._dispatch(routed, now_ns, sends, context.add_write)

    def _watched(self, placed: Routed) -> bool:
        """Whether the recipient watches the event live here (the web's streams) and asked
        not to be told twice (`web_quiet`): then no mail or chat message goes out for it.  The
        change is still recorded (the page shows it), pushed on the line feed and, for a
        digest reader, folded into the digest (every server folds the same)."""
        notification = placed.notification
        user_id = notification.recipient.user
        if notification.event_id is None or not self._watching(user_id, notification.event_id):
            return False
        user = self._state.user(user_id)
        return user is not None and user.web_quiet

    def _route(self, change: Change, now_ns: int) -> list[Routed]:
        return route(
            change,
            self._state,
            now_ns,
            self._presence,
            zone_of=self._zone_of,
            timing=self._timing,
        )

    def replay_lines(self, changes: Iterable[Change]) -> None:
        """Refill the line hub after a start from the newest operations (the hub keeps its
        history in memory), so a subscriber resuming from a checkpoint here misses nothing.
        Checkpoints depend on the operation alone, so they match what was pushed before."""
        now_ns = self._clock.now_ns()
        for change in changes:
            if change.kind in (ChangeKind.USER_ADDED, ChangeKind.USER_UPDATED):
                continue
            try:
                routed = self._route(change, now_ns)
            except Exception:
                _log.failure("notifier: could not route op {op_id}", op_id=change.op.op_id)
                continue
            cache = RenderCache(self._templates, self._state, now_ns)
            for placed in routed:
                if placed.digest or Medium.LINE not in placed.channels:
                    continue
                notification = placed.notification
                mark = checkpoint(notification.at_ns, notification.id)
                for message in self._render(replace(placed, channels=(Medium.LINE,)), cache):
                    self._push.publish(notification.recipient.user, mark, message.text)

    def _digest_sent(self, users: Iterable[str], add_write: Callable[[DurableWrite], None]) -> None:
        """A `digest` op arrived (or was made here): drop the items it covered."""
        gone = self._held.drop_covered(users)
        if gone:
            add_write(lambda db: forget_items(db, gone))

    def _zone_of(self, user: User) -> str:
        return timezone_of(user.tz, self._position_of(user.id))

    # --- placing routed notifications ------------------------------------------------------

    def _dispatch(
        self,
        routed: Sequence[Routed],
        now_ns: int,
        sends: Callable[[Routed], bool],
        add_write: Callable[[DurableWrite], None],
        mark_ns: int | None = None,
    ) -> None:
        """Fold, render and place `routed`: email/XMPP to the outbox when `sends(placed)`, line
        pushes always, folded ones into the digests this server holds (those of everyone whose
        last digest did not cover them).  One durable write (with `mark_ns` as the reminders'
        mark, if given); effects after its commit."""
        batches: list[_Batch] = []
        lines: list[Routed] = []
        cache = RenderCache(self._templates, self._state, now_ns)
        folded: list[tuple[str, DigestItem]] = []
        for placed in routed:
            notification = placed.notification
            user = notification.recipient.user
            if placed.digest:
                if notification.at_ns > self._state.digest_sent(user)[1]:
                    item = DigestItem.of(placed)
                    if self._held.hold(user, item):
                        folded.append((user, item))
                continue
            if Medium.LINE in placed.channels:  # `route` places the line on its own
                lines.append(placed)
                continue
            if not sends(placed):
                continue
            messages = self._render(placed, cache)
            if messages:
                batches.append(_Batch(messages, placed.deliver_at / _SECOND, placed.coalesce))
        if batches or folded or mark_ns is not None:
            now = now_ns / _SECOND

            def write(db: sqlite3.Connection) -> None:
                for batch in batches:
                    enqueue(db, batch.messages, now, due=batch.due, coalesce=batch.coalesce)
                hold_items(db, folded)
                if mark_ns is not None:
                    mark(db, "reminders", mark_ns)

            add_write(write)
        if batches:
            self._after_commit(self._wake)
        if lines:
            self._after_commit(lambda: self._publish_soon(lines, cache))

    def _render(self, placed: Routed, cache: RenderCache) -> list[Outgoing]:
        """The messages of one notification; none (and a logged traceback) if a template
        fails, so the other recipients of the change are still told."""
        try:
            return render(placed, self._state, self._unsubscribe, cache)
        except Exception:
            _log.failure(
                "notifier: could not render {kind} for {user}",
                kind=placed.notification.kind,
                user=placed.notification.recipient.user,
            )
            return []

    def _publish_soon(self, lines: list[Routed], cache: RenderCache) -> None:
        self._clock.callLater(0, self._publish, lines, cache)

    def _publish(self, lines: list[Routed], cache: RenderCache) -> None:
        """Render and push the line notifications of a change once it is durable, on the turn
        after its commit: the flood to the peers and the replies go first, so that neither
        the next server nor the author waits for this server's subscribers.  They show the
        state as it is then."""
        for placed in lines:
            notification = placed.notification
            mark = checkpoint(notification.at_ns, notification.id)
            for message in self._render(placed, cache):
                self._push.publish(notification.recipient.user, mark, message.text)

    # --- the minute loops ------------------------------------------------------------------

    def start(self) -> None:
        """Begin renewing the lease and looking for due reminders and digests every
        `look_every` seconds; reminders that fell due while this server was away and no other
        held its duties are caught up at the first look (those still ahead of their event)."""
        if self._reminders_ns is None:
            self._reminders_ns = self._clock.now_ns()
        self._lease.start(self._leases.settings.renew).addErrback(self._loop_failed, "lease")
        for loop, name in ((self._reminders, "reminders"), (self._digests, "digests")):
            loop.start(self._look_every, now=False).addErrback(self._loop_failed, name)

    def stop(self) -> None:
        for loop in (self._lease, self._reminders, self._digests):
            if loop.running:
                loop.stop()
        if self._digest_run is not None:
            self._digest_run.cancel()  # the digests not yet composed stay held
            self._digest_run = None

    def _loop_failed(self, failure: Failure, name: str) -> None:
        _log.failure("notifier: the {name} loop stopped", failure, name=name)

    def _renew_lease(self) -> None:
        """Announce this server's lease, and mark when durably: after a crash, what was made
        from a lease's length after that on fell to another server."""
        now_ns = self._clock.now_ns()
        self._renew()

        self._add_write(lambda db: mark(db, "alive", now_ns))

    def _remind(self) -> None:
        now_ns = self._clock.now_ns()
        last_ns = now_ns if self._reminders_ns is None else self._reminders_ns
        try:
            routed = due_reminders(
                self._state,
                now_ns,
                last_ns,
                self._presence,
                zone_of=self._zone_of,
                timing=self._timing,
            )
        except Exception:
            _log.failure("notifier: could not look for reminders")
            return
        self._reminders_ns = now_ns

        def sends(placed: Routed) -> bool:
            notification = placed.notification
            return self._duties.owes(notification.recipient.user, notification.at_ns, now_ns)

        self._dispatch(routed, now_ns, sends, self._add_write, mark_ns=now_ns)

    def _send_digests(self) -> None:
        """Start composing the digests that are due, unless the last run is still at it.  Users
        go in order of zone, since digests in one zone share the rendering of their events."""
        if self._digest_run is not None:
            return
        now_ns = self._clock.now_ns()
        users = self._held.maybe_due(now_ns, lambda user: self._duties.mine(user, now_ns))
        if users:
            self._compose_digests(deque(users), RenderCache(self._templates, self._state, now_ns))

    def _compose_digests(self, users: deque[str], cache: RenderCache) -> None:
        """Compose the due digests of the first of `users`, at most `DIGESTS_PER_TURN`, and in
        one transaction enqueue them, drop their items and record when they were made; then
        the rest on a later turn.  10,000 users whose digest hour falls in the same minute
        would otherwise stop the server for seconds; sending starts after the first turn."""
        self._digest_run = None
        now_ns = self._clock.now_ns()
        made: list[tuple[str, int, Outgoing | None]] = []
        looked = 0
        while users and len(made) < DIGESTS_PER_TURN and looked < _LOOKS_PER_TURN:
            looked += 1
            user_id = users.popleft()
            digest = self._compose_digest(user_id, now_ns, cache)
            if digest is not None:
                made.append(digest)
        if users:
            self._digest_run = self._clock.callLater(0, self._compose_digests, users, cache)
        if not made:
            return
        now = now_ns / _SECOND

        def write(db: sqlite3.Connection) -> None:
            enqueue(db, [message for _, _, message in made if message is not None], now)
            record_digests(db, [user_id for user_id, _, _ in made], now_ns)

        self._add_write(write)
        for user_id, upto, _ in made:  # in the same transaction; applying drops the items
            self._accept(DigestSent(user_id, upto))
        if any(message is not None for _, _, message in made):
            self._after_commit(self._wake)

    def _compose_digest(
        self, user_id: str, now_ns: int, cache: RenderCache
    ) -> tuple[str, int, Outgoing | None] | None:
        """The user's digest, if it is due: (user, the time of the newest change it covers, the
        message or None if there was nothing left to say or composing failed)."""
        due = self._held.take_due(user_id, now_ns)
        if due is None:
            return None
        recipient, items = due
        try:
            message = compose_digest(
                recipient, self._state, items, now_ns, self._unsubscribe, cache
            )
        except Exception:
            _log.failure(
                "notifier: dropped the digest of {user} ({count} items)",
                user=user_id,
                count=len(items),
            )
            message = None
        return user_id, max(item.at_ns for item in items), message
