"""The one place a notifier is assembled on a herd server: line hub, outbox, leases, the change
listener and, with a Jabber bot, its glue; used by `herd.service` and by the tests alike."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import Deferred

from herd.api import (
    Body,
    Change,
    ChangeListener,
    Clock,
    DurableWrite,
    Leases,
    LeaseSettings,
    PositionOf,
    RunBlocking,
    StateView,
    user_additions,
)
from notifier.botglue import BotGlue, RunAs
from notifier.channels import Channel
from notifier.channels.line import LineHub
from notifier.feed import TICK, NotifierListener
from notifier.outbox import Outbox
from notifier.render import Templates, Unsubscribe
from notifier.routing import Presence, Timing, Watching, nobody_watching, offline
from notifier.tables import Saved

__all__ = ["Host", "Notifier", "NotifierSettings", "build_notifier"]


@dataclass(frozen=True, slots=True)
class Host:
    """What the notifier uses of the herd server it runs on."""

    name: str
    servers: Sequence[str]  # every server of the herd, in config order (duty order of leases)
    state: StateView
    position_of: PositionOf
    subscribe: Callable[[ChangeListener], None]  # to the server's change feed
    add_write: Callable[[DurableWrite], None]  # the group committer's
    after_commit: Callable[[Callable[[], None]], None]
    renew: Callable[[], None]  # announce this server's lease to its peers
    accept: Callable[[Body], None]  # make and accept an op of this server's own
    run_as: RunAs  # a planning line as a user (the Jabber bot's commands)
    secret: bytes
    store: Path  # the server's database: the outbox and the notifier's tables live there


@dataclass(frozen=True, slots=True)
class NotifierSettings:
    """The operator's `[notifications]` times, and the outbox's concurrency per channel."""

    timing: Timing = Timing()  # noqa: RUF009 (frozen)
    look_every: float = TICK
    lease: LeaseSettings = LeaseSettings()  # noqa: RUF009 (frozen)
    concurrency: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Notifier:
    """The assembled notifier; `start` joins it to the server's change feed and starts its
    loops and outbox, `stop` stops the loops (the outbox is stopped with `outbox.stop`)."""

    listener: NotifierListener
    hub: LineHub
    outbox: Outbox
    channels: Mapping[str, Channel]  # the outbox's, the bot's included
    leases: Leases
    glue: BotGlue | None
    templates: Templates
    subscribe: Callable[[ChangeListener], None]

    def start(self, recent_changes: Iterable[Change]) -> Deferred[None]:
        """Subscribe the listener, refill the line history from the changes of the newest ops
        (as the state was restored), begin the loops; fires once the outbox has read back what
        was waiting."""
        self.subscribe(self.listener)
        self.listener.replay_lines(recent_changes)
        self.listener.start()
        return self.outbox.start()


def build_notifier(
    host: Host,
    saved: Saved,
    channels: Mapping[str, Channel],
    clock: Clock,
    run_outbox: RunBlocking,
    jitter: Callable[[], float],
    *,
    op_lines: Iterable[bytes],
    unsubscribe: Unsubscribe,
    templates: Templates | None = None,
    settings: NotifierSettings = NotifierSettings(),
    presence: Presence = offline,
    watching: Watching = nobody_watching,
    bot: Callable[[BotGlue], Channel] | None = None,
    listener_clock: Clock | None = None,
) -> Notifier:
    """Assemble the notifier of `host` over `channels` (by name: "email", ...).  With `bot`,
    the Jabber bot's glue is made and `bot(glue)` is the "xmpp" channel, whose presence the
    routing then follows; `watching` says who has an event open live here (the web's
    streams: no mail or chat message then, for users with `web_quiet`).  `saved` is what
    `notifier.tables.load` read back from `host.store`, `op_lines` the op log's JSON lines as
    restored (read once: who added each user); `listener_clock` times the listener's loops and
    leases if not `clock` (a test that steps the notifier's turns apart from the server's)."""
    templates = Templates() if templates is None else templates
    glue: BotGlue | None = None
    channels = dict(channels)
    if bot is not None:
        glue = BotGlue(host.state, host.run_as, host.position_of, host.secret, clock, templates)
        channels["xmpp"] = bot(glue)
        presence = glue.presence
    hub = LineHub()
    outbox = Outbox(
        host.store, channels, clock.scheduler, run_outbox, jitter, concurrency=settings.concurrency
    )
    looks = clock if listener_clock is None else listener_clock
    leases = Leases(host.name, list(host.servers), settings.lease, looks.now_ns())
    listener = NotifierListener(
        server_name=host.name,
        state=host.state,
        position_of=host.position_of,
        add_write=host.add_write,
        after_commit=host.after_commit,
        wake=outbox.wake,
        push=hub,
        unsubscribe=unsubscribe,
        clock=looks,
        presence=presence,
        templates=templates,
        saved=saved,
        user_adds=user_additions(op_lines),
        leases=leases,
        renew=host.renew,
        accept=host.accept,
        timing=settings.timing,
        look_every=settings.look_every,
        watching=watching,
    )
    return Notifier(listener, hub, outbox, channels, leases, glue, templates, host.subscribe)
